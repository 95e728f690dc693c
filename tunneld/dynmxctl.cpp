// dynmxctl.cpp: the administrator's client of dynmx-tunneld's admin socket.
//
// dynmxctl [-c FILE] [-s SOCKET] COMMAND [ARGS]: sends one request (see control.hpp), prints the
// reply's body on stdout (an error reply on stderr). `leases` is shown as a table, or with
// `leases --json` as one JSON object {"leases": [...], "holds": [...]}; `queue` one line per
// message with its arrival as a date, or with `queue --json` as {"queue": [...]}; the daemon's
// reply is machine-readable either way (control.hpp), and dynmxctl only formats it. Exit status: 0
// done; 1 the daemon refused (ERR reply); 64 usage; 69 the daemon is not reachable; 76 the reply
// did not parse; 78 the configuration named with -c cannot be loaded.
#include <sys/stat.h>
#include <sysexits.h>

#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "shared/date.hpp"
#include "shared/config.hpp"
#include "shared/version.hpp"
#include "tunneld/control/control.hpp"

using namespace dynmx;

static int usage(std::FILE* to = stderr) {
  std::fprintf(
      to,
      "usage: dynmxctl [-c FILE] [-s SOCKET] COMMAND [ARGS]\n"
      "       dynmxctl [-c FILE] --check-config\n"
      "       dynmxctl --help | --version\n"
      "commands: status | queue [--json] | flush [CLIENT] | hold ID | release ID | reload |\n"
      "          leases [--json] | revoke ADDRESS |\n"
      "          checkin CLIENT ADDRESS (dynmx-checkin's request) |\n"
      "          verify CLIENT RECIPIENT (dynmx-milter's question)\n");
  return EX_USAGE;
}

static std::string jsonString(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

// The `leases` reply as a table or as JSON; EX_PROTOCOL when a line does not parse.
static int printLeases(const std::vector<std::string>& lines, bool json) {
  std::vector<tunneld::LeaseLine> leases, holds;
  for (auto& l : lines) {
    auto p = tunneld::parseLeaseLine(l);
    if (!p) {
      std::fprintf(stderr, "dynmxctl: %s\n", p.error().message.c_str());
      return EX_PROTOCOL;
    }
    (p->hold ? holds : leases).push_back(*p);
  }
  if (json) {
    std::string o = "{\"leases\": [";
    for (size_t i = 0; i < leases.size(); ++i) {
      auto& l = leases[i];
      o += std::string(i ? ", " : "") + "{\"address\": " + jsonString(l.address) +
           ", \"client\": " + jsonString(l.client) + ", \"source\": " + jsonString(l.source) +
           ", \"granted\": " + jsonString(isoUtc(l.granted)) +
           ", \"expires\": " + jsonString(isoUtc(l.expires)) +
           ", \"granted_unix\": " + std::to_string(l.granted) +
           ", \"expires_unix\": " + std::to_string(l.expires) + "}";
    }
    o += "], \"holds\": [";
    for (size_t i = 0; i < holds.size(); ++i)
      o += std::string(i ? ", " : "") + "{\"address\": " + jsonString(holds[i].address) +
           ", \"until\": " + jsonString(isoUtc(holds[i].expires)) +
           ", \"until_unix\": " + std::to_string(holds[i].expires) + "}";
    o += "]}";
    std::printf("%s\n", o.c_str());
    return EX_OK;
  }
  if (leases.empty())
    std::printf("no leases\n");
  else
    std::printf("%-39s %-16s %-8s %-20s %s\n", "ADDRESS", "CLIENT", "SOURCE", "GRANTED", "EXPIRES");
  for (auto& l : leases)
    std::printf("%-39s %-16s %-8s %-20s %s\n", l.address.c_str(), l.client.c_str(),
                l.source.c_str(), isoUtc(l.granted).c_str(), isoUtc(l.expires).c_str());
  for (auto& h : holds)
    std::printf("%s: held down until %s\n", h.address.c_str(), isoUtc(h.expires).c_str());
  return EX_OK;
}

// The `queue` reply with arrival as a date, or as JSON {"queue": [...]}; EX_PROTOCOL when a line
// does not parse (the human form then prints the line as it came).
static int printQueue(const std::vector<std::string>& lines, bool json) {
  std::vector<tunneld::QueueLine> q;
  for (auto& l : lines) {
    auto p = tunneld::parseQueueLine(l);
    if (!p) {
      if (json) {
        std::fprintf(stderr, "dynmxctl: %s\n", p.error().message.c_str());
        return EX_PROTOCOL;
      }
      std::printf("%s\n", l.c_str());
      continue;
    }
    if (!json) {
      std::string text = tunneld::formatQueueLine(*p);
      std::string raw = " arrival=" + std::to_string(p->arrival) + " ";
      size_t at = text.find(raw);
      if (at != std::string::npos)
        text.replace(at, raw.size(), " arrival=" + isoUtc(p->arrival) + " ");
      std::printf("%s\n", text.c_str());
    }
    q.push_back(std::move(*p));
  }
  if (!json) return EX_OK;
  std::string o = "{\"queue\": [";
  for (size_t i = 0; i < q.size(); ++i) {
    auto& m = q[i];
    o += std::string(i ? ", " : "") + "{\"id\": " + jsonString(m.id) +
         ", \"state\": " + jsonString(m.state) + ", \"client\": " + jsonString(m.client) +
         ", \"size\": " + std::to_string(m.size) + ", \"arrival\": " + jsonString(isoUtc(m.arrival)) +
         ", \"arrival_unix\": " + std::to_string(m.arrival) +
         ", \"sender\": " + jsonString(m.sender) + ", \"recipients\": [";
    for (size_t r = 0; r < m.rcpts.size(); ++r) o += (r ? ", " : "") + jsonString(m.rcpts[r]);
    o += "], \"attempts\": " + std::to_string(m.attempts) + "}";
  }
  o += "]}";
  std::printf("%s\n", o.c_str());
  return EX_OK;
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
      usage(stdout);
      return EX_OK;
    } else if (a == "--version") {
      printVersion("dynmxctl");
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
  bool leases = std::string(argv[i]) == "leases", queue = std::string(argv[i]) == "queue";
  bool json = false;
  for (; i < argc; ++i) {
    if ((leases || queue) && std::string(argv[i]) == "--json") {
      json = true;
      continue;
    }
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
  if (leases && reply->ok) return printLeases(reply->lines, json);
  if (queue && reply->ok) return printQueue(reply->lines, json);
  for (auto& l : reply->lines) std::printf("%s\n", l.c_str());
  if (!reply->ok) {
    std::fprintf(stderr, "dynmxctl: %s\n", reply->error.c_str());
    return 1;
  }
  return EX_OK;
}
