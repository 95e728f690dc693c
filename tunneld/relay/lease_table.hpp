// lease_table.hpp: the relay lease policy, a pure function of what happened and when.
//
// Contract: LeaseTable holds the leases and the hold-downs and changes them only through the calls
// below, each given the time (`now`, unix seconds) by the caller; nothing here reads a clock, does
// I/O or logs. Every call that changes something returns the events it caused, in order, and the
// caller logs them (logLeaseEvents) and shows them to whoever asked. The rules (man/dynmx-relay.7):
//   - tunnel lease: granted when the SSH connection to the client is verified and the client
//     confirmed that it saw this MX (grantTunnel); renewed silently by traffic while the connection
//     lives (touchTunnel: expires = now + lease_grace); after the connection is lost
//     (tunnelLost) it lasts lease_grace, then ends. A connection that goes quiet without being
//     noticed as lost still loses its lease lease_grace after its last traffic: fail closed.
//   - check-in lease: lasts lease_lifetime after the last check-in (checkIn).
//   - the newest address wins: a verified address ends at once the client's leases from the same
//     source at its other addresses of the same family (event Superseded), even when the lease at
//     the new address is then refused (held down, outside relay_networks): the client is not there.
//   - a forwarder (tunnelRefused with NotThisMx) proves the client is not at that address: the
//     client's leases there end.
//   - a different host key for a client at an address ends every lease at that address, whatever
//     its client or source (hostKeyMismatch).
//   - revoke ends every lease at an address and holds it down for revoke_hold: no grant there
//     until then (a keepalive or the next cron check-in does not bring it back).
//   - relay = false, an unknown client, or an address outside relay_networks: no lease; a reload
//     (reconfigure) ends the leases the new rules no longer allow, and a shorter lease_grace or
//     lease_lifetime shortens the running leases at once (a longer one applies from their next
//     renewal).
// Logged: grants, renewals by a check-in or by a new confirmed connection, connection losses,
// supersessions, expiries, revocations, refusals. Not logged: renewals by traffic (keepalives).
// lookup() never answers with an expired lease, whether or not expire() has run since.
// generation() changes with every change that the lease file should record (not with touchTunnel:
// a lease restored from a file written before a later keepalive ends earlier, never later).
// Times are unix seconds because leases outlive the process. A wall clock set back would stretch
// every lease by as much: the caller passes a `now` that cannot step back while it runs
// (LeaseClock: the unix time at start plus the steady time elapsed since). Not thread-safe: one owner (the daemon's
// event loop) calls it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "tunneld/relay/lease.hpp"

namespace dynmx::tunneld {

struct GrantResult {
  std::optional<Lease> lease;      // the lease granted or renewed; nullopt when refused
  std::optional<Refusal> refusal;  // set when refused
  std::vector<LeaseEvent> events;  // supersessions first, then the grant, renewal or refusal
};

struct RevokeResult {
  std::vector<LeaseEvent> events;  // one Revoked per lease that ended (none: there was no lease)
  int64_t held_until = 0;          // no lease at the address before this time
};

class LeaseTable {
 public:
  explicit LeaseTable(LeaseRules rules = {}) : rules_(std::move(rules)) {}

  const LeaseRules& rules() const { return rules_; }

  // The connection to `client` at `addr` is verified and the client saw this MX as its peer.
  GrantResult grantTunnel(std::string_view client, const InetAddr& addr, int64_t now);
  // Traffic on that connection (a keepalive reply counts). False when there is no live, connected
  // tunnel lease to renew (it was revoked, superseded, or expired).
  bool touchTunnel(std::string_view client, const InetAddr& addr, int64_t now);
  // The connection is gone: the lease lasts lease_grace from now.
  std::vector<LeaseEvent> tunnelLost(std::string_view client, const InetAddr& addr, int64_t now);
  // No tunnel lease for this connection: logs the refusal; for NotThisMx (a forwarder) also ends
  // the client's leases at `addr`.
  std::vector<LeaseEvent> tunnelRefused(std::string_view client, const InetAddr& addr,
                                        const Refusal& why, int64_t now);
  // A check-in of `client` from `addr` (the TCP peer of sshd on this host, already judged by
  // decideCheckin).
  GrantResult checkIn(std::string_view client, const InetAddr& addr, int64_t now);
  // Something at `addr` presented another host key than `client`'s.
  std::vector<LeaseEvent> hostKeyMismatch(std::string_view client, const InetAddr& addr,
                                          int64_t now);
  // dynmxctl revoke ADDRESS.
  RevokeResult revoke(const InetAddr& addr, int64_t now);
  // Ends the leases whose time is up and forgets the hold-downs that are over.
  std::vector<LeaseEvent> expire(int64_t now);
  // New rules after a reload.
  std::vector<LeaseEvent> reconfigure(LeaseRules rules, int64_t now);
  // Leases and holds read back from the lease file at start-up: none is connected; expired ones
  // are dropped silently, and the current rules apply as in reconfigure().
  std::vector<LeaseEvent> restore(const std::vector<Lease>& leases, const std::vector<Hold>& holds,
                                  int64_t now);

  // The live lease at `addr` (the one that lasts longest, when several clients or sources hold
  // one), or nullopt.
  std::optional<Lease> lookup(const InetAddr& addr, int64_t now) const;
  // Live leases ordered by address, client, source; live hold-downs ordered by address.
  std::vector<Lease> list(int64_t now) const;
  std::vector<Lease> leasesOf(std::string_view client, int64_t now) const;
  std::vector<Hold> holds(int64_t now) const;
  // The earliest time at which expire() has something to do, for the caller's timer.
  std::optional<int64_t> nextDeadline() const;
  uint64_t generation() const { return generation_; }

 private:
  using Key = std::tuple<InetAddr, std::string, LeaseSource>;

  GrantResult grant(std::string_view client, const InetAddr& addr, LeaseSource source, int64_t now);
  void supersede(std::string_view client, LeaseSource source, const InetAddr& addr,
                 std::vector<LeaseEvent>& events);
  // Ends the leases at `addr` that `which` selects, each with a Revoked event giving `reason`.
  template <class Pred>
  void revokeAt(const InetAddr& addr, Pred which, const std::string& reason,
                std::vector<LeaseEvent>& events);
  std::optional<int64_t> heldUntil(const InetAddr& addr, int64_t now) const;
  std::chrono::seconds lengthOf(LeaseSource s) const {
    return s == LeaseSource::Tunnel ? rules_.lease_grace : rules_.lease_lifetime;
  }

  LeaseRules rules_;
  std::map<Key, Lease> leases_;
  std::map<InetAddr, int64_t> holds_;  // address -> held down until
  uint64_t generation_ = 0;
};

}  // namespace dynmx::tunneld
