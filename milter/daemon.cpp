// daemon.cpp: socket, privileges and reload for dynmx-milter (see daemon.hpp).
//
// The socket is opened early (smfi_opensocket) so that a bad path or a busy port is reported at
// start-up, by the root process, before privileges are dropped. It is created under umask 077 so
// that it is never reachable with looser permissions than configured, even for an instant.
#include "milter/daemon.hpp"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <libmilter/mfapi.h>
#include <memory>
#include <thread>

#include "milter/filter.hpp"
#include "shared/log.hpp"
#include "shared/sysexits.hpp"

namespace dynmx::milter {

namespace {
std::string errnoText(int err) {
  return std::strerror(err);
}
}  // namespace

StartupStatus clearStaleSocket(const SocketSpec& spec) {
  if (spec.kind != SocketSpec::Kind::Unix) return std::nullopt;
  struct stat st {};
  if (lstat(spec.path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) return std::nullopt;
    return StartupFailure{kExitCantCreat, "socket " + spec.path + ": " + errnoText(err)};
  }
  if (!S_ISSOCK(st.st_mode)) {
    return StartupFailure{kExitCantCreat, "socket " + spec.path +
                                              " exists and is not a socket; refusing to remove it"};
  }
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (spec.path.size() >= sizeof sa.sun_path) {
    return StartupFailure{kExitConfig, "socket path " + spec.path + " is too long"};
  }
  std::memcpy(sa.sun_path, spec.path.c_str(), spec.path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    return StartupFailure{kExitOsErr, "socket(AF_UNIX): " + errnoText(err)};
  }
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int err = errno;
  close(fd);
  if (rc == 0) {
    return StartupFailure{kExitCantCreat, "socket " + spec.path +
                                              " is in use: another dynmx-milter (or another "
                                              "filter) is listening on it; not starting"};
  }
  if (err != ECONNREFUSED) {
    return StartupFailure{
        kExitCantCreat,
        "socket " + spec.path + ": cannot tell whether it is stale: connect: " + errnoText(err)};
  }
  if (unlink(spec.path.c_str()) != 0 && errno != ENOENT) {
    int uerr = errno;
    return StartupFailure{kExitCantCreat,
                          "stale socket " + spec.path + ": unlink: " + errnoText(uerr)};
  }
  logf(LogLevel::Notice, "removed stale socket %s (nobody was listening)", spec.path.c_str());
  return std::nullopt;
}

StartupStatus openListeningSocket(const MilterConfig& milter) {
  const SocketSpec& spec = milter.socket;
  std::string conn = spec.text;
  if (smfi_setconn(conn.data()) != MI_SUCCESS) {
    return StartupFailure{kExitConfig, "milter socket " + spec.text + ": smfi_setconn failed"};
  }
  mode_t old = umask(077);
  errno = 0;
  int rc = smfi_opensocket(false);
  int err = errno;
  umask(old);
  if (rc != MI_SUCCESS) {
    return StartupFailure{kExitCantCreat, "cannot listen on milter socket " + spec.text +
                                              (err ? ": " + errnoText(err) : std::string())};
  }
  if (spec.kind != SocketSpec::Kind::Unix) return std::nullopt;
  if (chmod(spec.path.c_str(), milter.socket_mode) != 0) {
    err = errno;
    return StartupFailure{kExitCantCreat, "chmod " + spec.path + ": " + errnoText(err)};
  }
  if (!milter.socket_group.empty()) {
    struct group* gr = getgrnam(milter.socket_group.c_str());
    if (!gr) {
      return StartupFailure{kExitConfig,
                            "milter.socket_group: no group named " + milter.socket_group};
    }
    if (chown(spec.path.c_str(), static_cast<uid_t>(-1), gr->gr_gid) != 0) {
      err = errno;
      return StartupFailure{
          kExitCantCreat, "chgrp " + milter.socket_group + " " + spec.path + ": " + errnoText(err)};
    }
  }
  return std::nullopt;
}

StartupStatus dropPrivileges(const std::string& user) {
  if (user.empty()) return std::nullopt;
  struct passwd* pw = getpwnam(user.c_str());
  if (!pw) return StartupFailure{kExitConfig, "milter.user: no user named " + user};
  if (geteuid() == pw->pw_uid) return std::nullopt;
  if (initgroups(pw->pw_name, pw->pw_gid) != 0) {
    int err = errno;
    return StartupFailure{kExitOsErr, "initgroups(" + user + "): " + errnoText(err)};
  }
  if (setgid(pw->pw_gid) != 0) {
    int err = errno;
    return StartupFailure{kExitOsErr,
                          "setgid(" + std::to_string(pw->pw_gid) + "): " + errnoText(err)};
  }
  if (setuid(pw->pw_uid) != 0) {
    int err = errno;
    return StartupFailure{kExitOsErr, "setuid(" + user + "): " + errnoText(err)};
  }
  if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
    return StartupFailure{kExitOsErr, "privileges could not be dropped to " + user};
  }
  return std::nullopt;
}

bool reloadConfig(const std::string& path) {
  LoadResult r = loadConfig(path, ConfigRole::Milter);
  if (!r.config) {
    for (const ConfigError& e : r.errors) {
      logf(LogLevel::Error, "reload: %s", e.str().c_str());
    }
    logf(LogLevel::Error, "reload: %s has %zu error(s); keeping the running configuration",
         path.c_str(), r.errors.size());
    return false;
  }
  std::shared_ptr<const Snapshot> running = currentSnapshot();
  Config next = std::move(*r.config);
  if (running) {
    for (const std::string& key : restartOnlyDifferences(running->config, next)) {
      logf(LogLevel::Warning, "reload: %s changed; it takes effect only after a restart",
           key.c_str());
    }
    // What was fixed at start-up stays as it was, so that the snapshot tells the truth.
    next.spool.dir = running->config.spool.dir;
    next.milter.socket = running->config.milter.socket;
    next.milter.socket_mode = running->config.milter.socket_mode;
    next.milter.socket_group = running->config.milter.socket_group;
    next.milter.user = running->config.milter.user;
  }
  size_t clients = next.clients.size();
  setSnapshot(std::make_shared<const Snapshot>(std::move(next)));
  logf(LogLevel::Notice, "reload: configuration %s loaded, %zu client(s)", path.c_str(), clients);
  return true;
}

void startReloadThread(const std::string& path) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([path, set]() {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      if (sig == SIGUSR1) {
        try {
          reloadConfig(path);
        } catch (const std::exception& e) {
          logf(LogLevel::Error, "reload: %s; keeping the running configuration", e.what());
        }
      }
    }
  }).detach();
}

}  // namespace dynmx::milter
