// host_keys.cpp: host-key expectations (pin or known_hosts) and verification of a presented key.
//
// known_hosts is parsed here, line by line, so that one bad line costs only that line (with a
// warning naming file:line), hashed entries are matched with HMAC-SHA1 as OpenSSH does, and the
// stored key types are known before the handshake. SHA-1/SHA-256 are small local implementations
// (the project links no crypto library of its own; libssh2's is not exported).
#include "tunneld/ssh/host_keys.hpp"

#include <cstring>
#include <fstream>
#include <sstream>

namespace dynmx::tunneld {

namespace {

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

inline uint32_t rotr(uint32_t x, int n) {
  return (x >> n) | (x << (32 - n));
}
inline uint32_t rotl(uint32_t x, int n) {
  return (x << n) | (x >> (32 - n));
}

// Message padding shared by SHA-1 and SHA-256 (big-endian length).
std::string mdPad(std::string_view data) {
  std::string m(data);
  uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  m.push_back(static_cast<char>(0x80));
  while (m.size() % 64 != 56) m.push_back('\0');
  for (int i = 7; i >= 0; --i) m.push_back(static_cast<char>((bits >> (i * 8)) & 0xff));
  return m;
}

inline uint32_t be32(const std::string& m, size_t i) {
  return (uint32_t(uint8_t(m[i])) << 24) | (uint32_t(uint8_t(m[i + 1])) << 16) |
         (uint32_t(uint8_t(m[i + 2])) << 8) | uint32_t(uint8_t(m[i + 3]));
}

// Reads an SSH "string" (uint32 length + bytes) at *pos.
std::optional<std::string_view> sshString(std::string_view blob, size_t* pos) {
  if (blob.size() - *pos < 4 || *pos > blob.size()) return std::nullopt;
  uint32_t len = (uint32_t(uint8_t(blob[*pos])) << 24) | (uint32_t(uint8_t(blob[*pos + 1])) << 16) |
                 (uint32_t(uint8_t(blob[*pos + 2])) << 8) | uint32_t(uint8_t(blob[*pos + 3]));
  *pos += 4;
  if (len > blob.size() - *pos) return std::nullopt;
  std::string_view s = blob.substr(*pos, len);
  *pos += len;
  return s;
}

const std::vector<std::string>& typePreference() {
  static const std::vector<std::string> k{"ssh-ed25519", "ecdsa-sha2-nistp256",
                                          "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"};
  return k;
}

// OpenSSH match_pattern: '*' any run, '?' any one character; case-insensitive for host names.
bool globMatch(std::string_view s, std::string_view p) {
  size_t si = 0, pi = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() &&
        (p[pi] == '?' || std::tolower(uint8_t(p[pi])) == std::tolower(uint8_t(s[si])))) {
      ++si;
      ++pi;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

}  // namespace

std::string base64Encode(std::string_view data, bool pad) {
  std::string out;
  size_t i = 0;
  while (i + 2 < data.size()) {
    uint32_t v = (uint32_t(uint8_t(data[i])) << 16) | (uint32_t(uint8_t(data[i + 1])) << 8) |
                 uint8_t(data[i + 2]);
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
    i += 3;
  }
  size_t rest = data.size() - i;
  if (rest == 1) {
    uint32_t v = uint32_t(uint8_t(data[i])) << 16;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    if (pad) out += "==";
  } else if (rest == 2) {
    uint32_t v = (uint32_t(uint8_t(data[i])) << 16) | (uint32_t(uint8_t(data[i + 1])) << 8);
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    if (pad) out += "=";
  }
  return out;
}

std::optional<std::string> base64Decode(std::string_view text) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const char* p = c ? std::strchr(kB64, c) : nullptr;
    if (!p) return std::nullopt;
    acc = (acc << 6) | uint32_t(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits >= 6) return std::nullopt;  // a single dangling character
  return out;
}

std::array<uint8_t, 32> sha256(std::string_view data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
      0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
      0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
      0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
      0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
      0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
      0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
      0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::string m = mdPad(data);
  for (size_t off = 0; off < m.size(); off += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = be32(m, off + size_t(i) * 4);
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = hh + S1 + ch + k[i] + w[i];
      uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = S0 + mj;
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
  std::array<uint8_t, 32> out{};
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) out[size_t(i * 4 + j)] = uint8_t(h[i] >> (24 - j * 8));
  return out;
}

std::array<uint8_t, 20> sha1(std::string_view data) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  std::string m = mdPad(data);
  for (size_t off = 0; off < m.size(); off += 64) {
    uint32_t w[80];
    for (int i = 0; i < 16; ++i) w[i] = be32(m, off + size_t(i) * 4);
    for (int i = 16; i < 80; ++i) w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; ++i) {
      uint32_t f, kk;
      if (i < 20) {
        f = (b & c) | (~b & d);
        kk = 0x5A827999;
      } else if (i < 40) {
        f = b ^ c ^ d;
        kk = 0x6ED9EBA1;
      } else if (i < 60) {
        f = (b & c) | (b & d) | (c & d);
        kk = 0x8F1BBCDC;
      } else {
        f = b ^ c ^ d;
        kk = 0xCA62C1D6;
      }
      uint32_t t = rotl(a, 5) + f + e + kk + w[i];
      e = d;
      d = c;
      c = rotl(b, 30);
      b = a;
      a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
  }
  std::array<uint8_t, 20> out{};
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 4; ++j) out[size_t(i * 4 + j)] = uint8_t(h[i] >> (24 - j * 8));
  return out;
}

std::array<uint8_t, 20> hmacSha1(std::string_view key, std::string_view data) {
  std::string k(key);
  if (k.size() > 64) {
    auto d = sha1(k);
    k.assign(reinterpret_cast<const char*>(d.data()), d.size());
  }
  k.resize(64, '\0');
  std::string ipad(64, '\0'), opad(64, '\0');
  for (size_t i = 0; i < 64; ++i) {
    ipad[i] = static_cast<char>(k[i] ^ 0x36);
    opad[i] = static_cast<char>(k[i] ^ 0x5c);
  }
  auto inner = sha1(ipad + std::string(data));
  return sha1(opad + std::string(reinterpret_cast<const char*>(inner.data()), inner.size()));
}

std::string fingerprint(std::string_view blob) {
  auto d = sha256(blob);
  return "SHA256:" +
         base64Encode(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()), false);
}

std::string blobKeyType(std::string_view blob) {
  size_t pos = 0;
  auto t = sshString(blob, &pos);
  return t ? std::string(*t) : std::string();
}

std::string knownHostLookupName(std::string_view host, uint16_t port) {
  if (port == 22) return std::string(host);
  return "[" + std::string(host) + "]:" + std::to_string(port);
}

bool knownHostPatternMatches(std::string_view patterns, std::string_view name) {
  if (patterns.rfind("|1|", 0) == 0) {
    std::string_view rest = patterns.substr(3);
    auto bar = rest.find('|');
    if (bar == std::string_view::npos) return false;
    auto salt = base64Decode(rest.substr(0, bar));
    auto hash = base64Decode(rest.substr(bar + 1));
    if (!salt || !hash || hash->size() != 20) return false;
    auto mac = hmacSha1(*salt, name);
    return std::memcmp(mac.data(), hash->data(), 20) == 0;
  }
  bool matched = false;
  size_t start = 0;
  while (start <= patterns.size()) {
    size_t comma = patterns.find(',', start);
    std::string_view p = patterns.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    bool neg = !p.empty() && p[0] == '!';
    if (neg) p.remove_prefix(1);
    if (!p.empty() && globMatch(name, p)) {
      if (neg) return false;
      matched = true;
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return matched;
}

std::optional<KnownHostLine> parseKnownHostLine(std::string_view line, std::string* why) {
  auto isSpace = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && isSpace(line[i])) ++i;
    if (i >= line.size()) break;
    size_t j = i;
    while (j < line.size() && !isSpace(line[j])) ++j;
    fields.push_back(line.substr(i, j - i));
    i = j;
  }
  if (fields.empty() || fields[0][0] == '#') return std::nullopt;
  KnownHostLine out;
  size_t f = 0;
  if (fields[0][0] == '@') {
    if (fields[0] == "@revoked")
      out.marker = KnownHostLine::Marker::Revoked;
    else if (fields[0] == "@cert-authority")
      out.marker = KnownHostLine::Marker::CertAuthority;
    else {
      *why = "unknown marker " + std::string(fields[0]);
      return KnownHostLine{KnownHostLine::Marker::CertAuthority, {}, {}, {}};
    }
    f = 1;
  }
  if (fields.size() < f + 3) {
    *why = "expected: [marker] hostpatterns keytype base64-key [comment]";
    out.type.clear();
    out.marker = KnownHostLine::Marker::None;
    out.patterns.clear();
    out.blob.clear();
    return out;  // type empty marks the line as bad
  }
  out.patterns = std::string(fields[f]);
  out.type = std::string(fields[f + 1]);
  auto blob = base64Decode(fields[f + 2]);
  if (!blob) {
    *why = "key is not valid base64";
    out.type.clear();
    return out;
  }
  if (blobKeyType(*blob) != out.type) {
    *why = "key type " + out.type + " does not match the key (" + blobKeyType(*blob) + ")";
    out.type.clear();
    return out;
  }
  out.blob = std::move(*blob);
  return out;
}

HostKeyVerifier HostKeyVerifier::fromPin(std::string_view pin, std::string* why) {
  HostKeyVerifier v;
  v.source_ = "pinned host_key";
  while (!pin.empty() && (pin.back() == ' ' || pin.back() == '\n')) pin.remove_suffix(1);
  if (pin.rfind("SHA256:", 0) == 0) {
    v.pinned_fp_ = std::string(pin);
    return v;
  }
  std::string w;
  auto l = parseKnownHostLine("pin " + std::string(pin), &w);
  if (!l || l->type.empty()) {
    *why = "host_key: " + (w.empty() ? std::string("empty") : w);
    v.usable_ = false;
    return v;
  }
  v.entries_.push_back(Entry{l->type, l->blob, false, 0});
  return v;
}

HostKeyVerifier HostKeyVerifier::fromKnownHostsText(std::string_view text, const std::string& file,
                                                    std::string_view host, uint16_t port,
                                                    std::vector<std::string>* warnings) {
  HostKeyVerifier v;
  v.source_ = file;
  std::string name = knownHostLookupName(host, port);
  size_t lineno = 0, start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string_view line =
        text.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    start = nl == std::string_view::npos ? text.size() : nl + 1;
    ++lineno;
    std::string why;
    auto l = parseKnownHostLine(line, &why);
    if (!l) continue;
    if (l->marker == KnownHostLine::Marker::CertAuthority) {
      if (warnings)
        warnings->push_back(file + ":" + std::to_string(lineno) + ": " +
                            (why.empty() ? "@cert-authority is not supported; line ignored" : why));
      continue;
    }
    if (l->type.empty()) {
      if (warnings)
        warnings->push_back(file + ":" + std::to_string(lineno) + ": " + why + "; line ignored");
      continue;
    }
    if (!knownHostPatternMatches(l->patterns, name)) continue;
    v.entries_.push_back(
        Entry{l->type, l->blob, l->marker == KnownHostLine::Marker::Revoked, lineno});
  }
  return v;
}

HostKeyVerifier HostKeyVerifier::forClient(const ClientConfig& c, const std::string& known_hosts,
                                           std::vector<std::string>* warnings) {
  if (!c.host_key.empty()) {
    std::string why;
    auto v = fromPin(c.host_key, &why);
    if (!v.usable_ && warnings) warnings->push_back("client " + c.name + ": " + why);
    return v;
  }
  std::ifstream f(known_hosts, std::ios::binary);
  if (!f) {
    if (warnings) warnings->push_back(known_hosts + ": cannot read");
    HostKeyVerifier v;
    v.source_ = known_hosts;
    return v;
  }
  std::stringstream ss;
  ss << f.rdbuf();
  return fromKnownHostsText(ss.str(), known_hosts, c.host, c.port, warnings);
}

std::vector<std::string> HostKeyVerifier::acceptedTypes() const {
  std::vector<std::string> out;
  for (auto& t : typePreference()) {
    for (auto& e : entries_) {
      if (!e.revoked && e.type == t) {
        out.push_back(t);
        break;
      }
    }
  }
  return out;
}

std::string HostKeyVerifier::methodPref() const {
  auto types = acceptedTypes();
  if (types.empty())
    types = {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"};
  std::string out;
  for (auto& t : types) {
    if (!out.empty()) out += ",";
    out += t;
  }
  return out;
}

std::vector<std::string> HostKeyVerifier::expectedFingerprints() const {
  std::vector<std::string> out;
  if (!pinned_fp_.empty()) out.push_back(pinned_fp_);
  for (auto& e : entries_)
    if (!e.revoked) out.push_back(fingerprint(e.blob));
  return out;
}

HostKeyCheck HostKeyVerifier::verify(std::string_view presented) const {
  HostKeyCheck r;
  r.presented_fp = fingerprint(presented);
  r.presented_type = blobKeyType(presented);
  if (!usable_) {
    r.verdict = HostKeyVerdict::Unknown;
    r.detail = "the pinned host_key does not parse";
    return r;
  }
  if (!pinned_fp_.empty()) {
    r.expected_fp = pinned_fp_;
    r.verdict = r.presented_fp == pinned_fp_ ? HostKeyVerdict::Match : HostKeyVerdict::Mismatch;
    r.detail = r.verdict == HostKeyVerdict::Match ? "matches the pinned fingerprint"
                                                  : "does not match the pinned fingerprint";
    return r;
  }
  for (auto& e : entries_) {
    if (e.revoked && e.blob == presented) {
      r.verdict = HostKeyVerdict::Mismatch;
      r.expected_fp = "";
      r.detail = "key is marked @revoked in " + source_ + " line " + std::to_string(e.line);
      return r;
    }
  }
  const Entry* first = nullptr;
  const Entry* same_type = nullptr;
  for (auto& e : entries_) {
    if (e.revoked) continue;
    if (e.blob == presented) {
      r.verdict = HostKeyVerdict::Match;
      r.expected_fp = r.presented_fp;
      r.detail = e.line ? "matches " + source_ + " line " + std::to_string(e.line)
                        : "matches the pinned host_key";
      return r;
    }
    if (!first) first = &e;
    if (!same_type && e.type == r.presented_type) same_type = &e;
  }
  if (!first) {
    r.verdict = HostKeyVerdict::Unknown;
    r.detail = "host not found in " + source_ + " (never trusted on first use)";
    return r;
  }
  const Entry* want = same_type ? same_type : first;
  r.verdict = HostKeyVerdict::Mismatch;
  r.expected_fp = fingerprint(want->blob);
  r.detail = want->line ? "differs from " + source_ + " line " + std::to_string(want->line)
                        : "differs from the pinned host_key";
  return r;
}

}  // namespace dynmx::tunneld
