// event_loop.cpp: poll() plus a timer min-heap; see event_loop.hpp.
//
// EINTR from poll() is not an error (signals arrive through a signalfd); any other poll() failure
// is a broken invariant of the daemon (bad descriptor) and aborts with a log line.
#include "tunneld/event_loop.hpp"

#include <poll.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "shared/log.hpp"

namespace dynmx::tunneld {

void EventLoop::watch(int fd, short events, FdCallback cb) {
  fds_[fd] = Watch{events, std::move(cb)};
}

void EventLoop::setEvents(int fd, short events) {
  auto it = fds_.find(fd);
  if (it != fds_.end()) it->second.events = events;
}

void EventLoop::unwatch(int fd) {
  fds_.erase(fd);
}

uint64_t EventLoop::addTimer(SteadyClock::time_point when, TimerCallback cb) {
  uint64_t id = next_id_++;
  timers_.emplace(id, std::move(cb));
  heap_.push(Timer{when, id});
  return id;
}

void EventLoop::cancelTimer(uint64_t id) {
  timers_.erase(id);
}

std::optional<SteadyClock::time_point> EventLoop::nextTimer() {
  while (!heap_.empty() && !timers_.count(heap_.top().id)) heap_.pop();
  if (heap_.empty()) return std::nullopt;
  return heap_.top().when;
}

void EventLoop::runOnce(std::optional<SteadyClock::duration> max_wait) {
  auto now = SteadyClock::now();
  int timeout = -1;
  std::optional<SteadyClock::time_point> until;
  if (auto t = nextTimer()) until = *t;
  if (max_wait && (!until || now + *max_wait < *until)) until = now + *max_wait;
  if (until) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*until - now).count();
    if (*until > now && ms == 0) ms = 1;  // round up so that a due timer is not polled for twice
    timeout = ms < 0 ? 0 : static_cast<int>(std::min<int64_t>(ms, 3600 * 1000));
  }
  std::vector<pollfd> pfds;
  pfds.reserve(fds_.size());
  for (auto& [fd, w] : fds_) pfds.push_back(pollfd{fd, w.events, 0});
  int n = poll(pfds.data(), pfds.size(), timeout);
  if (n < 0 && errno != EINTR) {
    int e = errno;
    logf(LogLevel::Critical, "poll: %s", strerror(e));
    abort();
  }
  if (n > 0) {
    for (auto& p : pfds) {
      if (!p.revents) continue;
      auto it = fds_.find(p.fd);
      if (it == fds_.end() || (it->second.events == 0 && !(p.revents & (POLLERR | POLLHUP))))
        continue;                     // removed (or disabled) by an earlier callback in this round
      FdCallback cb = it->second.cb;  // the callback may unwatch itself
      cb(p.revents);
    }
  }
  now = SteadyClock::now();
  while (true) {
    auto t = nextTimer();
    if (!t || *t > now) break;
    uint64_t id = heap_.top().id;
    heap_.pop();
    auto it = timers_.find(id);
    TimerCallback cb = std::move(it->second);
    timers_.erase(it);
    cb();
  }
}

}  // namespace dynmx::tunneld
