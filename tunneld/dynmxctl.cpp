// dynmxctl.cpp: the administrator's client of dynmx-tunneld's admin socket.
//
// dynmxctl [-c FILE] [-s SOCKET] COMMAND [ARGS]: sends one request (see control.hpp), prints the
// reply's body on stdout (an error reply on stderr). Exit status: 0 done; 1 the daemon refused
// (ERR reply); 64 usage; 69 the daemon is not reachable; 76 the reply did not parse; 78 the
// configuration named with -c cannot be loaded.
#include <sys/stat.h>
#include <sysexits.h>

#include <cstdio>
#include <string>

#include "shared/config.hpp"
#include "tunneld/control/control.hpp"

using namespace dynmx;

static int usage() {
  std::fprintf(stderr,
               "usage: dynmxctl [-c FILE] [-s SOCKET] COMMAND [ARGS]\n"
               "       dynmxctl [-c FILE] --check-config\n"
               "commands: status | queue | flush [CLIENT] | hold ID | release ID | reload\n"
               "          checkin CLIENT ADDRESS (dynmx-checkin's request)\n");
  return EX_USAGE;
}

int main(int argc, char** argv) {
  std::string config, socket_path;
  bool config_given = false, check_config = false;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c" && i + 1 < argc) {
      config = argv[++i];
      config_given = true;
    } else if (a == "-s" && i + 1 < argc) {
      socket_path = argv[++i];
    } else if (a == "--check-config") {
      check_config = true;
    } else if (a == "-h" || a == "--help") {
      usage();
      return EX_OK;
    } else if (!a.empty() && a[0] == '-') {
      return usage();
    } else {
      break;
    }
  }
  if (check_config)
    return checkConfigCommand(config_given ? config : kDefaultConfigPath, ConfigRole::Any, stdout,
                              stderr);
  if (i >= argc) return usage();
  std::string request;
  for (; i < argc; ++i) {
    if (!request.empty()) request += ' ';
    request += argv[i];
  }
  if (auto parsed = tunneld::parseControlRequest(request); !parsed) {
    std::fprintf(stderr, "dynmxctl: %s\n", parsed.error().message.c_str());
    return EX_USAGE;
  }
  if (socket_path.empty()) {
    if (!config_given) config = kDefaultConfigPath;
    struct stat st;
    if (!config_given && stat(config.c_str(), &st) != 0) {
      socket_path = TunneldConfig{}.control_socket;
    } else {
      LoadResult lr = loadConfig(config, ConfigRole::Any);
      if (!lr.config) {
        for (auto& e : lr.errors) std::fprintf(stderr, "dynmxctl: %s\n", e.str().c_str());
        return EX_CONFIG;
      }
      socket_path = lr.config->tunneld.control_socket;
    }
  }
  auto reply = tunneld::controlRequest(socket_path, request);
  if (!reply) {
    std::fprintf(stderr, "dynmxctl: %s\n", reply.error().message.c_str());
    return reply.error().code == 0 ? EX_PROTOCOL : EX_UNAVAILABLE;
  }
  for (auto& l : reply->lines) std::printf("%s\n", l.c_str());
  if (!reply->ok) {
    std::fprintf(stderr, "dynmxctl: %s\n", reply->error.c_str());
    return 1;
  }
  return EX_OK;
}
