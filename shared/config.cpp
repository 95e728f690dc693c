// config.cpp: the one loader of the dynmx configuration file.
//
// Contract: toml++ turns the text into a tree; this file alone walks that tree, checks every key
// against the list of known keys, converts and validates each value, and fills the plain structs of
// config.hpp. Every problem becomes a ConfigError with the file:line:col of the offending key or
// value and its key path ("tunneld.keepalive", "client[2].domains[0]"); loading goes on after an
// error so that one run reports all of them, sorted in file order. Defaults are the member
// initialisers of config.hpp (plus the milter socket below), so an empty file is a valid
// configuration. The only system calls are stat(2) on the identity and known_hosts files, and the
// read of the file itself; a file that cannot be read is one error, never an exception.
#include "shared/config.hpp"
#include "shared/fd.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <sstream>
#include <utility>

#include "shared/private_key.hpp"
#include "shared/recipient_list.hpp"
#include "shared/result.hpp"
#include "shared/sysexits.hpp"

namespace dynmx {

namespace {

constexpr const char* kDefaultMilterSocket = "unix:/run/dynmx/milter.sock";
// Longest path a Unix socket can bind: sizeof(sockaddr_un::sun_path) is 108 with the NUL.
constexpr size_t kMaxSocketPath = 107;
constexpr int64_t kMaxDurationSeconds = 3650LL * 86400;  // ten years: beyond that it is a typo
constexpr size_t kMaxClientName = 64;
constexpr uint32_t kMaxConcurrency = 64;
constexpr int64_t kMaxQueueMessages = 1000000000;  // beyond that it is a typo
constexpr uint32_t kMaxConnections = 16;
constexpr uint32_t kMaxChannels = 100000;
constexpr const char* kDurationExamples = "a duration such as \"30s\", \"5m\", \"1h\", \"5d\"";
constexpr const char* kSizeExamples =
    "a size such as \"50M\", \"512K\", \"1G\" or a number of bytes";

// The known keys of each section, in the order the documentation lists them.
constexpr std::string_view kSections[] = {"spool", "milter", "tunneld", "relay", "client"};
constexpr std::string_view kSpoolKeys[] = {"dir", "max_message_size", "min_free"};
constexpr std::string_view kMilterKeys[] = {"socket", "socket_mode", "socket_group", "user",
                                            "on_error"};
constexpr std::string_view kTunneldKeys[] = {
    "control_socket", "control_group",   "control_mode",   "identity",      "known_hosts",
    "keepalive",      "connect_timeout", "reconnect_min",  "reconnect_max", "retry_min",
    "retry_max",      "queue_lifetime",  "delay_warning",  "idle_close",    "max_transactions",
    "max_channels",   "bounce_from",     "sendmail",       "remote_command", "hostname",
    "user",           "pid_file",        "metrics_listen"};
constexpr std::string_view kRelayKeys[] = {
    "socket",         "socket_mode", "socket_group", "user",       "lease_grace",
    "lease_lifetime", "revoke_hold", "mx_addresses", "lease_file", "checkin_user"};
constexpr std::string_view kClientKeys[] = {
    "name",           "host",          "port",        "user",          "domains",
    "host_key",       "identity",      "concurrency", "max_connections", "retry_min",
    "retry_max",      "queue_lifetime", "delay_warning", "relay",       "relay_networks",
    "relay_senders",  "max_queue_messages", "max_queue_bytes",
    // recipients (shared/recipient_list.hpp) and their verification through the tunnel
    "recipients", "recipient_file", "verify_recipients", "verify_default", "verify_positive_ttl",
    "verify_negative_ttl", "verify_timeout"};

struct SectionKeys {
  std::string_view header;  // how the section is written in the file
  std::span<const std::string_view> keys;
};
constexpr SectionKeys kAllSections[] = {{"[spool]", kSpoolKeys},
                                        {"[milter]", kMilterKeys},
                                        {"[tunneld]", kTunneldKeys},
                                        {"[relay]", kRelayKeys},
                                        {"[[client]]", kClientKeys}};

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      char ca = static_cast<char>(std::tolower(static_cast<unsigned char>(a[i - 1])));
      char cb = static_cast<char>(std::tolower(static_cast<unsigned char>(b[j - 1])));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (ca == cb ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean \"x\"?)" or " (\"x\" belongs in [tunneld])" or "".
std::string suggestion(std::string_view key, std::span<const std::string_view> known,
                       std::string_view here) {
  std::string_view best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (auto k : known) {
    size_t d = editDistance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  // Close enough to be a typo: at most two edits, and fewer than half the word.
  if (!best.empty() && best_d <= 2 && best_d * 2 < std::max(key.size(), best.size()))
    return " (did you mean \"" + std::string(best) + "\"?)";
  for (const auto& s : kAllSections) {
    if (s.header == here) continue;
    for (auto k : s.keys)
      if (k == key)
        return " (\"" + std::string(key) + "\" belongs in " + std::string(s.header) + ")";
  }
  return {};
}

std::string quoted(std::string_view s) {
  std::string out = "\"";
  size_t n = 0;
  for (unsigned char c : s) {
    if (++n > 80) {
      out += "...";
      break;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// What a value is, for "expected X, got Y".
std::string describe(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return quoted(n.as_string()->get());
    case toml::node_type::integer:
      return "the integer " + std::to_string(n.as_integer()->get());
    case toml::node_type::floating_point: {
      std::ostringstream os;
      os << n.as_floating_point()->get();
      return "the float " + os.str();
    }
    case toml::node_type::boolean:
      return n.as_boolean()->get() ? "the boolean true" : "the boolean false";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isAlnum(char c) { return isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Letters, digits and hyphens in dot-separated labels of 1..63 (RFC 1123), 253 in all; `extra`
// admits one more character (the underscore some host names carry).
bool isDnsName(std::string_view s, char extra = 0) {
  if (s.empty() || s.size() > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    if (!isAlnum(c) && c != '-' && (extra == 0 || c != extra)) return false;
    if (c == '-' && label == 0) return false;
    if (++label > 63) return false;
  }
  return label > 0 && s.back() != '-';
}

bool isIpLiteral(std::string_view s, int family) {
  std::string z(s);
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(family, z.c_str(), buf) == 1;
}

// Printable ASCII without spaces: user and group names, which go to getpwnam/getgrnam or to sshd.
bool isAccountName(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f || c == ':' || c == '/') return false;
  return true;
}

bool hasControl(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

int base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (isDigit(c)) return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Strict base64: the standard alphabet, '=' padding only at the end (optional when unpadded is
// allowed), and unused low bits zero, so that one text means one byte string.
std::optional<std::string> base64Decode(std::string_view s, bool padded) {
  size_t pad = 0;
  while (!s.empty() && s.back() == '=') {
    s.remove_suffix(1);
    ++pad;
  }
  if (s.empty() || pad > 2) return std::nullopt;
  size_t rem = s.size() % 4;
  if (rem == 1) return std::nullopt;
  if (padded && (rem == 0 ? pad != 0 : pad != 4 - rem)) return std::nullopt;
  if (!padded && pad != 0) return std::nullopt;
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = base64Value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

constexpr std::string_view kHostKeyTypes[] = {
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"};

// Empty when `s` is a pinned host key dynmx can use, else what is wrong with it.
std::string hostKeyProblem(std::string_view s) {
  constexpr std::string_view kForms =
      "expected \"SHA256:\" and 43 base64 characters (as ssh-keygen -lf prints it) or a public key "
      "line \"ssh-ed25519 AAAA...\"";
  if (s.starts_with("SHA256:")) {
    auto b64 = s.substr(7);
    if (b64.size() != 43 || !base64Decode(b64, false))
      return std::string(kForms) +
             "; the fingerprint after \"SHA256:\" must be 43 base64 "
             "characters without '=' padding";
    return {};
  }
  auto sp = s.find_first_of(" \t");
  if (sp == std::string_view::npos) return std::string(kForms);
  std::string_view type = s.substr(0, sp);
  bool known = false;
  for (auto t : kHostKeyTypes) known = known || t == type;
  if (!known) {
    std::string list;
    for (auto t : kHostKeyTypes) list += (list.empty() ? "" : ", ") + std::string(t);
    return "unsupported key type " + quoted(type) + " (expected one of " + list + ")";
  }
  auto rest = s.substr(sp);
  rest.remove_prefix(std::min(rest.find_first_not_of(" \t"), rest.size()));
  std::string_view blob = rest.substr(0, rest.find_first_of(" \t"));
  auto key = base64Decode(blob, true);
  if (!key) return "the key data after " + std::string(type) + " is not valid base64";
  // An SSH public key blob starts with its own type name as a length-prefixed string.
  if (key->size() < 4) return "the key data after " + std::string(type) + " is too short";
  uint32_t n = (static_cast<uint32_t>(static_cast<unsigned char>((*key)[0])) << 24) |
               (static_cast<uint32_t>(static_cast<unsigned char>((*key)[1])) << 16) |
               (static_cast<uint32_t>(static_cast<unsigned char>((*key)[2])) << 8) |
               static_cast<uint32_t>(static_cast<unsigned char>((*key)[3]));
  if (n > key->size() - 4) return "the key data after " + std::string(type) + " is truncated";
  std::string_view inner(key->data() + 4, n);
  if (inner != type) return "the key data is a " + quoted(inner) + " key, not " + std::string(type);
  return {};
}

class Loader {
 public:
  Loader(const std::string& path, ConfigRole role) : path_(path), role_(role) {
    cfg_.path = path;
    cfg_.milter.socket = *parseSocketSpec(kDefaultMilterSocket, nullptr);
  }

  LoadResult load(std::string_view text) {
    toml::table root;
    try {
      root = toml::parse(text, std::string_view(path_));
    } catch (const toml::parse_error& e) {
      fail(at(e.source()), "", std::string(e.description()));
      return finish();
    }
    readRoot(root);
    crossChecks();
    return finish();
  }

 private:
  void fail(SourceLoc where, const std::string& key, std::string message) {
    if (!context_.empty()) message += context_;
    bad_.insert(key);
    errors_.push_back(ConfigError{std::move(where), key, std::move(message)});
  }

  SourceLoc at(const toml::source_region& r) const {
    return SourceLoc{path_, r.begin.line, r.begin.column};
  }
  SourceLoc at(const toml::node& n) const { return at(n.source()); }
  void fail(const toml::node& n, const std::string& key, std::string message) {
    fail(at(n), key, std::move(message));
  }
  void typeError(const toml::node& n, const std::string& key, std::string_view expected) {
    fail(n, key, "expected " + std::string(expected) + ", got " + describe(n));
  }

  LoadResult finish() {
    std::stable_sort(errors_.begin(), errors_.end(),
                     [](const ConfigError& a, const ConfigError& b) {
                       auto rank = [](const ConfigError& e) {
                         return std::pair<uint64_t, uint32_t>(
                             e.where.line == 0 ? UINT64_MAX : e.where.line, e.where.col);
                       };
                       return rank(a) < rank(b);
                     });
    LoadResult r;
    r.errors = std::move(errors_);
    if (r.errors.empty()) r.config = std::move(cfg_);
    return r;
  }

  // Calls f(key, node, keypath) for every known key of `t`; unknown keys are errors.
  template <class F>
  void forEachKey(const toml::table& t, const std::string& prefix,
                  std::span<const std::string_view> known, std::string_view header, F&& f) {
    for (auto&& [k, v] : t) {
      std::string keypath = prefix + "." + std::string(k.str());
      if (std::find(known.begin(), known.end(), k.str()) == known.end()) {
        fail(at(k.source()), keypath,
             "unknown key " + quoted(k.str()) + " in " + std::string(header) +
                 suggestion(k.str(), known, header));
        continue;
      }
      seen_[keypath] = at(v);
      f(k.str(), v, keypath);
    }
  }

  // ---- typed readers: each reports its own error and returns nullopt on failure ----

  std::optional<std::string> string(const toml::node& n, const std::string& key,
                                    std::string_view expected = "a string") {
    const auto* s = n.as_string();
    if (!s) {
      typeError(n, key, expected);
      return std::nullopt;
    }
    if (s->get().find('\0') != std::string::npos) {
      fail(n, key, "expected " + std::string(expected) + ", got a string with a NUL character");
      return std::nullopt;
    }
    return s->get();
  }

  std::optional<std::string> absolutePath(const toml::node& n, const std::string& key,
                                          bool allow_empty = false) {
    auto s = string(n, key, "an absolute path");
    if (!s) return std::nullopt;
    if (s->empty() && allow_empty) return s;
    if (s->empty() || (*s)[0] != '/' || hasControl(*s)) {
      fail(n, key, "expected an absolute path (starting with \"/\"), got " + quoted(*s));
      return std::nullopt;
    }
    return s;
  }

  std::optional<std::string> socketPath(const toml::node& n, const std::string& key) {
    auto s = absolutePath(n, key);
    if (s && s->size() > kMaxSocketPath) {
      fail(n, key,
           "socket path " + quoted(*s) + " is longer than " + std::to_string(kMaxSocketPath) +
               " bytes, the most a Unix socket allows");
      return std::nullopt;
    }
    return s;
  }

  std::optional<std::string> accountName(const toml::node& n, const std::string& key,
                                         bool allow_empty, std::string_view what) {
    auto s = string(n, key);
    if (!s) return std::nullopt;
    if (s->empty() && allow_empty) return s;
    if (!isAccountName(*s)) {
      fail(n, key,
           "expected " + std::string(what) + " (printable, no spaces, ':' or '/'), got " +
               quoted(*s));
      return std::nullopt;
    }
    return s;
  }

  std::optional<std::string> text(const toml::node& n, const std::string& key,
                                  std::string_view what) {
    auto s = string(n, key);
    if (!s) return std::nullopt;
    if (s->empty() || hasControl(*s)) {
      fail(n, key,
           "expected " + std::string(what) + " (not empty, no control characters), got " +
               quoted(*s));
      return std::nullopt;
    }
    return s;
  }

  std::optional<int64_t> integer(const toml::node& n, const std::string& key, int64_t lo,
                                 int64_t hi) {
    std::string expected = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    const auto* i = n.as_integer();
    if (!i) {
      typeError(n, key, expected);
      return std::nullopt;
    }
    if (i->get() < lo || i->get() > hi) {
      fail(n, key, "expected " + expected + ", got " + std::to_string(i->get()));
      return std::nullopt;
    }
    return i->get();
  }

  void duration(const toml::node& n, const std::string& key, Seconds& out,
                bool allow_zero = false) {
    const auto* s = n.as_string();
    if (!s) {
      std::string hint;
      if (const auto* i = n.as_integer()) hint = " (write \"" + std::to_string(i->get()) + "s\")";
      fail(n, key, std::string("expected ") + kDurationExamples + ", got " + describe(n) + hint);
      return;
    }
    auto d = parseDuration(s->get());
    if (!d) {
      fail(n, key, std::string("expected ") + kDurationExamples + ", got " + quoted(s->get()));
      return;
    }
    if (d->count() == 0 && !allow_zero) {
      fail(n, key, "expected a duration of more than zero, got " + quoted(s->get()));
      return;
    }
    out = *d;
  }

  void mode(const toml::node& n, const std::string& key, mode_t& out) {
    constexpr const char* kExpected = "a file mode such as \"0660\" (a string of octal digits)";
    if (const auto* i = n.as_integer()) {
      // Only an integer written in octal (0o660) means what it looks like; a decimal 660 is 01224.
      if (i->flags() != toml::value_flags::format_as_octal) {
        fail(n, key,
             std::string("expected ") + kExpected +
                 " or an octal integer such as 0o660, got "
                 "the decimal integer " +
                 std::to_string(i->get()) + " (write \"0" + std::to_string(i->get()) + "\" or 0o" +
                 std::to_string(i->get()) + " if that was meant as octal)");
        return;
      }
      if (i->get() < 0 || i->get() > 0777) {
        fail(n, key,
             "expected a file mode from 0000 to 0777, got 0o" +
                 octalMode(static_cast<mode_t>(i->get() & 0xffffff)));
        return;
      }
      out = static_cast<mode_t>(i->get());
      return;
    }
    auto s = string(n, key, kExpected);
    if (!s) return;
    bool ok = !s->empty() && s->size() <= 4;
    unsigned v = 0;
    for (char c : *s) {
      if (c < '0' || c > '7')
        ok = false;
      else
        v = v * 8 + static_cast<unsigned>(c - '0');
    }
    if (!ok || v > 0777) {
      fail(n, key,
           std::string("expected ") + kExpected + " from \"0000\" to \"0777\", got " + quoted(*s));
      return;
    }
    out = static_cast<mode_t>(v);
  }

  // A size: an integer number of bytes or a string such as "50M" (parseSize).
  std::optional<uint64_t> sizeValue(const toml::node& v, const std::string& key, bool allow_zero) {
    std::optional<uint64_t> size;
    if (const auto* i = v.as_integer()) {
      if (i->get() >= 0) size = static_cast<uint64_t>(i->get());
    } else if (const auto* s = v.as_string()) {
      size = parseSize(s->get());
    } else {
      typeError(v, key, kSizeExamples);
      return std::nullopt;
    }
    if (!size || (*size == 0 && !allow_zero)) {
      fail(v, key,
           std::string("expected ") + kSizeExamples +
               (allow_zero ? " (0: no limit)" : " (more than zero)") + ", got " + describe(v));
      return std::nullopt;
    }
    return size;
  }

  // ---- sections ----

  void readRoot(const toml::table& root) {
    for (auto&& [k, v] : root) {
      if (std::find(std::begin(kSections), std::end(kSections), k.str()) != std::end(kSections))
        continue;
      std::string hint = suggestion(k.str(), kSections, "");
      if (hint.empty())
        hint = " (known sections: [spool], [milter], [tunneld], [relay], [[client]])";
      fail(at(k.source()), std::string(k.str()),
           "unknown section or key " + quoted(k.str()) + hint);
    }
    // [tunneld] first: its retry values are the defaults every [[client]] starts from.
    if (const auto* n = root.get("spool")) readSpool(*n);
    if (const auto* n = root.get("milter")) readMilter(*n);
    if (const auto* n = root.get("tunneld")) readTunneld(*n);
    if (const auto* n = root.get("relay")) readRelay(*n);
    if (const auto* n = root.get("client")) readClients(*n);
    relayChecks();
  }

  void readSpool(const toml::node& node) {
    const auto* t = node.as_table();
    if (!t) return typeError(node, "spool", "a table ([spool])");
    auto& c = cfg_.spool;
    forEachKey(*t, "spool", kSpoolKeys, "[spool]",
               [&](std::string_view k, const toml::node& v, const std::string& key) {
                 if (k == "dir") {
                   if (auto s = absolutePath(v, key)) c.dir = *s;
                 } else if (k == "max_message_size") {
                   if (auto size = sizeValue(v, key, /*allow_zero=*/false))
                     c.max_message_size = *size;
                 } else if (k == "min_free") {
                   if (auto size = sizeValue(v, key, /*allow_zero=*/true)) c.min_free = *size;
                 }
               });
  }

  void readMilter(const toml::node& node) {
    const auto* t = node.as_table();
    if (!t) return typeError(node, "milter", "a table ([milter])");
    auto& c = cfg_.milter;
    forEachKey(*t, "milter", kMilterKeys, "[milter]",
               [&](std::string_view k, const toml::node& v, const std::string& key) {
                 if (k == "socket") {
                   auto s = string(v, key, "a socket such as \"unix:/run/dynmx/milter.sock\"");
                   if (!s) return;
                   std::string why;
                   if (auto spec = parseSocketSpec(*s, &why))
                     c.socket = *spec;
                   else
                     fail(v, key, why + ", got " + quoted(*s));
                 } else if (k == "socket_mode") {
                   mode(v, key, c.socket_mode);
                 } else if (k == "socket_group") {
                   if (auto s = accountName(v, key, true, "a group name")) c.socket_group = *s;
                 } else if (k == "user") {
                   if (auto s = accountName(v, key, true, "a user name")) c.user = *s;
                 } else if (k == "on_error") {
                   auto s = string(v, key, "\"tempfail\" or \"accept\"");
                   if (!s) return;
                   if (*s == "tempfail")
                     c.on_error = OnError::Tempfail;
                   else if (*s == "accept")
                     c.on_error = OnError::Accept;
                   else
                     fail(v, key, "expected \"tempfail\" or \"accept\", got " + quoted(*s));
                 }
               });
  }

  void readRetryKey(std::string_view k, const toml::node& v, const std::string& key,
                    RetryPolicy& r) {
    if (k == "retry_min")
      duration(v, key, r.retry_min);
    else if (k == "retry_max")
      duration(v, key, r.retry_max);
    else if (k == "queue_lifetime")
      duration(v, key, r.queue_lifetime);
    else if (k == "delay_warning")
      duration(v, key, r.delay_warning, /*allow_zero=*/true);
  }

  void readTunneld(const toml::node& node) {
    const auto* t = node.as_table();
    if (!t) return typeError(node, "tunneld", "a table ([tunneld])");
    auto& c = cfg_.tunneld;
    forEachKey(*t, "tunneld", kTunneldKeys, "[tunneld]",
               [&](std::string_view k, const toml::node& v, const std::string& key) {
                 if (k == "control_socket") {
                   if (auto s = socketPath(v, key)) c.control_socket = *s;
                 } else if (k == "control_group") {
                   if (auto s = accountName(v, key, true, "a group name")) c.control_group = *s;
                 } else if (k == "control_mode") {
                   mode(v, key, c.control_mode);
                 } else if (k == "identity") {
                   readIdentity(v, key, /*allow_empty=*/false, c.identity, c.identity_old);
                 } else if (k == "known_hosts") {
                   if (auto s = absolutePath(v, key)) c.known_hosts = *s;
                 } else if (k == "keepalive") {
                   duration(v, key, c.keepalive);
                 } else if (k == "connect_timeout") {
                   duration(v, key, c.connect_timeout);
                 } else if (k == "reconnect_min") {
                   duration(v, key, c.reconnect_min);
                 } else if (k == "reconnect_max") {
                   duration(v, key, c.reconnect_max);
                 } else if (k == "idle_close") {
                   duration(v, key, c.idle_close);
                 } else if (k == "max_transactions") {
                   if (auto i = integer(v, key, 1, 1000000))
                     c.max_transactions = static_cast<uint32_t>(*i);
                 } else if (k == "max_channels") {
                   if (auto i = integer(v, key, 0, kMaxChannels))
                     c.max_channels = static_cast<uint32_t>(*i);
                 } else if (k == "bounce_from") {
                   if (auto s = text(v, key, "a From: name or address")) c.bounce_from = *s;
                 } else if (k == "sendmail") {
                   readSendmail(v, key);
                 } else if (k == "remote_command") {
                   if (auto s = text(v, key, "a command line")) c.remote_command = *s;
                 } else if (k == "hostname") {
                   auto s = string(v, key, "a host name");
                   if (!s) return;
                   if (!s->empty() && !isDnsName(*s))
                     return fail(v, key,
                                 "expected a host name (letters, digits, '-' and "
                                 "'.'), or \"\" for the system's name, got " +
                                     quoted(*s));
                   c.hostname = *s;
                 } else if (k == "user") {
                   if (auto s = accountName(v, key, true, "a user name")) c.user = *s;
                 } else if (k == "pid_file") {
                   if (auto s = absolutePath(v, key, /*allow_empty=*/true)) c.pid_file = *s;
                 } else if (k == "metrics_listen") {
                   auto s = string(v, key, "an address and port");
                   if (!s || s->empty()) return;  // "" is the same as leaving it out
                   if (auto a = ListenAddress::parse(*s))
                     c.metrics_listen = *a;
                   else
                     fail(v, key,
                          "expected an address and port such as \"127.0.0.1:9187\" or "
                          "\"[::1]:9187\", got " +
                              quoted(*s));
                 } else {
                   readRetryKey(k, v, key, c.retry);
                 }
               });
    orderCheck("tunneld.reconnect_min", c.reconnect_min, "tunneld.reconnect_max", c.reconnect_max);
    orderCheck("tunneld.retry_min", c.retry.retry_min, "tunneld.retry_max", c.retry.retry_max);
  }

  // identity: a path, or an array of one or two (key rotation: the new key first, tried first,
  // then the old one). The elements' places are kept (seen_) for the checks of the files.
  void readIdentity(const toml::node& v, const std::string& key, bool allow_empty,
                    std::string& first, std::string& old) {
    constexpr const char* kExpected =
        "an absolute path, or an array of two (the new key first, then the old one)";
    if (v.is_string()) {
      if (auto s = absolutePath(v, key, allow_empty)) {
        first = *s;
        old.clear();
      }
      return;
    }
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    if (a->empty() || a->size() > 2)
      return fail(v, key,
                  std::string("expected ") + kExpected + ", got " +
                      (a->empty() ? std::string("[]")
                                  : "an array of " + std::to_string(a->size()) + " keys"));
    std::vector<std::string> paths;
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      seen_[ekey] = at(*a->get(i));
      if (auto s = absolutePath(*a->get(i), ekey)) paths.push_back(*s);
    }
    if (paths.size() != a->size()) {
      bad_.insert(key);
      return;
    }
    if (paths.size() == 2 && paths[0] == paths[1])
      return fail(*a->get(1), key + "[1]", "the same key as " + key + "[0], " + quoted(paths[0]));
    first = paths[0];
    old = paths.size() == 2 ? paths[1] : "";
  }

  void readSendmail(const toml::node& v, const std::string& key) {
    constexpr const char* kExpected =
        "an array of strings, the sendmail command and its first arguments, such as "
        "[\"/usr/sbin/sendmail\"]";
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    if (a->empty()) return fail(v, key, std::string("expected ") + kExpected + ", got []");
    std::vector<std::string> argv;
    bool ok = true;
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      auto s = string(*a->get(i), ekey);
      if (!s) {
        ok = false;
        continue;
      }
      if (i == 0 && (s->empty() || (*s)[0] != '/')) {
        fail(*a->get(i), ekey,
             "expected the absolute path of the sendmail program (no shell is used), got " +
                 quoted(*s));
        ok = false;
      }
      argv.push_back(*s);
    }
    if (ok) cfg_.tunneld.sendmail = std::move(argv);
  }

  // min <= max, reported on whichever of the two keys is set in the file (the max when both are).
  void orderCheck(const std::string& min_key, Seconds min, const std::string& max_key,
                  Seconds max) {
    if (bad_.count(min_key) || bad_.count(max_key) || min <= max) return;
    auto short_name = [](const std::string& k) { return k.substr(k.rfind('.') + 1); };
    auto inherited = [&](const std::string& k) {
      if (seen_.count(k)) return std::string();
      return std::string(k.starts_with("client") ? " (from [tunneld])" : " (the default)");
    };
    std::string msg = short_name(max_key) + " " + formatDuration(max) + inherited(max_key) +
                      " is less than " + short_name(min_key) + " " + formatDuration(min) +
                      inherited(min_key) + "; expected " + short_name(min_key) +
                      " <= " + short_name(max_key);
    if (auto it = seen_.find(max_key); it != seen_.end())
      fail(it->second, max_key, msg);
    else if (auto it2 = seen_.find(min_key); it2 != seen_.end())
      fail(it2->second, min_key, msg);
  }

  // [[client]] host: a DNS name or an IP literal.
  void readClientHost(const toml::node& v, const std::string& key, ClientConfig& c) {
    auto s = string(v, key, "a host name or address");
    if (!s) return;
    if (!isDnsName(*s, '_') && !isIpLiteral(*s, AF_INET) && !isIpLiteral(*s, AF_INET6))
      return fail(v, key, "expected a host name or an IPv4 or IPv6 address, got " + quoted(*s));
    c.host = *s;
  }

  // [[client]] host_key: a pinned public key line or a SHA256: fingerprint; "" is the same as
  // leaving it out (verify with known_hosts).
  void readHostKey(const toml::node& v, const std::string& key, ClientConfig& c) {
    auto s = string(v, key, "a public key line or a SHA256: fingerprint");
    if (!s) return;
    std::string trimmed = *s;
    while (!trimmed.empty() && (trimmed.back() == ' ' || trimmed.back() == '\n'))
      trimmed.pop_back();
    if (auto why = hostKeyProblem(trimmed); !trimmed.empty() && !why.empty())
      return fail(v, key, why);
    c.host_key = trimmed;
  }

  void readClients(const toml::node& node) {
    const auto* a = node.as_array();
    if (a && a->empty()) return;  // "client = []": no clients
    if (!a || !a->is_array_of_tables()) {
      std::string hint =
          node.is_table() ? " (write [[client]], with double brackets, once per client)" : "";
      return typeError(node, "client", "an array of tables ([[client]])" + hint);
    }
    std::map<std::string, size_t> names;                         // name -> index in clients
    std::map<std::string, std::pair<size_t, SourceLoc>> claims;  // domain -> (client index, where)
    for (size_t i = 0; i < a->size(); ++i) {
      const auto& t = *a->get(i)->as_table();
      std::string prefix = "client[" + std::to_string(i) + "]";
      ClientConfig c;
      c.retry = cfg_.tunneld.retry;
      c.loc = at(t);
      context_.clear();
      // The name first, so that every other message about this client can mention it.
      if (const auto* n = t.get("name")) {
        if (auto s = string(*n, prefix + ".name")) {
          c.name = *s;
          if (!s->empty()) context_ = " (client " + quoted(*s) + ")";
        }
      }
      std::vector<std::pair<std::string, SourceLoc>> domains_at;
      forEachKey(
          t, prefix, kClientKeys, "[[client]]",
          [&](std::string_view k, const toml::node& v, const std::string& key) {
            if (k == "name") {
              validateClientName(v, key, c.name, names, i, *a);
            } else if (k == "host") {
              readClientHost(v, key, c);
            } else if (k == "port") {
              if (auto p = integer(v, key, 1, 65535)) c.port = static_cast<uint16_t>(*p);
            } else if (k == "user") {
              if (auto s = accountName(v, key, false, "the login name on the client")) c.user = *s;
            } else if (k == "domains") {
              readDomains(v, key, c, domains_at);
            } else if (k == "host_key") {
              readHostKey(v, key, c);
            } else if (k == "identity") {
              // "" is the same as leaving it out: use [tunneld] identity.
              readIdentity(v, key, /*allow_empty=*/true, c.identity, c.identity_old);
            } else if (k == "concurrency") {
              if (auto n = integer(v, key, 1, kMaxConcurrency))
                c.concurrency = static_cast<uint32_t>(*n);
            } else if (k == "max_connections") {
              if (auto n = integer(v, key, 1, kMaxConnections))
                c.max_connections = static_cast<uint32_t>(*n);
            } else if (k == "relay" || k == "relay_networks" || k == "relay_senders") {
              readClientRelayKey(k, v, key, c);
            } else if (k == "max_queue_messages") {
              if (auto n = integer(v, key, 0, kMaxQueueMessages))
                c.max_queue_messages = static_cast<uint64_t>(*n);
            } else if (k == "max_queue_bytes") {
              if (auto size = sizeValue(v, key, /*allow_zero=*/true)) c.max_queue_bytes = *size;
            } else if (k == "recipient_file") {
              if (auto s = absolutePath(v, key)) c.recipient_file = *s;
            } else if (k.starts_with("verify_")) {
              readVerifyKey(k, v, key, c);
            } else if (k != "recipients") {  // recipients: below, once the domains are known
              readRetryKey(k, v, key, c.retry);
            }
          });
      for (const char* req : {"name", "host", "domains"}) {
        if (!t.contains(req))
          fail(c.loc, prefix, "missing required key " + quoted(req) + " in [[client]]");
      }
      if (const auto* r = t.get("recipients")) readRecipients(*r, prefix + ".recipients", c);
      clientOrderCheck(prefix, c);
      claimDomains(i, c, domains_at, claims);
      cfg_.clients.push_back(std::move(c));
      context_.clear();
    }
  }

  // A domain belongs to one client: reports the later claim, naming the earlier client.
  void claimDomains(size_t i, const ClientConfig& c,
                    const std::vector<std::pair<std::string, SourceLoc>>& domains_at,
                    std::map<std::string, std::pair<size_t, SourceLoc>>& claims) {
    for (size_t d = 0; d < c.domains.size() && d < domains_at.size(); ++d) {
      const auto& [dkey, dloc] = domains_at[d];
      auto [it, fresh] = claims.emplace(c.domains[d], std::make_pair(i, dloc));
      if (fresh) continue;
      size_t first = it->second.first;
      if (first == i) {
        fail(dloc, dkey,
             "domain " + quoted(c.domains[d]) + " is listed twice (first at line " +
                 std::to_string(it->second.second.line) + ")");
      } else {
        const auto& other = cfg_.clients[first].name;
        fail(dloc, dkey,
             "domain " + quoted(c.domains[d]) + " is already claimed by client " + quoted(other) +
                 " (client[" + std::to_string(first) + "], line " +
                 std::to_string(it->second.second.line) +
                 "); a domain can belong to one client only");
      }
    }
  }

  void validateClientName(const toml::node& v, const std::string& key, const std::string& name,
                          std::map<std::string, size_t>& names, size_t index,
                          const toml::array& all) {
    if (!v.is_string()) return;  // the type error was reported when the name was read
    bool ok = !name.empty() && name.size() <= kMaxClientName && name[0] != '.';
    for (char c : name) ok = ok && (isAlnum(c) || c == '.' || c == '_' || c == '-');
    std::string context = std::exchange(context_, std::string());  // the name speaks for itself
    if (!ok)
      fail(v, key,
           "expected a client name of 1 to " + std::to_string(kMaxClientName) +
               " letters, digits, '.', '_' or '-', not starting with '.' (it is "
               "used in file names and logs), got " +
               quoted(name));
    auto [it, fresh] = names.emplace(name, index);
    if (ok && !fresh) {
      const auto& first = *all.get(it->second)->as_table();
      fail(v, key,
           "duplicate client name " + quoted(name) + "; the first is client[" +
               std::to_string(it->second) + "] at line " +
               std::to_string(first.get("name")->source().begin.line));
    }
    context_ = std::move(context);
  }

  void readDomains(const toml::node& v, const std::string& key, ClientConfig& c,
                   std::vector<std::pair<std::string, SourceLoc>>& where) {
    constexpr const char* kExpected =
        "a non-empty array of domain names such as [\"example.org\", \".example.org\"]";
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    if (a->empty()) return fail(v, key, std::string("expected ") + kExpected + ", got []");
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      const auto& e = *a->get(i);
      auto s = string(e, ekey, "a domain name");
      if (!s) continue;
      std::string d = *s;
      for (auto& ch : d) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (d.size() > 1 && d.back() == '.') d.pop_back();  // "example.org." is the same name
      std::string_view name = d;
      if (name.starts_with(".")) name.remove_prefix(1);
      if (!isDnsName(name)) {
        fail(e, ekey,
             "expected a domain name (letters, digits, '-' and '.'; a leading '.' means "
             "every subdomain), got " +
                 quoted(*s));
        continue;
      }
      c.domains.push_back(d);
      where.emplace_back(ekey, at(e));
    }
  }

  // After the domains: an entry outside them would never be consulted, and is an error.
  void readRecipients(const toml::node& v, const std::string& key, ClientConfig& c) {
    constexpr const char* kExpected =
        "a non-empty array of addresses such as [\"user@example.org\", \"@other.example.org\"] "
        "(leave the key out to accept every recipient)";
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    if (a->empty()) return fail(v, key, std::string("expected ") + kExpected + ", got []");
    auto domain_ok = clientDomainPredicate(c.domains);
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      const auto& e = *a->get(i);
      auto s = string(e, ekey, "an address \"user@domain\" or \"@domain\"");
      if (!s) continue;
      std::string why;
      if (auto entry = normalizeRecipientEntry(*s, &why, domain_ok))
        c.recipients.push_back(std::move(*entry));
      else
        fail(e, ekey, why);
    }
  }

  void readVerifyKey(std::string_view k, const toml::node& v, const std::string& key,
                     ClientConfig& c) {
    if (k == "verify_recipients") {
      if (const auto* b = v.as_boolean()) return void(c.verify_recipients = b->get());
      return typeError(v, key, "true or false");
    }
    if (k == "verify_default") {
      auto s = string(v, key, "\"accept\" or \"tempfail\"");
      if (!s) return;
      if (*s == "accept" || *s == "tempfail")
        return void(c.verify_default = *s == "accept" ? OnError::Accept : OnError::Tempfail);
      return fail(v, key, "expected \"accept\" or \"tempfail\", got " + quoted(*s));
    }
    Seconds* out = k == "verify_positive_ttl"   ? &c.verify_positive_ttl
                   : k == "verify_negative_ttl" ? &c.verify_negative_ttl
                                                : &c.verify_timeout;
    Seconds d = *out;
    duration(v, key, d);
    if (k == "verify_timeout" && d > Seconds(30))
      return fail(v, key,
                  "expected at most \"30s\": the MTA waits for dynmx-milter's RCPT answer (keep "
                  "it below the milter's R: timeout, 10s in sendmail's usual T=), got " +
                      formatDuration(d));
    *out = d;
  }

  // dynmx-milter and dynmx-enqueue read the recipient file: a bad one stops them at start-up.
  void checkRecipientFile(const ClientConfig& c, const std::string& prefix) {
    std::string key = prefix + ".recipient_file";
    if (c.recipient_file.empty() || bad_.count(key)) return;
    if (role_ != ConfigRole::Milter && role_ != ConfigRole::Enqueue) return;
    Result<RecipientList> r = loadRecipientFile(c.recipient_file, clientDomainPredicate(c.domains));
    if (r) return;
    std::string_view all = r.error().message;
    while (!all.empty()) {
      std::string_view one = all.substr(0, all.find('\n'));
      all.remove_prefix(std::min(all.size(), one.size() + 1));
      fail(where(key), key, std::string(one));
    }
  }

  void clientOrderCheck(const std::string& prefix, const ClientConfig& c) {
    std::string min_key = prefix + ".retry_min", max_key = prefix + ".retry_max";
    // Inherited values were checked in [tunneld]; judge the client only when it sets one itself.
    if (!seen_.count(min_key) && !seen_.count(max_key)) return;
    if (bad_.count("tunneld.retry_min") || bad_.count("tunneld.retry_max")) {
      if (!seen_.count(min_key) || !seen_.count(max_key)) return;
    }
    orderCheck(min_key, c.retry.retry_min, max_key, c.retry.retry_max);
  }

  // ---- [relay] and the relay keys of [[client]] ----

  void readRelay(const toml::node& node) {
    const auto* t = node.as_table();
    if (!t) return typeError(node, "relay", "a table ([relay])");
    auto& c = cfg_.relay;
    forEachKey(*t, "relay", kRelayKeys, "[relay]",
               [&](std::string_view k, const toml::node& v, const std::string& key) {
                 if (k == "socket") {
                   if (auto s = socketPath(v, key)) c.socket = *s;
                 } else if (k == "socket_mode") {
                   mode(v, key, c.socket_mode);
                 } else if (k == "socket_group") {
                   if (auto s = accountName(v, key, true, "a group name")) c.socket_group = *s;
                 } else if (k == "user") {
                   if (auto s = accountName(v, key, true, "a user name")) c.user = *s;
                 } else if (k == "lease_grace") {
                   duration(v, key, c.lease_grace);
                 } else if (k == "lease_lifetime") {
                   duration(v, key, c.lease_lifetime);
                 } else if (k == "revoke_hold") {
                   duration(v, key, c.revoke_hold, /*allow_zero=*/true);
                 } else if (k == "mx_addresses") {
                   readMxAddresses(v, key);
                 } else if (k == "lease_file") {
                   if (auto s = absolutePath(v, key)) c.lease_file = *s;
                 } else if (k == "checkin_user") {
                   if (auto s = accountName(v, key, true, "a user name")) c.checkin_user = *s;
                 }
               });
  }

  void readMxAddresses(const toml::node& v, const std::string& key) {
    constexpr const char* kExpected =
        "an array of this host's IPv4 or IPv6 addresses as clients see them, such as "
        "[\"192.0.2.25\", \"2001:db8::25\"]";
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    std::vector<InetAddr> out;
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      const auto& e = *a->get(i);
      auto s = string(e, ekey, "an IPv4 or IPv6 address");
      if (!s) continue;
      auto addr = InetAddr::parse(*s);
      if (!addr || addr->isUnspecified()) {
        fail(e, ekey,
             "expected an IPv4 or IPv6 address such as \"192.0.2.25\" or \"2001:db8::25\" (not "
             "a network, a name or the unspecified address), got " +
                 quoted(*s));
        continue;
      }
      out.push_back(*addr);
    }
    cfg_.relay.mx_addresses = std::move(out);
  }

  void readClientRelayKey(std::string_view k, const toml::node& v, const std::string& key,
                          ClientConfig& c) {
    if (k == "relay_networks") return readRelayNetworks(v, key, c);
    if (k == "relay_senders") return readRelaySenders(v, key, c);
    if (const auto* b = v.as_boolean())
      c.relay = b->get();
    else
      typeError(v, key, "true or false");
  }

  // true, false, or an array of "user@domain" / "@domain" (lower-cased).
  void readRelaySenders(const toml::node& v, const std::string& key, ClientConfig& c) {
    constexpr const char* kExpected =
        "true (the client's domains only), false, or an array of addresses and domains such as "
        "[\"alice@example.net\", \"@example.org\"]";
    if (const auto* b = v.as_boolean()) {
      if (b->get())
        c.relay_senders.emplace();
      else
        c.relay_senders.reset();
      return;
    }
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    c.relay_senders.emplace();
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      const auto& e = *a->get(i);
      auto s = string(e, ekey,
                      "an address such as \"alice@example.net\" or a domain \"@example.org\"");
      if (!s) continue;
      std::string lower = *s;
      for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      size_t at = lower.rfind('@');
      std::string domain = at == std::string::npos ? std::string() : lower.substr(at + 1);
      if (at == std::string::npos || !isDnsName(domain) ||
          lower.find_first_of(" \t<>,\"") != std::string::npos) {
        fail(e, ekey,
             "expected an address such as \"alice@example.net\" or a domain written "
             "\"@example.org\", got " + quoted(*s));
        continue;
      }
      c.relay_senders->push_back(lower);
    }
  }

  void readRelayNetworks(const toml::node& v, const std::string& key, ClientConfig& c) {
    constexpr const char* kExpected =
        "a non-empty array of networks such as [\"192.0.2.0/24\", \"2001:db8::/32\"] (leave the "
        "key out to allow any address)";
    const auto* a = v.as_array();
    if (!a) return typeError(v, key, kExpected);
    if (a->empty()) return fail(v, key, std::string("expected ") + kExpected + ", got []");
    for (size_t i = 0; i < a->size(); ++i) {
      std::string ekey = key + "[" + std::to_string(i) + "]";
      const auto& e = *a->get(i);
      auto s = string(e, ekey, "a network such as \"192.0.2.0/24\"");
      if (!s) continue;
      auto net = InetNetwork::parse(*s);
      if (!net) {
        fail(e, ekey,
             "expected a network in CIDR form such as \"192.0.2.0/24\" or \"2001:db8::/32\" (a "
             "bare address is one host), got " +
                 quoted(*s));
        continue;
      }
      InetNetwork base = *net;
      for (unsigned bit = base.prefix_len; bit < 128; ++bit)
        base.addr.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
      if (base.addr != net->addr) {
        fail(e, ekey,
             "network " + quoted(*s) + " has bits set after its prefix length; did you mean " +
                 quoted(base.str()) + "?");
        continue;
      }
      c.relay_networks.push_back(*net);
    }
  }

  // A tunnel lease is renewed by traffic, keepalives included: a grace no longer than the
  // keepalive interval would let the lease of a quiet, live connection lapse between two probes.
  void relayChecks() {
    bool any = std::any_of(cfg_.clients.begin(), cfg_.clients.end(),
                           [](const ClientConfig& c) { return c.relay; });
    const auto& r = cfg_.relay;
    if (!any || bad_.count("relay.lease_grace") || bad_.count("tunneld.keepalive") ||
        r.lease_grace > cfg_.tunneld.keepalive)
      return;
    std::string key = seen_.count("relay.lease_grace") ? "relay.lease_grace" : "tunneld.keepalive";
    fail(where(key), key,
         "lease_grace " + formatDuration(r.lease_grace) + " is not longer than keepalive " +
             formatDuration(cfg_.tunneld.keepalive) +
             "; a tunnel lease is renewed by keepalives, so expected lease_grace > keepalive "
             "(the default lease_grace is 2m)");
  }

  // ---- checks of files on disk, which depend on the program loading the file ----

  void crossChecks() {
    const auto& t = cfg_.tunneld;
    bool tunneld = role_ == ConfigRole::Tunneld;
    bool default_identity_used = false;
    for (size_t i = 0; i < cfg_.clients.size(); ++i) {
      const auto& c = cfg_.clients[i];
      std::string prefix = "client[" + std::to_string(i) + "]";
      context_ = c.name.empty() ? std::string() : " (client " + quoted(c.name) + ")";
      checkRecipientFile(c, prefix);
      if (c.identity.empty()) {
        default_identity_used = true;
      } else if (!bad_.count(prefix + ".identity")) {
        checkIdentity(c.identity, c.identity_old, prefix + ".identity", tunneld);
      }
      if (tunneld && c.host_key.empty() && !bad_.count(prefix + ".host_key") &&
          !bad_.count("tunneld.known_hosts")) {
        struct stat st {};
        std::string problem;
        if (::stat(t.known_hosts.c_str(), &st) != 0)
          problem = errnoText(errno);
        else if (!S_ISREG(st.st_mode))
          problem = "not a regular file";
        if (!problem.empty())
          fail(c.loc, prefix,
               "no host_key, and the known_hosts file " + t.known_hosts +
                   " (tunneld.known_hosts) "
                   "cannot verify the host: " +
                   problem +
                   "; pin the key with host_key = "
                   "\"ssh-ed25519 AAAA...\" or put the host's key in " +
                   t.known_hosts);
      }
      context_.clear();
    }
    if (!bad_.count("tunneld.identity") &&
        (!tunneld || default_identity_used || seen_.count("tunneld.identity")))
      checkIdentity(t.identity, t.identity_old, "tunneld.identity",
                    tunneld && (default_identity_used || seen_.count("tunneld.identity")));
    if (tunneld && !bad_.count("tunneld.known_hosts")) {
      struct stat st {};
      if (::stat(t.known_hosts.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 002))
        fail(where("tunneld.known_hosts"), "tunneld.known_hosts",
             "the known_hosts file " + t.known_hosts + " has mode " +
                 octalMode(st.st_mode & 07777) +
                 " and anyone can write to it, so anyone could add a host key; fix it with: "
                 "chmod o-w " +
                 t.known_hosts);
    }
  }

  SourceLoc where(const std::string& key) const {
    auto it = seen_.find(key);
    return it != seen_.end() ? it->second : SourceLoc{path_, 0, 0};
  }

  // Both keys of an identity, each at its own place when it was written as an array.
  void checkIdentity(const std::string& first, const std::string& old, const std::string& key,
                     bool must_exist) {
    bool array = seen_.count(key + "[0]") != 0;
    checkPrivateKey(first, array ? key + "[0]" : key, must_exist);
    if (!old.empty()) checkPrivateKey(old, key + "[1]", must_exist);
  }

  // A private key must be a regular file that only its owner can read. Outside tunneld (which
  // needs the file) a missing or unreadable path is not this program's business.
  void checkPrivateKey(const std::string& path, const std::string& key, bool must_exist) {
    std::string origin = seen_.count(key) ? "" : " (the default)";
    auto problem = privateKeyProblem(path);
    if (!problem) return;
    switch (problem->kind) {
      case PrivateKeyProblem::Kind::CannotStat:
        if (must_exist)
          fail(where(key), key,
               "identity file " + path + origin + ": " + errnoText(problem->err) +
                   "; dynmx-tunneld needs the private key it logs in with");
        return;
      case PrivateKeyProblem::Kind::NotRegular:
        fail(where(key), key, "identity file " + path + origin + " is not a regular file");
        return;
      case PrivateKeyProblem::Kind::NotPrivate:
        fail(where(key), key,
             "identity file " + path + origin + " has mode " + octalMode(problem->mode) +
                 " and is accessible by group or others; a private key must be "
                 "private: chmod 600 " +
                 path);
        return;
    }
  }

  std::string path_;
  ConfigRole role_;
  Config cfg_;
  std::vector<ConfigError> errors_;
  std::map<std::string, SourceLoc> seen_;  // key path -> where its value is, for keys in the file
  std::set<std::string> bad_;              // key paths that already have an error
  std::string context_;                    // " (client \"name\")" while reading a client
};

}  // namespace

std::string ConfigError::str() const {
  std::string s = where.file;
  if (where.line != 0) s += ":" + std::to_string(where.line) + ":" + std::to_string(where.col);
  s += ": ";
  if (!key.empty()) s += key + ": ";
  return s + message;
}

std::optional<SocketSpec> parseSocketSpec(std::string_view s, std::string* why) {
  auto failWith = [&](std::string msg) -> std::optional<SocketSpec> {
    if (why) *why = std::move(msg);
    return std::nullopt;
  };
  constexpr const char* kForms =
      "expected \"unix:/absolute/path\", \"local:/absolute/path\", \"inet:port@host\", "
      "\"inet:port\" or \"inet6:port@host\"";
  auto colon = s.find(':');
  if (colon == std::string_view::npos) return failWith(kForms);
  std::string_view proto = s.substr(0, colon), rest = s.substr(colon + 1);
  SocketSpec spec;
  if (proto == "unix" || proto == "local") {
    if (rest.empty() || rest[0] != '/' || hasControl(rest) ||
        rest.find('\0') != std::string_view::npos)
      return failWith(std::string(kForms) + " (a Unix socket needs an absolute path)");
    if (rest.size() > kMaxSocketPath)
      return failWith("expected a Unix socket path of at most " + std::to_string(kMaxSocketPath) +
                      " bytes");
    spec.kind = SocketSpec::Kind::Unix;
    spec.path = std::string(rest);
    spec.text = "unix:" + spec.path;
    return spec;
  }
  if (proto != "inet" && proto != "inet6") return failWith(kForms);
  spec.kind = proto == "inet" ? SocketSpec::Kind::Inet : SocketSpec::Kind::Inet6;
  auto at = rest.find('@');
  std::string_view port = rest.substr(0, at);
  std::string_view host = at == std::string_view::npos ? std::string_view() : rest.substr(at + 1);
  unsigned long p = 0;
  bool ok = !port.empty() && port.size() <= 5;
  for (char c : port) {
    if (!isDigit(c))
      ok = false;
    else
      p = p * 10 + static_cast<unsigned long>(c - '0');
  }
  if (!ok || p < 1 || p > 65535)
    return failWith(std::string(kForms) + " (the port must be a number from 1 to 65535)");
  if (at != std::string_view::npos) {
    std::string_view bare = host;
    if (bare.size() >= 2 && bare.front() == '[' && bare.back() == ']')
      bare = bare.substr(1, bare.size() - 2);
    int family = spec.kind == SocketSpec::Kind::Inet ? AF_INET : AF_INET6;
    if (bare.empty() || !(isIpLiteral(bare, family) || isDnsName(bare)))
      return failWith(std::string(kForms) + " (the host after '@' must be a host name or an " +
                      (family == AF_INET ? "IPv4" : "IPv6") + " address)");
    spec.host = std::string(bare);
  }
  spec.port = static_cast<uint16_t>(p);
  spec.text = std::string(s);
  return spec;
}

std::optional<Seconds> parseDuration(std::string_view s) {
  if (s == "0") return Seconds{0};
  if (s.empty()) return std::nullopt;
  // Units in decreasing order, each at most once: "1h30m", not "30m1h" or "1h1h".
  constexpr std::pair<char, int64_t> kUnits[] = {
      {'w', 7 * 86400}, {'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}};
  int64_t total = 0;
  size_t next_unit = 0;
  size_t i = 0;
  while (i < s.size()) {
    int64_t n = 0;
    size_t start = i;
    while (i < s.size() && isDigit(s[i])) {
      n = n * 10 + (s[i] - '0');
      if (n > kMaxDurationSeconds) return std::nullopt;
      ++i;
    }
    if (i == start || i == s.size()) return std::nullopt;
    char u = s[i++];
    size_t k = next_unit;
    while (k < std::size(kUnits) && kUnits[k].first != u) ++k;
    if (k == std::size(kUnits)) return std::nullopt;
    next_unit = k + 1;
    total += n * kUnits[k].second;
    if (total > kMaxDurationSeconds) return std::nullopt;
  }
  return Seconds{total};
}

std::optional<uint64_t> parseSize(std::string_view s) {
  if (s.empty()) return std::nullopt;
  uint64_t mult = 1;
  switch (s.back()) {
    case 'K':
    case 'k':
      mult = 1ull << 10;
      break;
    case 'M':
    case 'm':
      mult = 1ull << 20;
      break;
    case 'G':
    case 'g':
      mult = 1ull << 30;
      break;
    default:
      break;
  }
  if (mult != 1) s.remove_suffix(1);
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t n = 0;
  for (char c : s) {
    if (!isDigit(c)) return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  if (n > std::numeric_limits<uint64_t>::max() / mult) return std::nullopt;
  return n * mult;
}

std::string formatDuration(Seconds d) {
  int64_t s = d.count();
  if (s == 0) return "0s";
  std::string out;
  if (s < 0) {
    out = "-";
    s = -s;
  }
  for (auto [unit, len] :
       {std::pair<char, int64_t>{'d', 86400}, {'h', 3600}, {'m', 60}, {'s', 1}}) {
    if (s >= len) {
      out += std::to_string(s / len) + unit;
      s %= len;
    }
  }
  return out;
}

std::optional<ListenAddress> ListenAddress::parse(std::string_view text) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find("]:");
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    // [IPv6] only, without sendmail's "IPv6:" tag that InetAddr::parse also takes.
    if (host.find(':') == std::string_view::npos || host.substr(0, 1) == "I" ||
        host.substr(0, 1) == "i")
      return std::nullopt;
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 needs brackets
  }
  if (host.empty() || host.front() == '[') return std::nullopt;
  auto addr = InetAddr::parse(host);
  if (!addr || port.empty() || port.size() > 5 || (port.size() > 1 && port[0] == '0'))
    return std::nullopt;
  uint32_t p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    p = p * 10 + static_cast<uint32_t>(c - '0');
  }
  if (p == 0 || p > 65535) return std::nullopt;
  return ListenAddress{*addr, static_cast<uint16_t>(p)};
}

std::string ListenAddress::str() const {
  std::string a = addr.str();
  return (addr.isV4() ? a : "[" + a + "]") + ":" + std::to_string(port);
}

const ClientConfig* Config::findClient(std::string_view name) const {
  for (const auto& c : clients)
    if (c.name == name) return &c;
  return nullptr;
}

LoadResult parseConfig(std::string_view text, const std::string& path, ConfigRole role) {
  return Loader(path, role).load(text);
}

LoadResult loadConfig(const std::string& path, ConfigRole role) {
  auto failed = [&](const char* what, int err) {
    LoadResult r;
    r.errors.push_back(ConfigError{SourceLoc{path, 0, 0}, "",
                                   std::string(what) + " the configuration file: " +
                                       (err != 0 ? errnoText(err) : "not a regular file")});
    return r;
  };
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return failed("cannot open", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
    return failed("cannot read", S_ISDIR(st.st_mode) ? EISDIR : errno);
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failed("cannot read", errno);
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return parseConfig(text, path, role);
}

namespace {

// The key paths that changed in one reload, with the program's interest in each part.
struct KeyDiff {
  std::vector<std::string> keys;
  void add(std::string key, bool differs) {
    if (differs) keys.push_back(std::move(key));
  }
};

// Each diff below names every member of its part: the structured bindings stop the build when a
// member is added to a part without being named here, so the lists cannot drift from the types.
void diffPart(const SpoolStartup& a, const SpoolStartup& b, KeyDiff& out) {
  const auto& [dir] = a;
  const auto& [dir2] = b;
  out.add("spool.dir", dir != dir2);
}

void diffPart(const SpoolReloadable& a, const SpoolReloadable& b, KeyDiff& out) {
  // Both are read per message (dynmx-milter) or per run (dynmx-enqueue): a reload applies them.
  const auto& [max_message_size, min_free] = a;
  const auto& [max_message_size2, min_free2] = b;
  out.add("spool.max_message_size", max_message_size != max_message_size2);
  out.add("spool.min_free", min_free != min_free2);
}

void diffPart(const MilterStartup& a, const MilterStartup& b, KeyDiff& out) {
  const auto& [socket, socket_mode, socket_group, user] = a;
  const auto& [socket2, socket_mode2, socket_group2, user2] = b;
  out.add("milter.socket", socket.text != socket2.text);  // "local:" is read back as "unix:"
  out.add("milter.socket_mode", socket_mode != socket_mode2);
  out.add("milter.socket_group", socket_group != socket_group2);
  out.add("milter.user", user != user2);
}

void diffPart(const MilterReloadable& a, const MilterReloadable& b, KeyDiff& out) {
  const auto& [on_error] = a;
  const auto& [on_error2] = b;
  out.add("milter.on_error", on_error != on_error2);
}

void diffRetry(const RetryPolicy& a, const RetryPolicy& b, const std::string& prefix,
               KeyDiff& out) {
  const auto& [retry_min, retry_max, queue_lifetime, delay_warning] = a;
  const auto& [retry_min2, retry_max2, queue_lifetime2, delay_warning2] = b;
  out.add(prefix + "retry_min", retry_min != retry_min2);
  out.add(prefix + "retry_max", retry_max != retry_max2);
  out.add(prefix + "queue_lifetime", queue_lifetime != queue_lifetime2);
  out.add(prefix + "delay_warning", delay_warning != delay_warning2);
}

void diffPart(const TunneldStartup& a, const TunneldStartup& b, KeyDiff& out) {
  const auto& [control_socket, control_group, control_mode, user, pid_file, sendmail,
               metrics_listen] = a;
  const auto& [control_socket2, control_group2, control_mode2, user2, pid_file2, sendmail2,
               metrics_listen2] = b;
  out.add("tunneld.control_socket", control_socket != control_socket2);
  out.add("tunneld.control_group", control_group != control_group2);
  out.add("tunneld.control_mode", control_mode != control_mode2);
  out.add("tunneld.user", user != user2);
  out.add("tunneld.pid_file", pid_file != pid_file2);
  out.add("tunneld.sendmail", sendmail != sendmail2);
  // The listening socket is bound at start-up, before privileges are dropped: a restart.
  out.add("tunneld.metrics_listen", metrics_listen != metrics_listen2);
}

void diffPart(const TunneldReloadable& a, const TunneldReloadable& b, KeyDiff& out) {
  const auto& [identity, identity_old, known_hosts, keepalive, connect_timeout, reconnect_min,
               reconnect_max, retry, idle_close, max_transactions, max_channels, bounce_from,
               remote_command, hostname] = a;
  const auto& [identity2, identity_old2, known_hosts2, keepalive2, connect_timeout2, reconnect_min2,
               reconnect_max2, retry2, idle_close2, max_transactions2, max_channels2, bounce_from2,
               remote_command2, hostname2] = b;
  // Both keys of identity are one key of the file; a change reconnects the clients using it.
  out.add("tunneld.identity", identity != identity2 || identity_old != identity_old2);
  out.add("tunneld.known_hosts", known_hosts != known_hosts2);
  out.add("tunneld.keepalive", keepalive != keepalive2);
  out.add("tunneld.connect_timeout", connect_timeout != connect_timeout2);
  out.add("tunneld.reconnect_min", reconnect_min != reconnect_min2);
  out.add("tunneld.reconnect_max", reconnect_max != reconnect_max2);
  diffRetry(retry, retry2, "tunneld.", out);
  out.add("tunneld.idle_close", idle_close != idle_close2);
  out.add("tunneld.max_transactions", max_transactions != max_transactions2);
  out.add("tunneld.max_channels", max_channels != max_channels2);  // taken at once
  out.add("tunneld.bounce_from", bounce_from != bounce_from2);
  out.add("tunneld.remote_command", remote_command != remote_command2);
  out.add("tunneld.hostname", hostname != hostname2);
}

void diffPart(const RelayStartup& a, const RelayStartup& b, KeyDiff& out) {
  const auto& [socket, socket_mode, socket_group, user, lease_file] = a;
  const auto& [socket2, socket_mode2, socket_group2, user2, lease_file2] = b;
  out.add("relay.socket", socket != socket2);
  out.add("relay.socket_mode", socket_mode != socket_mode2);
  out.add("relay.socket_group", socket_group != socket_group2);
  out.add("relay.user", user != user2);
  out.add("relay.lease_file", lease_file != lease_file2);
}

void diffPart(const RelayReloadable& a, const RelayReloadable& b, KeyDiff& out) {
  const auto& [lease_grace, lease_lifetime, revoke_hold, mx_addresses, checkin_user] = a;
  const auto& [lease_grace2, lease_lifetime2, revoke_hold2, mx_addresses2, checkin_user2] = b;
  out.add("relay.lease_grace", lease_grace != lease_grace2);
  out.add("relay.lease_lifetime", lease_lifetime != lease_lifetime2);
  out.add("relay.revoke_hold", revoke_hold != revoke_hold2);
  out.add("relay.mx_addresses", mx_addresses != mx_addresses2);
  out.add("relay.checkin_user", checkin_user != checkin_user2);
}

// The keys of one client that changed; only its domains when the program reads only the routing.
std::vector<std::string> clientChanges(const ClientConfig& a, const ClientConfig& b,
                                       bool routing_only) {
  // name: the clients are matched by it; loc: where it is written, not what it says.
  const auto& [name, host, port, user, domains, host_key, identity, identity_old, concurrency,
               max_connections, retry, relay, relay_networks, relay_senders, max_queue_messages,
               max_queue_bytes, recipients, recipient_file, verify_recipients, verify_default,
               verify_positive_ttl, verify_negative_ttl, verify_timeout, loc] = a;
  const auto& [name2, host2, port2, user2, domains2, host_key2, identity2, identity_old2,
               concurrency2, max_connections2, retry2, relay2, relay_networks2, relay_senders2,
               max_queue_messages2, max_queue_bytes2, recipients2, recipient_file2,
               verify_recipients2, verify_default2, verify_positive_ttl2, verify_negative_ttl2,
               verify_timeout2, loc2] = b;
  KeyDiff out;
  if (!routing_only) {
    out.add("host", host != host2);
    out.add("port", port != port2);
    out.add("user", user != user2);
  }
  out.add("domains", domains != domains2);
  // The queue limits are checked per message by dynmx-milter; dynmx-tunneld shows them in status.
  out.add("max_queue_messages", max_queue_messages != max_queue_messages2);
  out.add("max_queue_bytes", max_queue_bytes != max_queue_bytes2);
  // Checked by dynmx-milter only, per message.
  out.add("relay_senders", relay_senders != relay_senders2);
  // The milter's: a reload reads the lists and the file again (it also notices a changed file).
  out.add("recipients", recipients != recipients2);
  out.add("recipient_file", recipient_file != recipient_file2);
  // Read by both daemons at each RCPT or probe: in effect at once.
  out.add("verify_recipients", verify_recipients != verify_recipients2);
  out.add("verify_default", verify_default != verify_default2);
  out.add("verify_timeout", verify_timeout != verify_timeout2);
  out.add("verify_positive_ttl", verify_positive_ttl != verify_positive_ttl2);
  out.add("verify_negative_ttl", verify_negative_ttl != verify_negative_ttl2);
  if (routing_only) return out.keys;
  out.add("host_key", host_key != host_key2);
  out.add("identity", identity != identity2 || identity_old != identity_old2);
  out.add("concurrency", concurrency != concurrency2);
  // Taken at once: extra connections beyond a lowered value close when their sessions end.
  out.add("max_connections", max_connections != max_connections2);
  diffRetry(retry, retry2, "", out);
  out.add("relay", relay != relay2);
  out.add("relay_networks", relay_networks != relay_networks2);
  return out.keys;
}

void diffClients(const Config& running, const Config& next, bool routing_only, KeyDiff& out) {
  for (const ClientConfig& c : next.clients) {
    const ClientConfig* old = running.findClient(c.name);
    if (!old) {
      out.add("client " + c.name + " added", true);
      continue;
    }
    auto keys = clientChanges(*old, c, routing_only);
    out.add("client " + c.name + ": " + joinKeys(keys), !keys.empty());
  }
  for (const ClientConfig& c : running.clients)
    out.add("client " + c.name + " removed", next.findClient(c.name) == nullptr);
}

}  // namespace

std::string joinKeys(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) out += (out.empty() ? "" : ", ") + k;
  return out;
}

ReloadPlan planReload(const Config& running, Config next, ConfigRole role) {
  bool milter = role == ConfigRole::Any || role == ConfigRole::Milter;
  bool tunneld = role == ConfigRole::Any || role == ConfigRole::Tunneld;
  KeyDiff taken, waiting;
  diffPart(static_cast<const SpoolStartup&>(running.spool), next.spool, waiting);
  if (role != ConfigRole::Tunneld)  // the spool's size limit is the milter's and dynmx-enqueue's
    diffPart(static_cast<const SpoolReloadable&>(running.spool), next.spool, taken);
  if (milter) {
    diffPart(static_cast<const MilterStartup&>(running.milter), next.milter, waiting);
    diffPart(static_cast<const MilterReloadable&>(running.milter), next.milter, taken);
  }
  if (tunneld) {
    diffPart(static_cast<const TunneldStartup&>(running.tunneld), next.tunneld, waiting);
    diffPart(static_cast<const TunneldReloadable&>(running.tunneld), next.tunneld, taken);
    diffPart(static_cast<const RelayStartup&>(running.relay), next.relay, waiting);
    diffPart(static_cast<const RelayReloadable&>(running.relay), next.relay, taken);
  }
  diffClients(running, next, role == ConfigRole::Milter, taken);
  // What needs a restart stays as it runs: the one place where keys are kept back.
  static_cast<SpoolStartup&>(next.spool) = running.spool;
  static_cast<MilterStartup&>(next.milter) = running.milter;
  static_cast<TunneldStartup&>(next.tunneld) = running.tunneld;
  static_cast<RelayStartup&>(next.relay) = running.relay;
  return ReloadPlan{std::move(next), std::move(taken.keys), std::move(waiting.keys)};
}

std::vector<std::string> restartOnlyDifferences(const Config& running, const Config& next) {
  return planReload(running, next, ConfigRole::Any).waiting;
}

int checkConfigCommand(const std::string& path, ConfigRole role, std::FILE* out, std::FILE* err) {
  LoadResult r = loadConfig(path, role);
  if (r.errors.empty()) {
    std::fprintf(out, "config OK\n");
    std::fflush(out);
    return kExitOk;
  }
  for (const auto& e : r.errors) std::fprintf(err, "%s\n", e.str().c_str());
  std::fflush(err);
  return kExitConfig;
}

}  // namespace dynmx
