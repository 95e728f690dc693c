// queue_manager.cpp: the queue manager's facade, and its intake, removal and administration.
//
// Contract: see queue_manager.hpp; the state and how the work is split between the files of
// tunneld/queue/ are in queue_impl.hpp. The facade only forwards, and marks the next wakeup for
// recomputation on every call that may change it. This file takes mail in (spool recovery at
// start, then incoming/ -> active/ in queue id order, in slices), registers what it loaded as a
// Message or a Notification (the kind the spool record says), forgets finished messages (their
// files are deleted by the SpoolRemover's thread) and carries out dynmxctl's hold, release,
// delete, bounce, status and queue listing.
//
// The order of every step in tunneld/queue/ is chosen so that a crash at any point re-sends or
// re-notifies rather than loses (qmail's rule, duplicates over loss):
//  - per-recipient results are journaled (fsynced) as soon as a job comes back, before the message
//    moves on (deferred/, removal) and before anything else happens to it;
//  - a notification is first committed to the spool, and only then are the recipients it reports
//    journaled as Failed; it is handed to sendmail from the spool and removed from there once
//    sendmail took it (else retried by tick() with backoff);
//  - a message is removed only after every recipient is final in its journal.
// Directory fsyncs are batched where a crash undoing the step is harmless, and left to the
// SpoolRemover's thread, which fsyncs at most once per kRemovalSync: scanIncoming() renames what
// it takes into active/ (a rename undone by a crash leaves the file in incoming/, delivered after
// the restart, its journal with it); removals are unlinks made by that thread, off the event loop
// (a removal undone by a crash means the message is delivered again: a duplicate, never a loss).
// Journal records are fsynced one by one, before the message moves on.
//
// Failure behaviour: a file that does not parse goes to corrupt/ (logged); one that cannot be read
// for another reason is logged and left where it is; a file that cannot be moved out of incoming/
// stays there (logged) and is tried again on the next scan. hold/release report a missing
// message or a failed move to the caller.
#include "tunneld/queue/queue_manager.hpp"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <climits>

#include "shared/host_name.hpp"
#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"
#include "tunneld/queue/queue_impl.hpp"

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

// ---------------------------------------------------------------------------------------------
// Intake.

QueueManager::Impl::Impl(Spool& s, const Config& c, BounceSender& b,
                         std::chrono::milliseconds removal_sync, HandoffRunner* r, Metrics* m)
    : spool(s),
      cfg(c),
      bounces(b),
      metrics(m ? *m : own_metrics),
      runner(r ? r : &inline_runner),
      remover(s, removal_sync) {
  setHostname();
}

void QueueManager::Impl::reconfigure(const Config& c) {
  cfg = c;
  setHostname();
}

void QueueManager::Impl::setHostname() { hostname = hostNameOr(cfg.tunneld.hostname); }

const RetryPolicy& QueueManager::Impl::policy(const std::string& client) const {
  const ClientConfig* cc = cfg.findClient(client);
  return cc ? cc->retry : cfg.tunneld.retry;
}

RecoveryReport QueueManager::Impl::start(int64_t now, size_t scan_limit) {
  RecoveryReport rep = spool.recover();
  for (QueueState st : {QueueState::Deferred, QueueState::Hold, QueueState::Active}) {
    for (const std::string& id : spool.list(st)) loadOne(st, id, now);
  }
  scanIncoming(now, scan_limit);
  // Notifications left over from before the restart go out now.
  tick(now);
  return rep;
}

bool QueueManager::Impl::scanIncoming(int64_t now, size_t limit) {
  if (scan_next >= scan_ids.size()) {
    scan_ids = spool.list(QueueState::Incoming);
    std::sort(scan_ids.begin(), scan_ids.end());  // queue ids sort by time: first come first
    scan_next = 0;
    scan_again = false;
  } else {
    scan_again = true;  // asked again mid-listing: list once more when this one is through
  }
  bool moved = false;
  for (size_t n = 0; n < limit && scan_next < scan_ids.size(); ++n) {
    moved = loadOne(QueueState::Incoming, scan_ids[scan_next++], now, true) || moved;
  }
  // The renames are made durable by the remover's next directory sync, off the event loop: a
  // crash undoing one only puts the file back into incoming/, delivered from there after the
  // restart (its journal travels with it), so delivery need not wait for the fsync.
  if (moved) remover.syncLater(QueueState::Active);
  if (scan_next < scan_ids.size()) return true;
  scan_ids.clear();
  scan_next = 0;
  bool again = scan_again;
  scan_again = false;
  return again;
}

// Loads id from `st`; unreadable files go to corrupt/. Moves incoming/ to active/; with `batch`
// without the fsync of active/, which the caller then does once (see scanIncoming()).
// True when it renamed a file into active/.
bool QueueManager::Impl::loadOne(QueueState st, const std::string& id, int64_t now, bool batch) {
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
    Status s =
        batch ? spool.moveUnsynced(*m, QueueState::Active) : spool.move(*m, QueueState::Active);
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

// Registers a loaded message. Finished Messages are removed at once; a Notification's one
// recipient is final only once sendmail took it, which is never journaled.
void QueueManager::Impl::add(SpoolMessage m, int64_t now) {
  std::string id = m.id;
  Entry& e = msgs[id];
  e = Entry{};
  e.kind = notificationInSpool(m.env) ? Kind::Notification : Kind::Message;
  e.msg = std::move(m);
  if (e.kind == Kind::Message && allFinal(e.msg)) {
    removeFinished(id);
    return;
  }
  int64_t due =
      e.msg.state == QueueState::Deferred ? std::max<int64_t>(e.msg.delivery.next_attempt, 0) : now;
  schedule(e, due);
}

// ---------------------------------------------------------------------------------------------
// Removal.

// Forgets a message whose recipients are all final; the remover deletes its file.
void QueueManager::Impl::removeFinished(const std::string& id) {
  auto it = msgs.find(id);
  if (it == msgs.end()) return;
  Entry& e = it->second;
  unschedule(e);
  remover.remove(e.msg.state, id);
  logf(LogLevel::Info, "%s: removed", id.c_str());
  msgs.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Administration.

Status QueueManager::Impl::hold(const std::string& id) {
  auto it = msgs.find(id);
  if (it == msgs.end()) return Error{ENOENT, "no message " + id + " in the queue"};
  Entry& e = it->second;
  if (e.msg.state == QueueState::Hold) return {};
  if (e.in_flight) {
    e.hold_requested = true;  // put aside when its attempt ends
    return {};
  }
  unschedule(e);
  if (auto s = spool.move(e.msg, QueueState::Hold); !s) {
    schedule(e, e.due);
    return s;
  }
  logf(LogLevel::Info, "%s: put on hold", id.c_str());
  return {};
}

Status QueueManager::Impl::release(const std::string& id, int64_t now) {
  auto it = msgs.find(id);
  if (it == msgs.end()) return Error{ENOENT, "no message " + id + " in the queue"};
  Entry& e = it->second;
  if (e.in_flight && e.hold_requested) {
    e.hold_requested = false;
    return {};
  }
  if (e.msg.state != QueueState::Hold) return Error{EINVAL, "message " + id + " is not on hold"};
  if (auto s = spool.move(e.msg, QueueState::Active); !s) return s;
  logf(LogLevel::Info, "%s: released from hold", id.c_str());
  schedule(e, now);
  return {};
}

namespace {
// Diagnostic-Code of a recipient returned by dynmxctl bounce (Status 5.0.0).
constexpr const char* kReturnedByAdmin = "returned to the sender by the mail administrator";
}  // namespace

// dynmxctl delete/bounce of `ids`: see QueueManager::dispose().
Result<DisposalReport> QueueManager::Impl::dispose(Disposal d, const std::vector<std::string>& ids,
                                                   const std::string& who, int64_t now) {
  DisposalReport rep;
  bool removed = false;
  const char* verb = d == Disposal::Delete ? "deleted" : "returned to sender";
  for (const std::string& id : ids) {
    auto it = msgs.find(id);
    if (it == msgs.end()) continue;
    Entry& e = it->second;
    if (d == Disposal::Bounce && e.kind == Kind::Notification) {
      ++rep.failed;
      rep.lines.push_back(id + ": a notification (from <>) cannot be returned to a sender; " +
                          "delete it instead");
      continue;
    }
    if (e.in_flight) {
      e.disposal = d;
      e.disposal_by = who;
      logf(LogLevel::Info, "%s: to be %s when the delivery attempt under way ends (asked by %s)",
           id.c_str(), verb, who.c_str());
      rep.lines.push_back(id + ": being delivered now; " + verb +
                          " when the attempt ends (what it delivers stays delivered)");
      continue;
    }
    std::string said;
    if (!disposeNow(e, d, who, now, &said)) {
      ++rep.failed;
      rep.lines.push_back(id + ": " + said);
      continue;
    }
    removed = true;
    rep.lines.push_back(id + ": " + said);
  }
  // The reply says "deleted": so it is, on disk, before it is sent.
  if (removed) remover.flush();
  return rep;
}

bool QueueManager::Impl::disposeNow(Entry& e, Disposal d, const std::string& who, int64_t now,
                                    std::string* said) {
  const std::string id = e.msg.id;
  std::vector<size_t> pend = pending(e.msg);
  if (d == Disposal::Delete || e.kind == Kind::Notification) {
    logf(LogLevel::Info,
         "%s: from=<%s>, client=%s, pending=%zu, status=deleted by %s (dynmxctl delete, no "
         "notification)",
         id.c_str(), printable(e.msg.env.sender, 300).c_str(),
         printable(e.msg.env.client, 100).c_str(), pend.size(), who.c_str());
    *said = "deleted";
    removeFinished(id);
    return true;
  }
  // As an expiry (results.cpp), now: the report is spooled first, then the recipients are
  // journaled Failed, then the message goes.
  std::vector<std::string> old_replies;
  std::vector<size_t> report;
  for (size_t i : pend) {
    SpoolRecipient& r = e.msg.env.rcpts[i];
    old_replies.push_back(r.reply);
    r.reply = kReturnedByAdmin;
    r.updated = now;
    if (notifyAllows(r.notify, "FAILURE")) report.push_back(i);
  }
  bool null_sender = e.msg.env.sender.empty();
  if (!null_sender && !report.empty() && !notify(e, DsnKind::Failure, report, now, "5.0.0")) {
    for (size_t k = 0; k < pend.size(); ++k) e.msg.env.rcpts[pend[k]].reply = old_replies[k];
    *said = "cannot spool the notification to the sender (the log says why); nothing changed";
    return false;
  }
  for (size_t i : pend) {
    bool reported = std::find(report.begin(), report.end(), i) != report.end();
    logAttempt(e.msg, i, "none", now,
               null_sender ? "bounced, dropped (the sender is <>)"
               : reported  ? "bounced, returned to sender"
                           : "bounced, not returned (NOTIFY)",
               kReturnedByAdmin);
    if (auto s = spool.recordRecipient(e.msg, i, RcptState::Failed, kReturnedByAdmin, now); !s) {
      markStuck(e, s.error().message);
      *said = "cannot record the recipients as failed: " + s.error().message;
      return false;
    }
  }
  logf(LogLevel::Info,
       "%s: from=<%s>, client=%s, pending=%zu, status=bounced by %s (dynmxctl "
       "bounce)",
       id.c_str(), printable(e.msg.env.sender, 300).c_str(),
       printable(e.msg.env.client, 100).c_str(), pend.size(), who.c_str());
  *said = null_sender      ? "deleted (the sender is <>: nobody to return it to)"
          : report.empty() ? "removed (no recipient's NOTIFY asks for a report)"
                           : "returned to sender";
  removeFinished(id);
  return true;
}

// One line per configured client and per client name found in the spool; notifications are
// counted on a line of their own, labelled kBounceClient and marked `notifications`.
std::vector<ClientQueueStatus> QueueManager::Impl::status() const {
  std::map<std::string, ClientQueueStatus> by;
  for (const ClientConfig& c : cfg.clients) by[c.name].client = c.name;
  for (const auto& [id, e] : msgs) {
    ClientQueueStatus& s = by[e.msg.env.client];
    s.client = e.msg.env.client;
    s.notifications = e.kind == Kind::Notification;
    s.bytes += e.msg.good_length;
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

std::vector<std::string> QueueManager::Impl::listQueue() const {
  std::vector<std::string> out;
  for (const auto& [id, e] : msgs) {
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

Result<DisposalReport> QueueManager::dispose(Disposal d, const std::string& id,
                                             const std::string& who, int64_t now) {
  impl_->wake_dirty = true;
  if (!impl_->msgs.count(id)) return Error{ENOENT, "no message " + id + " in the queue"};
  return impl_->dispose(d, {id}, who, now);
}

Result<DisposalReport> QueueManager::disposeAll(Disposal d, const std::string& client,
                                                const std::string& who, int64_t now) {
  impl_->wake_dirty = true;
  std::vector<std::string> ids;
  for (const auto& [id, e] : impl_->msgs)
    if (e.msg.env.client == client) ids.push_back(id);
  if (ids.empty() && !impl_->cfg.findClient(client))
    return Error{ENOENT, "no client named " + client + " and no mail for it in the queue"};
  auto rep = impl_->dispose(d, ids, who, now);
  if (rep && ids.empty()) rep->lines.push_back("client " + client + ": no mail in the queue");
  return rep;
}

// ---------------------------------------------------------------------------------------------
// The facade: forwards, and marks the cached next wakeup stale on every call that may change it.

QueueManager::QueueManager(Spool& spool, const Config& cfg, BounceSender& bounces,
                           std::chrono::milliseconds removal_sync, HandoffRunner* handoffs,
                           Metrics* metrics)
    : impl_(std::make_shared<Impl>(spool, cfg, bounces, removal_sync, handoffs, metrics)) {}

void QueueManager::reconfigure(const Config& cfg) {
  impl_->wake_dirty = true;
  impl_->reconfigure(cfg);
}

RecoveryReport QueueManager::start(int64_t now, size_t scan_limit) {
  impl_->wake_dirty = true;
  return impl_->start(now, scan_limit);
}

bool QueueManager::scanIncoming(int64_t now, size_t limit) {
  impl_->wake_dirty = true;
  return impl_->scanIncoming(now, limit);
}

void QueueManager::flushRemovals() {
  impl_->remover.flush();
}

void QueueManager::collectHandoffs(int64_t now) {
  impl_->wake_dirty = true;
  impl_->collectHandoffs(now);
}

void QueueManager::clientUp(const std::string& client, int64_t now) {
  impl_->wake_dirty = true;
  impl_->clientUp(client, now);
}

std::optional<Job> QueueManager::nextJob(const std::string& client, int64_t now) {
  impl_->wake_dirty = true;
  return impl_->nextJob(client, now);
}

void QueueManager::finish(Job job, const TransactionResult& result, const std::string& relay,
                          int64_t now) {
  impl_->wake_dirty = true;
  impl_->finish(job, result, relay, now);
}

void QueueManager::abandon(Job job, const std::string& reason, int64_t now) {
  impl_->wake_dirty = true;
  impl_->abandon(job, reason, now);
}

void QueueManager::tick(int64_t now) {
  impl_->wake_dirty = true;
  impl_->tick(now);
}

int64_t QueueManager::nextWakeup() const {
  return impl_->nextWakeup();
}

bool QueueManager::hasDue(const std::string& client, int64_t now) const {
  return impl_->hasDue(client, now);
}

Status QueueManager::hold(const std::string& id) {
  impl_->wake_dirty = true;
  return impl_->hold(id);
}

Status QueueManager::release(const std::string& id, int64_t now) {
  impl_->wake_dirty = true;
  return impl_->release(id, now);
}

void QueueManager::flush(const std::string& client, int64_t now) {
  impl_->wake_dirty = true;
  impl_->flush(client, now);
}

std::vector<ClientQueueStatus> QueueManager::status() const {
  return impl_->status();
}

std::vector<std::string> QueueManager::listQueue() const {
  return impl_->listQueue();
}

}  // namespace dynmx::tunneld
