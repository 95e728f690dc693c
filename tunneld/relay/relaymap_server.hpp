// relaymap_server.hpp: the socketmap server of dynmx-relaymap: one poll loop over the listening
// socket, the lease feed and the MTA connections.
//
// Contract: serve() accepts MTA connections on `listen_fd` (non-blocking is set here), answers
// each request with answerLeaseRequest() (maps relay and relayclient) against the newest complete
// snapshot read from `feed_fd`, judging expiry by `time` (its own clock, not the daemon's), and
// returns when the feed ends.
// Up to max_connections at once (a connection over the limit is accepted and closed at once, so
// that the MTA fails fast instead of waiting in the backlog); a connection idle for idle_timeout,
// or one that sends a malformed request (answered PERM first) or does not read its answers, is
// closed. Before the first snapshot every address lookup is answered TEMP.
//
// Failure: serve() returns kExitOk when the feed ends cleanly at a snapshot boundary (the daemon
// closed it), kExitSoftware when the feed is malformed or ends mid-snapshot, kExitOsErr on a
// poll/accept error it cannot go on from. In every case the server stops answering, and the MTA
// sees a failed lookup (tempfail), never an OK.
#pragma once

#include <chrono>
#include <cstddef>

#include "shared/clock.hpp"
#include "tunneld/relay/relay_feed.hpp"
#include "tunneld/relay/socketmap.hpp"

namespace dynmx::relay {

struct RelayMapLimits {
  size_t max_connections = 512;
  // Postfix closes its socketmap connections after 10 s idle itself; sendmail keeps one per SMTP
  // session and asks again at each RCPT, which may come up to an hour apart (its default command
  // timeout): a connection closed under it would turn the next lookup into a tempfail.
  std::chrono::milliseconds idle_timeout = std::chrono::hours(1);
  size_t max_request = kMaxRequest;
  size_t max_leases = kDefaultMaxLeases;
};

int serveRelayMap(int listen_fd, int feed_fd, const RelayMapLimits& limits, const TimeSource& time);

}  // namespace dynmx::relay
