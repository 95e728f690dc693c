// main.cpp: dynmx-milter, the libmilter filter that captures mail for dynmx clients.
//
// Wiring only: options, configuration, socket, privileges, then smfi_main(). Every start-up
// failure is reported with what failed (on stderr and in the log) and a sysexits code.
//
// Stopping: libmilter alone takes up to 5 s: its accept loop holds a lock across a poll() of 5 s
// (MI_CHK_TIME in its sources), and smfi_stop(), like its own signal thread, needs that lock to
// close the socket. So smfi_main() runs in a thread of its own and the main thread waits for
// SIGTERM, SIGINT and SIGHUP itself (Linux hands a signal sent to the process to the main thread
// first when it waits for it). On one it starts smfi_stop() in a thread of its own, closes the
// callbacks' gate (new callbacks tempfail), lets the running callbacks finish (an end of message
// completes its spool commit), removes the temporary files of messages still in their DATA and
// the Unix socket, logs "stopped" and exits 0 without waiting for libmilter's loop; the MTA sees
// its connection close and retries. Should libmilter's thread take the signal instead,
// smfi_main() returns when its loop ends and the same steps follow: slower, never unsafe.
//   dynmx-milter [-c FILE] [-f] [--check-config]
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <libmilter/mfapi.h>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "milter/daemon.hpp"
#include "milter/filter.hpp"
#include "shared/config.hpp"
#include "shared/log.hpp"
#include "shared/spool.hpp"
#include "shared/sysexits.hpp"
#include "shared/version.hpp"

namespace {

void usage(std::FILE* to) {
  std::fprintf(to,
               "usage: dynmx-milter [-c FILE] [-f] [--check-config]\n"
               "  -c, --config FILE   configuration (default %s)\n"
               "  -f, --foreground    stay in the foreground and log to stderr\n"
               "      --check-config  check the configuration, print \"config OK\" or the errors\n"
               "  -h, --help          this text\n"
               "      --version       the version\n",
               dynmx::kDefaultConfigPath);
}

int fail(bool foreground, int code, const std::string& msg) {
  dynmx::logf(dynmx::LogLevel::Critical, "%s", msg.c_str());
  if (!foreground) std::fprintf(stderr, "dynmx-milter: %s\n", msg.c_str());
  return code;
}

struct Options {
  std::string path = dynmx::kDefaultConfigPath;
  bool foreground = false;
  bool check = false;
};

// Fills `o` from argv; returns an exit status when the program is done (help, usage error).
std::optional<int> parseOptions(int argc, char** argv, Options& o) {
  static const option kLong[] = {{"config", required_argument, nullptr, 'c'},
                                 {"foreground", no_argument, nullptr, 'f'},
                                 {"check-config", no_argument, nullptr, 'C'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {"version", no_argument, nullptr, 'V'},
                                 {nullptr, 0, nullptr, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "c:fh", kLong, nullptr)) != -1) {
    switch (opt) {
      case 'c':
        o.path = optarg;
        break;
      case 'f':
        o.foreground = true;
        break;
      case 'C':
        o.check = true;
        break;
      case 'h':
        usage(stdout);
        return dynmx::kExitOk;
      case 'V':
        dynmx::printVersion("dynmx-milter");
        return dynmx::kExitOk;
      default:
        usage(stderr);
        return dynmx::kExitUsage;
    }
  }
  if (optind != argc) {
    std::fprintf(stderr, "dynmx-milter: unexpected argument %s\n", argv[optind]);
    usage(stderr);
    return dynmx::kExitUsage;
  }
  return std::nullopt;
}

// Socket, privileges, spool directories, daemon(3): every step that can stop the start.
int startUp(const dynmx::Config& cfg, dynmx::Spool& spool, bool foreground) {
  using namespace dynmx;
  if (smfi_register(milter::filterDescription()) != MI_SUCCESS) {
    return fail(foreground, kExitSoftware, "smfi_register failed");
  }
  if (auto f = milter::clearStaleSocket(cfg.milter.socket)) {
    return fail(foreground, f->exit_code, f->message);
  }
  if (auto f = milter::openListeningSocket(cfg.milter)) {
    return fail(foreground, f->exit_code, f->message);
  }
  if (auto f = milter::dropPrivileges(cfg.milter.user)) {
    return fail(foreground, f->exit_code, f->message);
  }
  // The state directories may not exist yet when the milter starts before dynmx-tunneld ever ran.
  if (Status st = spool.prepareExisting(); !st) {
    return fail(foreground, kExitCantCreat, "spool: " + st.error().message);
  }
  if (!foreground && daemon(0, 0) != 0) {
    int err = errno;
    return fail(foreground, kExitOsErr, std::string("daemon: ") + std::strerror(err));
  }
  return kExitOk;
}

// How long the stop waits for running callbacks before it says so in the log (it keeps waiting:
// cutting a spool commit short would leave a half-written temporary file).
constexpr auto kStopPatience = std::chrono::milliseconds(800);

// Runs smfi_main() in its own thread and waits in this one for a stopping signal (or for
// smfi_main() to return by itself, which it announces with SIGTERM to this thread). Never returns.
[[noreturn]] void runUntilStopped(const sigset_t& stop_signals, const std::string& socket_path) {
  using namespace dynmx;
  static std::atomic<int> rc{MI_SUCCESS};
  static std::atomic<bool> returned{false};
  pthread_t main_thread = pthread_self();
  std::thread([main_thread]() {
    rc = smfi_main();
    returned = true;
    pthread_kill(main_thread, SIGTERM);
  }).detach();
  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
  }
  auto started = std::chrono::steady_clock::now();
  if (returned) {
    logf(LogLevel::Notice, "stopping: libmilter's loop ended by itself");
  } else {
    logf(LogLevel::Notice, "stopping on SIG%s", sigabbrev_np(sig));
  }
  // smfi_stop() waits for the lock that libmilter's accept loop holds across its poll() of up to
  // 5 s (the old stop time): let it finish in its own thread. Until this process exits, the
  // closed gate tempfails every new connection.
  std::thread([]() { smfi_stop(); }).detach();
  milter::closeGate();
  if (!milter::waitIdle(started + kStopPatience)) {
    logf(LogLevel::Warning, "stopping: waiting for end-of-message spool commits to finish");
    milter::waitIdle();
  }
  size_t dropped = milter::discardOpenMessages();
  if (dropped)
    logf(LogLevel::Notice, "stopping: %zu unfinished message(s) dropped; the MTA retries them",
         dropped);
  // libmilter removes its socket when its loop ends, which may be seconds away: do it now (an
  // error, e.g. a directory this user may not write, leaves a stale socket that the next start
  // removes).
  if (!socket_path.empty()) unlink(socket_path.c_str());
  bool failed = returned && rc != MI_SUCCESS;
  logf(LogLevel::Notice, "stopped%s", failed ? " after an error in libmilter" : "");
  // libmilter's threads still run: leave without static destructors under their feet.
  std::fflush(nullptr);
  _exit(failed ? kExitSoftware : kExitOk);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dynmx;
  Options o;
  if (auto done = parseOptions(argc, argv, o)) return *done;
  if (o.check) return checkConfigCommand(o.path, ConfigRole::Milter, stdout, stderr);

  logInit("dynmx-milter", o.foreground);
  // Blocked in every thread from now on: one arriving during start-up waits for the main thread's
  // sigwait in runUntilStopped() instead of killing us.
  sigset_t early;
  sigemptyset(&early);
  for (int sig : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&early, sig);
  pthread_sigmask(SIG_BLOCK, &early, nullptr);
  LoadResult loaded = loadConfig(o.path, ConfigRole::Milter);
  if (!loaded.config) {
    for (const ConfigError& e : loaded.errors) {
      logf(LogLevel::Critical, "%s", e.str().c_str());
      if (!o.foreground) std::fprintf(stderr, "dynmx-milter: %s\n", e.str().c_str());
    }
    return fail(o.foreground, kExitConfig, "configuration " + o.path + " is not valid");
  }
  auto snap = std::make_shared<const milter::Snapshot>(std::move(*loaded.config));
  const Config& cfg = snap->config;

  // Lives as long as the process: libmilter's threads may still run while main() returns.
  auto* spool = new Spool(cfg.spool.dir);
  milter::install(spool, snap);
  if (int code = startUp(cfg, *spool, o.foreground); code != kExitOk) return code;
  milter::startReloadThread(o.path);
  logf(LogLevel::Notice, "starting: socket %s, spool %s, %zu client(s), on_error=%s",
       cfg.milter.socket.text.c_str(), cfg.spool.dir.c_str(), cfg.clients.size(),
       cfg.milter.on_error == OnError::Accept ? "accept" : "tempfail");
  runUntilStopped(early, cfg.milter.socket.kind == SocketSpec::Kind::Unix ? cfg.milter.socket.path
                                                                          : std::string());
}
