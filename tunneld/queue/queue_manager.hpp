// queue_manager.hpp: what to deliver to which client, and what to do with the results.
//
// The queue manager owns active/ and deferred/ of the spool. It takes new mail from incoming/,
// keeps per-client ready queues, hands out jobs to connected clients, records every per-recipient
// result in the spool as it arrives, reschedules deferred mail with backoff (retry_min..retry_max,
// growing with the message's age), expires mail after queue_lifetime with a bounce, sends delay
// warnings when NOTIFY allows, and removes a message once every recipient is final.
// It does no network I/O: the daemon's event loop calls it, passing the time, so that tests can
// drive it with a clock of their own. Its one thread is its SpoolRemover's, which deletes the
// files of finished messages off the event loop. How the work is split between the files of
// tunneld/queue/ (scheduler, results, notify, intake and removal) is told in queue_impl.hpp.
//
// Failure handling: a spool file that cannot be read goes to corrupt/ (logged); a journal write
// that fails leaves the message in active/ for a retry after restart (duplicates over loss); a
// bounce that cannot be handed to sendmail is retried on the next tick.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shared/config.hpp"
#include "shared/spool.hpp"
#include "tunneld/delivery/delivery.hpp"
#include "tunneld/metrics/metrics.hpp"
#include "tunneld/queue/bounce.hpp"
#include "tunneld/queue/handoff.hpp"
#include "tunneld/queue/spool_remover.hpp"

namespace dynmx::tunneld {

// Notifications (bounces, delay warnings) are entries of their own kind (queue_impl.hpp): they wait
// for the local sendmail, never for a client. tick() hands them off and retries a failed hand-off
// with the [tunneld] retry policy, and drops one that outlives queue_lifetime (it is from <>).
// In the spool a notification is a message whose client field is kBounceClient (never a valid
// client name: config names are letters, digits, '.', '_' and '-'); that is how spools written by
// every version mark them (dynmx-spool(5)). Logs, `dynmxctl queue` and status() show the same
// label for them (status() also marks their line `notifications`); inside the queue no code
// compares a client name with it but the spool reader's kind test (queue_impl.hpp).
inline constexpr const char* kBounceClient = "<bounce>";

// Pure policy: the delay before the next attempt of a message that has been queued for `age` and
// tried `attempts` times. Doubles from retry_min, capped at retry_max (Postfix's shape), and is at
// least the message's age (up to retry_max), as Postfix's queue manager backs off by age:
//   clamp(max(retry_min * 2^(attempts-1), age), retry_min, retry_max); attempts 0 counts as 1.
std::chrono::seconds retryDelay(const RetryPolicy& p, uint32_t attempts, std::chrono::seconds age);

struct ClientQueueStatus {
  std::string client;
  size_t active = 0, deferred = 0, hold = 0, in_flight = 0;
  uint64_t bytes = 0;          // the spool files' sizes (max_queue_bytes counts the same)
  int64_t oldest_arrival = 0;  // 0 when empty
  bool notifications = false;  // the line of the notifications (client is kBounceClient)
};

// What dynmxctl may do to a queued message: delete it (gone, no notification: postsuper -d) or
// bounce it (returned to its sender now with an RFC 3464 report about its pending recipients).
enum class Disposal { Delete, Bounce };
// The outcome of dispose()/disposeAll(): one line per message for the reply, and how many could
// not be disposed of (their lines say why).
struct DisposalReport {
  std::vector<std::string> lines;
  size_t failed = 0;
};

class QueueManager {
 public:
  // removal_sync: see SpoolRemover. handoffs: runs the hand-offs of notifications to `bounces`
  // (nullptr: at once, in the caller); it must outlive this object. metrics: where the outcome
  // of every recipient is counted (nullptr: a registry of its own); it must outlive this object.
  QueueManager(Spool& spool, const Config& cfg, BounceSender& bounces,
               std::chrono::milliseconds removal_sync = kRemovalSync,
               HandoffRunner* handoffs = nullptr, Metrics* metrics = nullptr);

  // Applies a new configuration (clients, retry policy); messages of a client that no longer exists
  // stay where they are and are reported in status.
  void reconfigure(const Config& cfg);
  // Start-up: spool recovery, then load deferred/ and hold/, and take incoming/ (where recovery
  // put active/) as scanIncoming(now, scan_limit) does.
  RecoveryReport start(int64_t now, size_t scan_limit = SIZE_MAX);
  // Takes mail from incoming/ into active/ (called on a wake-up from inotify and periodically), in
  // queue id order, at most `limit` files per call: renames them, then fsyncs active/ once. A big
  // backlog (after a restart, say) is so taken in slices, and the caller delivers in between.
  // True while more remains: the rest of the listing, or a listing again because a call came
  // while one was being worked through (new mail may have arrived meanwhile).
  bool scanIncoming(int64_t now, size_t limit = SIZE_MAX);
  // The files of finished messages are deleted by a SpoolRemover, off the caller's thread, and
  // their directories fsynced within kRemovalSync. This blocks until every removal so far is done
  // and fsynced (the destructor does it too). Until then a crash may bring a removed message back:
  // delivered again, a duplicate, never a loss.
  void flushRemovals();
  // Takes the outcomes of the notification hand-offs that ended (the daemon calls it when the
  // runner wakes it): removes what sendmail took, reschedules the rest with backoff.
  void collectHandoffs(int64_t now);
  // The client's connection came (back) up: its deferred mail becomes due now.
  void clientUp(const std::string& client, int64_t now);

  // The next message due for a client, or nullopt. The job is in flight until finish().
  std::optional<Job> nextJob(const std::string& client, int64_t now);
  // Results of a job (from SmtpClient::takeResult). `relay` is "HOST[IP]:PORT" for the log.
  void finish(Job job, const TransactionResult& result, const std::string& relay, int64_t now);
  // The session broke before a result: every recipient of the job is deferred with `reason`.
  void abandon(Job job, const std::string& reason, int64_t now);

  // Expiry, delay warnings, deferred mail coming due, bounces to retry.
  void tick(int64_t now);
  // The earliest time tick() has something to do (0: nothing scheduled).
  int64_t nextWakeup() const;
  bool hasDue(const std::string& client, int64_t now) const;

  // Administration (dynmxctl): hold/release/delete by queue id, flush (all deferred due now).
  Status hold(const std::string& id);
  Status release(const std::string& id, int64_t now);
  void flush(const std::string& client, int64_t now);  // "" means every client
  // dynmxctl delete/bounce of message `id`; `who` names the administrator in the log. A message
  // whose delivery attempt is under way is disposed of when the attempt ends (what that attempt
  // delivered stays delivered; if it delivers every recipient, nothing is left to do); a restart
  // meanwhile forgets the request. A notification cannot be bounced (it is from <>). Removals are
  // fsynced before this returns. An error when there is no such message.
  Result<DisposalReport> dispose(Disposal d, const std::string& id, const std::string& who,
                                 int64_t now);
  // The same for every message of `client` (configured or found in the spool); an error when it
  // has none and is not configured.
  Result<DisposalReport> disposeAll(Disposal d, const std::string& client, const std::string& who,
                                    int64_t now);
  std::vector<ClientQueueStatus> status() const;
  // One line per message for "dynmxctl queue": id, state, client, size, arrival, sender, rcpts.
  std::vector<std::string> listQueue() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// The queue as the transports see it (the delivery contract, tunneld/delivery/delivery.hpp).
class QueueJobSource : public JobSource {
 public:
  explicit QueueJobSource(QueueManager& q) : q_(q) {}
  bool hasDue(const std::string& c, int64_t now) override { return q_.hasDue(c, now); }
  std::optional<Job> nextJob(const std::string& c, int64_t now) override {
    return q_.nextJob(c, now);
  }
  void finish(Job j, const TransactionResult& r, const std::string& relay, int64_t now) override {
    q_.finish(std::move(j), r, relay, now);
  }
  void abandon(Job j, const std::string& reason, int64_t now) override {
    q_.abandon(std::move(j), reason, now);
  }
  void clientUp(const std::string& c, int64_t now) override { q_.clientUp(c, now); }

 private:
  QueueManager& q_;
};

}  // namespace dynmx::tunneld
