// event_loop.hpp: the daemon's one thread: poll() over file descriptors plus a min-heap of timers.
//
// Contract: callbacks run on the loop's thread, one at a time; a callback may add, change or
// remove any watch or timer (including its own). runOnce() sleeps in poll() until a descriptor is
// ready or the earliest timer is due, so an idle daemon uses no CPU. Timers are cancelled lazily
// (the heap keeps stale entries that are skipped when they come up).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <unordered_map>
#include <vector>

#include "shared/clock.hpp"

namespace dynmx::tunneld {

class EventLoop {
 public:
  using FdCallback = std::function<void(short revents)>;
  using TimerCallback = std::function<void()>;

  // Adds or replaces the watch on fd.
  void watch(int fd, short events, FdCallback cb);
  void setEvents(int fd, short events);
  void unwatch(int fd);
  bool watching(int fd) const { return fds_.count(fd) != 0; }

  uint64_t addTimer(SteadyClock::time_point when, TimerCallback cb);
  void cancelTimer(uint64_t id);
  std::optional<SteadyClock::time_point> nextTimer();

  // Waits for events or the next timer (at most max_wait), then runs what is ready.
  void runOnce(std::optional<SteadyClock::duration> max_wait = std::nullopt);

 private:
  struct Watch {
    short events;
    FdCallback cb;
  };
  struct Timer {
    SteadyClock::time_point when;
    uint64_t id;
    bool operator>(const Timer& o) const { return when > o.when || (when == o.when && id > o.id); }
  };
  std::map<int, Watch> fds_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> heap_;
  std::unordered_map<uint64_t, TimerCallback> timers_;
  uint64_t next_id_ = 1;
};

}  // namespace dynmx::tunneld
