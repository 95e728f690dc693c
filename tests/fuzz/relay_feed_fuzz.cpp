// relay_feed_fuzz.cpp: the lease feed is written by dynmx-tunneld, but dynmx-relaymap treats it
// as input like any other: no crash, the lease bound holds, and what the writer produces reads
// back.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tunneld/relay/relay_feed.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dynmx::relay;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  FeedParser p(8);
  bool ok = p.feed(in);
  if (ok == p.failed()) __builtin_trap();
  if (auto s = p.takeSnapshot()) {
    if (s->leases.size() > 8) __builtin_trap();
    std::vector<FeedLease> back;
    for (const auto& [addr, e] : s->leases) back.push_back({addr, e.client, e.expires_unix});
    FeedParser again(8);
    if (!again.feed(formatSnapshot(back))) __builtin_trap();
    auto t = again.takeSnapshot();
    if (!t || t->leases.size() != s->leases.size()) __builtin_trap();
  }
  return 0;
}
