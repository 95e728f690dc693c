// relaymap_process.cpp: the daemon's side of dynmx-relaymap (see relaymap_process.hpp).
//
// The child is spawned with fork+exec and only async-signal-safe calls between the two: argv and
// descriptors are prepared before fork. Both descriptors are first duplicated above 10 so that
// moving them to 3 and 4 cannot overwrite one with the other.
#include "tunneld/relay/relaymap_process.hpp"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "shared/log.hpp"

namespace dynmx::relay {
namespace {

constexpr auto kStableAfter = std::chrono::minutes(1);

std::string describeStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "ended (wait status " + std::to_string(status) + ")";
}

[[noreturn]] void execChild(int listen_fd, int feed_fd, int devnull, char* const* argv) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD}) sigaction(sig, &dfl, nullptr);
  int l = fcntl(listen_fd, F_DUPFD_CLOEXEC, 10);  // these copies go at exec; 3 and 4 stay
  int f = fcntl(feed_fd, F_DUPFD_CLOEXEC, 10);
  if (l < 0 || f < 0 || dup2(l, 3) != 3 || dup2(f, 4) != 4 || dup2(devnull, 0) != 0 ||
      dup2(devnull, 1) != 1) {
    _exit(127);
  }
  execv(argv[0], argv);
  _exit(127);
}

}  // namespace

Result<UniqueFd> openRelaySocket(const std::string& path, mode_t mode, const std::string& group) {
  const std::string what = "relay socket " + path;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sa.sun_path) return Error{0, what + ": bad path"};
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Error{0, what + ": exists and is not a socket; not touching it"};
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int rc = connect(probe.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    int e = errno;
    if (rc == 0) return Error{0, what + ": something is listening on it already"};
    if (e != ECONNREFUSED && e != ENOENT)
      return sysError(e, what + ": cannot tell whether it is in use");
    if (unlink(path.c_str()) != 0 && errno != ENOENT)
      return sysError(errno, what + ": removing the stale socket");
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return sysError(errno, what + ": socket");
  mode_t old = umask(077);
  int rc = bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int e = errno;
  umask(old);
  if (rc != 0) return sysError(e, what + ": bind");
  auto undo = [&](Error err) {
    unlink(path.c_str());
    return err;
  };
  if (listen(fd.get(), 128) != 0) return undo(sysError(errno, what + ": listen"));
  if (!group.empty()) {
    struct group* g = getgrnam(group.c_str());
    if (!g) return undo(Error{0, "relay socket_group " + group + ": no such group"});
    if (chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
      return undo(sysError(errno, what + ": chgrp " + group));
    }
  }
  if (chmod(path.c_str(), mode) != 0) return undo(sysError(errno, what + ": chmod"));
  return fd;
}

Result<std::unique_ptr<RelayMapProcess>> RelayMapProcess::open(RelayMapProcessConfig cfg,
                                                               const TimeSource& time) {
  Result<UniqueFd> sock = openRelaySocket(cfg.socket_path, cfg.socket_mode, cfg.socket_group);
  if (!sock) return sock.error();
  return std::unique_ptr<RelayMapProcess>(
      new RelayMapProcess(std::move(cfg), time, std::move(sock.value())));
}

RelayMapProcess::~RelayMapProcess() {
  stop();
}

Status RelayMapProcess::start() {
  if (pid_ > 0) return {};
  if (!listen_) {
    // A fresh socket per child: the old one went with the old child, so that while no child
    // listens the MTA's connect is refused at once instead of waiting in a dead backlog.
    Result<UniqueFd> sock = openRelaySocket(cfg_.socket_path, cfg_.socket_mode, cfg_.socket_group);
    if (!sock) return sock.error();
    listen_ = std::move(sock.value());
  }
  socket_made_ = true;
  stopped_ = false;
  restart_at_.reset();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return sysError(errno, "relaymap feed socketpair");
  }
  UniqueFd ours(sv[0]);
  UniqueFd theirs(sv[1]);
  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!devnull) return sysError(errno, "open /dev/null");
  std::vector<std::string> args = {cfg_.program, "--listen-fd", "3", "--feed-fd", "4"};
  if (!cfg_.user.empty()) args.insert(args.end(), {"--user", cfg_.user});
  if (cfg_.allow_unsandboxed) args.emplace_back("--allow-unsandboxed");
  if (cfg_.log_to_stderr) args.emplace_back("--stderr");
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return sysError(errno, "fork for " + cfg_.program);
  if (pid == 0) execChild(listen_.get(), theirs.get(), devnull.get(), argv.data());
  listen_.reset();  // the child's now
  pid_ = pid;
  started_ = time_.steady();
  fcntl(ours.get(), F_SETFL, fcntl(ours.get(), F_GETFL) | O_NONBLOCK);
  feed_ = std::move(ours);
  out_ = latest_;
  newer_ = false;
  logf(LogLevel::Info, "relaymap: started %s, pid %d, on %s", cfg_.program.c_str(),
       static_cast<int>(pid), cfg_.socket_path.c_str());
  return flush();
}

void RelayMapProcess::setLeases(const std::vector<FeedLease>& leases) {
  size_t skipped = 0;
  latest_ = formatSnapshot(leases, &skipped);
  if (skipped > 0) {
    logf(LogLevel::Error, "relaymap: %zu leases with a client name the feed cannot carry left out",
         skipped);
  }
  if (out_.empty()) {
    out_ = latest_;
  } else {
    newer_ = true;
  }
}

Status RelayMapProcess::flush() {
  while (feed_ && !out_.empty()) {
    ssize_t n = send(feed_.get(), out_.data(), out_.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return {};
    if (n < 0) {
      int e = errno;
      feed_.reset();  // the child is gone or going: check() restarts it with latest_
      out_.clear();
      return sysError(e, "relaymap feed to pid " + std::to_string(pid_));
    }
    out_.erase(0, static_cast<size_t>(n));
    if (out_.empty() && newer_) {
      out_ = latest_;
      newer_ = false;
    }
  }
  return {};
}

void RelayMapProcess::childEnded(int status) {
  logf(LogLevel::Error, "relaymap: pid %d %s; relay lookups fail until it is restarted",
       static_cast<int>(pid_), describeStatus(status).c_str());
  pid_ = -1;
  feed_.reset();
  out_.clear();
  SteadyClock::time_point now = time_.steady();
  if (now - started_ >= kStableAfter) delay_ = cfg_.restart_delay;
  restart_at_ = now + delay_;
  delay_ = std::min(delay_ * 2, cfg_.max_restart_delay);
}

void RelayMapProcess::check() {
  if (pid_ > 0) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) childEnded(status);
  }
  if (pid_ < 0 && !stopped_ && restart_at_ && time_.steady() >= *restart_at_) {
    if (Status s = start(); !s) {
      logf(LogLevel::Error, "relaymap: restart: %s", s.error().message.c_str());
      if (pid_ < 0) restart_at_ = time_.steady() + delay_;
    }
  }
}

void RelayMapProcess::stop(std::chrono::milliseconds grace) {
  stopped_ = true;
  restart_at_.reset();
  feed_.reset();
  out_.clear();
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    auto deadline = SteadyClock::now() + grace;
    pid_t r = 0;
    while ((r = waitpid(pid_, &status, WNOHANG)) == 0 && SteadyClock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (r == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
  }
  listen_.reset();
  if (socket_made_) unlink(cfg_.socket_path.c_str());
  socket_made_ = false;
}

}  // namespace dynmx::relay
