// daemon.hpp: start-up and run-time chores of dynmx-milter that are not mail: the listening
// socket, privileges, and reloading the routing on a signal.
//
// Contract: each start-up step returns a StartupFailure naming what failed and the sysexits code
// main() should exit with; nothing here exits by itself. Reload never stops the program: a bad new
// configuration is logged and the running one kept.
#pragma once

#include <optional>
#include <string>

#include "shared/config.hpp"

namespace dynmx::milter {

struct StartupFailure {
  int exit_code;
  std::string message;
};
using StartupStatus = std::optional<StartupFailure>;  // nullopt: done

// For a Unix socket path that already exists: a socket nobody listens on (connect refused) is
// removed; a live one, or anything that is not a socket, is an error (another instance runs, or
// the path is wrong). Inet sockets: nothing to do. The probe is dynmx::clearStaleSocket.
StartupStatus clearStaleSocket(const SocketSpec& spec);

// smfi_setconn + smfi_opensocket under umask 077, then chmod socket_mode and chgrp socket_group
// (Unix sockets). Errors name the socket.
StartupStatus openListeningSocket(const MilterConfig& milter);

// dynmx::dropPrivileges to milter.user (no-op when empty): exit 78 for an unknown user, 71 when
// a call fails or root could be regained.
StartupStatus dropPrivileges(const std::string& user);

// Loads `path` again and, when valid, swaps in the new snapshot (setSnapshot) with every
// restart-only key kept as running (planReload), and logs what was taken and what waits for a
// restart. Returns false and logs every error when the new file is bad; the running one stays.
bool reloadConfig(const std::string& path);

// Blocks SIGUSR1 in the calling thread (call before any thread exists, so all threads inherit
// it) and starts a thread that reloads on every SIGUSR1. SIGHUP cannot be used: libmilter's own
// signal thread takes SIGHUP, SIGTERM and SIGINT and stops the filter on them.
void startReloadThread(const std::string& path);

}  // namespace dynmx::milter
