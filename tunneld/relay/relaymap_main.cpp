// relaymap_main.cpp: dynmx-relaymap, the socketmap server that tells the MTA which client
// addresses may relay. Started by dynmx-tunneld, never by hand; see dynmx-relaymap(8).
//
// Contract: argv only:
//   dynmx-relaymap --listen-fd N --feed-fd N [--user NAME] [--allow-unsandboxed] [--stderr]
//                  [--max-connections N] [--idle-timeout SECONDS]
// N are inherited descriptors: a listening unix stream socket, and one end of a socketpair over
// which dynmx-tunneld writes lease snapshots (relay_feed.hpp). Before reading any input the
// program closes every other descriptor, sets no-new-privileges, drops root for --user, and
// denies itself all filesystem access (sandbox.hpp). It then serves until the feed ends.
//
// Failure: bad arguments exit EX_USAGE; a sandbox that cannot be had exits EX_OSERR (fail
// closed: the MTA's lookups then fail and would-be relays get a 4xx); the feed's end exits 0, a
// malformed feed EX_SOFTWARE.
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <string_view>

#include "shared/clock.hpp"
#include "shared/log.hpp"
#include "shared/sysexits.hpp"
#include "shared/version.hpp"
#include "tunneld/relay/relaymap_server.hpp"
#include "tunneld/relay/sandbox.hpp"

namespace {

struct Args {
  int listen_fd = -1;
  int feed_fd = -1;
  std::string user;
  bool allow_unsandboxed = false;
  bool to_stderr = false;
  dynmx::relay::RelayMapLimits limits;
};

bool parseNumber(const char* s, long min, long max, long& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtol(s, &end, 10);
  return errno == 0 && end != s && *end == '\0' && out >= min && out <= max;
}

bool parseArgs(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    std::string_view opt = argv[i];
    long n = 0;
    if (opt == "--allow-unsandboxed") {
      a.allow_unsandboxed = true;
    } else if (opt == "--stderr") {
      a.to_stderr = true;
    } else if (i + 1 >= argc) {
      return false;
    } else if (opt == "--user") {
      a.user = argv[++i];
    } else if (opt == "--listen-fd" && parseNumber(argv[++i], 3, 1 << 20, n)) {
      a.listen_fd = static_cast<int>(n);
    } else if (opt == "--feed-fd" && parseNumber(argv[++i], 3, 1 << 20, n)) {
      a.feed_fd = static_cast<int>(n);
    } else if (opt == "--max-connections" && parseNumber(argv[++i], 1, 100000, n)) {
      a.limits.max_connections = static_cast<size_t>(n);
    } else if (opt == "--idle-timeout" && parseNumber(argv[++i], 1, 86400, n)) {
      a.limits.idle_timeout = std::chrono::seconds(n);
    } else {
      return false;
    }
  }
  return a.listen_fd >= 0 && a.feed_fd >= 0 && a.listen_fd != a.feed_fd;
}

bool isStreamSocket(int fd, bool listening) {
  struct stat st;
  int type = 0;
  int acc = 0;
  socklen_t len = sizeof type;
  socklen_t alen = sizeof acc;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
         getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM &&
         getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) == 0 && (acc != 0) == listening;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dynmx;
  Args a;
  constexpr const char* kUsage =
      "usage: dynmx-relaymap --listen-fd N --feed-fd N [--user NAME] "
      "[--allow-unsandboxed] [--stderr] [--max-connections N] [--idle-timeout S]\n"
      "       (started by dynmx-tunneld, not by hand; see dynmx-relaymap(8))\n";
  if (argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  if (argc == 2 && std::string_view(argv[1]) == "--version") {
    printVersion("dynmx-relaymap");
    return kExitOk;
  }
  if (!parseArgs(argc, argv, a)) {
    std::fputs(kUsage, stderr);
    return kExitUsage;
  }
  // Nothing inherited but what we serve on; then the log (its socket opens now, before the
  // filesystem is gone), the time zone for stderr time stamps, and the sandbox.
  if (Status s = relay::closeOtherDescriptors({a.listen_fd, a.feed_fd}); !s) {
    std::fprintf(stderr, "dynmx-relaymap: %s\n", s.error().message.c_str());
    return kExitOsErr;
  }
  logInit("dynmx-relaymap", a.to_stderr);
  tzset();
  if (!isStreamSocket(a.listen_fd, true) || !isStreamSocket(a.feed_fd, false)) {
    logf(LogLevel::Error,
         "relaymap: fd %d must be a listening stream socket and fd %d a "
         "connected one (the feed); stopping",
         a.listen_fd, a.feed_fd);
    return kExitUsage;
  }
  Result<std::string> sb =
      relay::enterSandbox({.user = a.user, .allow_unsandboxed = a.allow_unsandboxed});
  if (!sb) {
    logf(LogLevel::Critical,
         "relaymap: sandbox: %s; refusing to serve (relay lookups fail "
         "closed)",
         sb.error().message.c_str());
    return kExitOsErr;
  }
  bool unconfined = sb->find("NO ") != std::string::npos;
  logf(unconfined ? LogLevel::Warning : LogLevel::Info, "relaymap: serving; sandbox: %s",
       sb->c_str());
  return relay::serveRelayMap(a.listen_fd, a.feed_fd, a.limits, systemTime());
}
