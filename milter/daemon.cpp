// daemon.cpp: socket, privileges and reload for dynmx-milter (see daemon.hpp).
//
// The socket is opened early (smfi_opensocket) so that a bad path or a busy port is reported at
// start-up, by the root process, before privileges are dropped. It is created under umask 077 so
// that it is never reachable with looser permissions than configured, even for an instant.
#include "milter/daemon.hpp"

#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <libmilter/mfapi.h>
#include <memory>
#include <thread>

#include "milter/filter.hpp"
#include "shared/log.hpp"
#include "shared/privileges.hpp"
#include "shared/result.hpp"
#include "shared/stale_socket.hpp"
#include "shared/sysexits.hpp"

namespace dynmx::milter {

StartupStatus clearStaleSocket(const SocketSpec& spec) {
  if (spec.kind != SocketSpec::Kind::Unix) return std::nullopt;
  Status st =
      dynmx::clearStaleSocket(spec.path, "socket " + spec.path, "dynmx-milter (or another filter)");
  if (!st) return StartupFailure{kExitCantCreat, st.error().message};
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
  auto failed = dynmx::dropPrivileges(user, "milter.user");
  if (!failed) return std::nullopt;
  return StartupFailure{failed->unknown_user ? kExitConfig : kExitOsErr, failed->message};
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
  std::optional<ReloadPlan> plan;
  if (running) {
    // What was fixed at start-up stays as it was, so that the snapshot tells the truth.
    plan = planReload(running->config, std::move(next), ConfigRole::Milter);
    next = std::move(plan->config);
  }
  size_t clients = next.clients.size();
  setSnapshot(std::make_shared<const Snapshot>(std::move(next)));
  logf(LogLevel::Notice, "reload: configuration %s loaded, %zu client(s)", path.c_str(), clients);
  if (plan) {
    logf(LogLevel::Notice, "reload: taken: %s",
         plan->taken.empty() ? "no change" : joinKeys(plan->taken).c_str());
    if (!plan->waiting.empty())
      logf(LogLevel::Warning, "reload: changed, kept as running until a restart: %s",
           joinKeys(plan->waiting).c_str());
  }
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
