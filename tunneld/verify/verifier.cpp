// verifier.cpp: verify requests, the probe queue and the cache (see verifier.hpp).
#include "tunneld/verify/verifier.hpp"

#include <algorithm>

#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"
#include "shared/text.hpp"

namespace dynmx::tunneld {

Verifier::Verifier(std::string cache_path, const TimeSource& time)
    : store_(std::move(cache_path)), time_(time) {}

void Verifier::load() {
  auto c = store_.load(time_.unixSeconds());
  if (!c) {
    logf(LogLevel::Warning, "verify cache: %s; starting with an empty cache",
         c.error().message.c_str());
    return;
  }
  cache_ = std::move(*c);
  if (cache_.size())
    logf(LogLevel::Info, "verify cache %s: %zu answer(s) read back", store_.path().c_str(),
         cache_.size());
}

void Verifier::configure(const std::vector<ClientConfig>& clients) {
  clients_.clear();
  std::vector<std::string> names;
  for (const ClientConfig& c : clients) {
    names.push_back(c.name);
    if (c.verify_recipients) clients_[c.name] = c;
  }
  size_t before = cache_.size();
  cache_.forgetClientsExcept(names);
  if (cache_.size() != before) save();
}

void Verifier::save() {
  if (auto st = store_.save(cache_); !st)
    logf(LogLevel::Error, "verify cache: %s; the answers stay in memory only",
         st.error().message.c_str());
}

void Verifier::request(const std::string& client, const std::string& address, bool connected,
                       SteadyClock::time_point deadline, Reply reply) {
  if (!clients_.count(client))
    return reply({VerifyStatus::Unknown, "none",
                  "recipient verification is not enabled for client " + client});
  int64_t now = time_.unixSeconds();
  if (auto e = cache_.find(client, address, now)) {
    logf(LogLevel::Info, "client=%s: verify to=<%s>: %s, from the cache (%s)", client.c_str(),
         printable(address, 320).c_str(), verifyStatusName(e->status), e->reply.c_str());
    return reply({e->status, "cache", e->reply});
  }
  if (!connected)
    return reply({VerifyStatus::Unknown, "none", "client " + client + " is not connected"});
  std::string key = asciiLower(address);
  auto it = std::find_if(pending_.begin(), pending_.end(),
                         [&](const Pending& p) { return p.client == client && p.address == key; });
  if (it == pending_.end()) it = pending_.insert(pending_.end(), Pending{client, key, false, {}});
  it->waiters.push_back({deadline, std::move(reply)});
}

void Verifier::expire(SteadyClock::time_point now) {
  for (auto it = pending_.begin(); it != pending_.end();) {
    auto late = std::stable_partition(it->waiters.begin(), it->waiters.end(),
                                      [&](const Waiter& w) { return w.deadline > now; });
    std::vector<Waiter> answer(std::make_move_iterator(late),
                               std::make_move_iterator(it->waiters.end()));
    it->waiters.erase(late, it->waiters.end());
    // A probe under way goes on and fills the cache; one not started is dropped with its askers.
    bool drop = it->waiters.empty() && !it->started;
    for (Waiter& w : answer)
      w.reply({VerifyStatus::Unknown, "none", "no answer from client " + it->client + " in time"});
    it = drop ? pending_.erase(it) : std::next(it);
  }
}

std::optional<SteadyClock::time_point> Verifier::nextDeadline() const {
  std::optional<SteadyClock::time_point> d;
  for (const Pending& p : pending_)
    for (const Waiter& w : p.waiters)
      if (!d || w.deadline < *d) d = w.deadline;
  return d;
}

bool Verifier::hasProbe(const std::string& client) const {
  return std::any_of(pending_.begin(), pending_.end(),
                     [&](const Pending& p) { return p.client == client && !p.started; });
}

std::optional<std::string> Verifier::nextProbe(const std::string& client) {
  for (Pending& p : pending_) {
    if (p.client != client || p.started) continue;
    p.started = true;
    return p.address;
  }
  return std::nullopt;
}

void Verifier::probeDone(const std::string& client, const ProbeResult& result) {
  logf(LogLevel::Info, "client=%s: verify probe to=<%s>: %s (%s)", client.c_str(),
       printable(result.address, 320).c_str(), verifyStatusName(result.status),
       printable(result.reply).c_str());
  auto cfg = clients_.find(client);
  if (result.status != VerifyStatus::Unknown && cfg != clients_.end()) {
    Seconds ttl = result.status == VerifyStatus::Valid ? cfg->second.verify_positive_ttl
                                                       : cfg->second.verify_negative_ttl;
    cache_.put({client, result.address, result.status, time_.unixSeconds() + ttl.count(),
                printable(result.reply, 512)});
    save();
  }
  std::string key = asciiLower(result.address);
  auto it = std::find_if(pending_.begin(), pending_.end(), [&](const Pending& p) {
    return p.client == client && p.address == key && p.started;
  });
  if (it == pending_.end()) return;
  std::vector<Waiter> waiters = std::move(it->waiters);
  pending_.erase(it);
  for (Waiter& w : waiters) w.reply({result.status, "probe", printable(result.reply, 512)});
}

}  // namespace dynmx::tunneld
