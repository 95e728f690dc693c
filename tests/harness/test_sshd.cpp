// test_sshd.cpp: a real sshd on loopback for integration tests (see test_sshd.hpp).
//
// start() waits (generously) until sshd answers with its "SSH-2.0" banner; if the port was taken
// in the meantime it picks another and tries again, a few times, then throws with sshd's log tail.
#include "tests/harness/test_sshd.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace dynmx::test {

KeyPair generateKey(const std::string& path, const std::string& type) {
  unlink(path.c_str());
  unlink((path + ".pub").c_str());
  std::vector<std::string> argv{
      "/usr/bin/ssh-keygen", "-q", "-t", type, "-N", "", "-C", "", "-f", path};
  if (type == "ecdsa") argv.insert(argv.begin() + 4, {"-b", "256"});
  std::string out;
  if (runCommand(argv, &out) != 0) throw std::runtime_error("ssh-keygen failed for " + path);
  KeyPair k;
  k.private_path = path;
  std::string pub = readFile(path + ".pub");
  while (!pub.empty() && (pub.back() == '\n' || pub.back() == ' ')) pub.pop_back();
  auto sp1 = pub.find(' ');
  auto sp2 = pub.find(' ', sp1 + 1);
  k.public_line = sp2 == std::string::npos ? pub : pub.substr(0, sp2);
  chmod(path.c_str(), 0600);
  return k;
}

TestSshd::TestSshd(const std::string& dir) : dir_(dir) {
  passwd* pw = getpwuid(getuid());
  if (!pw) throw std::runtime_error("getpwuid failed");
  user_ = pw->pw_name;
  host_key_ = generateKey(dir_ + "/ssh_host_ed25519_key");
  original_host_key_ = host_key_;
  writeFile(dir_ + "/authorized_keys", "", 0600);
  mkdir("/run/sshd", 0755);
}

TestSshd::~TestSshd() {
  stop();
}

void TestSshd::authorize(const KeyPair& key, const std::string& command) {
  std::string esc;
  for (char c : command) {
    if (c == '"' || c == '\\') esc += '\\';
    esc += c;
  }
  authorized_ += "command=\"" + esc + "\",restrict " + key.public_line + "\n";
  writeFile(dir_ + "/authorized_keys", authorized_, 0600);
}

void TestSshd::revokeAll() {
  authorized_.clear();
  writeFile(dir_ + "/authorized_keys", authorized_, 0600);
}

void TestSshd::authorizeLine(const std::string& line) {
  authorized_ += line + "\n";
  writeFile(dir_ + "/authorized_keys", authorized_, 0600);
}

KeyPair TestSshd::newClientKey(const std::string& name, const std::string& command,
                               const std::string& type) {
  KeyPair k = generateKey(dir_ + "/" + name, type);
  authorize(k, command);
  return k;
}

void TestSshd::writeConfig() {
  std::string cfg;
  cfg += "ListenAddress " + hostPort() + "\n";
  cfg += "HostKey " + host_key_.private_path + "\n";
  cfg += "AuthorizedKeysFile " + dir_ + "/authorized_keys\n";
  cfg += "PidFile " + dir_ + "/sshd.pid\n";
  cfg += "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n";
  cfg += "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n";
  cfg += "LogLevel DEBUG1\nMaxStartups 400:30:600\nUseDNS no\n";
  cfg += "MaxSessions " + std::to_string(max_sessions_) + "\n";
  cfg += "PrintMotd no\nClientAliveInterval 0\n";
  writeFile(dir_ + "/sshd_config", cfg, 0600);
}

std::string TestSshd::hostPort() const {
  return "[" + address_ + "]:" + std::to_string(port_);
}

bool TestSshd::accepting() {
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* ai = nullptr;
  if (getaddrinfo(address_.c_str(), std::to_string(port_).c_str(), &hints, &ai) != 0) return false;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool ok = false;
  int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
  freeaddrinfo(ai);
  if (rc == 0) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 5000) == 1) {
      char buf[8] = {};
      ok = recv(fd, buf, 4, 0) == 4 && memcmp(buf, "SSH-", 4) == 0;
    }
  }
  close(fd);
  return ok;
}

void TestSshd::start() {
  bool fixed_port = port_ != 0;
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (!fixed_port) port_ = freePort();
    writeConfig();
    proc_ = std::make_unique<Process>(std::vector<std::string>{
        "/usr/sbin/sshd", "-D", "-f", dir_ + "/sshd_config", "-E", logPath()});
    bool up = waitFor([&] { return !proc_->running() || accepting(); }, std::chrono::seconds(30),
                      std::chrono::milliseconds(20));
    if (up && proc_->running()) return;
    proc_.reset();
    if (fixed_port) {
      // The old listener may linger for a moment: wait and retry on the same port.
      waitFor([] { return false; }, std::chrono::milliseconds(500));
    }
  }
  std::string log = readFile(logPath());
  if (log.size() > 2000) log = log.substr(log.size() - 2000);
  throw std::runtime_error("sshd did not start on " + hostPort() + ": " + log);
}

void TestSshd::stop() {
  if (proc_) proc_->stop();
  proc_.reset();
}

bool TestSshd::running() {
  return proc_ && proc_->running();
}

void TestSshd::restartWithHostKey(const KeyPair& host_key) {
  stop();
  host_key_ = host_key;
  start();
}

std::string TestSshd::knownHostsLine() const {
  return hostPort() + " " + host_key_.public_line;
}

}  // namespace dynmx::test
