// lease_store_fuzz.cpp: the lease file is read back at every start of dynmx-tunneld; whatever bytes
// it holds, the reader must reject them or return leases that write back to the same leases, and
// restoring them into a lease table must keep the table's promises.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tunneld/relay/lease_store.hpp"
#include "tunneld/relay/lease_table.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dynmx::tunneld;
  auto parsed = parseLeaseFile(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!parsed.ok()) return 0;
  for (const auto& l : parsed->leases) {
    if (l.client.empty() || l.expires < l.granted || l.connected) __builtin_trap();
  }
  auto again = parseLeaseFile(formatLeaseFile(*parsed));
  if (!again.ok() || !(*again == *parsed)) __builtin_trap();

  static const LeaseRules rules = [] {
    LeaseRules r;
    r.clients["home"] = LeaseRules::Client{true, {}};
    r.clients["office"] = LeaseRules::Client{true, {*dynmx::InetNetwork::parse("192.0.2.0/24")}};
    return r;
  }();
  LeaseTable table(rules);
  const int64_t now = 1'000'000'000;
  (void)table.restore(parsed->leases, parsed->holds, now);
  for (const auto& l : table.list(now)) {
    if (!l.liveAt(now) || l.connected || rules.mayLease(l.client, l.addr)) __builtin_trap();
    auto found = table.lookup(l.addr, now);
    if (!found || found->expires < l.expires) __builtin_trap();
  }
  for (const auto& h : table.holds(now))
    if (h.until <= now) __builtin_trap();
  return 0;
}
