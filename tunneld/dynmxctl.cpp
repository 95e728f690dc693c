// dynmxctl.cpp: the administrator's client of dynmx-tunneld's admin socket.
//
// dynmxctl [-c FILE] [-s SOCKET] COMMAND [ARGS]: sends one request (see control.hpp), prints the
// reply's body on stdout (an error reply on stderr). `leases` is shown as a table, or with
// `leases --json` as one JSON object {"leases": [...], "holds": [...]}; `queue` one line per
// message with its arrival as a date, or with `queue --json` as {"queue": [...]}; the daemon's
// reply is machine-readable either way (control.hpp), and dynmxctl only formats it. `status
// --json` asks for `status fields` (StatusRecord lines) and prints them as one JSON object
// {"daemon": {...}, "clients": [...], "notifications": {...}}; dynmxctl(8) lists every field. Exit
// status: 0 done; 1 the daemon refused (ERR reply); 64 usage; 69 the daemon is not reachable; 76
// the reply did not parse; 78 the configuration named with -c cannot be loaded.
#include <sys/stat.h>
#include <sysexits.h>

#include <cstdio>
#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "shared/config.hpp"
#include "shared/date.hpp"
#include "shared/version.hpp"
#include "tunneld/control/add_client.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/control/trust.hpp"

using namespace dynmx;

static int usage(std::FILE* to = stderr) {
  std::fprintf(
      to,
      "usage: dynmxctl [-c FILE] [-s SOCKET] COMMAND [ARGS]\n"
      "       dynmxctl [-c FILE] --check-config\n"
      "       dynmxctl --help | --version\n"
      "commands: status [--json] | queue [--json] | leases [--json] | metrics |\n"
      "          flush [CLIENT] | hold ID | release ID | reload | revoke ADDRESS |\n"
      "          delete ID | delete ALL CLIENT | bounce ID | bounce ALL CLIENT |\n"
      "          trust CLIENT FINGERPRINT | hostkey CLIENT |\n"
      "          add-client NAME HOST [--from ADDR[,ADDR...]] [--user USER] [--port PORT]\n"
      "                     [--sendmail PATH] |\n"
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

namespace {

// A field of a `status fields` record as JSON: a string (null when empty), a number, or a time as
// "KEY": ISO 8601 UTC, "KEY_unix": seconds (both null for 0). Numbers that do not parse make
// `bad` true.
struct StatusJson {
  const tunneld::StatusRecord& r;
  bool& bad;
  std::string str(const char* key) const {
    const std::string* v = r.get(key);
    return v && !v->empty() ? jsonString(*v) : "null";
  }
  int64_t number(const char* key) const {
    const std::string* v = r.get(key);
    if (!v) return 0;
    int64_t n = 0;
    if (v->empty() || v->size() > 18) bad = true;
    for (char c : *v) {
      if (c < '0' || c > '9') {
        bad = true;
        return 0;
      }
      n = n * 10 + (c - '0');
    }
    return n;
  }
  std::string num(const char* key) const { return std::to_string(number(key)); }
  std::string time(const char* key) const {
    int64_t t = number(key);
    std::string k = key;
    if (t == 0) return "\"" + k + "\": null, \"" + k + "_unix\": null";
    return "\"" + k + "\": " + jsonString(isoUtc(t)) + ", \"" + k + "_unix\": " + std::to_string(t);
  }
};

std::string clientJson(const StatusJson& j) {
  const tunneld::StatusRecord& r = j.r;
  bool ssh = r.get("kex") && !r.get("kex")->empty();
  std::string o = "{\"name\": " + j.str("name") +
                  ", \"configured\": " + (j.number("configured") ? "true" : "false") +
                  ", \"state\": " + j.str("state") + ", \"address\": " + j.str("address") + ", " +
                  j.time("connected_since") + ", " + j.time("next_attempt") +
                  ", \"failures\": " + j.num("failures") + ", \"channels\": " + j.num("channels") +
                  ", \"ssh\": ";
  o += ssh ? "{\"kex\": " + j.str("kex") + ", \"hostkey\": " + j.str("hostkey") +
                 ", \"cipher\": " + j.str("cipher") + ", \"mac\": " + j.str("mac") +
                 ", \"login_key\": " + j.str("login_key") + "}"
           : std::string("null");
  o += ", \"host_key\": {\"presented\": " + j.str("presented_fp") +
       ", \"expected\": " + j.str("expected_fp") + "}, \"last_error\": " + j.str("last_error") +
       ", \"queue\": {\"active\": " + j.num("active") + ", \"deferred\": " + j.num("deferred") +
       ", \"hold\": " + j.num("hold") + ", \"in_flight\": " + j.num("in_flight") +
       ", \"bytes\": " + j.num("bytes") + ", \"max_messages\": " + j.num("max_queue_messages") +
       ", \"max_bytes\": " + j.num("max_queue_bytes") + ", " + j.time("oldest_arrival") + "}}";
  return o;
}

}  // namespace

// `status --json`: the daemon's `status fields` records as one JSON object, fields as dynmxctl(8)
// lists them; EX_PROTOCOL when a record does not parse.
static int printStatusJson(const std::vector<std::string>& lines) {
  std::string daemon = "null", spool = "null", notifications = "null", clients;
  bool bad = false;
  for (auto& l : lines) {
    auto p = tunneld::parseStatusRecord(l);
    if (!p) {
      std::fprintf(stderr, "dynmxctl: %s\n", p.error().message.c_str());
      return EX_PROTOCOL;
    }
    StatusJson j{*p, bad};
    if (p->kind == "daemon")
      daemon = "{\"state\": " + j.str("state") + ", \"version\": " + j.str("version") +
               ", \"clients\": " + j.num("clients") + "}";
    else if (p->kind == "spool")
      spool = "{\"dir\": " + j.str("dir") + ", \"free_bytes\": " +
              (j.str("free_bytes") == "null" ? std::string("null") : j.num("free_bytes")) +
              ", \"min_free\": " + j.num("min_free") + "}";
    else if (p->kind == "client")
      clients += (clients.empty() ? "" : ", ") + clientJson(j);
    else if (p->kind == "notifications")
      notifications = "{\"waiting\": " + j.num("waiting") + "}";
  }
  if (bad) {
    std::fprintf(stderr, "dynmxctl: status: a number field does not parse\n");
    return EX_PROTOCOL;
  }
  std::printf("{\"daemon\": %s, \"spool\": %s, \"clients\": [%s], \"notifications\": %s}\n",
              daemon.c_str(), spool.c_str(), clients.c_str(), notifications.c_str());
  return EX_OK;
}

// The configuration at `path`, or nullopt after its errors were printed.
static std::optional<Config> loadOrComplain(const std::string& path) {
  LoadResult lr = loadConfig(path, ConfigRole::Any);
  if (!lr.config) {
    for (auto& e : lr.errors) std::fprintf(stderr, "dynmxctl: %s\n", e.str().c_str());
    return std::nullopt;
  }
  lr.config->path = path;
  return std::move(*lr.config);
}

// The commands dynmxctl carries out itself, with the configuration (trust, add-client): their exit
// status, or nullopt when args[0] is none of them. `socket` is -s, or "" for the configuration's.
static std::optional<int> localCommand(int n, char** args, const std::string& config,
                                       const std::string& socket) {
  std::string cmd = args[0];
  if (cmd != "trust" && cmd != "add-client") return std::nullopt;
  if (cmd == "trust" && n != 3) return usage();
  auto cfg = loadOrComplain(config);
  if (!cfg) return EX_CONFIG;
  if (cmd == "add-client")
    return tunneld::addClientCommand(*cfg, std::vector<std::string>(args + 1, args + n), stdout,
                                     stderr);
  return tunneld::trustCommand(*cfg, socket.empty() ? cfg->tunneld.control_socket : socket, args[1],
                               args[2], stdout, stderr);
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
  if (auto done =
          localCommand(argc - i, argv + i, config_given ? config : kDefaultConfigPath, socket_path))
    return *done;
  std::string request;
  bool leases = std::string(argv[i]) == "leases", queue = std::string(argv[i]) == "queue";
  bool status = std::string(argv[i]) == "status";
  bool json = false;
  for (; i < argc; ++i) {
    if ((leases || queue || status) && std::string(argv[i]) == "--json") {
      json = true;
      continue;
    }
    if (!request.empty()) request += ' ';
    request += argv[i];
  }
  if (status && json) request += " fields";
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
      auto cfg = loadOrComplain(config);
      if (!cfg) return EX_CONFIG;
      socket_path = cfg->tunneld.control_socket;
    }
  }
  auto reply = tunneld::controlRequest(socket_path, request);
  if (!reply) {
    std::fprintf(stderr, "dynmxctl: %s\n", reply.error().message.c_str());
    return reply.error().code == 0 ? EX_PROTOCOL : EX_UNAVAILABLE;
  }
  if (leases && reply->ok) return printLeases(reply->lines, json);
  if (queue && reply->ok) return printQueue(reply->lines, json);
  if (status && json && reply->ok) return printStatusJson(reply->lines);
  for (auto& l : reply->lines) std::printf("%s\n", l.c_str());
  if (!reply->ok) {
    std::fprintf(stderr, "dynmxctl: %s\n", reply->error.c_str());
    return 1;
  }
  return EX_OK;
}
