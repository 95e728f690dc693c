// relay_feed.hpp: the lease feed from dynmx-tunneld to dynmx-relaymap, sans-IO.
//
// Format: lines of printable ASCII ending in "\n", each at most kMaxFeedLine bytes. A feed is a
// sequence of full snapshots of the lease table:
//     begin
//     lease ADDRESS CLIENT EXPIRES_UNIX
//     ...
//     end
// ADDRESS is an IPv4 or IPv6 address in inet_pton form (any form InetAddr::parse takes), CLIENT a
// client name ([A-Za-z0-9._-], at most 64 bytes), EXPIRES_UNIX the lease's end in seconds since
// the epoch. A snapshot replaces the whole table atomically at `end`: a reader never sees half a
// table. The same address twice in one snapshot keeps the later expiry. The reader (relaymap)
// checks expiry against its own clock, so a daemon that hangs cannot keep a lease alive.
//
// Failure: anything else (an unknown word, a line too long, a lease outside begin/end, more than
// max_leases leases, a bad address or number) makes the parser fail for good; the server then
// exits, and lookups fail closed. The writer side (formatSnapshot) produces only valid feeds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/inet_addr.hpp"

namespace dynmx::relay {

inline constexpr size_t kMaxFeedLine = 200;
inline constexpr size_t kDefaultMaxLeases = 100000;

struct FeedLease {
  InetAddr addr;
  std::string client;
  int64_t expires_unix = 0;
};

// A complete table as the server holds it: address -> (client, expiry).
struct LeaseSnapshot {
  struct Entry {
    std::string client;
    int64_t expires_unix = 0;
  };
  std::map<InetAddr, Entry> leases;
  // Leased at `now_unix`: present, and the expiry is still ahead.
  bool leased(const InetAddr& a, int64_t now_unix) const;
  // The client holding the lease at `now_unix`, "" when none.
  std::string holder(const InetAddr& a, int64_t now_unix) const;
};

// The feed text of one full snapshot. Leases with a client name the format cannot carry are a bug
// of the caller: they are left out (and counted in *skipped when given).
std::string formatSnapshot(const std::vector<FeedLease>& leases, size_t* skipped = nullptr);

// True for a client name the feed can carry.
bool validFeedClient(std::string_view name);

class FeedParser {
 public:
  explicit FeedParser(size_t max_leases = kDefaultMaxLeases) : max_leases_(max_leases) {}
  // Takes bytes in any slicing. Returns false once the feed is malformed (final; error() says why).
  bool feed(std::string_view bytes);
  // The newest complete snapshot since the last call, if one ended.
  std::optional<LeaseSnapshot> takeSnapshot();
  const std::string& error() const { return error_; }
  bool failed() const { return !error_.empty(); }
  // True while a snapshot has begun and not ended (for "the feed ended mid-snapshot").
  bool inSnapshot() const { return building_.has_value(); }

 private:
  bool line(std::string_view l);
  bool fail(std::string why);
  size_t max_leases_;
  size_t line_no_ = 0;
  std::string partial_;
  std::optional<LeaseSnapshot> building_;
  std::optional<LeaseSnapshot> done_;
  std::string error_;
};

}  // namespace dynmx::relay
