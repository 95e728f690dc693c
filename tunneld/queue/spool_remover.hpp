// spool_remover.hpp: deletes finished spool files on a thread of its own.
//
// Removing a delivered message's file is housekeeping that nothing waits for, yet an unlink can
// block: on ext4 mounted with `discard` it issues the discard synchronously (measured here: about
// a sixth of dynmx-tunneld's time while streaming). So the queue manager hands removals to this
// thread, and the event loop goes on delivering.
//
// Contract: remove() queues a file and returns at once (syncLater() a directory whose renames can
// wait as long). The thread unlinks queued files in order
// and makes the removals durable with one fsync per state directory, at most once per
// `sync_interval` while removals keep coming, and at the latest `sync_interval` after the last
// one. flush() (and the destructor) return only once every removal queued before the call is
// unlinked and fsynced. Until a removal is fsynced, a crash may bring the file back: its message
// is delivered again after the restart, a duplicate and never a loss (Postfix does not fsync its
// removals at all).
//
// Failure behaviour: an unlink or fsync that fails is logged (naming the file or directory); the
// file stays where it was, and the next start of dynmx-tunneld delivers it again (a duplicate).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shared/spool.hpp"

namespace dynmx::tunneld {

inline constexpr std::chrono::milliseconds kRemovalSync{1000};
// While removals keep coming the thread takes them in batches: woken by the kRemovalBatch-th
// queued one or after kRemovalLinger, rather than once per message (a wake-up costs both sides a
// context switch, and the event loop's side of it is on the delivery path).
inline constexpr size_t kRemovalBatch = 64;
inline constexpr std::chrono::milliseconds kRemovalLinger{20};

class SpoolRemover {
 public:
  // The spool (and its FsOps) must be usable from another thread and outlive this object.
  explicit SpoolRemover(const Spool& spool, std::chrono::milliseconds sync_interval = kRemovalSync);
  ~SpoolRemover();
  SpoolRemover(const SpoolRemover&) = delete;
  SpoolRemover& operator=(const SpoolRemover&) = delete;

  void remove(QueueState st, const std::string& id);
  // Makes renames into `st` durable as removals are: its directory is fsynced with the next sync.
  void syncLater(QueueState st);
  // Blocks until every removal queued before the call is done and fsynced.
  void flush();

 private:
  void run();

  const Spool& spool_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::vector<std::pair<QueueState, std::string>> queue_;  // guarded by mu_
  std::set<QueueState> sync_later_;                        // guarded by mu_
  uint64_t flush_requested_ = 0;                           // guarded by mu_
  uint64_t flush_done_ = 0;                                // guarded by mu_
  bool stop_ = false;                                      // guarded by mu_
  bool idle_ = false;   // guarded by mu_: the thread sleeps until notified (nothing to do)
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace dynmx::tunneld
