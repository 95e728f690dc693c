// lease.hpp: what a relay lease is, the rules that say who may hold one, and the log line of
// everything that happens to one.
//
// A lease lets the MTA on this host relay mail for one address for a while, because a client proved
// that the address is its own: by a verified SSH connection whose far end confirmed it saw this MX
// (source tunnel), or by a check-in over SSH from that address (source checkin). See
// man/dynmx-relay.7, "LEASES".
//
// Contract: plain values and pure functions. LeaseRules is built from the configuration
// (fromConfig) and answers whether a client may hold a lease at an address at all (relay = true,
// inside relay_networks). LeaseEvent::line() is the one log line of an event, in the form
//   lease: client=home addr=203.0.113.7 source=tunnel expires=2026-11-30T01:02:03Z
//   lease: client=home addr=203.0.113.7 source=checkin revoked (host key mismatch)
//   lease: client=home addr=203.0.113.7 source=tunnel refused (peer 198.51.100.9 is not this MX)
// Times are unix seconds (a lease outlives the process, so steady time would not do), shown in
// UTC as ISO 8601.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/clock.hpp"
#include "shared/date.hpp"
#include "shared/inet_addr.hpp"
#include "shared/log.hpp"

namespace dynmx {
struct Config;
}

namespace dynmx::tunneld {

enum class LeaseSource { Tunnel, Checkin };
const char* leaseSourceName(LeaseSource s);  // "tunnel", "checkin"
std::optional<LeaseSource> leaseSourceFromName(std::string_view name);

struct Lease {
  std::string client;
  InetAddr addr;
  LeaseSource source = LeaseSource::Tunnel;
  int64_t granted = 0;     // unix time of the grant that began this lease (renewals keep it)
  int64_t expires = 0;     // unix time; the lease is live while now < expires
  bool connected = false;  // tunnel only: its connection is up, so traffic renews it

  bool liveAt(int64_t now) const { return now < expires; }
  bool operator==(const Lease&) const = default;
};

// An address held down by `dynmxctl revoke`: no lease is granted there before `until`.
struct Hold {
  InetAddr addr;
  int64_t until = 0;
  bool operator==(const Hold&) const = default;
};

// Why a client may not hold a lease at an address. dynmx-checkin turns each into its exit code.
enum class RefusalKind {
  UnknownClient,    // no [[client]] of that name
  RelayOff,         // relay = false for that client (the default)
  OutsideNetworks,  // the address is outside the client's relay_networks
  HeldDown,         // the address was revoked and is held down (revoke_hold)
  NotThisMx,        // tunnel: the far end saw another peer than this MX (a forwarder)
  NoConfirmation,   // tunnel: the client sent no (or a malformed) dynmx-peer line
  BadAddress,       // check-in: loopback, link-local, unspecified or this MX's own address
};

struct Refusal {
  RefusalKind kind;
  std::string reason;  // for the log and the client, e.g. "peer 198.51.100.9 is not this MX"
};

// The lease settings of [relay] and, per client, relay and relay_networks.
struct LeaseRules {
  std::chrono::seconds lease_grace{120};      // a tunnel lease outlives its connection this long
  std::chrono::seconds lease_lifetime{1200};  // a check-in lease lasts this long after a check-in
  std::chrono::seconds revoke_hold{3600};     // a revoked address is held down this long
  std::vector<InetAddr> mx_addresses;         // this MX's addresses as clients may see them (NAT)

  struct Client {
    bool relay = false;
    std::vector<InetNetwork> networks;  // empty: any address
  };
  std::map<std::string, Client, std::less<>> clients;

  static LeaseRules fromConfig(const Config& cfg);

  // nullopt when `client` may hold a lease at `addr` as far as the configuration goes (hold-downs
  // are the table's business); else why not.
  std::optional<Refusal> mayLease(std::string_view client, const InetAddr& addr) const;
  bool isMxAddress(const InetAddr& addr) const;
};

enum class LeaseEventKind {
  Granted,         // a new lease
  Renewed,         // a check-in renewed it, or a tunnel lease got its connection back
  ConnectionLost,  // a tunnel lease lost its connection: it ends at `expires` unless renewed
  Superseded,      // the client was verified at a newer address (`other`)
  Expired,
  Revoked,  // host key mismatch, by hand, or the configuration no longer allows it
  Refused,
};

struct LeaseEvent {
  LeaseEventKind kind = LeaseEventKind::Granted;
  std::string client;
  InetAddr addr;
  LeaseSource source = LeaseSource::Tunnel;
  int64_t expires = 0;  // Granted, Renewed, ConnectionLost
  InetAddr other;       // Superseded: the newer address
  std::string reason;   // Revoked, Refused

  static LeaseEvent refused(std::string client, const InetAddr& addr, LeaseSource source,
                            std::string reason);
  std::string line() const;
  LogLevel level() const;  // Info for the ordinary, Notice for revocations and refusals
  bool operator==(const LeaseEvent&) const = default;
};

// The `now` to give a LeaseTable: the unix time read once at construction, moved on by the steady
// clock, so that a wall clock set back (or forward) while the daemon runs neither stretches nor
// cuts the leases.
class LeaseClock {
 public:
  explicit LeaseClock(const TimeSource& time)
      : time_(time), unix_start_(time.unixSeconds()), steady_start_(time.steady()) {}
  int64_t now() const {
    return unix_start_ +
           std::chrono::duration_cast<std::chrono::seconds>(time_.steady() - steady_start_).count();
  }

 private:
  const TimeSource& time_;
  int64_t unix_start_;
  SteadyClock::time_point steady_start_;
};

// Logs each event's line at its level (shared/log.hpp).
void logLeaseEvents(const std::vector<LeaseEvent>& events);

}  // namespace dynmx::tunneld
