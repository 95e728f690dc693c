// scheduler.cpp: what is due, for whom, and when the queue manager must next wake up.
//
// Contract: each client has a schedule of its Messages that may be handed out (not in flight,
// held or stuck), ordered by (due, queue id); nextJob() takes the first due one, moves it from
// deferred/ to active/ and opens its content as a Job. Notifications are never in a client
// schedule: they are due for a hand-off to the local sendmail, which tick() starts (notify.cpp).
// tick() also expires and warns (results.cpp, notify.cpp) and moves deferred mail that came due
// back to active/. nextWakeup() is the earliest time tick() has something to do; it is asked on
// every turn of the daemon's loop, so it is cached until the facade marks it stale.
//
// Failure behaviour: a message that cannot be moved back to active/ is rescheduled a minute later
// (logged); one whose content cannot be opened waits retry_min (logged); neither stops the
// hand-out of the next message.
#include <algorithm>

#include "shared/log.hpp"
#include "tunneld/queue/queue_impl.hpp"

namespace dynmx::tunneld {
namespace {

class SpoolSource : public ContentSource {
 public:
  explicit SpoolSource(ContentReader r) : r_(std::move(r)) {}
  Result<std::string_view> next(size_t max) override { return r_.next(max); }

 private:
  ContentReader r_;
};

}  // namespace

bool QueueManager::Impl::schedulable(const Entry& e) {
  return !e.in_flight && !e.stuck && e.msg.state != QueueState::Hold;
}

void QueueManager::Impl::unschedule(const Entry& e) {
  if (e.kind != Kind::Message) return;
  auto it = sched.find(e.msg.env.client);
  if (it != sched.end()) it->second.erase({e.due, e.msg.id});
}

void QueueManager::Impl::schedule(Entry& e, int64_t due) {
  unschedule(e);
  e.due = due;
  if (e.kind == Kind::Message && schedulable(e)) sched[e.msg.env.client].insert({e.due, e.msg.id});
}

void QueueManager::Impl::clientUp(const std::string& client, int64_t now) {
  auto it = sched.find(client);
  if (it == sched.end()) return;
  std::vector<std::string> ids;
  for (const auto& [due, id] : it->second) {
    if (due > now) ids.push_back(id);
  }
  for (const std::string& id : ids) schedule(msgs.at(id), now);
}

void QueueManager::Impl::flush(const std::string& client, int64_t now) {
  for (auto& [id, e] : msgs) {
    if (!client.empty() && e.msg.env.client != client) continue;
    if (schedulable(e) && e.due > now) schedule(e, now);
  }
}

std::optional<Job> QueueManager::Impl::nextJob(const std::string& client, int64_t now) {
  for (;;) {
    auto it = sched.find(client);
    if (it == sched.end() || it->second.empty() || it->second.begin()->first > now) {
      return std::nullopt;
    }
    std::string id = it->second.begin()->second;
    Entry& e = msgs.at(id);
    unschedule(e);
    if (e.msg.state == QueueState::Deferred) {
      if (auto s = spool.move(e.msg, QueueState::Active); !s) {
        logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
        schedule(e, now + kHousekeepingRetry);
        continue;
      }
    }
    std::vector<size_t> pend = pending(e.msg);
    if (pend.empty()) {
      removeFinished(id);
      continue;
    }
    auto reader = spool.openContent(e.msg);
    if (!reader.ok()) {
      logf(LogLevel::Error, "%s: cannot open the message content: %s", id.c_str(),
           reader.error().message.c_str());
      schedule(e, now + policy(client).retry_min.count());
      continue;
    }
    Job job;
    job.msg = e.msg;
    job.rcpt_indexes = std::move(pend);
    job.content = std::make_unique<SpoolSource>(std::move(reader.value()));
    e.in_flight = true;
    return job;
  }
}

bool QueueManager::Impl::hasDue(const std::string& client, int64_t now) const {
  auto it = sched.find(client);
  return it != sched.end() && !it->second.empty() && it->second.begin()->first <= now;
}

void QueueManager::Impl::tick(int64_t now) {
  last_tick = std::max(last_tick, now);
  std::vector<std::string> ids;
  ids.reserve(msgs.size());
  for (const auto& [id, e] : msgs) ids.push_back(id);
  for (const std::string& id : ids) {
    auto it = msgs.find(id);
    if (it == msgs.end()) continue;
    Entry& e = it->second;
    if (e.in_flight || e.stuck || e.msg.state == QueueState::Hold) continue;
    if (e.kind == Kind::Notification) {
      if (e.due <= now) handOff(e, now);
      continue;
    }
    if (expireIfDue(e, now)) continue;
    warnIfDue(e, now);
    if (e.msg.state == QueueState::Deferred && e.due <= now) {
      if (auto s = spool.move(e.msg, QueueState::Active); !s) {
        logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
      }
    }
  }
}

int64_t QueueManager::Impl::nextWakeup() const {
  if (!wake_dirty) return wake_cache;
  int64_t best = 0;
  auto consider = [&best](int64_t t) {
    if (t > 0 && (best == 0 || t < best)) best = t;
  };
  for (const auto& [id, e] : msgs) {
    if (e.in_flight || e.stuck || e.msg.state == QueueState::Hold) continue;
    if (e.kind == Kind::Notification) {
      consider(std::max<int64_t>(e.due, 1));
      continue;
    }
    const RetryPolicy& p = policy(e.msg.env.client);
    consider(std::max(e.msg.env.arrival + p.queue_lifetime.count(), e.not_before));
    if (!e.msg.delivery.warned && p.delay_warning.count() > 0 && anyWarnable(e.msg)) {
      consider(std::max(e.msg.env.arrival + p.delay_warning.count(), e.not_before));
    }
    // Deferred mail coming due (tick moves it to active/), and anything rescheduled to a time
    // after the last tick; mail already due waits for its client's connection, not for a tick.
    if (e.due > last_tick) consider(e.due);
  }
  wake_cache = best;
  wake_dirty = false;
  return best;
}

}  // namespace dynmx::tunneld
