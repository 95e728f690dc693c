// host_keys.cpp: host-key expectations (pin or known_hosts) and verification of a presented key.
//
// known_hosts is parsed here, line by line, so that one bad line costs only that line (with a
// warning naming file:line), hashed entries are matched with HMAC-SHA1 as OpenSSH does, and the
// stored key types are known before the handshake. Digests, HMAC and base64 come from libcrypto
// (OpenSSL's EVP interface), never from code of our own. A libcrypto failure on a few bytes in
// memory (no memory, a broken provider configuration) is logged and aborts: it is not a verdict.
#include "tunneld/ssh/host_keys.hpp"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <sstream>

#include "shared/log.hpp"

namespace dynmx::tunneld {

namespace {

// EVP_EncodeBlock and EVP_DecodeBlock take an int length; nothing in known_hosts comes near it.
constexpr size_t kMaxBase64Input = 64u * 1024 * 1024;

// libcrypto failing to hash or encode a few bytes means no memory or a broken provider
// configuration: not a verdict on the key, and nothing we can go on without.
[[noreturn]] void cryptoFailed(const char* what, const char* how) {
  char err[256] = "";
  ERR_error_string_n(ERR_get_error(), err, sizeof err);
  logf(LogLevel::Critical, "host_keys: libcrypto %s %s: %s", what, how, err);
  std::abort();
}

void digest(const EVP_MD* md, const char* name, std::string_view data, uint8_t* out, size_t size) {
  unsigned int len = 0;
  if (md == nullptr || EVP_Digest(data.data(), data.size(), out, &len, md, nullptr) != 1 ||
      len != size)
    cryptoFailed("EVP_Digest", name);
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
  if (data.size() > kMaxBase64Input) cryptoFailed("EVP_EncodeBlock", "input too large");
  // EVP_EncodeBlock writes whole quanta, padded with '=', and a terminating NUL.
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()),
                          static_cast<int>(data.size()));
  if (n < 0) cryptoFailed("EVP_EncodeBlock", "failed");
  out.resize(static_cast<size_t>(n));
  if (!pad)
    while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

// EVP_DecodeBlock alone is too lenient and too literal for known_hosts: it skips leading white
// space and trailing non-base64 bytes, decodes an '=' anywhere as zero bits, wants whole
// quanta, and counts padding as decoded bytes. So the text is checked here first (the standard
// alphabet, '=' only at the end, optional), padded to whole quanta, and the length it returns
// is shortened by the padding.
std::optional<std::string> base64Decode(std::string_view text) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() > kMaxBase64Input) return std::nullopt;
  for (char c : text) {
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alpha && c != '+' && c != '/') return std::nullopt;
  }
  if (text.size() % 4 == 1) return std::nullopt;  // a single dangling character
  size_t padding = (4 - text.size() % 4) % 4;
  std::string in(text);
  in.append(padding, '=');
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0 || static_cast<size_t>(n) != out.size()) return std::nullopt;
  out.resize(out.size() - padding);
  return out;
}

std::array<uint8_t, 32> sha256(std::string_view data) {
  std::array<uint8_t, 32> out{};
  digest(EVP_sha256(), "SHA-256", data, out.data(), out.size());
  return out;
}

std::array<uint8_t, 20> sha1(std::string_view data) {
  std::array<uint8_t, 20> out{};
  digest(EVP_sha1(), "SHA-1", data, out.data(), out.size());
  return out;
}

std::array<uint8_t, 20> hmacSha1(std::string_view key, std::string_view data) {
  std::array<uint8_t, 20> out{};
  size_t len = 0;
  // The key pointer is never null (a null key would mean "keep the previous key" to EVP_MAC);
  // an empty salt from a malformed line is an empty key.
  static const unsigned char kNoKey = 0;
  const unsigned char* k =
      key.empty() ? &kNoKey : reinterpret_cast<const unsigned char*>(key.data());
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA1", nullptr, k, key.size(),
                reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(),
                out.size(), &len) == nullptr ||
      len != out.size())
    cryptoFailed("EVP_Q_mac(HMAC-SHA1)", "failed");
  return out;
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
    return CRYPTO_memcmp(mac.data(), hash->data(), mac.size()) == 0;
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
