// handoff.cpp: the two runners of notification hand-offs: inline, and on a thread of its own.
//
// Contract (handoff.hpp): start() queues a hand-off (the inline runner runs it at once); each one
// ends with a Done {id, Status} that takeDone() hands out in the order they ended. The thread
// runs one hand-off at a time, outside its lock, and calls on_done after each one so that the
// owner's event loop wakes up and collects it.
//
// Failure behaviour: a hand-off's failure is its Status, passed on untouched. At destruction the
// hand-offs not started are dropped (their notifications stay spooled, handed off after the
// restart) and the one running is waited for (bounded by the sender's own timeout).
#include "tunneld/queue/handoff.hpp"

namespace dynmx::tunneld {

void InlineHandoffRunner::start(std::string id, std::function<Status()> work) {
  Status st = work();
  done_.push_back(Done{std::move(id), std::move(st)});
}

std::vector<HandoffRunner::Done> InlineHandoffRunner::takeDone() {
  std::vector<Done> out;
  out.swap(done_);
  return out;
}

ThreadHandoffRunner::ThreadHandoffRunner(std::function<void()> on_done)
    : on_done_(std::move(on_done)), thread_([this] { run(); }) {}

ThreadHandoffRunner::~ThreadHandoffRunner() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    todo_.clear();  // not started: they stay spooled, handed off after the restart
  }
  cv_.notify_one();
  thread_.join();
}

void ThreadHandoffRunner::start(std::string id, std::function<Status()> work) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    todo_.emplace_back(std::move(id), std::move(work));
  }
  cv_.notify_one();
}

std::vector<HandoffRunner::Done> ThreadHandoffRunner::takeDone() {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<Done> out;
  out.swap(done_);
  return out;
}

void ThreadHandoffRunner::run() {
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    cv_.wait(lk, [this] { return stop_ || !todo_.empty(); });
    if (stop_) return;
    auto [id, work] = std::move(todo_.front());
    todo_.pop_front();
    lk.unlock();
    Status st = work();
    lk.lock();
    done_.push_back(Done{std::move(id), std::move(st)});
    lk.unlock();
    if (on_done_) on_done_();
    lk.lock();
  }
}

}  // namespace dynmx::tunneld
