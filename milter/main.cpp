// main.cpp: dynmx-milter, the libmilter filter that captures mail for dynmx clients.
//
// Wiring only: options, configuration, socket, privileges, then smfi_main(). Every start-up
// failure is reported with what failed (on stderr and in the log) and a sysexits code.
//   dynmx-milter [-c FILE] [-f] [--check-config]
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <libmilter/mfapi.h>
#include <memory>
#include <optional>
#include <string>

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

}  // namespace

int main(int argc, char** argv) {
  using namespace dynmx;
  Options o;
  if (auto done = parseOptions(argc, argv, o)) return *done;
  if (o.check) return checkConfigCommand(o.path, ConfigRole::Milter, stdout, stderr);

  logInit("dynmx-milter", o.foreground);
  // libmilter's signal thread waits for SIGHUP, SIGTERM and SIGINT, but only from smfi_main()
  // on; block them now so that one arriving during start-up waits for it instead of killing us.
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
  int rc = smfi_main();
  logf(LogLevel::Notice, "stopped%s", rc == MI_SUCCESS ? "" : " after an error in libmilter");
  return rc == MI_SUCCESS ? kExitOk : kExitSoftware;
}
