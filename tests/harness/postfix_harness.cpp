// postfix_harness.cpp: Debian 12's Postfix from its unpacked package, for tests (see the header).
//
// The package cache is filled under an exclusive flock, in a temporary directory renamed into
// place when complete, so that a crash half-way leaves nothing that looks ready. What Debian's
// postinst would do and the tests need is done here: the files `postfix set-permissions` reads
// from meta_directory (dynamicmaps.cf, makedefs.out, main.cf.proto, master.cf.proto) are copied
// from usr/share/postfix into etc/postfix of the unpacked tree.
#include "tests/harness/postfix_harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace dynmx::test {

namespace fs = std::filesystem;

namespace {

std::string cacheDir() {
  if (const char* e = std::getenv("DYNMX_POSTFIX_CACHE")) return e;
  return "/var/cache/dynmx-tests/postfix";
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
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

// An exclusive flock held for the lifetime of the object.
class FileLock {
 public:
  explicit FileLock(const std::string& path) {
    fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
    while (flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) throw std::runtime_error("flock " + path + ": " + std::strerror(errno));
    }
  }
  ~FileLock() { close(fd_); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// Downloads and unpacks the package into `cache`/root; returns its version or throws.
std::string fillCache(const std::string& cache) {
  std::string work = cache + "/fill.XXXXXX";
  std::vector<char> tmpl(work.begin(), work.end());
  tmpl.push_back('\0');
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + work + ": " + strerror(errno));
  work = tmpl.data();
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  } cleanup{work};
  chmod(work.c_str(), 0755);

  std::string out;
  if (runWithEnv({"/usr/bin/apt-get", "-q", "download", "postfix"}, {}, work, &out) != 0) {
    throw std::runtime_error("`apt-get download postfix` failed: " + trimmed(out));
  }
  std::string deb;
  for (const std::string& name : listDir(work)) {
    if (name.rfind("postfix_", 0) == 0 && name.size() > 4 &&
        name.compare(name.size() - 4, 4, ".deb") == 0) {
      deb = work + "/" + name;
    }
  }
  if (deb.empty()) throw std::runtime_error("apt-get download postfix left no postfix_*.deb");
  std::string version;
  if (runWithEnv({"/usr/bin/dpkg-deb", "-f", deb, "Version"}, {}, "", &version) != 0) {
    throw std::runtime_error("dpkg-deb -f " + deb + " Version failed: " + version);
  }
  version = trimmed(version);
  std::string root = work + "/root";
  if (runWithEnv({"/usr/bin/dpkg", "-x", deb, root}, {}, "", &out) != 0) {
    throw std::runtime_error("dpkg -x " + deb + " failed: " + trimmed(out));
  }
  // What `postfix set-permissions` expects in meta_directory (Debian's postinst puts it there).
  const std::string share = root + "/usr/share/postfix/", meta = root + "/etc/postfix/";
  const std::pair<const char*, const char*> copies[] = {{"dynamicmaps.cf", "dynamicmaps.cf"},
                                                        {"makedefs.out", "makedefs.out"},
                                                        {"main.cf.dist", "main.cf.proto"},
                                                        {"master.cf.dist", "master.cf.proto"}};
  for (const auto& [from, to] : copies) {
    std::error_code ec;
    fs::copy_file(share + from, meta + to, fs::copy_options::overwrite_existing, ec);
    if (ec) throw std::runtime_error("copy " + share + from + ": " + ec.message());
  }
  writeFile(root + "/.dynmx-version", version + "\n");
  std::error_code ec;
  fs::remove_all(cache + "/root", ec);
  if (rename(root.c_str(), (cache + "/root").c_str()) != 0) {
    throw std::runtime_error("rename " + root + " to " + cache + "/root: " + strerror(errno));
  }
  return version;
}

}  // namespace

int runWithEnv(const std::vector<std::string>& argv, const std::vector<std::string>& env,
               const std::string& cwd, std::string* out, const std::string& stdin_data) {
  if (argv.empty()) throw std::runtime_error("runWithEnv: empty argv");
  int inpipe[2], outpipe[2];
  if (pipe2(inpipe, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe: " + std::string(strerror(errno)));
  if (pipe2(outpipe, O_CLOEXEC) != 0) {
    close(inpipe[0]);
    close(inpipe[1]);
    throw std::runtime_error("pipe: " + std::string(strerror(errno)));
  }
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string cur = *e;
    bool replaced = false;
    for (const std::string& n : env) {
      if (cur.compare(0, n.find('=') + 1, n, 0, n.find('=') + 1) == 0) replaced = true;
    }
    if (!replaced) envs.push_back(cur);
  }
  envs.insert(envs.end(), env.begin(), env.end());
  std::vector<char*> cargv, cenv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (std::string& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork: " + std::string(strerror(errno)));
  if (pid == 0) {
    dup2(inpipe[0], 0);
    if (out) {
      dup2(outpipe[1], 1);
      dup2(outpipe[1], 2);
    }
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(127);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  close(inpipe[0]);
  close(outpipe[1]);
  std::thread writer([&] {
    size_t off = 0;
    while (off < stdin_data.size()) {
      ssize_t n = write(inpipe[1], stdin_data.data() + off, stdin_data.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    close(inpipe[1]);
  });
  char buf[4096];
  ssize_t n;
  while ((n = read(outpipe[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0 && out) out->append(buf, static_cast<size_t>(n));
  }
  close(outpipe[0]);
  writer.join();
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::optional<PostfixPackage> postfixPackage(std::string* why) {
  static std::mutex mu;
  static std::optional<std::string> failed;  // one failed download per process is enough
  std::lock_guard<std::mutex> guard(mu);
  if (failed) {
    if (why) *why = *failed;
    return std::nullopt;
  }
  const std::string cache = cacheDir();
  try {
    std::error_code ec;
    fs::create_directories(cache, ec);
    if (ec) throw std::runtime_error("mkdir " + cache + ": " + ec.message());
    FileLock lock(cache + "/.lock");
    PostfixPackage pkg;
    pkg.root = cache + "/root";
    if (access((pkg.root + "/.dynmx-version").c_str(), R_OK) == 0) {
      pkg.version = trimmed(readFile(pkg.root + "/.dynmx-version"));
    } else {
      pkg.version = fillCache(cache);
    }
    return pkg;
  } catch (const std::exception& e) {
    failed = "Debian's postfix package cannot be had in " + cache + ": " + e.what();
    if (why) *why = *failed;
    return std::nullopt;
  }
}

// ---------------------------------------------------------------------------------------------

TestPostfix::TestPostfix(std::string dir, PostfixPackage pkg, TestPostfixOptions opts)
    : dir_(std::move(dir)), pkg_(std::move(pkg)), opts_(std::move(opts)) {
  for (const std::string& d : {dir_, confDir(), queueDir(), dir_ + "/data"}) {
    std::error_code ec;
    fs::create_directories(d, ec);
    if (ec) throw std::runtime_error("mkdir " + d + ": " + ec.message());
    chmod(d.c_str(), 0755);
  }
  // Ready for postmap and friends before start().
  port_ = freePort();
  copyCommands();
  writeFile(confDir() + "/main.cf", mainCf());
  writeFile(confDir() + "/master.cf", masterCf());
}

TestPostfix::~TestPostfix() {
  stop();
}

std::vector<std::string> TestPostfix::env() const {
  std::vector<std::string> e = pkg_.env();
  e.push_back("MAIL_CONFIG=" + confDir());
  return e;
}

std::string TestPostfix::mainCf() const {
  std::ostringstream o;
  o << "# written by the dynmx test harness\n"
    << "compatibility_level = 3.6\n"
    << "mail_owner = mail\nsetgid_group = news\ndefault_privs = nobody\n"
    << "daemon_directory = " << pkg_.daemonDir() << "\n"
    << "command_directory = " << commandDir() << "\n"
    << "shlib_directory = " << pkg_.libDir() << "\n"
    << "meta_directory = " << pkg_.root << "/etc/postfix\n"
    << "manpage_directory = " << pkg_.root << "/usr/share/man\n"
    << "sample_directory = no\nreadme_directory = no\nhtml_directory = no\n"
    << "sendmail_path = " << sendmailPath() << "\n"
    << "newaliases_path = " << dir_ << "/newaliases\n"
    << "mailq_path = " << dir_ << "/mailq\n"
    << "queue_directory = " << queueDir() << "\n"
    << "data_directory = " << dir_ << "/data\n"
    << "maillog_file = " << logPath() << "\n"
    << "maillog_file_prefixes = " << dir_ << "\n"
    << "import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH="
    << pkg_.libDir()
    << "\n"
    // sendmail(1) runs postdrop, and pipe(8) its commands, with export_environment only.
    << "export_environment = TZ MAIL_CONFIG LANG LD_LIBRARY_PATH=" << pkg_.libDir() << "\n"
    << "myhostname = " << opts_.myhostname << "\n"
    << "mydestination = localhost\n"
    << "local_transport = error:5.1.1 local delivery is off in this test instance\n"
    << "alias_maps =\nalias_database =\nbiff = no\n"
    << "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n"
    << "smtp_host_lookup = native\nsmtp_dns_support_level = disabled\n"
    << "smtpd_banner = $myhostname ESMTP (dynmx test instance)\n";
  if (!opts_.relay_domains.empty()) {
    o << "relay_domains =";
    for (const std::string& d : opts_.relay_domains) o << " " << d;
    o << "\n";
  }
  o << opts_.main_cf;
  return o.str();
}

std::string TestPostfix::masterCf() const {
  // Columns: service type private unpriv chroot wakeup maxproc command. The chroot column is
  // Debian's (y for all but proxymap, local and postlog) when opts_.chroot is set.
  const std::string y = opts_.chroot ? "y" : "n";
  std::ostringstream o;
  o << "# written by the dynmx test harness: private instance\n";
  if (opts_.smtpd) o << "127.0.0.1:" << port_ << " inet n - " << y << " - - smtpd\n";
  o << "pickup    unix  n - " << y << " 60 1 pickup\n"
    << "cleanup   unix  n - " << y << " - 0 cleanup\n"
    << "rewrite   unix  - - " << y << " - - trivial-rewrite\n"
    << "bounce    unix  - - " << y << " - 0 bounce\n"
    << "defer     unix  - - " << y << " - 0 bounce\n"
    << "trace     unix  - - " << y << " - 0 bounce\n"
    << "verify    unix  - - " << y << " - 1 verify\n"
    << "flush     unix  n - " << y << " 1000? 0 flush\n"
    << "proxymap  unix  - - n - - proxymap\n"
    << "showq     unix  n - " << y << " - - showq\n"
    << "error     unix  - - " << y << " - - error\n"
    << "retry     unix  - - " << y << " - - error\n"
    << "discard   unix  - - " << y << " - - discard\n"
    << "anvil     unix  - - " << y << " - 1 anvil\n"
    << "scache    unix  - - " << y << " - 1 scache\n"
    << "postlog   unix-dgram n - n - 1 postlogd\n";
  if (opts_.deliver) {
    o << "qmgr      unix  n - " << y << " 300 1 qmgr\n"
      << "smtp      unix  - - " << y << " - - smtp\n"
      << "relay     unix  - - " << y << " - - smtp\n";
  }
  o << opts_.master_cf;
  return o.str();
}

void TestPostfix::start() {
  std::string out;
  if (run({"postfix", "-c", confDir(), "set-permissions"}, &out) != 0) {
    throw std::runtime_error("postfix set-permissions failed: " + out + "\nlog:\n" + log());
  }
  // set-permissions made postdrop, postqueue and postlog set-gid, and the dynamic linker ignores
  // LD_LIBRARY_PATH in a set-gid program: they could not find libpostfix. The tests run them as
  // root, who needs no set-gid bit to write the maildrop.
  for (const char* p : {"postdrop", "postqueue", "postlog"}) {
    std::string path = commandDir() + "/" + p;
    if (chmod(path.c_str(), 0755) != 0) {
      throw std::runtime_error("chmod " + path + ": " + std::strerror(errno));
    }
  }
  SpawnOptions so;
  so.stdout_path = dir_ + "/master.out";
  so.stderr_path = dir_ + "/master.out";
  so.env = env();
  // The master makes itself a session leader (setsid), which a process group leader cannot.
  so.new_process_group = false;
  proc_ = Process({pkg_.daemonDir() + "/master", "-s", "-c", confDir()}, so);
  bool up = waitFor([&] {
    if (!proc_.running()) return true;
    if (opts_.smtpd) return tcpAccepts(port_);
    return log().find("daemon started") != std::string::npos;
  });
  if (!up || !proc_.running()) {
    throw std::runtime_error("Postfix master did not start (port " + std::to_string(port_) +
                             "); its output:\n" + readFile(dir_ + "/master.out") + "\nlog:\n" +
                             log());
  }
}

void TestPostfix::copyCommands() {
  std::error_code ec;
  fs::create_directories(commandDir(), ec);
  if (ec) throw std::runtime_error("mkdir " + commandDir() + ": " + ec.message());
  for (const std::string& name : listDir(pkg_.commandDir())) {
    fs::copy_file(pkg_.commandDir() + "/" + name, commandDir() + "/" + name,
                  fs::copy_options::overwrite_existing, ec);
    if (ec)
      throw std::runtime_error("copy " + pkg_.commandDir() + "/" + name + ": " + ec.message());
  }
}

void TestPostfix::stop() {
  // The master ends its children on SIGTERM; Process::stop() also kills, by pid, any descendant
  // it found before (a delivery agent in the middle of a pipe command, say).
  if (proc_.pid() > 0) proc_.stop();
}

std::string TestPostfix::log() const {
  return readFile(logPath());
}

bool TestPostfix::waitForLog(const std::string& needle, std::chrono::milliseconds deadline) const {
  return waitFor([&] { return log().find(needle) != std::string::npos; }, deadline);
}

int TestPostfix::run(std::vector<std::string> argv, std::string* out,
                     const std::string& stdin_data) const {
  if (!argv.empty() && argv[0].find('/') == std::string::npos) {
    argv[0] = commandDir() + "/" + argv[0];
  }
  return runWithEnv(argv, env(), "", out, stdin_data);
}

std::vector<PostfixQueued> TestPostfix::queue() const {
  std::vector<PostfixQueued> out;
  for (const char* q : {"maildrop", "incoming", "active", "deferred", "hold"}) {
    std::error_code ec;
    fs::recursive_directory_iterator it(queueDir() + "/" + q, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      if (!it->is_regular_file()) continue;
      PostfixQueued m;
      m.id = it->path().filename().string();
      m.queue = q;
      std::string env_text, content;
      run({"postcat", "-c", confDir(), "-e", it->path().string()}, &env_text);
      run({"postcat", "-c", confDir(), "-h", "-b", it->path().string()}, &content);
      std::istringstream lines(env_text);
      std::string line;
      while (std::getline(lines, line)) {
        if (line.rfind("sender: ", 0) == 0) m.sender = line.substr(8);
        if (line == "sender:") m.sender.clear();
        if (line.rfind("recipient: ", 0) == 0) m.recipients.push_back(line.substr(11));
      }
      m.content = content;
      out.push_back(std::move(m));
    }
  }
  return out;
}

}  // namespace dynmx::test
