// spool_remover.cpp: the remover's thread: unlinks finished spool files in batches and makes the
// removals durable with one fsync per state directory.
//
// Contract (spool_remover.hpp): removals are unlinked in the order queued; their directories (and
// those given to syncLater()) are fsynced when a flush() waits, at stop, or once `sync_interval`
// has passed since the last sync. While removals keep coming the thread lingers (kRemovalLinger)
// instead of sleeping, so the event loop rarely has to wake it. The thread reads the steady
// clock itself rather than a TimeSource: it times real condition-variable waits, which only
// the clock they wait on can end.
//
// Failure behaviour: an unlink or fsync that fails is logged naming the file or directory; the
// file stays, and is delivered again after a restart (a duplicate, never a loss).
#include "tunneld/queue/spool_remover.hpp"

#include "shared/clock.hpp"
#include "shared/log.hpp"
#include "shared/result.hpp"

namespace dynmx::tunneld {

SpoolRemover::SpoolRemover(const Spool& spool, std::chrono::milliseconds sync_interval)
    : spool_(spool), interval_(sync_interval), thread_([this] { run(); }) {}

SpoolRemover::~SpoolRemover() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_one();
  thread_.join();
}

void SpoolRemover::remove(QueueState st, const std::string& id) {
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.emplace_back(st, id);
    wake = idle_ || queue_.size() >= kRemovalBatch;
  }
  if (wake) work_cv_.notify_one();
}

void SpoolRemover::syncLater(QueueState st) {
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu_);
    sync_later_.insert(st);
    wake = idle_;
  }
  if (wake) work_cv_.notify_one();
}

void SpoolRemover::flush() {
  std::unique_lock<std::mutex> lk(mu_);
  uint64_t mine = ++flush_requested_;
  work_cv_.notify_one();
  done_cv_.wait(lk, [&] { return flush_done_ >= mine; });
}

void SpoolRemover::run() {
  std::set<QueueState> unsynced;  // this thread's own
  SteadyClock::time_point last_sync = SteadyClock::now();
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    unsynced.insert(sync_later_.begin(), sync_later_.end());
    sync_later_.clear();
    if (!queue_.empty()) {
      std::vector<std::pair<QueueState, std::string>> batch;
      batch.swap(queue_);
      lk.unlock();
      for (const auto& [st, id] : batch) {
        if (auto s = spool_.removeUnsynced(st, id); !s) {
          logf(LogLevel::Error,
               "%s: cannot remove the finished message: %s (it is delivered again after a "
               "restart)",
               id.c_str(), s.error().message.c_str());
          continue;
        }
        unsynced.insert(st);
      }
      lk.lock();
      continue;  // more may have come meanwhile
    }
    bool flushing = flush_requested_ > flush_done_;
    auto now = SteadyClock::now();
    if (!unsynced.empty() && (flushing || stop_ || now - last_sync >= interval_)) {
      lk.unlock();
      for (QueueState st : unsynced) {
        if (auto s = spool_.fsyncDir(st); !s) {
          logf(LogLevel::Warning, "%s (a crash may bring removed messages back: duplicates)",
               s.error().message.c_str());
        }
      }
      unsynced.clear();
      last_sync = SteadyClock::now();
      lk.lock();
      continue;
    }
    if (flushing && unsynced.empty()) {
      flush_done_ = flush_requested_;
      done_cv_.notify_all();
    }
    if (stop_) return;
    // Lingers while removals may still be coming (see kRemovalBatch); sleeps until notified once
    // everything is removed and synced.
    if (unsynced.empty()) {
      idle_ = true;
      work_cv_.wait(lk);
      idle_ = false;
    } else {
      work_cv_.wait_until(lk, std::min(last_sync + interval_, now + kRemovalLinger));
    }
  }
}

}  // namespace dynmx::tunneld
