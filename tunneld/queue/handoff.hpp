// handoff.hpp: runs the hand-offs of spooled notifications (bounces, delay warnings) to the local
// sendmail, so that the queue manager does not wait for them.
//
// A hand-off spawns sendmail and waits for its exit status, up to the sender's timeout (two
// minutes): done on the event loop, a local sendmail that hangs would stall every delivery for
// that long. ThreadHandoffRunner runs them on a thread of its own, one after another, and calls
// `on_done` (which wakes the event loop) as each one ends; the queue manager then collects the
// results with takeDone() and removes or reschedules the notification. InlineHandoffRunner runs
// them at once in the caller (for callers with no event loop to keep moving).
//
// Failure behaviour: the outcome of a hand-off is its Status, handled by the queue manager (a
// failed one is retried with backoff). At destruction, hand-offs not yet started are dropped
// (their notifications stay in the spool and are handed off after the restart); the one running
// is waited for, which the sender's own timeout bounds (dynmx-tunneld cancels its sender first:
// SendmailBounceSender::cancel).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shared/result.hpp"

namespace dynmx::tunneld {

class HandoffRunner {
 public:
  struct Done {
    std::string id;  // the notification's queue id
    Status status;
  };
  virtual ~HandoffRunner() = default;
  // Runs `work` (which hands notification `id` to sendmail) now or later.
  virtual void start(std::string id, std::function<Status()> work) = 0;
  // The hand-offs that ended since the last call, in the order they ended.
  virtual std::vector<Done> takeDone() = 0;
};

class InlineHandoffRunner : public HandoffRunner {
 public:
  void start(std::string id, std::function<Status()> work) override;
  std::vector<Done> takeDone() override;

 private:
  std::vector<Done> done_;
};

class ThreadHandoffRunner : public HandoffRunner {
 public:
  // on_done is called on the runner's thread after each hand-off; it must be thread-safe.
  explicit ThreadHandoffRunner(std::function<void()> on_done);
  ~ThreadHandoffRunner() override;
  ThreadHandoffRunner(const ThreadHandoffRunner&) = delete;
  ThreadHandoffRunner& operator=(const ThreadHandoffRunner&) = delete;

  void start(std::string id, std::function<Status()> work) override;
  std::vector<Done> takeDone() override;

 private:
  void run();

  std::function<void()> on_done_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::string, std::function<Status()>>> todo_;  // guarded by mu_
  std::vector<Done> done_;                                            // guarded by mu_
  bool stop_ = false;                                                 // guarded by mu_
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace dynmx::tunneld
