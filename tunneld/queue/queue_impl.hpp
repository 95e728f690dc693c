// queue_impl.hpp: the queue manager's state, in one place, and the jobs its files share out.
//
// QueueManager (queue_manager.hpp) is a facade over this struct; every piece of queue state lives
// here and nowhere else. The work is split by job, as Postfix's qmgr is:
//   queue_manager.cpp  intake (spool recovery, incoming/ -> active/), removal, administration
//   scheduler.cpp      what is due: the per-client schedules, job hand-out, tick, the next wakeup
//   results.cpp        recording the results of a job, rescheduling with backoff, expiry
//   notify.cpp         notifications: building and spooling them, delay warnings, hand-off to
//                      the local sendmail and its outcome
//
// Two kinds of entries are kept. A Message waits for its client's connection and is handed out
// as a Job from that client's schedule. A Notification (a bounce or a delay warning, from <> to
// the original sender) waits for the local sendmail: it is never in a client schedule, only due
// for a hand-off by tick(). The kind is read from the spool once, at load (notificationInSpool()).
//
// Internal to tunneld/queue/: nothing outside the queue includes this header.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shared/config.hpp"
#include "shared/spool.hpp"
#include "tunneld/delivery/delivery.hpp"
#include "tunneld/metrics/metrics.hpp"
#include "tunneld/queue/bounce.hpp"
#include "tunneld/queue/handoff.hpp"
#include "tunneld/queue/queue_manager.hpp"
#include "tunneld/queue/spool_remover.hpp"

namespace dynmx::tunneld {

inline constexpr int64_t kHousekeepingRetry = 60;  // after a notification could not be spooled

// The spool form of the entry kind (see dynmx-spool(5)): a notification is stored with the
// client field kBounceClient. The only two places that know it: this test at load, and
// Impl::spoolNotification() that writes one.
inline bool notificationInSpool(const Envelope& env) {
  return env.client == kBounceClient;
}

// NOTIFY allows `what` ("FAILURE", "DELAY"): absent means FAILURE and (our choice) DELAY.
bool notifyAllows(const std::string& notify, std::string_view what);

struct QueueManager::Impl {
  enum class Kind { Message, Notification };

  struct Entry {
    SpoolMessage msg;
    Kind kind = Kind::Message;
    bool in_flight = false;  // a Job (Message) or a hand-off (Notification) is under way
    bool hold_requested = false;
    bool stuck = false;      // a journal write failed: out of the schedule until restart
    int64_t due = 0;         // next attempt (Message) or hand-off (Notification)
    int64_t not_before = 0;  // housekeeping (expiry, warning) retry after a failure
    // dynmxctl delete/bounce asked while in flight: done when the attempt ends (by whom, for the
    // log).
    std::optional<Disposal> disposal;
    std::string disposal_by;
  };

  Spool& spool;
  Config cfg;
  BounceSender& bounces;
  Metrics own_metrics;  // when the caller gives none
  Metrics& metrics;     // results.cpp counts every recipient's outcome here
  std::string hostname;
  std::map<std::string, Entry> msgs;
  // Per client: (due, id) of Messages that may be handed out (not in flight, held or stuck).
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
       HandoffRunner* r, Metrics* m);

  // --- queue_manager.cpp: intake, removal, administration
  void reconfigure(const Config& c);
  void setHostname();
  const RetryPolicy& policy(const std::string& client) const;
  RecoveryReport start(int64_t now, size_t scan_limit);
  bool scanIncoming(int64_t now, size_t limit);
  bool loadOne(QueueState st, const std::string& id, int64_t now, bool batch = false);
  void add(SpoolMessage m, int64_t now);
  void removeFinished(const std::string& id);
  Status hold(const std::string& id);
  Status release(const std::string& id, int64_t now);
  std::vector<ClientQueueStatus> status() const;
  std::vector<std::string> listQueue() const;
  Result<DisposalReport> dispose(Disposal d, const std::vector<std::string>& ids,
                                 const std::string& who, int64_t now);
  // Disposes of a message that is not in flight; false (reason in *why) when it could not be.
  // The entry may be gone afterwards.
  bool disposeNow(Entry& e, Disposal d, const std::string& who, int64_t now, std::string* why);

  // --- scheduler.cpp: what is due
  static bool schedulable(const Entry& e);
  void unschedule(const Entry& e);
  void schedule(Entry& e, int64_t due);
  void clientUp(const std::string& client, int64_t now);
  void flush(const std::string& client, int64_t now);
  std::optional<Job> nextJob(const std::string& client, int64_t now);
  bool hasDue(const std::string& client, int64_t now) const;
  void tick(int64_t now);
  int64_t nextWakeup() const;

  // --- results.cpp: results, rescheduling, expiry
  static bool allFinal(const SpoolMessage& m);
  static std::vector<size_t> pending(const SpoolMessage& m);
  void logAttempt(const SpoolMessage& m, size_t idx, const std::string& relay, int64_t now,
                  const char* status, const std::string& reply);
  void markStuck(Entry& e, const std::string& why);
  void finish(Job& job, const TransactionResult& result, const std::string& relay, int64_t now);
  void abandon(Job& job, const std::string& reason, int64_t now);
  Entry* takeBack(Job& job, const TransactionResult& result, const std::string& relay);
  bool recordResults(Entry& e, const TransactionResult& result, const std::string& relay,
                     int64_t now, bool completes, std::vector<size_t>& failed);
  bool recordFailures(Entry& e, const TransactionResult& result, const std::vector<size_t>& failed,
                      int64_t now);
  void reschedule(Entry& e, int64_t now);
  bool expireIfDue(Entry& e, int64_t now);

  // --- notify.cpp: notifications
  std::string fromHeader() const;
  bool notify(Entry& e, DsnKind kind, const std::vector<size_t>& idx, int64_t now,
              const std::string& fallback_status = "");
  Result<std::string> spoolNotification(const SpoolMessage& m, const std::string& text,
                                        int64_t now);
  void handOff(Entry& e, int64_t now);
  void collectHandoffs(int64_t now);
  void handoffDone(const std::string& id, const Status& sent, int64_t now);
  void warnIfDue(Entry& e, int64_t now);
  static bool anyWarnable(const SpoolMessage& m);
  static std::vector<size_t> warnable(const SpoolMessage& m);
};

}  // namespace dynmx::tunneld
