// enqueue_main.cpp: dynmx-enqueue command line; the work is in milter/enqueue.cpp.
#include <unistd.h>

#include <cstdio>

#include "milter/enqueue.hpp"
#include "shared/log.hpp"
#include "shared/sysexits.hpp"
#include "shared/version.hpp"

int main(int argc, char** argv) {
  using namespace dynmx;
  std::vector<std::string> args(argv + 1, argv + argc);
  // A mailer's stderr ends up in bounces and logs: one line, no noise. Logs go to syslog.
  logInit("dynmx-enqueue", false);
  EnqueueArgs a = parseEnqueueArgs(args);
  if (a.help) {
    std::printf("usage: %s\n       dynmx-enqueue [-c FILE] --check-config\n"
                "       dynmx-enqueue --help | --version\n",
                kEnqueueUsage);
    return kExitOk;
  }
  if (a.version) {
    printVersion("dynmx-enqueue");
    return kExitOk;
  }
  if (a.exit_code != 0) {
    std::fprintf(stderr, "dynmx-enqueue: %s\n", a.reason.c_str());
    return a.exit_code;
  }
  if (a.check_config) return checkConfigCommand(a.config_path, ConfigRole::Enqueue, stdout, stderr);
  LoadResult lr = loadConfig(a.config_path, ConfigRole::Enqueue);
  if (!lr.config) {
    for (const auto& e : lr.errors) std::fprintf(stderr, "dynmx-enqueue: %s\n", e.str().c_str());
    return kExitConfig;
  }
  EnqueueResult r = enqueueMessage(*lr.config, a.req, STDIN_FILENO);
  if (r.exit_code != 0) {
    std::fprintf(stderr, "dynmx-enqueue: %s\n", r.reason.c_str());
    logf(LogLevel::Warning, "%s: enqueue failed (exit %d): %s",
         a.req.queue_id.empty() ? "NOQUEUE" : a.req.queue_id.c_str(), r.exit_code, r.reason.c_str());
  }
  return r.exit_code;
}
