// checkin.hpp: the check-in on the admin socket, both ends: the daemon's reply to
// "checkin CLIENT ADDRESS" and what dynmx-checkin makes of it (a line for the client's cron log
// and a sysexits code).
//
// Contract: pure functions. The daemon answers a check-in from LeaseTable::checkIn's GrantResult:
//   OK, body "lease client=home addr=203.0.113.7 source=checkin expires=2026-11-30T01:02:03Z"
//   ERR refused KIND: REASON      (KIND: refusalKindName, e.g. "relay-off")
// checkinOutcome() maps the reply (or the failure to get one) to dynmx-checkin's exit:
//   lease -> 0; refused unknown-client -> 67 (EX_NOUSER); any other refusal, and "not permitted"
//   (the account is not relay.checkin_user) -> 77 (EX_NOPERM); the daemon cannot be reached or
//   gives no well-formed reply -> 75 (EX_TEMPFAIL: cron tries again in a few minutes).
// Failure behaviour: a reply it does not understand is a temporary failure, never a lease.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "shared/inet_addr.hpp"
#include "shared/result.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/relay/lease_table.hpp"

namespace dynmx::tunneld {

const char* refusalKindName(RefusalKind k);  // "unknown-client", "relay-off", ...
std::optional<RefusalKind> refusalKindFromName(std::string_view name);

// The daemon's reply to a check-in.
ControlReply checkinReply(const GrantResult& g);

struct CheckinOutcome {
  int exit_code = 0;
  std::string message;  // one line: the lease and its expiry, or why there is none
};
// `reply`: what controlRequest() returned for "checkin CLIENT ADDRESS" on `socket`.
CheckinOutcome checkinOutcome(std::string_view client, const InetAddr& addr,
                              const std::string& socket, const Result<ControlReply>& reply);

}  // namespace dynmx::tunneld
