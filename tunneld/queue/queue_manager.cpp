// queue_manager.cpp: scheduling, results, retries, expiry and notifications over the spool.
//
// Contract: see queue_manager.hpp. The order of every step is chosen so that a crash at any point
// re-sends or re-notifies rather than loses (qmail's rule, duplicates over loss):
//  - per-recipient results are journaled (fsynced) as soon as a job comes back, before the message
//    moves on (deferred/, removal) and before anything else happens to it;
//  - a notification is first committed to the spool as a message of kBounceClient, and only then
//    are the recipients it reports journaled as Failed; it is handed to sendmail from the spool
//    and removed from there once sendmail took it (else retried by tick() with backoff);
//  - a message is removed only after every recipient is final in its journal.
// Directory fsyncs are batched where a crash undoing the step is harmless, and left to the
// SpoolRemover's thread, which fsyncs at most once per kRemovalSync: scanIncoming() renames what
// it takes into active/ (a rename undone by a crash leaves the file in incoming/, delivered after
// the restart, its journal with it); removals are unlinks made by that thread, off the event loop
// (a removal undone by a crash means the message is delivered again: a duplicate, never a loss).
// Journal records are fsynced one by one, before the message moves on.
// Delay warnings: sent once per message when delay_warning > 0 and the message is still queued
// delay_warning after arrival, for the pending recipients whose NOTIFY is absent or names DELAY
// (our default is "on", as Postfix with delay_warning_time set; NOTIFY=NEVER or a NOTIFY without
// DELAY turns it off for that recipient). Failure reports go to recipients whose NOTIFY is absent
// or names FAILURE. A message from <> is never reported on: logged and dropped.
//
// Failure behaviour: a file that does not parse goes to corrupt/ (logged); a journal write that
// fails leaves the message in active/, out of the schedule until a restart (which re-sends what was
// in flight); a notification that cannot be built or spooled leaves its recipients pending (the
// next attempt or tick tries again, at most once a minute).
#include "tunneld/queue/queue_manager.hpp"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <climits>

#include "shared/host_name.hpp"
#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"

namespace dynmx::tunneld {

using std::chrono::seconds;

seconds retryDelay(const RetryPolicy& p, uint32_t attempts, seconds age) {
  int64_t lo = std::max<int64_t>(p.retry_min.count(), 1);
  int64_t hi = std::max<int64_t>(p.retry_max.count(), lo);
  int64_t d = lo;
  for (uint32_t i = 1; i < attempts && d < hi; ++i) d = d > INT64_MAX / 2 ? hi : d * 2;
  d = std::max<int64_t>(d, age.count());
  return seconds(std::clamp<int64_t>(d, lo, hi));
}

namespace {

constexpr int64_t kHousekeepingRetry = 60;  // after a notification could not be spooled

class SpoolSource : public ContentSource {
 public:
  explicit SpoolSource(ContentReader r) : r_(std::move(r)) {}
  Result<std::string_view> next(size_t max) override { return r_.next(max); }

 private:
  ContentReader r_;
};

// NOTIFY allows `what` ("FAILURE", "DELAY"): absent means FAILURE and (our choice) DELAY.
bool notifyAllows(const std::string& notify, std::string_view what) {
  if (notify.empty()) return true;
  std::string up;
  for (char c : notify) up += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  if (up.find("NEVER") != std::string::npos) return false;
  return up.find(what) != std::string::npos;
}

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

}  // namespace

struct QueueManager::Impl {
  struct Entry {
    SpoolMessage msg;
    bool in_flight = false;
    bool hold_requested = false;
    bool stuck = false;      // a journal write failed: out of the schedule until restart
    int64_t due = 0;         // next attempt (scheduled entries)
    int64_t not_before = 0;  // housekeeping (expiry, warning) retry after a failure
  };

  Spool& spool;
  Config cfg;
  BounceSender& bounces;
  std::string hostname;
  std::map<std::string, Entry> msgs;
  // Per client: (due, id) of entries that may be handed out (not in flight, held or stuck).
  std::map<std::string, std::set<std::pair<int64_t, std::string>>> sched;
  // The time of the last tick(): entries due by then are waiting for their client, not for us.
  int64_t last_tick = 0;
  // nextWakeup() is asked on every turn of the daemon's loop: computed again only after a change.
  mutable bool wake_dirty = true;
  mutable int64_t wake_cache = 0;
  // incoming/ as listed by scanIncoming() and not yet taken (from scan_next on), and whether a
  // call came while a listing was being worked through.
  std::vector<std::string> scan_ids;
  size_t scan_next = 0;
  bool scan_again = false;
  // Hand-offs of notifications to sendmail (see handoff.hpp): the caller's runner, or our own
  // inline one.
  InlineHandoffRunner inline_runner;
  HandoffRunner* runner;
  // Last member: destroyed first, it finishes every removal while the rest still exists.
  SpoolRemover remover;

  Impl(Spool& s, const Config& c, BounceSender& b, std::chrono::milliseconds removal_sync,
       HandoffRunner* r)
      : spool(s), cfg(c), bounces(b), runner(r ? r : &inline_runner), remover(s, removal_sync) {
    setHostname();
  }

  void setHostname() { hostname = hostNameOr(cfg.tunneld.hostname); }

  const RetryPolicy& policy(const std::string& client) const {
    const ClientConfig* cc = cfg.findClient(client);
    return cc ? cc->retry : cfg.tunneld.retry;
  }

  static bool isBounce(const Entry& e) { return e.msg.env.client == kBounceClient; }

  static bool schedulable(const Entry& e) {
    return !e.in_flight && !e.stuck && e.msg.state != QueueState::Hold;
  }

  void unschedule(const Entry& e) {
    auto it = sched.find(e.msg.env.client);
    if (it != sched.end()) it->second.erase({e.due, e.msg.id});
  }

  void schedule(Entry& e, int64_t due) {
    unschedule(e);
    e.due = due;
    if (schedulable(e)) sched[e.msg.env.client].insert({e.due, e.msg.id});
  }

  static bool allFinal(const SpoolMessage& m) {
    return std::all_of(m.env.rcpts.begin(), m.env.rcpts.end(),
                       [](const SpoolRecipient& r) { return r.state != RcptState::Pending; });
  }

  static std::vector<size_t> pending(const SpoolMessage& m) {
    std::vector<size_t> v;
    for (size_t i = 0; i < m.env.rcpts.size(); ++i) {
      if (m.env.rcpts[i].state == RcptState::Pending) v.push_back(i);
    }
    return v;
  }

  void logAttempt(const SpoolMessage& m, size_t idx, const std::string& relay, int64_t now,
                  const char* status, const std::string& reply) {
    logf(LogLevel::Info,
         "%s: to=<%s>, client=%s, relay=%s, delay=%" PRId64 ", attempts=%u, status=%s (%s)",
         m.id.c_str(), printable(m.env.rcpts[idx].address, 300).c_str(),
         printable(m.env.client, 100).c_str(), printable(relay, 300).c_str(),
         std::max<int64_t>(0, now - m.env.arrival), m.delivery.attempts, status,
         printable(reply, 1000).c_str());
  }

  void markStuck(Entry& e, const std::string& why) {
    logf(LogLevel::Error,
         "%s: cannot record delivery results: %s; left in %s/ until dynmx-tunneld restarts "
         "(recipients may get it twice)",
         e.msg.id.c_str(), why.c_str(), queueStateName(e.msg.state));
    unschedule(e);
    e.stuck = true;
  }

  // Forgets a message whose recipients are all final; the remover deletes its file.
  void removeFinished(const std::string& id) {
    auto it = msgs.find(id);
    if (it == msgs.end()) return;
    Entry& e = it->second;
    unschedule(e);
    remover.remove(e.msg.state, id);
    logf(LogLevel::Info, "%s: removed", id.c_str());
    msgs.erase(it);
  }

  // Registers a loaded message. Finished ones are removed at once.
  void add(SpoolMessage m, int64_t now) {
    std::string id = m.id;
    Entry& e = msgs[id];
    e = Entry{};
    e.msg = std::move(m);
    if (!isBounce(e) && allFinal(e.msg)) {
      removeFinished(id);
      return;
    }
    int64_t due = e.msg.state == QueueState::Deferred
                      ? std::max<int64_t>(e.msg.delivery.next_attempt, 0)
                      : now;
    schedule(e, due);
  }

  // Loads id from `st`; unreadable files go to corrupt/. Moves incoming/ to active/; with `batch`
  // without the fsync of active/, which the caller then does once (see scanIncoming()).
  // True when it renamed a file into active/.
  bool loadOne(QueueState st, const std::string& id, int64_t now, bool batch = false) {
    if (msgs.count(id)) return false;
    auto m = spool.load(st, id);
    if (!m.ok()) {
      if (m.error().code == EBADMSG) {
        logf(LogLevel::Error, "%s: unreadable spool file moved to corrupt/: %s", id.c_str(),
             m.error().message.c_str());
        if (auto s = spool.markCorrupt(st, id); !s) {
          logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
        }
      } else {
        logf(LogLevel::Warning, "%s: cannot read: %s", id.c_str(), m.error().message.c_str());
      }
      return false;
    }
    bool moved = false;
    if (st == QueueState::Incoming) {
      Status s = batch ? spool.moveUnsynced(*m, QueueState::Active)
                       : spool.move(*m, QueueState::Active);
      if (!s) {
        logf(LogLevel::Error, "%s: cannot take from incoming/: %s", id.c_str(),
             s.error().message.c_str());
        return false;
      }
      moved = true;
      logf(LogLevel::Info, "%s: from=<%s>, size=%" PRIu64 ", nrcpt=%zu, client=%s (queue active)",
           id.c_str(), printable(m->env.sender, 300).c_str(), m->content_size, m->env.rcpts.size(),
           printable(m->env.client, 100).c_str());
    }
    add(std::move(m.value()), now);
    return moved;
  }

  // --- notifications

  std::string fromHeader() const {
    const std::string& f = cfg.tunneld.bounce_from;
    return f.find('@') == std::string::npos ? f + "@" + hostname : f;
  }

  // Builds the report about `idx` of e, commits it to the spool and tries to hand it over.
  bool notify(Entry& e, DsnKind kind, const std::vector<size_t>& idx, int64_t now) {
    const SpoolMessage& m = e.msg;
    DsnInput in;
    in.kind = kind;
    in.msg = &m;
    in.rcpt_indexes = idx;
    in.reporting_host = hostname;
    in.from_header = fromHeader();
    in.now = now;
    if (const ClientConfig* cc = cfg.findClient(m.env.client)) in.remote_mta = cc->host;
    if (kind == DsnKind::Delay) {
      in.will_retry_until = m.env.arrival + policy(m.env.client).queue_lifetime.count();
    }
    auto text = buildDsn(in, spool);
    if (!text.ok()) {
      logf(LogLevel::Error, "%s: cannot build the %s notification: %s", m.id.c_str(),
           kind == DsnKind::Failure ? "non-delivery" : "delay", text.error().message.c_str());
      return false;
    }
    auto w = spool.create();
    if (!w.ok()) {
      logf(LogLevel::Error, "%s: cannot spool the notification: %s", m.id.c_str(),
           w.error().message.c_str());
      return false;
    }
    Envelope env;
    env.client = kBounceClient;
    env.sender = "";
    env.origin = "dsn";
    env.mta_queue_id = m.id;
    env.arrival = now;
    SpoolRecipient r;
    r.address = m.env.sender;
    env.rcpts.push_back(r);
    Status st = (*w)->write(*text);
    if (st.ok()) st = (*w)->commit(env);
    if (!st.ok()) {
      logf(LogLevel::Error, "%s: cannot spool the notification: %s", m.id.c_str(),
           st.error().message.c_str());
      return false;
    }
    std::string nid = (*w)->id();
    logf(LogLevel::Info, "%s: sender %s notification: %s", m.id.c_str(),
         kind == DsnKind::Failure ? "non-delivery" : "delay status", nid.c_str());
    loadOne(QueueState::Incoming, nid, now);
    auto it = msgs.find(nid);
    if (it != msgs.end()) handOff(it->second, now);
    return true;
  }

  // Gives a spooled notification to sendmail; on failure it waits in deferred/.
  void handOff(Entry& e, int64_t now) {
    if (e.in_flight) return;  // a hand-off of it is under way
    const std::string id = e.msg.id;
    const RetryPolicy& p = cfg.tunneld.retry;
    int64_t age = std::max<int64_t>(0, now - e.msg.env.arrival);
    if (age >= p.queue_lifetime.count()) {
      logf(LogLevel::Warning,
           "%s: notification to <%s> expired after %" PRId64 "s, dropped (it is from <>)",
           id.c_str(), printable(e.msg.env.rcpts[0].address, 300).c_str(), age);
      removeFinished(id);
      return;
    }
    std::string text;
    auto reader = spool.openContent(e.msg);
    Status rd = reader.ok() ? Status{} : Status{reader.error()};
    while (rd.ok()) {
      auto c = reader->next(65536);
      if (!c.ok()) {
        rd = c.error();
        break;
      }
      if (c->empty()) break;
      text.append(c->data(), c->size());
    }
    if (!rd.ok()) {
      logf(LogLevel::Error, "%s: unreadable notification moved to corrupt/: %s", id.c_str(),
           rd.error().message.c_str());
      unschedule(e);
      if (auto s = spool.markCorrupt(e.msg.state, id); !s) {
        logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
        e.stuck = true;
        return;
      }
      msgs.erase(id);
      return;
    }
    // In flight until the runner reports (handoffDone()): out of the schedule meanwhile.
    unschedule(e);
    e.in_flight = true;
    runner->start(id, [&b = bounces, rcpt = e.msg.env.rcpts[0].address, text = std::move(text)] {
      return b.send(rcpt, text);
    });
    collectHandoffs(now);  // an inline runner is done already
  }

  void collectHandoffs(int64_t now) {
    for (auto& d : runner->takeDone()) handoffDone(d.id, d.status, now);
  }

  // The outcome of a hand-off: removed once sendmail took it, else deferred/ with backoff.
  void handoffDone(const std::string& id, const Status& sent, int64_t now) {
    auto it = msgs.find(id);
    if (it == msgs.end()) return;
    Entry& e = it->second;
    e.in_flight = false;
    const RetryPolicy& p = cfg.tunneld.retry;
    int64_t age = std::max<int64_t>(0, now - e.msg.env.arrival);
    DeliveryState ds = e.msg.delivery;
    ds.attempts++;
    ds.last_attempt = now;
    e.msg.delivery.attempts = ds.attempts;
    if (sent.ok()) {
      logAttempt(e.msg, 0, "local", now, "sent", "notification handed to sendmail");
      removeFinished(id);
      return;
    }
    ds.next_attempt = now + retryDelay(p, ds.attempts, seconds(age)).count();
    logAttempt(e.msg, 0, "local", now, "deferred", sent.error().message);
    if (auto s = spool.recordDelivery(e.msg, ds); !s) {
      markStuck(e, s.error().message);
      return;
    }
    QueueState to = e.hold_requested ? QueueState::Hold : QueueState::Deferred;
    e.hold_requested = false;
    if (auto s = spool.move(e.msg, to); !s) {
      logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
    }
    schedule(e, ds.next_attempt);
  }

  // --- expiry and warnings

  // True when the message was dealt with (and may be gone from msgs).
  bool expireIfDue(Entry& e, int64_t now) {
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
      std::string reply = r.reply;
      if (auto s = spool.recordRecipient(e.msg, i, RcptState::Failed, reply, now); !s) {
        markStuck(e, s.error().message);
        return true;
      }
    }
    removeFinished(id);
    return true;
  }

  void warnIfDue(Entry& e, int64_t now) {
    if (e.msg.delivery.warned || now < e.not_before) return;
    const RetryPolicy& p = policy(e.msg.env.client);
    if (p.delay_warning.count() <= 0 || now - e.msg.env.arrival < p.delay_warning.count()) return;
    std::vector<size_t> report = warnable(e.msg);
    if (report.empty()) {
      e.msg.delivery.warned = true;  // nothing to say; not journaled (re-evaluated the same)
      return;
    }
    if (!notify(e, DsnKind::Delay, report, now)) {
      e.not_before = now + kHousekeepingRetry;
      return;
    }
    DeliveryState ds = e.msg.delivery;
    ds.warned = true;
    if (auto s = spool.recordDelivery(e.msg, ds); !s) {
      logf(LogLevel::Warning, "%s: cannot record the delay warning: %s (it may be sent again)",
           e.msg.id.c_str(), s.error().message.c_str());
      e.msg.delivery.warned = true;
    }
  }

  static bool anyWarnable(const SpoolMessage& m) {
    if (m.env.sender.empty()) return false;
    return std::any_of(m.env.rcpts.begin(), m.env.rcpts.end(), [](const SpoolRecipient& r) {
      return r.state == RcptState::Pending && notifyAllows(r.notify, "DELAY");
    });
  }

  static std::vector<size_t> warnable(const SpoolMessage& m) {
    std::vector<size_t> v;
    if (m.env.sender.empty()) return v;
    for (size_t i : pending(m)) {
      if (notifyAllows(m.env.rcpts[i].notify, "DELAY")) v.push_back(i);
    }
    return v;
  }

  // --- results

  void finish(Job& job, const TransactionResult& result, const std::string& relay, int64_t now) {
    auto it = msgs.find(job.msg.id);
    if (it == msgs.end() || !it->second.in_flight) {
      logf(LogLevel::Critical, "%s: results for a message that is not in flight",
           job.msg.id.c_str());
      std::abort();
    }
    job.content.reset();  // close the spool file before it is moved or removed
    Entry& e = it->second;
    const std::string id = e.msg.id;
    e.in_flight = false;
    SpoolMessage& m = e.msg;
    m.delivery.attempts++;
    if (result.possible_duplicate) {
      logf(LogLevel::Warning,
           "%s: conversation with %s ended after the end of data: possible duplicate delivery",
           id.c_str(), printable(relay, 300).c_str());
    }
    if (result.content_error) {
      logf(LogLevel::Error, "%s: message content unreadable, moved to corrupt/", id.c_str());
      if (auto s = spool.markCorrupt(m.state, id); !s) {
        markStuck(e, s.error().message);
        return;
      }
      msgs.erase(it);
      return;
    }
    // When every recipient is delivered now (the common case), the removal of the file is the
    // record: journaling first would only add an fsync, as a crash before the unlink re-sends
    // either way (a duplicate, never a loss).
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
    bool completes =
        all_delivered && std::all_of(done.begin(), done.end(), [](bool d) { return d; });
    std::vector<size_t> failed;
    for (const RcptResult& r : result.rcpts) {
      if (r.index >= m.env.rcpts.size() || m.env.rcpts[r.index].state != RcptState::Pending) {
        logf(LogLevel::Warning, "%s: result for recipient %zu that is not pending, ignored",
             id.c_str(), r.index);
        continue;
      }
      logAttempt(m, r.index, relay, now, outcomeName(r.outcome), r.reply);
      if (completes) continue;
      if (r.outcome == Outcome::Failed) {
        failed.push_back(r.index);
        continue;
      }
      RcptState st = r.outcome == Outcome::Delivered ? RcptState::Delivered : RcptState::Pending;
      if (auto s = spool.recordRecipient(m, r.index, st, r.reply, now); !s) {
        markStuck(e, s.error().message);
        return;
      }
    }
    if (completes) {
      removeFinished(id);
      return;
    }
    if (!failed.empty()) {
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
        logf(LogLevel::Info, "%s: sender is <>, no non-delivery notification", id.c_str());
      } else if (!report.empty()) {
        spooled = notify(e, DsnKind::Failure, report, now);
      }
      // Without a spooled notification the recipients stay pending: the next attempt meets the
      // same refusal and tries to report it again.
      RcptState st = spooled ? RcptState::Failed : RcptState::Pending;
      for (size_t i : failed) {
        std::string reply = m.env.rcpts[i].reply;
        if (auto s = spool.recordRecipient(m, i, st, reply, now); !s) {
          markStuck(e, s.error().message);
          return;
        }
      }
    }
    reschedule(e, now);
  }

  // After an attempt: remove, expire, or defer with backoff (or hold, when asked meanwhile).
  void reschedule(Entry& e, int64_t now) {
    const std::string id = e.msg.id;
    SpoolMessage& m = e.msg;
    if (allFinal(m)) {
      removeFinished(id);
      return;
    }
    if (expireIfDue(e, now)) return;
    const RetryPolicy& p = policy(m.env.client);
    DeliveryState ds = m.delivery;
    ds.last_attempt = now;
    ds.next_attempt =
        now +
        retryDelay(p, ds.attempts, seconds(std::max<int64_t>(0, now - m.env.arrival))).count();
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
};

// ---------------------------------------------------------------------------------------------

QueueManager::QueueManager(Spool& spool, const Config& cfg, BounceSender& bounces,
                           std::chrono::milliseconds removal_sync, HandoffRunner* handoffs)
    : impl_(std::make_shared<Impl>(spool, cfg, bounces, removal_sync, handoffs)) {}

void QueueManager::collectHandoffs(int64_t now) {
  impl_->wake_dirty = true;
  impl_->collectHandoffs(now);
}

void QueueManager::reconfigure(const Config& cfg) {
  impl_->wake_dirty = true;
  impl_->cfg = cfg;
  impl_->setHostname();
}

RecoveryReport QueueManager::start(int64_t now, size_t scan_limit) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  RecoveryReport rep = m.spool.recover();
  for (QueueState st : {QueueState::Deferred, QueueState::Hold, QueueState::Active}) {
    for (const std::string& id : m.spool.list(st)) m.loadOne(st, id, now);
  }
  scanIncoming(now, scan_limit);
  // Notifications left over from before the restart go out now.
  tick(now);
  return rep;
}

bool QueueManager::scanIncoming(int64_t now, size_t limit) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  if (m.scan_next >= m.scan_ids.size()) {
    m.scan_ids = m.spool.list(QueueState::Incoming);
    std::sort(m.scan_ids.begin(), m.scan_ids.end());  // queue ids sort by time: first come first
    m.scan_next = 0;
    m.scan_again = false;
  } else {
    m.scan_again = true;  // asked again mid-listing: list once more when this one is through
  }
  bool moved = false;
  for (size_t n = 0; n < limit && m.scan_next < m.scan_ids.size(); ++n) {
    moved = m.loadOne(QueueState::Incoming, m.scan_ids[m.scan_next++], now, true) || moved;
  }
  // The renames are made durable by the remover's next directory sync, off the event loop: a
  // crash undoing one only puts the file back into incoming/, delivered from there after the
  // restart (its journal travels with it), so delivery need not wait for the fsync.
  if (moved) m.remover.syncLater(QueueState::Active);
  if (m.scan_next < m.scan_ids.size()) return true;
  m.scan_ids.clear();
  m.scan_next = 0;
  bool again = m.scan_again;
  m.scan_again = false;
  return again;
}

void QueueManager::flushRemovals() { impl_->remover.flush(); }

void QueueManager::clientUp(const std::string& client, int64_t now) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  auto it = m.sched.find(client);
  if (it == m.sched.end()) return;
  std::vector<std::string> ids;
  for (const auto& [due, id] : it->second) {
    if (due > now) ids.push_back(id);
  }
  for (const std::string& id : ids) m.schedule(m.msgs.at(id), now);
}

std::optional<Job> QueueManager::nextJob(const std::string& client, int64_t now) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  if (client == kBounceClient) return std::nullopt;
  for (;;) {
    auto it = m.sched.find(client);
    if (it == m.sched.end() || it->second.empty() || it->second.begin()->first > now) {
      return std::nullopt;
    }
    std::string id = it->second.begin()->second;
    Impl::Entry& e = m.msgs.at(id);
    m.unschedule(e);
    if (e.msg.state == QueueState::Deferred) {
      if (auto s = m.spool.move(e.msg, QueueState::Active); !s) {
        logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
        m.schedule(e, now + kHousekeepingRetry);
        continue;
      }
    }
    std::vector<size_t> pend = Impl::pending(e.msg);
    if (pend.empty()) {
      m.removeFinished(id);
      continue;
    }
    auto reader = m.spool.openContent(e.msg);
    if (!reader.ok()) {
      logf(LogLevel::Error, "%s: cannot open the message content: %s", id.c_str(),
           reader.error().message.c_str());
      m.schedule(e, now + m.policy(client).retry_min.count());
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

void QueueManager::finish(Job job, const TransactionResult& result, const std::string& relay,
                          int64_t now) {
  impl_->wake_dirty = true;
  impl_->finish(job, result, relay, now);
}

void QueueManager::abandon(Job job, const std::string& reason, int64_t now) {
  impl_->wake_dirty = true;
  TransactionResult r;
  for (size_t i : job.rcpt_indexes) r.rcpts.push_back(RcptResult{i, Outcome::Deferred, reason});
  impl_->finish(job, r, "none", now);
}

void QueueManager::tick(int64_t now) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  m.last_tick = std::max(m.last_tick, now);
  std::vector<std::string> ids;
  ids.reserve(m.msgs.size());
  for (const auto& [id, e] : m.msgs) ids.push_back(id);
  for (const std::string& id : ids) {
    auto it = m.msgs.find(id);
    if (it == m.msgs.end()) continue;
    Impl::Entry& e = it->second;
    if (e.in_flight || e.stuck || e.msg.state == QueueState::Hold) continue;
    if (Impl::isBounce(e)) {
      if (e.due <= now) m.handOff(e, now);
      continue;
    }
    if (m.expireIfDue(e, now)) continue;
    m.warnIfDue(e, now);
    if (e.msg.state == QueueState::Deferred && e.due <= now) {
      if (auto s = m.spool.move(e.msg, QueueState::Active); !s) {
        logf(LogLevel::Error, "%s: %s", id.c_str(), s.error().message.c_str());
      }
    }
  }
}

int64_t QueueManager::nextWakeup() const {
  const Impl& m = *impl_;
  if (!m.wake_dirty) return m.wake_cache;
  int64_t best = 0;
  auto consider = [&best](int64_t t) {
    if (t > 0 && (best == 0 || t < best)) best = t;
  };
  for (const auto& [id, e] : m.msgs) {
    if (e.in_flight || e.stuck || e.msg.state == QueueState::Hold) continue;
    if (Impl::isBounce(e)) {
      consider(std::max<int64_t>(e.due, 1));
      continue;
    }
    const RetryPolicy& p = m.policy(e.msg.env.client);
    consider(std::max(e.msg.env.arrival + p.queue_lifetime.count(), e.not_before));
    if (!e.msg.delivery.warned && p.delay_warning.count() > 0 && Impl::anyWarnable(e.msg)) {
      consider(std::max(e.msg.env.arrival + p.delay_warning.count(), e.not_before));
    }
    // Deferred mail coming due (tick moves it to active/), and anything rescheduled to a time
    // after the last tick; mail already due waits for its client's connection, not for a tick.
    if (e.due > m.last_tick) consider(e.due);
  }
  m.wake_cache = best;
  m.wake_dirty = false;
  return best;
}

bool QueueManager::hasDue(const std::string& client, int64_t now) const {
  const Impl& m = *impl_;
  if (client == kBounceClient) return false;
  auto it = m.sched.find(client);
  return it != m.sched.end() && !it->second.empty() && it->second.begin()->first <= now;
}

Status QueueManager::hold(const std::string& id) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  auto it = m.msgs.find(id);
  if (it == m.msgs.end()) return Error{ENOENT, "no message " + id + " in the queue"};
  Impl::Entry& e = it->second;
  if (e.msg.state == QueueState::Hold) return {};
  if (e.in_flight) {
    e.hold_requested = true;  // put aside when its attempt ends
    return {};
  }
  m.unschedule(e);
  if (auto s = m.spool.move(e.msg, QueueState::Hold); !s) {
    m.schedule(e, e.due);
    return s;
  }
  logf(LogLevel::Info, "%s: put on hold", id.c_str());
  return {};
}

Status QueueManager::release(const std::string& id, int64_t now) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  auto it = m.msgs.find(id);
  if (it == m.msgs.end()) return Error{ENOENT, "no message " + id + " in the queue"};
  Impl::Entry& e = it->second;
  if (e.in_flight && e.hold_requested) {
    e.hold_requested = false;
    return {};
  }
  if (e.msg.state != QueueState::Hold) return Error{EINVAL, "message " + id + " is not on hold"};
  if (auto s = m.spool.move(e.msg, QueueState::Active); !s) return s;
  logf(LogLevel::Info, "%s: released from hold", id.c_str());
  m.schedule(e, now);
  return {};
}

void QueueManager::flush(const std::string& client, int64_t now) {
  impl_->wake_dirty = true;
  Impl& m = *impl_;
  for (auto& [id, e] : m.msgs) {
    if (!client.empty() && e.msg.env.client != client) continue;
    if (Impl::schedulable(e) && e.due > now) m.schedule(e, now);
  }
}

std::vector<ClientQueueStatus> QueueManager::status() const {
  const Impl& m = *impl_;
  std::map<std::string, ClientQueueStatus> by;
  for (const ClientConfig& c : m.cfg.clients) by[c.name].client = c.name;
  for (const auto& [id, e] : m.msgs) {
    ClientQueueStatus& s = by[e.msg.env.client];
    s.client = e.msg.env.client;
    if (e.in_flight) {
      ++s.in_flight;
    } else if (e.msg.state == QueueState::Hold) {
      ++s.hold;
    } else if (e.msg.state == QueueState::Deferred) {
      ++s.deferred;
    } else {
      ++s.active;
    }
    if (s.oldest_arrival == 0 || e.msg.env.arrival < s.oldest_arrival) {
      s.oldest_arrival = e.msg.env.arrival;
    }
  }
  std::vector<ClientQueueStatus> out;
  for (auto& [name, s] : by) out.push_back(s);
  return out;
}

std::vector<std::string> QueueManager::listQueue() const {
  const Impl& m = *impl_;
  std::vector<std::string> out;
  for (const auto& [id, e] : m.msgs) {
    const char* state = e.in_flight                           ? "in-flight"
                        : e.stuck                             ? "stuck"
                        : e.msg.state == QueueState::Hold     ? "hold"
                        : e.msg.state == QueueState::Deferred ? "deferred"
                                                              : "active";
    std::string line = id + " " + state + " client=" + e.msg.env.client +
                       " size=" + std::to_string(e.msg.content_size) +
                       " arrival=" + std::to_string(e.msg.env.arrival) + " from=<" +
                       printable(e.msg.env.sender, 300) + "> to=";
    bool first = true;
    for (const SpoolRecipient& r : e.msg.env.rcpts) {
      if (r.state != RcptState::Pending) continue;
      line += (first ? "<" : ",<") + printable(r.address, 300) + ">";
      first = false;
    }
    if (e.msg.delivery.attempts > 0) line += " attempts=" + std::to_string(e.msg.delivery.attempts);
    out.push_back(std::move(line));
  }
  return out;
}

}  // namespace dynmx::tunneld
