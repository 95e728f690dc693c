// harness.cpp: temp dirs, free ports, processes killed by pid, waiting with deadlines.
//
// Everything a test starts is stopped by its pid (and its descendants, found in /proc, by theirs),
// also when the test fails: the destructors do it. Setup failures throw std::runtime_error.
#include "tests/harness/harness.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace dynmx::test {

std::string binDir() {
  if (const char* e = std::getenv("DYNMX_BIN_DIR")) return e;
  return DYNMX_BIN_DIR;
}

TempDir::TempDir(const std::string& prefix, const std::string& parent) {
  std::string tmpl = parent + "/" + prefix + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp " + tmpl + ": " + strerror(errno));
  path_ = buf.data();
  chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
  if (std::getenv("DYNMX_KEEP_TMP")) return;
  std::error_code ec;
  // A test may have taken the owner's rights away (a read-only spool) and need not run as root.
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::add, ec);
  std::filesystem::remove_all(path_, ec);
}

uint16_t freePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int e = errno;
    close(fd);
    throw std::runtime_error(std::string("bind: ") + strerror(e));
  }
  socklen_t len = sizeof sa;
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  close(fd);
  return ntohs(sa.sin_port);
}

static void redirect(const std::string& path, int target, int flags) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) _exit(127);
  dup2(fd, target);
}

Process::Process(std::vector<std::string> argv, SpawnOptions opts) {
  if (argv.empty()) throw std::runtime_error("Process: empty argv");
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  for (auto& e : opts.env) {  // replaces a variable of the same name
    std::string name = e.substr(0, e.find('=') + 1);
    bool replaced = false;
    for (auto& cur : envs) {
      if (cur.compare(0, name.size(), name) == 0) {
        cur = e;
        replaced = true;
      }
    }
    if (!replaced) envs.push_back(e);
  }
  std::vector<char*> cenv;
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + strerror(errno));
  if (pid == 0) {
    if (opts.new_process_group) setpgid(0, 0);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    redirect(opts.stdin_path.empty() ? "/dev/null" : opts.stdin_path, 0, O_RDONLY);
    if (!opts.stdout_path.empty()) redirect(opts.stdout_path, 1, O_WRONLY | O_CREAT | O_APPEND);
    if (!opts.stderr_path.empty()) redirect(opts.stderr_path, 2, O_WRONLY | O_CREAT | O_APPEND);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  pid_ = pid;
}

Process::~Process() {
  stop();
}

Process::Process(Process&& o) noexcept : pid_(o.pid_), status_(o.status_) {
  o.pid_ = -1;
}

Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    stop();
    pid_ = o.pid_;
    status_ = o.status_;
    o.pid_ = -1;
  }
  return *this;
}

bool Process::running() {
  if (pid_ <= 0 || status_) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = st;
    return false;
  }
  return true;
}

void Process::signal(int sig) {
  if (pid_ > 0 && !status_) kill(pid_, sig);
}

std::optional<int> Process::wait(std::chrono::milliseconds deadline) {
  if (pid_ <= 0) return status_;
  waitFor([&] { return !running(); }, deadline, std::chrono::milliseconds(10));
  return status_;
}

std::vector<pid_t> descendants(pid_t root) {
  std::map<pid_t, std::vector<pid_t>> children;
  DIR* d = opendir("/proc");
  if (!d) return {};
  while (dirent* e = readdir(d)) {
    pid_t p = static_cast<pid_t>(atoi(e->d_name));
    if (p <= 0) continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    auto rp = line.rfind(')');
    if (rp == std::string::npos) continue;
    std::istringstream rest(line.substr(rp + 2));
    char state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    children[ppid].push_back(p);
  }
  closedir(d);
  std::vector<pid_t> out, todo{root};
  while (!todo.empty()) {
    pid_t p = todo.back();
    todo.pop_back();
    for (pid_t c : children[p]) {
      out.push_back(c);
      todo.push_back(c);
    }
  }
  return out;
}

void Process::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return;
  if (running()) {
    auto kids = descendants(pid_);
    kill(pid_, SIGTERM);
    if (!wait(grace)) {
      kill(pid_, SIGKILL);
      wait(std::chrono::seconds(30));
    }
    // Descendants that outlived their parent (sshd's per-connection children run in their own
    // session): stop them by pid too.
    for (pid_t k : kids) kill(k, SIGKILL);
  }
  pid_ = -1;
}

int runCommand(const std::vector<std::string>& argv, std::string* out,
               const std::string& stdin_data) {
  int inpipe[2], outpipe[2];
  if (pipe2(inpipe, O_CLOEXEC) != 0 || pipe2(outpipe, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe");
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    dup2(inpipe[0], 0);
    if (out) dup2(outpipe[1], 1);
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
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
  while ((n = read(outpipe[0], buf, sizeof buf)) > 0)
    if (out) out->append(buf, static_cast<size_t>(n));
  close(outpipe[0]);
  writer.join();
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool waitFor(const std::function<bool()>& pred, std::chrono::milliseconds deadline,
             std::chrono::milliseconds step) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (true) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= end) return pred();
    std::this_thread::sleep_for(step);
  }
}

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, const std::string& data, mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + strerror(errno));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n <= 0) {
      close(fd);
      throw std::runtime_error("write " + path);
    }
    off += static_cast<size_t>(n);
  }
  fchmod(fd, mode);
  close(fd);
}

std::vector<std::string> listDir(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = opendir(path.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

long procStatusKb(pid_t pid, const std::string& key) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::atol(line.c_str() + key.size() + 1);
  }
  return -1;
}

}  // namespace dynmx::test
