// sendmail_harness.cpp: real sendmail, dynmx-milter and an SMTP client for tests (see the header).
//
// sendmail runs as `sendmail -C<cf> -bD -odq`: -bD is -bd without detaching, so the pid we hold
// is the daemon's and Process::stop() ends it and the children it forked for connections.
// Queue-only (-odq) keeps every accepted message in the private queue where tests can read it.
#include "tests/harness/sendmail_harness.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>

namespace dynmx::test {

namespace {

std::string quoteToml(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void mkdirMode(const std::string& path, mode_t mode) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw std::runtime_error("mkdir " + path + ": " + ec.message());
  if (chmod(path.c_str(), mode) != 0) {
    throw std::runtime_error("chmod " + path + ": " + std::strerror(errno));
  }
}

// sendmail sleeps 60 s at start-up when the machine's own name has no dot and cannot be
// qualified (common on test machines: "127.0.0.1 vm" in /etc/hosts). Give this process (and so
// the sendmails it starts) a private UTS namespace with a dotted host name instead; the machine's
// name is not touched. Root only, like every integration test here.
void qualifyHostName() {
  static bool done = false;
  if (done) return;
  done = true;
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || std::strchr(name, '.') != nullptr) return;
  if (unshare(CLONE_NEWUTS) != 0) return;  // then sendmail is merely slow to start
  std::string dotted = std::string(name) + ".dynmx.test";
  sethostname(dotted.c_str(), dotted.size());
}

bool tcpAccepts(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(port);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  close(fd);
  return ok;
}

}  // namespace

bool unixSocketAccepts(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  close(fd);
  return ok;
}

// ---------------------------------------------------------------------------------------------

TestMilter::TestMilter(std::string dir, TestMilterOptions opts)
    : dir_(std::move(dir)), opts_(std::move(opts)) {
  mkdirMode(dir_, 0755);
  char tmpl[] = "/run/dynmx-test-sock.XXXXXX";
  if (!mkdtemp(tmpl))
    throw std::runtime_error(std::string("mkdtemp /run: ") + std::strerror(errno));
  sockdir_ = tmpl;
  chmod(sockdir_.c_str(), 0755);
  // The spool's state directories (shared/spool.hpp), made here so that the harness does not
  // depend on the library under test.
  mkdirMode(spoolDir(), 0700);
  for (const char* d : {"tmp", "incoming", "active", "deferred", "hold", "corrupt"}) {
    mkdirMode(spoolDir() + "/" + d, 0700);
  }
  writeConfig();
}

TestMilter::~TestMilter() {
  stop();
  std::error_code ec;
  std::filesystem::remove_all(sockdir_, ec);
}

std::string TestMilter::configText() const {
  std::ostringstream o;
  o << "[spool]\ndir = " << quoteToml(spoolDir()) << "\n";
  if (!opts_.max_message_size.empty()) o << "max_message_size = " << opts_.max_message_size << "\n";
  o << opts_.spool_extra;
  o << "\n[milter]\nsocket = " << quoteToml(socketSpec()) << "\n";
  if (!opts_.on_error.empty()) o << "on_error = " << quoteToml(opts_.on_error) << "\n";
  if (!opts_.socket_mode.empty()) o << "socket_mode = " << quoteToml(opts_.socket_mode) << "\n";
  if (!opts_.socket_group.empty()) o << "socket_group = " << quoteToml(opts_.socket_group) << "\n";
  if (!opts_.user.empty()) o << "user = " << quoteToml(opts_.user) << "\n";
  if (!opts_.extra_toml.empty()) o << "\n" << opts_.extra_toml << "\n";
  for (const TestClient& c : opts_.clients) {
    o << "\n[[client]]\nname = " << quoteToml(c.name) << "\nhost = " << quoteToml(c.host) << "\n";
    if (c.port != 0) o << "port = " << c.port << "\n";
    if (!c.host_key.empty()) o << "host_key = " << quoteToml(c.host_key) << "\n";
    o << "domains = [";
    for (size_t i = 0; i < c.domains.size(); ++i) o << (i ? ", " : "") << quoteToml(c.domains[i]);
    o << "]\n" << c.extra;
  }
  return o.str();
}

void TestMilter::writeConfig() {
  std::string tmp = configPath() + ".new";
  writeFile(tmp, configText(), 0644);
  if (rename(tmp.c_str(), configPath().c_str()) != 0) {
    throw std::runtime_error("rename " + tmp + ": " + std::strerror(errno));
  }
}

void TestMilter::start() {
  std::string program = opts_.program.empty() ? binDir() + "/dynmx-milter" : opts_.program;
  SpawnOptions so;
  so.stdout_path = logPath();
  so.stderr_path = logPath();
  proc_ = Process({program, "-f", "-c", configPath()}, so);
  bool up = waitFor([&] { return unixSocketAccepts(socketPath()) || !proc_.running(); });
  if (!up || !proc_.running()) {
    throw std::runtime_error("dynmx-milter did not start; its log:\n" + log());
  }
}

void TestMilter::stop() {
  if (proc_.pid() > 0) proc_.stop();
}

std::string TestMilter::log() const {
  try {
    return readFile(logPath());
  } catch (...) {
    return "";
  }
}

bool TestMilter::waitForLog(const std::string& needle, std::chrono::milliseconds deadline) const {
  return waitFor([&] { return log().find(needle) != std::string::npos; }, deadline);
}

// ---------------------------------------------------------------------------------------------

TestSendmail::TestSendmail(std::string dir, TestSendmailOptions opts)
    : dir_(std::move(dir)), opts_(std::move(opts)) {
  mkdirMode(dir_, 0755);
  mkdirMode(queueDir(), 0700);
}

TestSendmail::~TestSendmail() {
  stop();
}

void TestSendmail::start() {
  qualifyHostName();
  port_ = freePort();
  std::ostringstream mc;
  mc << "divert(-1)\ndivert(0)dnl\n"
     << "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n"
     << "VERSIONID(`dynmx test')dnl\n"
     << "OSTYPE(`debian')dnl\n"
     << "FEATURE(`no_default_msa')dnl\n"
     << "FEATURE(`accept_unresolvable_domains')dnl\n"
     << "define(`QUEUE_DIR', `" << queueDir() << "')dnl\n"
     << "define(`confPID_FILE', `" << dir_ << "/sendmail.pid')dnl\n"
     << "define(`confDOMAIN_NAME', `mx.dynmx.test')dnl\n"
     << "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
     << "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
     << "DAEMON_OPTIONS(`Port=" << port_ << ", Addr=127.0.0.1, Name=MTA')dnl\n";
  for (const std::string& d : opts_.relay_domains) mc << "RELAY_DOMAIN(`" << d << "')dnl\n";
  if (!opts_.milter_socket.empty()) {
    mc << "INPUT_MAIL_FILTER(`dynmx', `S=" << opts_.milter_socket;
    if (!opts_.milter_flags.empty()) mc << ", " << opts_.milter_flags;
    if (!opts_.milter_timeouts.empty()) mc << ", T=" << opts_.milter_timeouts;
    mc << "')dnl\n";
  }
  mc << opts_.extra_mc << "MAILER(`local')dnl\nMAILER(`smtp')dnl\n" << opts_.tail_mc;
  writeFile(dir_ + "/sendmail.mc", mc.str());
  std::string cf;
  if (runCommand({"/usr/bin/m4", dir_ + "/sendmail.mc"}, &cf) != 0 || cf.empty()) {
    throw std::runtime_error("m4 " + dir_ + "/sendmail.mc failed");
  }
  writeFile(cfPath(), cf, 0644);

  SpawnOptions so;
  so.stdout_path = logPath();
  so.stderr_path = logPath();
  proc_ = Process({"/usr/sbin/sendmail", "-C" + cfPath(), "-bD", opts_.delivery_mode}, so);
  bool up = waitFor([&] { return tcpAccepts(port_) || !proc_.running(); });
  if (!up || !proc_.running()) {
    std::string log;
    try {
      log = readFile(logPath());
    } catch (...) {
    }
    throw std::runtime_error("sendmail did not start on port " + std::to_string(port_) +
                             "; its output:\n" + log);
  }
}

void TestSendmail::stop() {
  if (proc_.pid() > 0) proc_.stop();
}

std::vector<QueuedMessage> TestSendmail::queue() const {
  std::vector<QueuedMessage> out;
  for (const std::string& name : listDir(queueDir())) {
    if (name.rfind("qf", 0) != 0) continue;
    QueuedMessage m;
    m.id = name.substr(2);
    std::istringstream qf(readFile(queueDir() + "/" + name));
    std::string line;
    bool in_header = false;
    while (std::getline(qf, line)) {
      if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) {
        if (in_header) m.headers += line + "\n";
        continue;
      }
      in_header = false;
      if (line.empty()) continue;
      char kind = line[0];
      std::string rest = line.substr(1);
      if (kind == 'S') {
        if (rest.size() >= 2 && rest.front() == '<' && rest.back() == '>') {
          rest = rest.substr(1, rest.size() - 2);
        }
        m.sender = rest;
      } else if (kind == 'R') {
        // "RPFD:bob@host": flags, a colon, the address.
        size_t colon = rest.find(':');
        if (colon != std::string::npos &&
            rest.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ") == colon) {
          rest = rest.substr(colon + 1);
        }
        m.recipients.push_back(rest);
      } else if (kind == 'H') {
        if (!rest.empty() && rest[0] == '?') {
          size_t q = rest.find('?', 1);
          if (q != std::string::npos) rest = rest.substr(q + 1);
        }
        m.headers += rest + "\n";
        in_header = true;
      }
    }
    std::string df = queueDir() + "/df" + m.id;
    if (access(df.c_str(), F_OK) == 0) m.body = readFile(df);
    out.push_back(std::move(m));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

SmtpSession::SmtpSession(uint16_t port, std::chrono::seconds timeout) {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count());
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(port);
  if (connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int e = errno;
    close(fd_);
    fd_ = -1;
    throw std::runtime_error("connect 127.0.0.1:" + std::to_string(port) + ": " + std::strerror(e));
  }
  greeting_ = readReply();
}

SmtpSession::~SmtpSession() {
  if (fd_ >= 0) close(fd_);
}

void SmtpSession::sendAll(const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("SMTP send: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
}

SmtpReply SmtpSession::readReply() {
  SmtpReply r;
  for (;;) {
    size_t nl;
    while ((nl = buf_.find('\n')) == std::string::npos) {
      char tmp[4096];
      ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        throw std::runtime_error(n == 0 ? "SMTP: connection closed by the server"
                                        : std::string("SMTP recv: ") + std::strerror(errno));
      }
      buf_.append(tmp, static_cast<size_t>(n));
    }
    std::string line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() < 3) throw std::runtime_error("SMTP: malformed reply line: " + line);
    r.code = std::stoi(line.substr(0, 3));
    r.text += (r.text.empty() ? "" : "\n") + line;
    if (line.size() == 3 || line[3] == ' ') return r;
  }
}

SmtpReply SmtpSession::command(const std::string& line) {
  sendAll(line + "\r\n");
  return readReply();
}

SmtpReply SmtpSession::data(const std::string& content) {
  std::string out;
  out.reserve(content.size() + 64);
  bool bol = true;
  for (char c : content) {
    if (bol && c == '.') out += '.';
    out += c;
    bol = c == '\n';
  }
  if (!out.empty() && out.back() != '\n') out += "\r\n";
  out += ".\r\n";
  sendAll(out);
  return readReply();
}

SmtpReply SmtpSession::sendMail(const std::string& from, const std::vector<std::string>& rcpts,
                                const std::string& content, std::vector<SmtpReply>* rcpt_replies) {
  if (!ehlo_done_) {
    SmtpReply r = command("EHLO client.test");
    if (r.code != 250) return r;
    ehlo_done_ = true;
  }
  SmtpReply r = command("MAIL FROM:<" + from + ">");
  if (r.code != 250) return r;
  bool any = false;
  for (const std::string& to : rcpts) {
    SmtpReply rr = command("RCPT TO:<" + to + ">");
    if (rcpt_replies) rcpt_replies->push_back(rr);
    if (rr.code == 250 || rr.code == 251) any = true;
  }
  if (!any) {
    command("RSET");
    return SmtpReply{554, "no valid recipients"};
  }
  r = command("DATA");
  if (r.code != 354) return r;
  return data(content);
}

void SmtpSession::quit() {
  try {
    command("QUIT");
  } catch (...) {
  }
}

}  // namespace dynmx::test
