// notify.cpp: notifications (bounces and delay warnings) from their making to their hand-off.
//
// Contract: notify() builds an RFC 3464 report (bounce.cpp) about some recipients of a message
// and commits it to the spool as a Notification entry, from <> to the original sender, before
// the caller journals those recipients as Failed; then it hands it to the local sendmail through
// the HandoffRunner (on the runner's thread in the daemon). The outcome comes back through
// collectHandoffs(): taken by sendmail, the notification is removed; refused, it waits in
// deferred/ with the [tunneld] retry policy, until it outlives queue_lifetime and is dropped (it
// is from <>, so nobody could be told). Delay warnings are sent once per message when
// delay_warning > 0 and the message is still queued delay_warning after arrival, for the pending
// recipients whose NOTIFY is absent or names DELAY (our default is "on", as Postfix with
// delay_warning_time set; NOTIFY=NEVER or a NOTIFY without DELAY turns it off for that recipient).
// Failure reports go to recipients whose NOTIFY is absent or names FAILURE.
//
// Failure behaviour: a report that cannot be built or spooled is logged and notify() returns
// false (the caller keeps the recipients pending and tries again later); a spooled notification
// that cannot be read goes to corrupt/; a delay warning whose "warned" mark cannot be journaled
// is logged and may be sent again after a restart.
#include <algorithm>
#include <cinttypes>

#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"
#include "tunneld/queue/queue_impl.hpp"

namespace dynmx::tunneld {

using std::chrono::seconds;

bool notifyAllows(const std::string& notify, std::string_view what) {
  if (notify.empty()) return true;
  std::string up;
  for (char c : notify) up += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  if (up.find("NEVER") != std::string::npos) return false;
  return up.find(what) != std::string::npos;
}

std::string QueueManager::Impl::fromHeader() const {
  const std::string& f = cfg.tunneld.bounce_from;
  return f.find('@') == std::string::npos ? f + "@" + hostname : f;
}

// Builds the report about `idx` of e, commits it to the spool and tries to hand it over.
bool QueueManager::Impl::notify(Entry& e, DsnKind kind, const std::vector<size_t>& idx, int64_t now,
                                const std::string& fallback_status) {
  const SpoolMessage& m = e.msg;
  DsnInput in;
  in.kind = kind;
  in.msg = &m;
  in.rcpt_indexes = idx;
  in.reporting_host = hostname;
  in.from_header = fromHeader();
  in.now = now;
  in.fallback_status = fallback_status;
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
  auto nid = spoolNotification(m, *text, now);
  if (!nid.ok()) {
    logf(LogLevel::Error, "%s: cannot spool the notification: %s", m.id.c_str(),
         nid.error().message.c_str());
    return false;
  }
  logf(LogLevel::Info, "%s: sender %s notification: %s", m.id.c_str(),
       kind == DsnKind::Failure ? "non-delivery" : "delay status", nid->c_str());
  loadOne(QueueState::Incoming, *nid, now);
  auto it = msgs.find(*nid);
  if (it != msgs.end()) handOff(it->second, now);
  return true;
}

// Commits the notification `text` about m to incoming/; its queue id. The spool form of a
// Notification (dynmx-spool(5)): client kBounceClient, sender <>, origin "dsn", the original's
// queue id as mta_queue_id, one recipient: the original sender.
Result<std::string> QueueManager::Impl::spoolNotification(const SpoolMessage& m,
                                                          const std::string& text, int64_t now) {
  auto w = spool.create();
  if (!w.ok()) return w.error();
  Envelope env;
  env.client = kBounceClient;
  env.sender = "";
  env.origin = "dsn";
  env.mta_queue_id = m.id;
  env.arrival = now;
  SpoolRecipient r;
  r.address = m.env.sender;
  env.rcpts.push_back(r);
  Status st = (*w)->write(text);
  if (st.ok()) st = (*w)->commit(env);
  if (!st.ok()) return st.error();
  return (*w)->id();
}

// Gives a spooled notification to sendmail; on failure it waits in deferred/.
void QueueManager::Impl::handOff(Entry& e, int64_t now) {
  if (e.in_flight) return;  // a hand-off of it is under way
  const std::string id = e.msg.id;
  const RetryPolicy& p = cfg.tunneld.retry;
  int64_t age = std::max<int64_t>(0, now - e.msg.env.arrival);
  if (age >= p.queue_lifetime.count()) {
    logf(LogLevel::Warning,
         "%s: notification to <%s> expired after %" PRId64 "s, dropped (it is from <>)", id.c_str(),
         printable(e.msg.env.rcpts[0].address, 300).c_str(), age);
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

void QueueManager::Impl::collectHandoffs(int64_t now) {
  for (auto& d : runner->takeDone()) handoffDone(d.id, d.status, now);
}

// The outcome of a hand-off: removed once sendmail took it, else deferred/ with backoff.
void QueueManager::Impl::handoffDone(const std::string& id, const Status& sent, int64_t now) {
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
  if (e.disposal) {  // dynmxctl delete, asked during the hand-off
    std::string why;
    if (disposeNow(e, *e.disposal, e.disposal_by, now, &why)) return;
    logf(LogLevel::Error, "%s: %s; deferred instead", id.c_str(), why.c_str());
    e.disposal.reset();
  }
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

void QueueManager::Impl::warnIfDue(Entry& e, int64_t now) {
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

bool QueueManager::Impl::anyWarnable(const SpoolMessage& m) {
  if (m.env.sender.empty()) return false;
  return std::any_of(m.env.rcpts.begin(), m.env.rcpts.end(), [](const SpoolRecipient& r) {
    return r.state == RcptState::Pending && notifyAllows(r.notify, "DELAY");
  });
}

std::vector<size_t> QueueManager::Impl::warnable(const SpoolMessage& m) {
  std::vector<size_t> v;
  if (m.env.sender.empty()) return v;
  for (size_t i : pending(m)) {
    if (notifyAllows(m.env.rcpts[i].notify, "DELAY")) v.push_back(i);
  }
  return v;
}

}  // namespace dynmx::tunneld
