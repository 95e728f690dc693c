// channel_shares.cpp: max-min fair shares of the channel cap, and the tally behind them.
//
// Failure behaviour: none; every function is total.
#include "tunneld/ssh/channel_shares.hpp"

#include <algorithm>
#include <cstdint>
#include <numeric>

namespace dynmx::tunneld {

std::vector<size_t> fairShares(size_t cap, const std::vector<size_t>& demands, size_t turn) {
  if (cap == 0) return demands;
  std::vector<size_t> out(demands.size(), 0);
  std::vector<size_t> order(demands.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // Smallest demand first; equal demands keep their order (stable).
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return demands[a] < demands[b]; });
  size_t left = cap;
  for (size_t k = 0; k < order.size(); ++k) {
    size_t rest = order.size() - k;
    size_t level = left / rest;
    if (demands[order[k]] <= level) {
      out[order[k]] = demands[order[k]];
      left -= demands[order[k]];
      continue;
    }
    // Every demand from here on is above the level: each gets it, and the remainder goes one
    // each to them in round-robin order from index `turn`.
    std::vector<size_t> unmet(order.begin() + static_cast<std::ptrdiff_t>(k), order.end());
    std::sort(unmet.begin(), unmet.end());
    std::rotate(unmet.begin(), unmet.begin() + static_cast<std::ptrdiff_t>(turn % unmet.size()),
                unmet.end());
    size_t extra = left - level * rest;
    for (size_t i : unmet) {
      out[i] = level + (extra > 0 ? 1 : 0);
      if (extra > 0) --extra;
    }
    break;
  }
  return out;
}

bool wantAnotherConnection(size_t connections, size_t saturated, size_t setting_up,
                           uint32_t max_connections, bool may_open) {
  return may_open && setting_up == 0 && connections > 0 && saturated == connections &&
         connections < std::max<uint32_t>(1, max_connections);
}

void ChannelShares::setCap(size_t cap) {
  if (cap == cap_) return;
  cap_ = cap;
  dirty_ = true;
  wake_ = true;
}

void ChannelShares::rotate() {
  ++turn_;
  dirty_ = true;
  if (cap_ > 0 && blocked() > 0) wake_ = true;
}

void ChannelShares::report(const void* conn, const std::string& client, size_t open, size_t keeping,
                           bool wants) {
  auto found = conns_.find(conn);
  if (found != conns_.end()) {
    const Tally& t = found->second;
    if (t.client == client && t.open == open && t.keeping == keeping && t.wants == wants) return;
  }
  size_t before = this->open();
  size_t blocked_before = blocked();
  conns_[conn] = Tally{client, open, keeping, wants};
  dirty_ = true;
  size_t now_blocked = blocked();
  if ((this->open() < before && now_blocked > 0) || now_blocked > blocked_before) wake_ = true;
}

void ChannelShares::forget(const void* conn) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return;
  bool freed = it->second.open > 0;
  conns_.erase(it);
  dirty_ = true;
  if (freed && blocked() > 0) wake_ = true;
}

const std::map<std::string, ChannelShares::ClientSum>& ChannelShares::sums() const {
  if (!dirty_) return sums_;
  sums_.clear();
  total_ = 0;
  for (auto& [conn, t] : conns_) {
    total_ += t.open;
    ClientSum& s = sums_[t.client];
    s.open += t.open;
    s.keeping += t.keeping;
    s.wants = s.wants || t.wants;
  }
  std::vector<size_t> demands;
  demands.reserve(sums_.size());
  for (auto& [name, s] : sums_) demands.push_back(s.keeping + (s.wants ? 1 : 0));
  auto shares = fairShares(cap_, demands, turn_);
  size_t i = 0;
  for (auto& [name, s] : sums_) s.share = cap_ == 0 ? SIZE_MAX : shares[i++];
  dirty_ = false;
  return sums_;
}

size_t ChannelShares::open() const {
  sums();
  return total_;
}

size_t ChannelShares::open(const std::string& client) const {
  auto& s = sums();
  auto it = s.find(client);
  return it == s.end() ? 0 : it->second.open;
}

size_t ChannelShares::share(const std::string& client) const {
  if (cap_ == 0) return SIZE_MAX;
  auto& s = sums();
  auto it = s.find(client);
  if (it != s.end()) return it->second.share;
  // Not reported yet: what one more demand of one channel would get.
  return open() < cap_ ? 1 : 0;
}

bool ChannelShares::mayOpen(const std::string& client) const {
  if (cap_ == 0) return true;
  return open() < cap_ && open(client) < share(client);
}

size_t ChannelShares::excess(const std::string& client) const {
  if (cap_ == 0) return 0;
  auto& s = sums();
  auto it = s.find(client);
  if (it == s.end() || it->second.keeping <= it->second.share) return 0;
  return it->second.keeping - it->second.share;
}

size_t ChannelShares::blocked() const {
  if (cap_ == 0) return 0;
  size_t n = 0;
  for (auto& [name, s] : sums())
    if (s.wants && !mayOpen(name)) ++n;
  return n;
}

bool ChannelShares::takeWake() {
  bool w = wake_;
  wake_ = false;
  return w;
}

}  // namespace dynmx::tunneld
