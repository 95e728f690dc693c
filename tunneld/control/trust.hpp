// trust.hpp: `dynmxctl trust CLIENT FINGERPRINT`: the administrator vouches for a client's new host
// key by typing the fingerprint its administrator read out of band (ssh-keygen -lf on the client).
//
// Contract: never trust on first use. trustCommand() asks the daemon for the whole key the client
// presented (`hostkey CLIENT`, only while it is host-key-mismatch or host-key-unknown), computes
// its SHA256 fingerprint with libcrypto (host_keys.hpp, OpenSSH's "SHA256:..." form) and goes on
// only when it equals the typed one. For a client pinned with `host_key` it then prints the exact
// configuration line to use instead and changes nothing. Otherwise it rewrites the known_hosts
// file the configuration names (tunneld.known_hosts): every line for the client's lookup name
// ("host", or "[host]:port" off port 22; plain names, comma lists and hashed "|1|" entries alike)
// goes; a line that covers it only through a wildcard pattern (it may serve other hosts too),
// @revoked and @cert-authority lines stay (the wildcard ones are named in the output); one line
// with the new key is added (hashed when a hashed entry was replaced). The file is replaced
// crash-safe (temporary file, fsync, rename, fsync of the directory), keeping its owner, group and
// mode. Then the daemon is asked to reconnect the client (`flush CLIENT`). The daemon itself never
// writes the file. Failure behaviour: a wrong fingerprint changes nothing and says so (EX_DATAERR);
// so does a key that is @revoked for that name; not root: EX_NOPERM; the daemon unreachable:
// EX_UNAVAILABLE; a refusal (no key in question, no such client): 1; the file cannot be written:
// EX_CANTCREAT, and the old file stays. Every message names the client, the file and both
// fingerprints.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "shared/config.hpp"
#include "shared/result.hpp"

namespace dynmx::tunneld {

// Whether `typed` has the form of an OpenSSH SHA256 fingerprint: "SHA256:" and 43 characters of
// unpadded base64.
bool validFingerprint(std::string_view typed);

struct KnownHostsEdit {
  std::string text;                    // the new file
  size_t removed = 0;                  // lines taken out
  bool hashed = false;                 // the new line is hashed (a hashed entry was replaced)
  std::vector<std::string> wildcards;  // "FILE:LINE" of kept lines that match by a wildcard
};
// Pure: `text` without the lines for `lookup_name` (see above), with "NAME TYPE BASE64" added at
// the end, hashed as "|1|base64(salt)|base64(HMAC-SHA1(salt, NAME))" when a removed line was
// hashed (`salt`: 20 random octets). An error, naming file:line, when the key is @revoked there.
Result<KnownHostsEdit> replaceKnownHost(std::string_view text, std::string_view lookup_name,
                                        std::string_view type, std::string_view blob,
                                        std::string_view salt, const std::string& file);

// Replaces `path` with `text` crash-safe, keeping the old file's owner, group and mode (a new file
// gets 0644). Errors name the file.
Status replaceFile(const std::string& path, const std::string& text);

// The whole command; `cfg` is the daemon's configuration (for known_hosts, the client's host,
// port and pin), `socket` the admin socket. Returns the exit status; prints on out and err.
int trustCommand(const Config& cfg, const std::string& socket, const std::string& client,
                 const std::string& typed, std::FILE* out, std::FILE* err);

}  // namespace dynmx::tunneld
