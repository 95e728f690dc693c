// results.cpp: recording what became of a job, then removing, deferring or expiring its message.
//
// Contract: finish() takes one TransactionResult per Job handed out (abandon() makes one that
// defers every attempted recipient). Each result is logged Postfix-style and journaled (fsynced)
// before the message moves on; when every recipient is delivered by this very attempt (the
// common case), the removal of the file is the record instead (a crash before the unlink
// re-sends: a duplicate, never a loss). Failed recipients are reported to the sender first
// (notify.cpp) and journaled Failed only once the report is in the spool. Afterwards the message
// is removed (all final), expired (older than queue_lifetime: the pending recipients fail and are
// reported on), or deferred with retryDelay() backoff, or put on hold when that was asked while
// it was in flight. A message from <> is never reported on: logged and dropped.
//
// Failure behaviour: results for a message that is not in flight are a bug (logged, abort). A
// journal write that fails leaves the message in active/ out of the schedule until a restart
// (markStuck, which re-sends what was in flight); a content error from the transport moves the
// file to corrupt/; a notification that cannot be built or spooled leaves its recipients pending
// (the next attempt or tick tries again, at most once a minute).
#include <algorithm>
#include <cinttypes>
#include <cstdlib>

#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"
#include "tunneld/queue/queue_impl.hpp"

namespace dynmx::tunneld {

using std::chrono::seconds;

namespace {

const char* outcomeName(Outcome o) {
  switch (o) {
    case Outcome::Delivered:
      return "sent";
    case Outcome::Deferred:
      return "deferred";
    case Outcome::Failed:
      return "bounced";
  }
  return "?";
}

// True when `result` delivers every recipient of m that is still pending.
bool completesMessage(const SpoolMessage& m, const TransactionResult& result) {
  std::vector<bool> done(m.env.rcpts.size());
  for (size_t i = 0; i < m.env.rcpts.size(); ++i)
    done[i] = m.env.rcpts[i].state != RcptState::Pending;
  bool all_delivered = true;
  for (const RcptResult& r : result.rcpts) {
    if (r.index < done.size() && !done[r.index] && r.outcome == Outcome::Delivered) {
      done[r.index] = true;
    } else if (r.index < done.size() && !done[r.index]) {
      all_delivered = false;
    }
  }
  return all_delivered && std::all_of(done.begin(), done.end(), [](bool d) { return d; });
}

// The metrics count what the log lines say, one per recipient attempt.
void countOutcome(ClientCounters& c, Outcome o, int64_t now) {
  switch (o) {
    case Outcome::Delivered:
      ++c.delivered;
      c.last_delivery = now;
      break;
    case Outcome::Deferred:
      ++c.deferred;
      break;
    case Outcome::Failed:
      ++c.bounced;
      break;
  }
}

}  // namespace

bool QueueManager::Impl::allFinal(const SpoolMessage& m) {
  return std::all_of(m.env.rcpts.begin(), m.env.rcpts.end(),
                     [](const SpoolRecipient& r) { return r.state != RcptState::Pending; });
}

std::vector<size_t> QueueManager::Impl::pending(const SpoolMessage& m) {
  std::vector<size_t> v;
  for (size_t i = 0; i < m.env.rcpts.size(); ++i) {
    if (m.env.rcpts[i].state == RcptState::Pending) v.push_back(i);
  }
  return v;
}

void QueueManager::Impl::logAttempt(const SpoolMessage& m, size_t idx, const std::string& relay,
                                    int64_t now, const char* status, const std::string& reply) {
  logf(LogLevel::Info,
       "%s: to=<%s>, client=%s, relay=%s, delay=%" PRId64 ", attempts=%u, status=%s (%s)",
       m.id.c_str(), printable(m.env.rcpts[idx].address, 300).c_str(),
       printable(m.env.client, 100).c_str(), printable(relay, 300).c_str(),
       std::max<int64_t>(0, now - m.env.arrival), m.delivery.attempts, status,
       printable(reply, 1000).c_str());
}

void QueueManager::Impl::markStuck(Entry& e, const std::string& why) {
  logf(LogLevel::Error,
       "%s: cannot record delivery results: %s; left in %s/ until dynmx-tunneld restarts "
       "(recipients may get it twice)",
       e.msg.id.c_str(), why.c_str(), queueStateName(e.msg.state));
  unschedule(e);
  e.stuck = true;
}

void QueueManager::Impl::finish(Job& job, const TransactionResult& result, const std::string& relay,
                                int64_t now) {
  Entry* ep = takeBack(job, result, relay);
  if (ep == nullptr) return;
  Entry& e = *ep;
  const std::string id = e.msg.id;
  // When every recipient is delivered now (the common case), the removal of the file is the
  // record: journaling first would only add an fsync, as a crash before the unlink re-sends
  // either way (a duplicate, never a loss).
  bool completes = completesMessage(e.msg, result);
  std::vector<size_t> failed;
  if (!recordResults(e, result, relay, now, completes, failed)) return;
  if (completes) {
    removeFinished(id);
    return;
  }
  if (!failed.empty() && !recordFailures(e, result, failed, now)) return;
  reschedule(e, now);
}

void QueueManager::Impl::abandon(Job& job, const std::string& reason, int64_t now) {
  TransactionResult r;
  for (size_t i : job.rcpt_indexes) r.rcpts.push_back(RcptResult{i, Outcome::Deferred, reason});
  finish(job, r, "none", now);
}

// The entry of a job that came back, no longer in flight and with its attempt counted; nullptr
// when there is nothing more to record (its content was damaged: moved to corrupt/).
QueueManager::Impl::Entry* QueueManager::Impl::takeBack(Job& job, const TransactionResult& result,
                                                        const std::string& relay) {
  auto it = msgs.find(job.msg.id);
  if (it == msgs.end() || !it->second.in_flight) {
    logf(LogLevel::Critical, "%s: results for a message that is not in flight", job.msg.id.c_str());
    std::abort();
  }
  job.content.reset();  // close the spool file before it is moved or removed
  Entry& e = it->second;
  const std::string id = e.msg.id;
  e.in_flight = false;
  e.msg.delivery.attempts++;
  if (result.possible_duplicate) {
    logf(LogLevel::Warning,
         "%s: conversation with %s ended after the end of data: possible duplicate delivery",
         id.c_str(), printable(relay, 300).c_str());
  }
  if (!result.content_error) return &e;
  logf(LogLevel::Error, "%s: message content unreadable, moved to corrupt/", id.c_str());
  if (auto s = spool.markCorrupt(e.msg.state, id); !s) {
    markStuck(e, s.error().message);
    return nullptr;
  }
  msgs.erase(it);
  return nullptr;
}

// Logs every result and journals the delivered and deferred ones (none when the result
// `completes` the message); the failed ones are left in `failed` for recordFailures().
// False when the journal could not be written (the entry is stuck).
bool QueueManager::Impl::recordResults(Entry& e, const TransactionResult& result,
                                       const std::string& relay, int64_t now, bool completes,
                                       std::vector<size_t>& failed) {
  SpoolMessage& m = e.msg;
  for (const RcptResult& r : result.rcpts) {
    if (r.index >= m.env.rcpts.size() || m.env.rcpts[r.index].state != RcptState::Pending) {
      logf(LogLevel::Warning, "%s: result for recipient %zu that is not pending, ignored",
           m.id.c_str(), r.index);
      continue;
    }
    logAttempt(m, r.index, relay, now, outcomeName(r.outcome), r.reply);
    countOutcome(metrics.client(m.env.client), r.outcome, now);
    if (completes) continue;
    if (r.outcome == Outcome::Failed) {
      failed.push_back(r.index);
      continue;
    }
    RcptState st = r.outcome == Outcome::Delivered ? RcptState::Delivered : RcptState::Pending;
    if (auto s = spool.recordRecipient(m, r.index, st, r.reply, now); !s) {
      markStuck(e, s.error().message);
      return false;
    }
  }
  return true;
}

// Reports the failed recipients to the sender (as NOTIFY allows), then journals them Failed, or
// leaves them pending when the report could not be spooled: the next attempt meets the same
// refusal and tries to report it again. False when the journal could not be written.
bool QueueManager::Impl::recordFailures(Entry& e, const TransactionResult& result,
                                        const std::vector<size_t>& failed, int64_t now) {
  SpoolMessage& m = e.msg;
  for (size_t i : failed) {
    for (const RcptResult& r : result.rcpts) {
      if (r.index == i) m.env.rcpts[i].reply = r.reply;
    }
    m.env.rcpts[i].updated = now;
  }
  std::vector<size_t> report;
  for (size_t i : failed) {
    if (notifyAllows(m.env.rcpts[i].notify, "FAILURE")) report.push_back(i);
  }
  bool spooled = true;
  if (m.env.sender.empty()) {
    logf(LogLevel::Info, "%s: sender is <>, no non-delivery notification", m.id.c_str());
  } else if (!report.empty()) {
    spooled = notify(e, DsnKind::Failure, report, now);
  }
  RcptState st = spooled ? RcptState::Failed : RcptState::Pending;
  for (size_t i : failed) {
    std::string reply = m.env.rcpts[i].reply;
    if (auto s = spool.recordRecipient(m, i, st, reply, now); !s) {
      markStuck(e, s.error().message);
      return false;
    }
  }
  return true;
}

// After an attempt: remove, expire, or defer with backoff (or hold, when asked meanwhile).
void QueueManager::Impl::reschedule(Entry& e, int64_t now) {
  const std::string id = e.msg.id;
  SpoolMessage& m = e.msg;
  if (allFinal(m)) {
    removeFinished(id);
    return;
  }
  if (e.disposal) {  // dynmxctl delete/bounce, asked during the attempt
    std::string why;
    if (disposeNow(e, *e.disposal, e.disposal_by, now, &why)) return;
    logf(LogLevel::Error, "%s: %s; deferred instead", id.c_str(), why.c_str());
    e.disposal.reset();
    if (e.stuck) return;
  }
  if (expireIfDue(e, now)) return;
  const RetryPolicy& p = policy(m.env.client);
  DeliveryState ds = m.delivery;
  ds.last_attempt = now;
  ds.next_attempt =
      now + retryDelay(p, ds.attempts, seconds(std::max<int64_t>(0, now - m.env.arrival))).count();
  if (auto s = spool.recordDelivery(m, ds); !s) {
    markStuck(e, s.error().message);
    return;
  }
  QueueState to = e.hold_requested ? QueueState::Hold : QueueState::Deferred;
  e.hold_requested = false;
  if (auto s = spool.move(m, to); !s) {
    logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
  }
  schedule(e, ds.next_attempt);
  warnIfDue(e, now);
}

// Expires a message older than queue_lifetime: its pending recipients fail and are reported on
// (as NOTIFY allows). True when the message was dealt with (and may be gone from msgs).
bool QueueManager::Impl::expireIfDue(Entry& e, int64_t now) {
  const RetryPolicy& p = policy(e.msg.env.client);
  if (now - e.msg.env.arrival < p.queue_lifetime.count() || now < e.not_before) return false;
  const std::string id = e.msg.id;
  std::vector<size_t> pend = pending(e.msg);
  std::vector<size_t> report;
  for (size_t i : pend) {
    SpoolRecipient& r = e.msg.env.rcpts[i];
    if (r.reply.empty()) {
      r.reply = "message expired after " + std::to_string((now - e.msg.env.arrival) / 3600) +
                " hours in the queue without a delivery attempt";
    }
    if (notifyAllows(r.notify, "FAILURE")) report.push_back(i);
  }
  bool null_sender = e.msg.env.sender.empty();
  if (!null_sender && !report.empty() && !notify(e, DsnKind::Failure, report, now)) {
    e.not_before = now + kHousekeepingRetry;
    return true;
  }
  for (size_t i : pend) {
    const SpoolRecipient& r = e.msg.env.rcpts[i];
    logAttempt(e.msg, i, "none", now,
               null_sender ? "expired, dropped (the sender is <>)"
               : std::find(report.begin(), report.end(), i) != report.end()
                   ? "expired, returned to sender"
                   : "expired, not returned (NOTIFY)",
               r.reply);
    ++metrics.client(e.msg.env.client).expired;
    std::string reply = r.reply;
    if (auto s = spool.recordRecipient(e.msg, i, RcptState::Failed, reply, now); !s) {
      markStuck(e, s.error().message);
      return true;
    }
  }
  removeFinished(id);
  return true;
}

}  // namespace dynmx::tunneld
