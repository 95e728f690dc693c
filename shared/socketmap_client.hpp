// socketmap_client.hpp: one question to a socketmap server (sendmail's `socket` map, Postfix's
// `socketmap:` table protocol) over a Unix socket: dynmx-milter asking dynmx-relaymap who holds
// the lease on a connecting address.
//
// Contract: socketmapQuery() connects, sends the netstring `LEN:MAP KEY,`, reads one answer
// netstring and closes. The answer is split into its status word (OK, NOTFOUND, TEMP, TIMEOUT,
// PERM) and value. Each system call waits at most `timeout`.
//
// Failure: a socket that cannot be reached, a timeout, a reply that is not one well-formed
// netstring of at most kMaxSocketmapReply bytes, or an unknown status word is an Error naming the
// socket; the caller decides what a failed lookup means (dynmx-milter: fail closed).
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "shared/result.hpp"

namespace dynmx {

inline constexpr size_t kMaxSocketmapReply = 100000;  // Postfix's limit

struct SocketmapReply {
  std::string status;  // "OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM"
  std::string value;   // OK: the value; the others: the reason (may be empty)
};

Result<SocketmapReply> socketmapQuery(const std::string& socket_path, std::string_view map,
                                      std::string_view key, std::chrono::milliseconds timeout);

// Parses one whole reply netstring ("8:OK alpha,"); for tests and the query above.
Result<SocketmapReply> parseSocketmapReply(std::string_view netstring);

}  // namespace dynmx
