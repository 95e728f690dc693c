// control.cpp: admin socket: request parser, reply framing, server socket setup, client call.
//
// Contract: the protocol of control.hpp. Every descriptor opened here is a UniqueFd: closed on
// each error path, handed to the caller only on success (openControlSocket).
// Failure behaviour: a bad request gets "ERR ..." and the connection is closed; socket setup
// errors are returned naming the path (the daemon turns them into a start-up failure), and a
// socket file we created is removed again when its set-up fails; the client call returns errors
// naming the socket path, a timeout as ETIMEDOUT.
#include "tunneld/control/control.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "shared/fd.hpp"
#include "shared/inet_addr.hpp"
#include "shared/stale_socket.hpp"
#include "shared/text.hpp"

namespace dynmx::tunneld {

namespace {
bool validArg(std::string_view s) {
  if (s.empty() || s.size() > 255) return false;
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return false;
  }
  return true;
}

}  // namespace

namespace {

// Every command, with how many arguments it takes (and, when the count alone does not say it,
// what the refusal says is expected).
struct CommandSpec {
  std::string_view name;
  ControlRequest::Command command;
  size_t min_args, max_args;
  const char* expects = nullptr;
};
constexpr CommandSpec kCommands[] = {
    {"status", ControlRequest::Command::Status, 0, 1, "no argument or \"fields\""},
    {"queue", ControlRequest::Command::Queue, 0, 0},
    {"flush", ControlRequest::Command::Flush, 0, 1},
    {"hold", ControlRequest::Command::Hold, 1, 1},
    {"release", ControlRequest::Command::Release, 1, 1},
    {"reload", ControlRequest::Command::Reload, 0, 0},
    {"leases", ControlRequest::Command::Leases, 0, 0},
    {"revoke", ControlRequest::Command::Revoke, 1, 1},
    {"checkin", ControlRequest::Command::Checkin, 2, 2},
    {"metrics", ControlRequest::Command::Metrics, 0, 0, nullptr},
    {"delete", ControlRequest::Command::Delete, 1, 2, "a queue id, or ALL and a client name"},
    {"bounce", ControlRequest::Command::Bounce, 1, 2, "a queue id, or ALL and a client name"},
    {"hostkey", ControlRequest::Command::Hostkey, 1, 1, "a client name"},
    {"verify", ControlRequest::Command::Verify, 2, 2},
};
constexpr const char* kExpected =
    "expected status, queue, flush, hold, release, reload, leases, revoke, checkin, metrics, "
    "delete, bounce, hostkey or verify";

// The words of a request line, split at spaces and tabs.
std::vector<std::string_view> splitWords(std::string_view line) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i >= line.size()) break;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    words.push_back(line.substr(i, j - i));
    i = j;
  }
  return words;
}

Status checkArgCount(const CommandSpec& c, size_t n) {
  if (n >= c.min_args && n <= c.max_args) return {};
  return Error{0, std::string(c.name) + ": expected " +
                      (c.expects         ? c.expects
                       : c.max_args == 0 ? "no argument"
                       : c.max_args == 2 ? "a client name and an address"
                       : c.min_args == 0 ? "at most one argument"
                                         : "one argument")};
}

// The arguments that are addresses: revoke's is kept in its canonical text, checkin's parsed.
Status parseAddresses(ControlRequest& r, const std::vector<std::string_view>& words) {
  if (r.command == ControlRequest::Command::Revoke) {
    auto a = InetAddr::parse(r.arg);
    if (!a) return Error{0, "revoke: \"" + r.arg + "\" is not an IPv4 or IPv6 address"};
    r.arg = a->str();
  }
  if (r.command == ControlRequest::Command::Checkin) {
    auto a = InetAddr::parse(words[2]);
    if (!a)
      return Error{
          0, "checkin: expected an IPv4 or IPv6 address, got \"" + std::string(words[2]) + "\""};
    r.address = *a;
  }
  return {};
}

// The arguments whose form the count does not settle: status's word, delete's and bounce's ALL.
Status checkWords(ControlRequest& r, const std::vector<std::string_view>& words) {
  using C = ControlRequest::Command;
  if (r.command == C::Status && words.size() == 2 && words[1] != "fields")
    return Error{0, "status: expected no argument or \"fields\", got \"" + r.arg + "\""};
  if (r.command != C::Delete && r.command != C::Bounce) return {};
  std::string name = r.command == C::Delete ? "delete" : "bounce";
  if (words.size() == 3) {
    if (words[1] != "ALL")
      return Error{0, name + ": expected a queue id, or ALL and a client name; got \"" + r.arg +
                          " " + std::string(words[2]) + "\""};
    r.client = std::string(words[2]);
  } else if (words[1] == "ALL") {
    return Error{0, name + " ALL: expected a client name (ALL means every message of one client)"};
  }
  return {};
}

}  // namespace

Result<ControlRequest> parseControlRequest(std::string_view line) {
  if (line.size() > kMaxRequest) return Error{0, "request too long"};
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::vector<std::string_view> words = splitWords(line);
  if (words.empty()) return Error{0, std::string("empty request; ") + kExpected};
  for (auto w : words)
    if (!validArg(w)) return Error{0, "request contains control characters or an overlong word"};
  const CommandSpec* spec = nullptr;
  for (const auto& c : kCommands)
    if (c.name == words[0]) spec = &c;
  if (spec == nullptr)
    return Error{0, "unknown command \"" + std::string(words[0]) + "\"; " + kExpected};
  if (auto st = checkArgCount(*spec, words.size() - 1); !st) return st.error();
  ControlRequest r;
  r.command = spec->command;
  if (words.size() > 1) r.arg = std::string(words[1]);
  if (auto st = parseAddresses(r, words); !st) return st.error();
  if (auto st = checkWords(r, words); !st) return st.error();
  if (r.command == ControlRequest::Command::Verify) r.rcpt = std::string(words[2]);
  return r;
}

std::string formatLeaseLine(const LeaseLine& l) {
  if (l.hold) return "hold " + l.address + " " + std::to_string(l.expires);
  return l.address + " " + l.client + " " + l.source + " " + std::to_string(l.granted) + " " +
         std::to_string(l.expires);
}

Result<LeaseLine> parseLeaseLine(std::string_view line) {
  std::vector<std::string_view> f;
  size_t i = 0;
  while (i <= line.size()) {
    size_t j = line.find(' ', i);
    if (j == std::string_view::npos) j = line.size();
    f.push_back(line.substr(i, j - i));
    i = j + 1;
  }
  auto bad = [&](const char* why) {
    return Error{0, std::string("lease line \"") + std::string(line.substr(0, 200)) + "\": " + why};
  };
  LeaseLine l;
  if (f.size() == 3 && f[0] == "hold") {
    l.hold = true;
    if (!InetAddr::parse(f[1])) return bad("not an address");
    l.address = std::string(f[1]);
    if (!parseDecimal(f[2], l.expires)) return bad("bad time");
    return l;
  }
  if (f.size() != 5) return bad("expected ADDRESS CLIENT SOURCE GRANTED EXPIRES");
  if (!InetAddr::parse(f[0])) return bad("not an address");
  if (f[1].empty() || f[2].empty()) return bad("empty field");
  l.address = std::string(f[0]);
  l.client = std::string(f[1]);
  l.source = std::string(f[2]);
  if (!parseDecimal(f[3], l.granted) || !parseDecimal(f[4], l.expires)) return bad("bad time");
  return l;
}

std::string formatQueueLine(const QueueLine& q) {
  std::string line = q.id + " " + q.state + " client=" + q.client +
                     " size=" + std::to_string(q.size) + " arrival=" + std::to_string(q.arrival) +
                     " from=<" + q.sender + "> to=";
  for (size_t i = 0; i < q.rcpts.size(); ++i) line += (i ? ",<" : "<") + q.rcpts[i] + ">";
  if (q.attempts > 0) line += " attempts=" + std::to_string(q.attempts);
  return line;
}

namespace {

// Takes "KEY=VALUE " off the front of `rest` into `value`.
bool takeField(std::string_view& rest, std::string_view key, std::string_view& value) {
  if (rest.substr(0, key.size()) != key) return false;
  size_t sp = rest.find(' ', key.size());
  if (sp == std::string_view::npos) return false;
  value = rest.substr(key.size(), sp - key.size());
  rest.remove_prefix(sp + 1);
  return true;
}

}  // namespace

Result<QueueLine> parseQueueLine(std::string_view line) {
  auto bad = [&](const char* why) {
    return Error{0, std::string("queue line \"") + std::string(line.substr(0, 200)) + "\": " + why};
  };
  QueueLine q;
  std::string_view rest = line, v;
  size_t sp = rest.find(' ');
  if (sp == 0 || sp == std::string_view::npos) return bad("expected ID STATE");
  q.id = std::string(rest.substr(0, sp));
  rest.remove_prefix(sp + 1);
  sp = rest.find(' ');
  if (sp == 0 || sp == std::string_view::npos) return bad("expected ID STATE");
  q.state = std::string(rest.substr(0, sp));
  rest.remove_prefix(sp + 1);
  if (!takeField(rest, "client=", v) || v.empty()) return bad("expected client=");
  q.client = std::string(v);
  if (!takeField(rest, "size=", v) || !parseDecimal(v, q.size)) return bad("expected size=OCTETS");
  if (!takeField(rest, "arrival=", v) || !parseDecimal(v, q.arrival))
    return bad("expected arrival=UNIX");
  if (rest.substr(0, 6) != "from=<") return bad("expected from=<");
  rest.remove_prefix(6);
  size_t to = rest.find("> to=");
  if (to == std::string_view::npos) return bad("expected > to=");
  q.sender = std::string(rest.substr(0, to));
  rest.remove_prefix(to + 5);
  if (size_t at = rest.rfind(" attempts="); at != std::string_view::npos) {
    if (!parseDecimal(rest.substr(at + 10), q.attempts)) return bad("bad attempts=");
    rest = rest.substr(0, at);
  }
  while (!rest.empty()) {
    if (rest[0] != '<') return bad("expected <RECIPIENT>");
    size_t end = rest.find(">,<");
    if (end == std::string_view::npos) {
      if (rest.back() != '>') return bad("expected <RECIPIENT>");
      q.rcpts.emplace_back(rest.substr(1, rest.size() - 2));
      break;
    }
    q.rcpts.emplace_back(rest.substr(1, end - 1));
    rest.remove_prefix(end + 2);
  }
  return q;
}

namespace {

bool recordName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

const std::string* StatusRecord::get(std::string_view key) const {
  for (const auto& [k, v] : fields)
    if (k == key) return &v;
  return nullptr;
}

std::string formatStatusRecord(const StatusRecord& r) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out = r.kind;
  for (const auto& [k, v] : r.fields) {
    out += ' ';
    out += k;
    out += '=';
    for (unsigned char c : v) {
      if (c <= 0x20 || c == 0x7f || c == '%') {
        out += '%';
        out += kHex[c >> 4];
        out += kHex[c & 15];
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  return out;
}

Result<StatusRecord> parseStatusRecord(std::string_view line) {
  auto bad = [&](const char* why) {
    return Error{0,
                 std::string("status line \"") + std::string(line.substr(0, 200)) + "\": " + why};
  };
  StatusRecord r;
  size_t sp = line.find(' ');
  r.kind = std::string(line.substr(0, sp));
  if (!recordName(r.kind)) return bad("expected a kind");
  while (sp != std::string_view::npos) {
    line.remove_prefix(sp + 1);
    sp = line.find(' ');
    std::string_view field = line.substr(0, sp);
    size_t eq = field.find('=');
    if (eq == std::string_view::npos || !recordName(field.substr(0, eq)))
      return bad("expected KEY=VALUE");
    std::string value;
    for (size_t i = eq + 1; i < field.size(); ++i) {
      char c = field[i];
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return bad("unencoded byte");
      if (c != '%') {
        value += c;
        continue;
      }
      int hi = i + 2 < field.size() ? hexValue(field[i + 1]) : -1;
      int lo = hi >= 0 ? hexValue(field[i + 2]) : -1;
      if (lo < 0) return bad("bad %HH escape");
      value += static_cast<char>(hi * 16 + lo);
      i += 2;
    }
    r.fields.emplace_back(std::string(field.substr(0, eq)), std::move(value));
  }
  return r;
}

std::string formatControlReply(const ControlReply& r) {
  std::string out = r.ok ? "OK\n" : "ERR " + r.error + "\n";
  for (auto& l : r.lines) {
    // One reply line per body line; embedded line ends would break the framing.
    size_t start = 0;
    while (true) {
      size_t nl = l.find('\n', start);
      std::string part = l.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
      if (!part.empty() && part[0] == '.') out += '.';
      out += part;
      out += '\n';
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  out += ".\n";
  return out;
}

Result<ControlReply> parseControlReply(std::string_view text) {
  ControlReply r;
  size_t pos = text.find('\n');
  if (pos == std::string_view::npos) return Error{0, "reply has no status line"};
  std::string_view first = text.substr(0, pos);
  if (first == "OK") {
    r.ok = true;
  } else if (first.rfind("ERR ", 0) == 0) {
    r.ok = false;
    r.error = std::string(first.substr(4));
  } else {
    return Error{0, "unexpected status line \"" + std::string(first) + "\""};
  }
  size_t start = pos + 1;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) return Error{0, "reply ends without \".\""};
    std::string_view line = text.substr(start, nl - start);
    start = nl + 1;
    if (line == ".") return r;
    if (!line.empty() && line[0] == '.') line.remove_prefix(1);
    r.lines.emplace_back(line);
  }
  return Error{0, "reply ends without \".\""};
}

Result<UniqueFd> openControlSocket(const std::string& path, mode_t mode, const std::string& group) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path)
    return Error{0, "control_socket " + path + ": path too long"};
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  if (auto st = clearStaleSocket(path, "control_socket " + path, "dynmx-tunneld"); !st)
    return st.error();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return sysError(errno, "control_socket " + path + ": socket");
  mode_t old = umask(077);
  int rc = bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int e = errno;
  umask(old);
  if (rc != 0) return sysError(e, "control_socket " + path + ": bind");
  if (listen(fd.get(), 16) != 0) return sysError(errno, "control_socket " + path + ": listen");
  // From here on a failure also removes the socket file we created (the descriptor closes on
  // return).
  if (!group.empty()) {
    struct group* g = getgrnam(group.c_str());
    if (!g) {
      unlink(path.c_str());
      return Error{0, "control_group " + group + ": no such group"};
    }
    if (chown(path.c_str(), static_cast<uid_t>(-1), g->gr_gid) != 0) {
      e = errno;
      unlink(path.c_str());
      return sysError(e, "control_socket " + path + ": chgrp " + group);
    }
  }
  if (chmod(path.c_str(), mode) != 0) {
    e = errno;
    unlink(path.c_str());
    return sysError(e, "control_socket " + path + ": chmod");
  }
  return fd;
}

Result<ControlReply> controlRequest(const std::string& path, const std::string& request,
                                    int timeout_ms) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return Error{0, path + ": path too long"};
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return sysError(errno, "socket");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    return sysError(errno, "connect to " + path);
  std::string req = request + "\n";
  size_t off = 0;
  while (off < req.size()) {
    ssize_t n = send(fd.get(), req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n < 0) return sysError(errno, "write to " + path);
    off += static_cast<size_t>(n);
  }
  std::string reply;
  char buf[8192];
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    end - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) return Error{ETIMEDOUT, "no complete reply from " + path};
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) break;
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
    if (reply.size() >= 2 && reply.compare(reply.size() - 2, 2, ".\n") == 0 &&
        (reply.size() == 2 || reply[reply.size() - 3] == '\n'))
      break;
  }
  return parseControlReply(reply);
}

}  // namespace dynmx::tunneld
