// checkin.cpp: the check-in reply and its meaning for dynmx-checkin (see checkin.hpp).
#include "tunneld/relay/checkin.hpp"

#include <cerrno>

#include "shared/sysexits.hpp"
#include "tunneld/relay/peer_check.hpp"

namespace dynmx::tunneld {
namespace {

struct KindName {
  RefusalKind kind;
  const char* name;
};
constexpr KindName kKindNames[] = {
    {RefusalKind::UnknownClient, "unknown-client"},
    {RefusalKind::RelayOff, "relay-off"},
    {RefusalKind::OutsideNetworks, "outside-networks"},
    {RefusalKind::HeldDown, "held-down"},
    {RefusalKind::NotThisMx, "not-this-mx"},
    {RefusalKind::NoConfirmation, "no-confirmation"},
    {RefusalKind::BadAddress, "bad-address"},
};

constexpr std::string_view kRefused = "refused ";
constexpr std::string_view kNotPermitted = "not permitted";

}  // namespace

const char* refusalKindName(RefusalKind k) {
  for (const auto& kn : kKindNames)
    if (kn.kind == k) return kn.name;
  return "refused";
}

std::optional<RefusalKind> refusalKindFromName(std::string_view name) {
  for (const auto& kn : kKindNames)
    if (name == kn.name) return kn.kind;
  return std::nullopt;
}

ControlReply checkinReply(const GrantResult& g) {
  ControlReply r;
  if (g.lease) {
    const Lease& l = *g.lease;
    r.lines.push_back("lease client=" + l.client + " addr=" + l.addr.str() +
                      " source=" + leaseSourceName(l.source) + " expires=" + isoUtc(l.expires));
    return r;
  }
  r.ok = false;
  if (g.refusal)
    r.error = std::string(kRefused) + refusalKindName(g.refusal->kind) + ": " + g.refusal->reason;
  else
    r.error = "refused: no lease";  // not reached: checkIn sets one of the two
  return r;
}

CheckinOutcome checkinOutcome(std::string_view client, const InetAddr& addr,
                              const std::string& socket, const Result<ControlReply>& reply) {
  std::string who = "dynmx-checkin: client " + std::string(client) + " from " + addr.str();
  if (!reply) {
    // A socket this account may not open is the MX's configuration, not a daemon that is down.
    if (reply.error().code == EACCES || reply.error().code == EPERM)
      return {kExitNoPerm,
              who + ": " + reply.error().message +
                  " (tunneld.control_mode and control_group must let this account in)"};
    return {kExitTempFail, who + ": dynmx-tunneld cannot be reached (" + reply.error().message +
                               "); try again later"};
  }
  const ControlReply& r = reply.value();
  if (r.ok) {
    // The one line we expect; anything else is not a lease we can report.
    if (r.lines.size() == 1 && r.lines[0].starts_with("lease client=")) {
      std::string_view l = r.lines[0];
      auto at = l.find(" expires=");
      if (at != std::string_view::npos)
        return {kExitOk, who + ": relay lease until " + std::string(l.substr(at + 9))};
    }
    return {kExitTempFail, who + ": unexpected reply from dynmx-tunneld on " + socket};
  }
  std::string_view e = r.error;
  if (e.starts_with(kRefused)) {
    std::string_view rest = e.substr(kRefused.size());
    auto colon = rest.find(':');
    auto kind = refusalKindFromName(rest.substr(0, colon));
    if (kind) return {checkinExitCode(*kind), who + ": refused (" + std::string(rest) + ")"};
  }
  if (e.starts_with(kNotPermitted))
    return {kExitNoPerm, who + ": dynmx-tunneld says " + std::string(e) +
                             " (is this account relay.checkin_user?)"};
  return {kExitTempFail, who + ": dynmx-tunneld: " + std::string(e)};
}

}  // namespace dynmx::tunneld
