// checkin_main.cpp: dynmx-checkin, the forced command of a client's check-in key on the MX host.
//
//   command="/usr/sbin/dynmx-checkin home",restrict ssh-ed25519 AAAA...
// in the authorized_keys of a dedicated account ([relay] checkin_user). Usage:
//   dynmx-checkin [-c FILE] NAME
// The client name comes only from argv (the authorized_keys line), the address only from
// SSH_CONNECTION (the TCP peer of this host's sshd); what the client sends (its command line,
// which sshd puts in SSH_ORIGINAL_COMMAND, and stdin) is never read. decideCheckin refuses
// loopback, link-local, unspecified and this MX's own addresses, unknown clients and clients
// that may not relay; the rest goes to dynmx-tunneld as "checkin NAME ADDRESS" on the admin
// socket, which grants the lease (checkin.hpp). Prints one line (the lease and its expiry, or why
// not) for the client's cron log, and logs refusals to syslog.
// Exit: 0 leased; 64 usage; 67 unknown client; 75 dynmx-tunneld cannot be reached (try again);
// 77 may not relay from that address; 78 the configuration cannot be loaded.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "shared/config.hpp"
#include "shared/log.hpp"
#include "shared/sysexits.hpp"
#include "shared/version.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/relay/checkin.hpp"
#include "tunneld/relay/lease.hpp"
#include "tunneld/relay/peer_check.hpp"

using namespace dynmx;
using namespace dynmx::tunneld;

namespace {

constexpr const char* kUsage =
    "usage: dynmx-checkin [-c FILE] NAME\n"
    "       dynmx-checkin [-c FILE] --check-config\n"
    "       dynmx-checkin --help | --version\n"
    "       the forced command of a client's check-in key in authorized_keys:\n"
    "       command=\"/usr/sbin/dynmx-checkin NAME\",restrict ssh-ed25519 AAAA...\n";
constexpr int kDaemonTimeoutMs = 20000;

int usage(const char* why) {
  if (why) std::fprintf(stderr, "dynmx-checkin: %s\n", why);
  std::fputs(kUsage, stderr);
  return kExitUsage;
}

// Success on stdout, everything else on stderr: both reach the client's cron log through ssh.
int finish(int code, const std::string& message) {
  if (code == kExitOk) {
    std::printf("%s\n", message.c_str());
    logLine(LogLevel::Info, message);
  } else {
    std::fprintf(stderr, "%s\n", message.c_str());
    logLine(code == kExitTempFail ? LogLevel::Warning : LogLevel::Notice, message);
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = kDefaultConfigPath;
  const char* name = nullptr;
  bool check_config = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c") {
      if (++i >= argc) return usage("-c needs a file name");
      config = argv[i];
    } else if (a == "--check-config") {
      check_config = true;
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else if (a == "--version") {
      printVersion("dynmx-checkin");
      return kExitOk;
    } else if (!a.empty() && a[0] == '-') {
      return usage(("unknown option " + a).c_str());
    } else if (name) {
      return usage("expected exactly one client name");
    } else {
      name = argv[i];
    }
  }
  if (check_config) return checkConfigCommand(config, ConfigRole::Any, stdout, stderr);
  if (!name) return usage("expected a client name");
  logInit("dynmx-checkin", false);

  LoadResult lr = loadConfig(config, ConfigRole::Any);
  if (!lr.config) {
    for (auto& e : lr.errors) {
      std::fprintf(stderr, "dynmx-checkin: %s\n", e.str().c_str());
      logf(LogLevel::Error, "%s", e.str().c_str());
    }
    return kExitConfig;
  }
  const Config& cfg = *lr.config;
  CheckinDecision d =
      decideCheckin(name, std::getenv("SSH_CONNECTION"), LeaseRules::fromConfig(cfg));
  if (d.exit_code != kExitOk) return finish(d.exit_code, d.message);

  const std::string& socket = cfg.tunneld.control_socket;
  auto reply =
      controlRequest(socket, std::string("checkin ") + name + " " + d.addr.str(), kDaemonTimeoutMs);
  CheckinOutcome out = checkinOutcome(name, d.addr, socket, reply);
  return finish(out.exit_code, out.message);
}
