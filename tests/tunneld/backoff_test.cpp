// backoff_test.cpp: the reconnect backoff of the SSH layer (reconnectDelay, a pure policy: capped
// exponential with full jitter above the floor), from a table of failures and jitter draws.
#include <chrono>
#include <cstdint>
#include <gtest/gtest.h>

#include "tunneld/ssh/ssh_client.hpp"

using namespace dynmx::tunneld;

TEST(ReconnectDelay, Table) {
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  struct Case {
    int min, max;
    uint32_t failures;
    double u;
    int64_t want_ms;
  } cases[] = {
      {5, 600, 1, 0.0, 5000},    {5, 600, 1, 0.99, 5000},       // first failure: the floor
      {5, 600, 2, 0.0, 5000},    {5, 600, 2, 0.5, 7500},        // [5, 10]
      {5, 600, 3, 0.5, 12500},   {5, 600, 4, 0.999999, 39999},  // [5, 20], [5, 40]
      {5, 600, 10, 0.5, 302500}, {5, 600, 50, 0.5, 302500},     // capped at 600
      {5, 600, 1000, 0.0, 5000}, {10, 5, 3, 0.5, 10000},        // max below min: min
      {1, 2, 5, 1.5, 1999},      {1, 2, 5, -1.0, 1000},         // u clamped into [0,1)
  };
  for (auto& c : cases) {
    EXPECT_EQ(reconnectDelay(seconds(c.min), seconds(c.max), c.failures, c.u).count(), c.want_ms)
        << c.min << " " << c.max << " " << c.failures << " " << c.u;
  }
}
