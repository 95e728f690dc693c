// host_keys.hpp: which host key a client must present, and whether the one it presented is it.
//
// Contract: strict checking, never trust on first use. A client is verified either by its pinned
// `host_key` ("ssh-ed25519 AAAA..." line, or an OpenSSH "SHA256:..." fingerprint) or by the
// known_hosts file, read line by line here (plain names, "[host]:port", hashed "|1|salt|hash"
// entries, comma lists, * and ? wildcards, ! negation, @revoked; @cert-authority lines are not
// supported and skipped). A line that does not parse is skipped with a warning naming file:line;
// the rest of the file still counts (libssh2_knownhost_readfile would stop there).
// acceptedTypes() gives the host-key algorithms to offer (LIBSSH2_METHOD_HOSTKEY), so that a key of
// another type than the stored one reads as a mismatch instead of "not found".
// Fingerprints are in OpenSSH's form: "SHA256:" + base64 of SHA-256 of the key blob, no padding.
// Digests, HMAC-SHA1 and base64 are libcrypto's (EVP); a libcrypto failure (no memory, a broken
// provider configuration) is logged and aborts, as a broken invariant.
// Everything here is pure apart from reading the known_hosts file.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/config.hpp"

namespace dynmx::tunneld {

std::string base64Encode(std::string_view data, bool pad = true);
// Standard alphabet; '=' padding optional, and only at the end; nullopt for anything else (white
// space included) and for input over 64 MiB.
std::optional<std::string> base64Decode(std::string_view text);
std::array<uint8_t, 32> sha256(std::string_view data);
std::array<uint8_t, 20> sha1(std::string_view data);
std::array<uint8_t, 20> hmacSha1(std::string_view key, std::string_view data);

// "SHA256:..." of a raw key blob (as SSH sends it).
std::string fingerprint(std::string_view blob);
// The algorithm name inside a key blob ("ssh-ed25519"), or "" when the blob is malformed.
std::string blobKeyType(std::string_view blob);

enum class HostKeyVerdict { Match, Mismatch, Unknown };

struct HostKeyCheck {
  HostKeyVerdict verdict = HostKeyVerdict::Unknown;
  std::string presented_fp;  // SHA256:...
  std::string presented_type;
  std::string expected_fp;  // SHA256:... of the stored/pinned key ("" when unknown host)
  std::string detail;       // e.g. "matches known_hosts line 3", "key is @revoked", ...
};

// One parsed known_hosts line (exposed for tests and the fuzz target).
struct KnownHostLine {
  enum class Marker { None, Revoked, CertAuthority } marker = Marker::None;
  std::string patterns;  // the host field as written
  std::string type;      // "ssh-ed25519"
  std::string blob;      // decoded key
};
// Parses one line; nullopt for blank/comment lines; an error message in *why for a bad line.
std::optional<KnownHostLine> parseKnownHostLine(std::string_view line, std::string* why);
// Whether the host field of a line matches `lookup_name` ("host" or "[host]:port").
bool knownHostPatternMatches(std::string_view patterns, std::string_view lookup_name);
// OpenSSH's lookup name: "host" for port 22, else "[host]:port".
std::string knownHostLookupName(std::string_view host, uint16_t port);

class HostKeyVerifier {
 public:
  // From the client's pin when it has one, else from the known_hosts file (read now). Lines that
  // could not be used are described in *warnings ("FILE:LINE: why").
  static HostKeyVerifier forClient(const ClientConfig& client, const std::string& known_hosts,
                                   std::vector<std::string>* warnings);
  // From known_hosts text already in memory (`file` is used in messages).
  static HostKeyVerifier fromKnownHostsText(std::string_view text, const std::string& file,
                                            std::string_view host, uint16_t port,
                                            std::vector<std::string>* warnings);
  static HostKeyVerifier fromPin(std::string_view host_key, std::string* why);

  // Host-key algorithms to allow, best first; empty means "any" (fingerprint pin, unknown host).
  std::vector<std::string> acceptedTypes() const;
  // The method list for libssh2_session_method_pref(LIBSSH2_METHOD_HOSTKEY).
  std::string methodPref() const;
  HostKeyCheck verify(std::string_view presented_blob) const;
  // Expected fingerprints, for status when nothing was presented yet.
  std::vector<std::string> expectedFingerprints() const;
  const std::string& source() const { return source_; }
  bool usable() const { return usable_; }  // false: a pin that did not parse

 private:
  struct Entry {
    std::string type, blob;
    bool revoked = false;
    size_t line = 0;
  };
  std::vector<Entry> entries_;
  std::string pinned_fp_;
  std::string source_;
  bool usable_ = true;
};

}  // namespace dynmx::tunneld
