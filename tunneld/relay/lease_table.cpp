// lease_table.cpp: the relay lease policy (see lease_table.hpp for the rules).
//
// Leases are kept in one map keyed by (address, client, source), so that the leases at one address
// are neighbours (lookup, revoke) and a client has at most one lease per address and source. The
// tables are small (one or two leases per client), so the per-client rules walk the whole map.
#include "tunneld/relay/lease_table.hpp"

#include <algorithm>

namespace dynmx::tunneld {
namespace {

LeaseEvent eventFor(LeaseEventKind kind, const Lease& l) {
  LeaseEvent e;
  e.kind = kind;
  e.client = l.client;
  e.addr = l.addr;
  e.source = l.source;
  e.expires = l.expires;
  return e;
}

int64_t plus(int64_t now, std::chrono::seconds d) {
  return now + d.count();
}

}  // namespace

GrantResult LeaseTable::grantTunnel(std::string_view client, const InetAddr& addr, int64_t now) {
  return grant(client, addr, LeaseSource::Tunnel, now);
}

GrantResult LeaseTable::checkIn(std::string_view client, const InetAddr& addr, int64_t now) {
  return grant(client, addr, LeaseSource::Checkin, now);
}

GrantResult LeaseTable::grant(std::string_view client, const InetAddr& addr, LeaseSource source,
                              int64_t now) {
  GrantResult r;
  auto refuse = [&](Refusal why) {
    r.events.push_back(LeaseEvent::refused(std::string(client), addr, source, why.reason));
    r.refusal = std::move(why);
    return std::move(r);
  };
  auto allowed = rules_.mayLease(client, addr);
  if (allowed &&
      (allowed->kind == RefusalKind::UnknownClient || allowed->kind == RefusalKind::RelayOff))
    return refuse(*allowed);
  // The address is verified as the client's: its older addresses are not, whatever comes next.
  supersede(client, source, addr, r.events);
  if (allowed) return refuse(*allowed);
  if (auto until = heldUntil(addr, now))
    return refuse(Refusal{RefusalKind::HeldDown,
                          "address held down until " + isoUtc(*until) + " after revocation"});

  ++generation_;
  int64_t expires = plus(now, lengthOf(source));
  Key key{addr, std::string(client), source};
  auto it = leases_.find(key);
  if (it != leases_.end() && !it->second.liveAt(now)) {
    r.events.push_back(eventFor(LeaseEventKind::Expired, it->second));
    leases_.erase(it);
    it = leases_.end();
  }
  if (it == leases_.end()) {
    Lease l{std::string(client), addr, source, now, expires, source == LeaseSource::Tunnel};
    it = leases_.emplace(std::move(key), std::move(l)).first;
    r.events.push_back(eventFor(LeaseEventKind::Granted, it->second));
  } else {
    Lease& l = it->second;
    l.expires = std::max(l.expires, expires);
    l.connected = source == LeaseSource::Tunnel;
    r.events.push_back(eventFor(LeaseEventKind::Renewed, l));
  }
  r.lease = it->second;
  return r;
}

void LeaseTable::supersede(std::string_view client, LeaseSource source, const InetAddr& addr,
                           std::vector<LeaseEvent>& events) {
  for (auto it = leases_.begin(); it != leases_.end();) {
    const Lease& l = it->second;
    if (l.client == client && l.source == source && l.addr.family == addr.family &&
        l.addr != addr) {
      LeaseEvent e = eventFor(LeaseEventKind::Superseded, l);
      e.other = addr;
      events.push_back(std::move(e));
      it = leases_.erase(it);
      ++generation_;
    } else {
      ++it;
    }
  }
}

bool LeaseTable::touchTunnel(std::string_view client, const InetAddr& addr, int64_t now) {
  auto it = leases_.find(Key{addr, std::string(client), LeaseSource::Tunnel});
  if (it == leases_.end() || !it->second.connected || !it->second.liveAt(now)) return false;
  it->second.expires = std::max(it->second.expires, plus(now, rules_.lease_grace));
  return true;
}

std::vector<LeaseEvent> LeaseTable::tunnelLost(std::string_view client, const InetAddr& addr,
                                               int64_t now) {
  std::vector<LeaseEvent> events;
  auto it = leases_.find(Key{addr, std::string(client), LeaseSource::Tunnel});
  if (it == leases_.end() || !it->second.connected) return events;
  ++generation_;
  Lease& l = it->second;
  if (!l.liveAt(now)) {
    events.push_back(eventFor(LeaseEventKind::Expired, l));
    leases_.erase(it);
    return events;
  }
  l.connected = false;
  l.expires = plus(now, rules_.lease_grace);
  events.push_back(eventFor(LeaseEventKind::ConnectionLost, l));
  return events;
}

template <class Pred>
void LeaseTable::revokeAt(const InetAddr& addr, Pred which, const std::string& reason,
                          std::vector<LeaseEvent>& events) {
  auto it = leases_.lower_bound(Key{addr, std::string(), LeaseSource::Tunnel});
  while (it != leases_.end() && it->second.addr == addr) {
    if (!which(it->second)) {
      ++it;
      continue;
    }
    LeaseEvent e = eventFor(LeaseEventKind::Revoked, it->second);
    e.reason = reason;
    events.push_back(std::move(e));
    it = leases_.erase(it);
    ++generation_;
  }
}

std::vector<LeaseEvent> LeaseTable::tunnelRefused(std::string_view client, const InetAddr& addr,
                                                  const Refusal& why, int64_t /*now*/) {
  std::vector<LeaseEvent> events;
  events.push_back(LeaseEvent::refused(std::string(client), addr, LeaseSource::Tunnel, why.reason));
  if (why.kind == RefusalKind::NotThisMx)
    revokeAt(
        addr, [&](const Lease& l) { return l.client == client; }, why.reason, events);
  return events;
}

std::vector<LeaseEvent> LeaseTable::hostKeyMismatch(std::string_view client, const InetAddr& addr,
                                                    int64_t /*now*/) {
  std::vector<LeaseEvent> events;
  const std::string own = "host key mismatch";
  const std::string other = "host key mismatch for client " + std::string(client);
  auto it = leases_.lower_bound(Key{addr, std::string(), LeaseSource::Tunnel});
  while (it != leases_.end() && it->second.addr == addr) {
    LeaseEvent e = eventFor(LeaseEventKind::Revoked, it->second);
    e.reason = it->second.client == client ? own : other;
    events.push_back(std::move(e));
    it = leases_.erase(it);
    ++generation_;
  }
  return events;
}

RevokeResult LeaseTable::revoke(const InetAddr& addr, int64_t now) {
  RevokeResult r;
  revokeAt(
      addr, [](const Lease&) { return true; }, "by the administrator", r.events);
  r.held_until = plus(now, rules_.revoke_hold);
  int64_t& until = holds_[addr];
  until = std::max(until, r.held_until);
  r.held_until = until;
  ++generation_;
  return r;
}

std::optional<int64_t> LeaseTable::heldUntil(const InetAddr& addr, int64_t now) const {
  auto it = holds_.find(addr);
  if (it == holds_.end() || it->second <= now) return std::nullopt;
  return it->second;
}

std::vector<LeaseEvent> LeaseTable::expire(int64_t now) {
  std::vector<LeaseEvent> events;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.liveAt(now)) {
      ++it;
      continue;
    }
    events.push_back(eventFor(LeaseEventKind::Expired, it->second));
    it = leases_.erase(it);
    ++generation_;
  }
  for (auto it = holds_.begin(); it != holds_.end();) {
    if (it->second > now) {
      ++it;
      continue;
    }
    it = holds_.erase(it);
    ++generation_;
  }
  return events;
}

std::vector<LeaseEvent> LeaseTable::reconfigure(LeaseRules rules, int64_t now) {
  std::vector<LeaseEvent> events;
  auto shorter = [](std::chrono::seconds before, std::chrono::seconds after) {
    return after < before ? (before - after).count() : 0;
  };
  const int64_t cut[2] = {shorter(rules_.lease_grace, rules.lease_grace),
                          shorter(rules_.lease_lifetime, rules.lease_lifetime)};
  rules_ = std::move(rules);
  ++generation_;
  for (auto it = leases_.begin(); it != leases_.end();) {
    Lease& l = it->second;
    if (auto why = rules_.mayLease(l.client, l.addr)) {
      LeaseEvent e = eventFor(LeaseEventKind::Revoked, l);
      e.reason = why->reason;
      events.push_back(std::move(e));
      it = leases_.erase(it);
      continue;
    }
    l.expires -= cut[l.source == LeaseSource::Tunnel ? 0 : 1];
    if (!l.liveAt(now)) {
      events.push_back(eventFor(LeaseEventKind::Expired, l));
      it = leases_.erase(it);
      continue;
    }
    ++it;
  }
  return events;
}

std::vector<LeaseEvent> LeaseTable::restore(const std::vector<Lease>& leases,
                                            const std::vector<Hold>& holds, int64_t now) {
  for (const auto& h : holds) {
    if (h.until <= now) continue;
    int64_t& until = holds_[h.addr];
    until = std::max(until, h.until);
  }
  // Oldest grant first, so that where the file holds two addresses of one client and source (it
  // never should), the newest wins as it would have when they were granted.
  std::vector<Lease> order = leases;
  std::stable_sort(order.begin(), order.end(),
                   [](const Lease& a, const Lease& b) { return a.granted < b.granted; });
  std::vector<LeaseEvent> events;
  for (auto l : order) {
    if (!l.liveAt(now)) continue;
    l.connected = false;
    supersede(l.client, l.source, l.addr, events);
    Key key{l.addr, l.client, l.source};
    auto [it, fresh] = leases_.emplace(key, l);
    if (!fresh) it->second.expires = std::max(it->second.expires, l.expires);
  }
  ++generation_;
  // The rules of this configuration decide, not those the file was written under.
  auto more = reconfigure(rules_, now);
  events.insert(events.end(), more.begin(), more.end());
  return events;
}

std::optional<Lease> LeaseTable::lookup(const InetAddr& addr, int64_t now) const {
  std::optional<Lease> best;
  for (auto it = leases_.lower_bound(Key{addr, std::string(), LeaseSource::Tunnel});
       it != leases_.end() && it->second.addr == addr; ++it) {
    if (it->second.liveAt(now) && (!best || it->second.expires > best->expires)) best = it->second;
  }
  return best;
}

std::vector<Lease> LeaseTable::list(int64_t now) const {
  std::vector<Lease> out;
  for (const auto& [k, l] : leases_)
    if (l.liveAt(now)) out.push_back(l);
  return out;
}

std::vector<Lease> LeaseTable::leasesOf(std::string_view client, int64_t now) const {
  std::vector<Lease> out;
  for (const auto& [k, l] : leases_)
    if (l.client == client && l.liveAt(now)) out.push_back(l);
  return out;
}

std::vector<Hold> LeaseTable::holds(int64_t now) const {
  std::vector<Hold> out;
  for (const auto& [addr, until] : holds_)
    if (until > now) out.push_back(Hold{addr, until});
  return out;
}

std::optional<int64_t> LeaseTable::nextDeadline() const {
  std::optional<int64_t> t;
  auto consider = [&](int64_t v) {
    if (!t || v < *t) t = v;
  };
  for (const auto& [k, l] : leases_) consider(l.expires);
  for (const auto& [a, until] : holds_) consider(until);
  return t;
}

}  // namespace dynmx::tunneld
