// relay_guard.hpp: relay_senders, the check that a client's leased address relays only in the
// client's own name (dynmx-relay(7), dynmx.toml(5)).
//
// Contract: a MessageSession asks atRcpt() for each recipient that routes to no client. When some
// client has relay_senders, the connection came over the network and the MTA does not deliver the
// recipient locally ({rcpt_mailer} is not local, prog, *file*, *include*, virtual, discard or
// error: mail that does not leave the host), the guard
// asks dynmx-relaymap (relay.socket, map `relayclient`) who holds the lease on the connecting
// address, once per message. An address leased by a client with relay_senders may relay only
// with an envelope sender in that client's domains or its relay_senders list (the null sender,
// DSNs, passes); otherwise 550 5.7.1. Each relayed recipient is logged with the client's name.
//
// Failure: fail closed. When the lease server cannot be asked or cannot tell (not reachable, no
// answer within kLeaseLookupTimeout, TEMP, a malformed answer), a recipient it would have to
// check is tempfailed with 451 4.3.5 and the reason logged; never accepted unchecked.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "milter/session.hpp"

namespace dynmx::milter {

inline constexpr std::chrono::milliseconds kLeaseLookupTimeout{5000};

// Whether `sender` (bare, lower or mixed case) may relay for `client` (index `index` of the
// router): the null sender, an address in the client's domains, or one its relay_senders lists
// ("user@domain" exactly, "@domain" for the whole domain).
bool relaySenderAllowed(const ClientConfig& client, const Router& router, size_t index,
                        std::string_view sender);

// The recipients the MTA delivers on this host, or drops ({rcpt_mailer}): never relayed.
bool localMailer(std::string_view rcpt_mailer);

class RelayGuard {
 public:
  // `holder` keeps the lease holder for the message ("" none) once asked. Returns nullopt when
  // the recipient may go on, else Reject (550 5.7.1) or Tempfail (451 4.3.5) with the reply.
  std::optional<RcptOutcome> atRcpt(const Snapshot& snap, const Peer& peer,
                                    const std::string& sender, const std::string& rcpt,
                                    std::string_view rcpt_mailer,
                                    std::optional<std::string>& holder, const std::string& logid);
};

}  // namespace dynmx::milter
