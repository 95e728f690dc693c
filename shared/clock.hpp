// clock.hpp: the one time source of dynmx, passed in wherever code needs "now".
//
// Policies (backoff, expiry, leases) and state machines take the time from a TimeSource instead of
// calling the system, so that tests move a ManualTime forward instead of sleeping. Two readings:
// steady() for timeouts and deadlines (never jumps), unixSeconds() for what is stored or shown
// (spool times, log and status dates, lease expiry). SystemTime is the only production source.
#pragma once

#include <chrono>
#include <cstdint>

namespace dynmx {

using SteadyClock = std::chrono::steady_clock;

class TimeSource {
 public:
  virtual ~TimeSource() = default;
  virtual SteadyClock::time_point steady() const = 0;
  virtual int64_t unixSeconds() const = 0;
};

class SystemTime final : public TimeSource {
 public:
  SteadyClock::time_point steady() const override { return SteadyClock::now(); }
  int64_t unixSeconds() const override {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

// The process-wide system time source (stateless; safe from any thread).
inline const TimeSource& systemTime() {
  static const SystemTime t;
  return t;
}

// A clock that moves only when told: for tests. Both readings move together.
class ManualTime final : public TimeSource {
 public:
  explicit ManualTime(int64_t unix_start = 1'700'000'000) : unix_start_(unix_start) {}
  SteadyClock::time_point steady() const override { return SteadyClock::time_point{} + elapsed_; }
  int64_t unixSeconds() const override {
    return unix_start_ + std::chrono::duration_cast<std::chrono::seconds>(elapsed_).count();
  }
  void advance(SteadyClock::duration d) { elapsed_ += d; }

 private:
  int64_t unix_start_;
  SteadyClock::duration elapsed_{0};
};

}  // namespace dynmx
