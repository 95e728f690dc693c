// lease.cpp: lease rules and lease log lines (see lease.hpp).
#include "tunneld/relay/lease.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "shared/config.hpp"

namespace dynmx::tunneld {

const char* leaseSourceName(LeaseSource s) {
  return s == LeaseSource::Tunnel ? "tunnel" : "checkin";
}

std::optional<LeaseSource> leaseSourceFromName(std::string_view name) {
  if (name == "tunnel") return LeaseSource::Tunnel;
  if (name == "checkin") return LeaseSource::Checkin;
  return std::nullopt;
}

LeaseRules LeaseRules::fromConfig(const Config& cfg) {
  LeaseRules r;
  r.lease_grace = cfg.relay.lease_grace;
  r.lease_lifetime = cfg.relay.lease_lifetime;
  r.revoke_hold = cfg.relay.revoke_hold;
  r.mx_addresses = cfg.relay.mx_addresses;
  for (const auto& c : cfg.clients) r.clients[c.name] = Client{c.relay, c.relay_networks};
  return r;
}

std::optional<Refusal> LeaseRules::mayLease(std::string_view client, const InetAddr& addr) const {
  auto it = clients.find(client);
  if (it == clients.end())
    return Refusal{RefusalKind::UnknownClient, "no client of that name is configured"};
  if (!it->second.relay) return Refusal{RefusalKind::RelayOff, "relay is off for this client"};
  const auto& nets = it->second.networks;
  if (!nets.empty() && std::none_of(nets.begin(), nets.end(),
                                    [&](const InetNetwork& n) { return n.contains(addr); }))
    return Refusal{RefusalKind::OutsideNetworks, "address outside relay_networks"};
  return std::nullopt;
}

bool LeaseRules::isMxAddress(const InetAddr& addr) const {
  return std::find(mx_addresses.begin(), mx_addresses.end(), addr) != mx_addresses.end();
}

LeaseEvent LeaseEvent::refused(std::string client, const InetAddr& addr, LeaseSource source,
                               std::string reason) {
  LeaseEvent e;
  e.kind = LeaseEventKind::Refused;
  e.client = std::move(client);
  e.addr = addr;
  e.source = source;
  e.reason = std::move(reason);
  return e;
}

std::string LeaseEvent::line() const {
  std::string s = "lease: client=" + client + " addr=" + addr.str() +
                  " source=" + leaseSourceName(source) + " ";
  switch (kind) {
    case LeaseEventKind::Granted:
      return s + "expires=" + isoUtc(expires);
    case LeaseEventKind::Renewed:
      return s + "expires=" + isoUtc(expires) + " (renewed)";
    case LeaseEventKind::ConnectionLost:
      return s + "expires=" + isoUtc(expires) + " (connection lost)";
    case LeaseEventKind::Superseded:
      return s + "ended (superseded by " + other.str() + ")";
    case LeaseEventKind::Expired:
      return s + "expired";
    case LeaseEventKind::Revoked:
      return s + "revoked (" + reason + ")";
    case LeaseEventKind::Refused:
      return s + "refused (" + reason + ")";
  }
  return s;
}

LogLevel LeaseEvent::level() const {
  return kind == LeaseEventKind::Revoked || kind == LeaseEventKind::Refused ? LogLevel::Notice
                                                                            : LogLevel::Info;
}

void logLeaseEvents(const std::vector<LeaseEvent>& events) {
  for (const auto& e : events) logLine(e.level(), e.line());
}

}  // namespace dynmx::tunneld
