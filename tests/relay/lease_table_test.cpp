// lease_table_test.cpp: the relay lease policy, from scripts of events on a manual clock.
//
// Each case is a script: at a time (seconds after the start of a ManualTime), one thing happens
// (a verified tunnel, traffic, a lost connection, a check-in, a host key mismatch, a revocation,
// an expiry run, or a lookup), and the log lines it must produce, exactly and in order. "{+N}" in
// an expected line stands for the ISO time N seconds after the start. A lookup step lists the
// live lease it must find as "CLIENT SOURCE", or nothing.
#include "tunneld/relay/lease_table.hpp"

#include <gtest/gtest.h>
#include <mutex>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "shared/log.hpp"

namespace dynmx::tunneld {
namespace {

using std::chrono::seconds;

enum class Op {
  Tunnel,
  Touch,
  Lost,
  Forwarder,
  Unconfirmed,
  Checkin,
  KeyMismatch,
  Revoke,
  Expire,
  Lookup
};

struct Step {
  int64_t at;
  Op op;
  const char* client;
  const char* addr;
  std::vector<std::string> lines;  // expected log lines; for Lookup: {"CLIENT SOURCE"} or {}
};

struct Script {
  const char* name;
  std::vector<Step> steps;
};

void PrintTo(const Script& s, std::ostream* os) {
  *os << s.name;
}

InetAddr addr(const char* text) {
  auto a = InetAddr::parse(text);
  if (!a) ADD_FAILURE() << "bad address in test: " << text;
  return a.value_or(InetAddr{});
}

// home and office may relay; office only from 192.0.2.0/24 and 2001:db8::/32; quiet may not.
LeaseRules testRules() {
  LeaseRules r;
  r.clients["home"] = LeaseRules::Client{true, {}};
  r.clients["office"] = LeaseRules::Client{
      true, {*InetNetwork::parse("192.0.2.0/24"), *InetNetwork::parse("2001:db8::/32")}};
  r.clients["quiet"] = LeaseRules::Client{false, {}};
  return r;
}

// "{+N}" -> isoUtc(start + N)
std::string expand(const std::string& s, int64_t start) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t open = s.find("{+", pos);
    if (open == std::string::npos) break;
    size_t close = s.find('}', open);
    out += s.substr(pos, open - pos);
    out += isoUtc(start + std::stoll(s.substr(open + 2, close - open - 2)));
    pos = close + 1;
  }
  return out + s.substr(pos);
}

std::vector<std::string> linesOf(const std::vector<LeaseEvent>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) out.push_back(e.line());
  return out;
}

std::vector<std::string> runStep(LeaseTable& table, const Step& s, int64_t now) {
  const InetAddr a = addr(s.addr);
  switch (s.op) {
    case Op::Tunnel:
      return linesOf(table.grantTunnel(s.client, a, now).events);
    case Op::Touch:
      table.touchTunnel(s.client, a, now);
      return {};
    case Op::Lost:
      return linesOf(table.tunnelLost(s.client, a, now));
    case Op::Forwarder:
      return linesOf(table.tunnelRefused(
          s.client, a, Refusal{RefusalKind::NotThisMx, "peer 198.51.100.9 is not this MX"}, now));
    case Op::Unconfirmed:
      return linesOf(table.tunnelRefused(
          s.client, a, Refusal{RefusalKind::NoConfirmation, "malformed dynmx-peer line"}, now));
    case Op::Checkin:
      return linesOf(table.checkIn(s.client, a, now).events);
    case Op::KeyMismatch:
      return linesOf(table.hostKeyMismatch(s.client, a, now));
    case Op::Revoke:
      return linesOf(table.revoke(a, now).events);
    case Op::Expire:
      return linesOf(table.expire(now));
    case Op::Lookup: {
      auto l = table.lookup(a, now);
      if (!l) return {};
      return {l->client + " " + leaseSourceName(l->source)};
    }
  }
  return {};
}

class LeaseScript : public testing::TestWithParam<Script> {};

TEST_P(LeaseScript, ProducesExactlyTheseEvents) {
  ManualTime clock;
  const int64_t start = clock.unixSeconds();
  LeaseTable table(testRules());
  int64_t elapsed = 0;
  for (size_t i = 0; i < GetParam().steps.size(); ++i) {
    const Step& s = GetParam().steps[i];
    ASSERT_GE(s.at, elapsed) << "steps must be in time order";
    clock.advance(seconds(s.at - elapsed));
    elapsed = s.at;
    std::vector<std::string> want;
    for (const auto& l : s.lines) want.push_back(expand(l, start));
    EXPECT_EQ(runStep(table, s, clock.unixSeconds()), want) << "step " << i << " at +" << s.at;
  }
}

constexpr const char* A = "203.0.113.7";
constexpr const char* B = "203.0.113.9";
constexpr const char* V6 = "2001:db8::7";

// The scripts are tables: one step a line where it fits, so that a script reads as a history.
// clang-format off
INSTANTIATE_TEST_SUITE_P(
    Policy, LeaseScript,
    testing::Values(
        Script{"TunnelLeaseIsRenewedByTrafficAndEndsGraceAfterTheConnection",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {100, Op::Touch, "home", A, {}},
                {200, Op::Lookup, "", A, {"home tunnel"}},
                {210, Op::Lost, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+330} (connection "
                  "lost)"}},
                {300, Op::Touch, "home", A, {}},  // no traffic on a lost connection
                {329, Op::Lookup, "", A, {"home tunnel"}},
                {329, Op::Expire, "", A, {}},
                {330, Op::Lookup, "", A, {}},
                {330, Op::Expire, "", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expired"}},
                {331, Op::Lost, "home", A, {}}}},
        Script{"QuietConnectionLosesItsLeaseGraceAfterItsLastTraffic",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {119, Op::Lookup, "", A, {"home tunnel"}},
                {120, Op::Lookup, "", A, {}},  // before expire() has run: still no lease
                {121, Op::Touch, "home", A, {}},
                {121, Op::Lookup, "", A, {}},
                {125, Op::Lost, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expired"}},
                {126, Op::Expire, "", A, {}}}},
        Script{"ReconnectionWithinGraceRenewsTheTunnelLease",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {50, Op::Lost, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+170} (connection "
                  "lost)"}},
                {100, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+220} (renewed)"}},
                {200, Op::Touch, "home", A, {}},
                {300, Op::Lookup, "", A, {"home tunnel"}}}},
        Script{"CheckinLeaseLastsLifetimeAfterTheLastCheckin",
               {{0, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expires={+1200}"}},
                {600, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expires={+1800} "
                  "(renewed)"}},
                {1200, Op::Touch, "home", A, {}},  // traffic renews tunnel leases only
                {1799, Op::Lookup, "", A, {"home checkin"}},
                {1800, Op::Expire, "", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expired"}},
                {1800, Op::Lookup, "", A, {}}}},
        Script{"CheckinFromANewAddressEndsTheLeaseAtTheOldOneAtOnce",
               {{0, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expires={+1200}"}},
                {10, Op::Checkin, "home", B,
                 {"lease: client=home addr=203.0.113.7 source=checkin ended (superseded by "
                  "203.0.113.9)",
                  "lease: client=home addr=203.0.113.9 source=checkin expires={+1210}"}},
                {11, Op::Lookup, "", A, {}},
                {11, Op::Lookup, "", B, {"home checkin"}}}},
        Script{"TunnelToANewAddressEndsTheTunnelLeaseAtTheOldOne",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {5, Op::Lost, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+125} (connection "
                  "lost)"}},
                {10, Op::Tunnel, "home", B,
                 {"lease: client=home addr=203.0.113.7 source=tunnel ended (superseded by "
                  "203.0.113.9)",
                  "lease: client=home addr=203.0.113.9 source=tunnel expires={+130}"}},
                {11, Op::Lookup, "", A, {}}}},
        Script{"NewestAddressWinsOnlyWithinOneSourceAndOneFamily",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {1, Op::Checkin, "home", B,
                 {"lease: client=home addr=203.0.113.9 source=checkin expires={+1201}"}},
                {2, Op::Checkin, "home", V6,
                 {"lease: client=home addr=2001:db8::7 source=checkin expires={+1202}"}},
                {3, Op::Lookup, "", A, {"home tunnel"}},
                {3, Op::Lookup, "", B, {"home checkin"}},
                {3, Op::Lookup, "", V6, {"home checkin"}}}},
        Script{"AnotherClientAtTheSameAddressKeepsItsOwnLease",
               {{0, Op::Checkin, "home", "192.0.2.1",
                 {"lease: client=home addr=192.0.2.1 source=checkin expires={+1200}"}},
                {1, Op::Checkin, "office", "192.0.2.1",
                 {"lease: client=office addr=192.0.2.1 source=checkin expires={+1201}"}},
                {2, Op::Checkin, "home", B,
                 {"lease: client=home addr=192.0.2.1 source=checkin ended (superseded by "
                  "203.0.113.9)",
                  "lease: client=home addr=203.0.113.9 source=checkin expires={+1202}"}},
                {3, Op::Lookup, "", "192.0.2.1", {"office checkin"}}}},
        Script{"HostKeyMismatchEndsEveryLeaseAtThatAddress",
               {{0, Op::Tunnel, "home", "192.0.2.1",
                 {"lease: client=home addr=192.0.2.1 source=tunnel expires={+120}"}},
                {0, Op::Checkin, "home", "192.0.2.1",
                 {"lease: client=home addr=192.0.2.1 source=checkin expires={+1200}"}},
                {0, Op::Checkin, "office", "192.0.2.1",
                 {"lease: client=office addr=192.0.2.1 source=checkin expires={+1200}"}},
                {0, Op::Checkin, "office", "192.0.2.2",
                 {"lease: client=office addr=192.0.2.1 source=checkin ended (superseded by "
                  "192.0.2.2)",
                  "lease: client=office addr=192.0.2.2 source=checkin expires={+1200}"}},
                {0, Op::Checkin, "office", "192.0.2.1",
                 {"lease: client=office addr=192.0.2.2 source=checkin ended (superseded by "
                  "192.0.2.1)",
                  "lease: client=office addr=192.0.2.1 source=checkin expires={+1200}"}},
                {5, Op::KeyMismatch, "home", "192.0.2.1",
                 {"lease: client=home addr=192.0.2.1 source=tunnel revoked (host key mismatch)",
                  "lease: client=home addr=192.0.2.1 source=checkin revoked (host key mismatch)",
                  "lease: client=office addr=192.0.2.1 source=checkin revoked (host key mismatch "
                  "for client home)"}},
                {6, Op::Lookup, "", "192.0.2.1", {}},
                {7, Op::KeyMismatch, "home", "192.0.2.1", {}},
                // No hold-down: the real client verified there again gets its lease back.
                {8, Op::Tunnel, "home", "192.0.2.1",
                 {"lease: client=home addr=192.0.2.1 source=tunnel expires={+128}"}}}},
        Script{"RevokeEndsTheLeasesAndHoldsTheAddressDown",
               {{0, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expires={+1200}"}},
                {0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {10, Op::Revoke, "", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel revoked (by the "
                  "administrator)",
                  "lease: client=home addr=203.0.113.7 source=checkin revoked (by the "
                  "administrator)"}},
                {11, Op::Touch, "home", A, {}},  // a keepalive does not bring it back
                {11, Op::Lookup, "", A, {}},
                {240, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin refused (address held "
                  "down until {+3610} after revocation)"}},
                {3609, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel refused (address held "
                  "down until {+3610} after revocation)"}},
                {3610, Op::Expire, "", A, {}},
                {3610, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expires={+4810}"}}}},
        Script{"RefusedNewAddressStillEndsTheOldLease",
               {{0, Op::Revoke, "", B, {}},
                {1, Op::Checkin, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=checkin expires={+1201}"}},
                {2, Op::Checkin, "home", B,
                 {"lease: client=home addr=203.0.113.7 source=checkin ended (superseded by "
                  "203.0.113.9)",
                  "lease: client=home addr=203.0.113.9 source=checkin refused (address held "
                  "down until {+3600} after revocation)"}},
                {3, Op::Lookup, "", A, {}}}},
        Script{"RelayNetworksAndRelayOffRefuse",
               {{0, Op::Checkin, "office", "192.0.2.9",
                 {"lease: client=office addr=192.0.2.9 source=checkin expires={+1200}"}},
                {1, Op::Checkin, "office", "198.51.100.1",
                 {"lease: client=office addr=192.0.2.9 source=checkin ended (superseded by "
                  "198.51.100.1)",
                  "lease: client=office addr=198.51.100.1 source=checkin refused (address "
                  "outside relay_networks)"}},
                {2, Op::Tunnel, "office", "2001:db8:1::1",
                 {"lease: client=office addr=2001:db8:1::1 source=tunnel expires={+122}"}},
                {3, Op::Tunnel, "office", "2001:db9::1",
                 {"lease: client=office addr=2001:db8:1::1 source=tunnel ended (superseded by "
                  "2001:db9::1)",
                  "lease: client=office addr=2001:db9::1 source=tunnel refused (address "
                  "outside relay_networks)"}},
                {4, Op::Tunnel, "quiet", A,
                 {"lease: client=quiet addr=203.0.113.7 source=tunnel refused (relay is off "
                  "for this client)"}},
                {5, Op::Checkin, "stranger", A,
                 {"lease: client=stranger addr=203.0.113.7 source=checkin refused (no client "
                  "of that name is configured)"}},
                {6, Op::Lookup, "", A, {}}}},
        Script{"ForwarderEndsTheClientsLeasesAtThatAddress",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {1, Op::Checkin, "office", "192.0.2.5",
                 {"lease: client=office addr=192.0.2.5 source=checkin expires={+1201}"}},
                {5, Op::Lost, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+125} (connection "
                  "lost)"}},
                {10, Op::Forwarder, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel refused (peer "
                  "198.51.100.9 is not this MX)",
                  "lease: client=home addr=203.0.113.7 source=tunnel revoked (peer 198.51.100.9 "
                  "is not this MX)"}},
                {11, Op::Lookup, "", A, {}},
                {11, Op::Forwarder, "office", A,
                 {"lease: client=office addr=203.0.113.7 source=tunnel refused (peer "
                  "198.51.100.9 is not this MX)"}},
                {12, Op::Lookup, "", "192.0.2.5", {"office checkin"}}}},
        Script{"UnconfirmedConnectionGrantsNothingAndEndsNothing",
               {{0, Op::Tunnel, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+120}"}},
                {5, Op::Lost, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel expires={+125} (connection "
                  "lost)"}},
                {10, Op::Unconfirmed, "home", A,
                 {"lease: client=home addr=203.0.113.7 source=tunnel refused (malformed "
                  "dynmx-peer line)"}},
                {60, Op::Touch, "home", A, {}},  // the new connection's traffic renews nothing
                {124, Op::Lookup, "", A, {"home tunnel"}},
                {125, Op::Lookup, "", A, {}}}}),
    [](const testing::TestParamInfo<Script>& info) { return std::string(info.param.name); });
// clang-format on

// ---------------------------------------------------------------- beyond scripts

TEST(LeaseTable, LookupPrefersTheLeaseThatLastsLongest) {
  LeaseTable t(testRules());
  ManualTime clock;
  const int64_t now = clock.unixSeconds();
  ASSERT_TRUE(t.grantTunnel("home", addr("192.0.2.1"), now).lease);
  ASSERT_TRUE(t.checkIn("office", addr("192.0.2.1"), now).lease);
  auto l = t.lookup(addr("192.0.2.1"), now + 10);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->client, "office");
  EXPECT_EQ(l->expires, now + 1200);
  l = t.lookup(addr("::ffff:192.0.2.1"), now + 10);  // one host, whichever family it came in on
  ASSERT_TRUE(l);
  EXPECT_FALSE(t.lookup(addr("192.0.2.2"), now));
}

TEST(LeaseTable, ListIsOrderedByAddressClientSourceAndShowsOnlyLiveLeases) {
  LeaseTable t(testRules());
  const int64_t now = ManualTime().unixSeconds();
  (void)t.checkIn("office", addr("192.0.2.9"), now);
  (void)t.checkIn("home", addr("192.0.2.9"), now);
  (void)t.grantTunnel("home", addr("192.0.2.9"), now);
  (void)t.grantTunnel("home", addr("2001:db8::1"), now);
  auto list = t.list(now + 1);
  ASSERT_EQ(list.size(), 4u);
  EXPECT_EQ(list[0].client, "home");
  EXPECT_EQ(list[0].source, LeaseSource::Tunnel);
  EXPECT_TRUE(list[0].connected);
  EXPECT_EQ(list[0].granted, now);
  EXPECT_EQ(list[1].source, LeaseSource::Checkin);
  EXPECT_FALSE(list[1].connected);
  EXPECT_EQ(list[2].client, "office");
  EXPECT_EQ(list[3].addr, addr("2001:db8::1"));
  EXPECT_EQ(t.list(now + 120).size(), 2u);  // the tunnel leases had no traffic
  EXPECT_EQ(t.leasesOf("home", now + 1).size(), 3u);
  EXPECT_EQ(t.nextDeadline(), now + 120);
}

TEST(LeaseTable, RenewalKeepsTheFirstGrantTime) {
  LeaseTable t(testRules());
  const int64_t now = ManualTime().unixSeconds();
  (void)t.checkIn("home", addr("192.0.2.9"), now);
  auto r = t.checkIn("home", addr("192.0.2.9"), now + 240);
  ASSERT_TRUE(r.lease);
  EXPECT_EQ(r.lease->granted, now);
  EXPECT_EQ(r.lease->expires, now + 240 + 1200);
}

TEST(LeaseTable, RevokeHoldDownIsListedAndEnds) {
  LeaseTable t(testRules());
  const int64_t now = ManualTime().unixSeconds();
  auto r = t.revoke(addr("192.0.2.9"), now);
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(r.held_until, now + 3600);
  ASSERT_EQ(t.holds(now).size(), 1u);
  EXPECT_EQ(t.holds(now)[0], (Hold{addr("192.0.2.9"), now + 3600}));
  auto g = t.checkIn("home", addr("192.0.2.9"), now + 1);
  ASSERT_TRUE(g.refusal);
  EXPECT_EQ(g.refusal->kind, RefusalKind::HeldDown);
  EXPECT_TRUE(t.holds(now + 3600).empty());
}

TEST(LeaseTable, GenerationChangesWithEveryRecordedChangeButNotWithTraffic) {
  LeaseTable t(testRules());
  const int64_t now = ManualTime().unixSeconds();
  uint64_t g0 = t.generation();
  (void)t.grantTunnel("home", addr("192.0.2.9"), now);
  uint64_t g1 = t.generation();
  EXPECT_NE(g0, g1);
  EXPECT_TRUE(t.touchTunnel("home", addr("192.0.2.9"), now + 30));
  EXPECT_EQ(t.generation(), g1);
  (void)t.tunnelLost("home", addr("192.0.2.9"), now + 40);
  EXPECT_NE(t.generation(), g1);
  uint64_t g2 = t.generation();
  (void)t.grantTunnel("quiet", addr("192.0.2.9"), now + 41);  // refused: nothing to record
  EXPECT_EQ(t.generation(), g2);
}

TEST(LeaseTable, ReloadEndsWhatTheNewRulesForbidAndShortensAtOnce) {
  LeaseTable t(testRules());
  const int64_t now = ManualTime().unixSeconds();
  (void)t.checkIn("home", addr("203.0.113.7"), now);
  (void)t.checkIn("office", addr("192.0.2.9"), now);
  (void)t.grantTunnel("office", addr("192.0.2.9"), now);
  LeaseRules next = testRules();
  next.clients["home"].relay = false;
  next.lease_lifetime = seconds(600);  // 20m -> 10m: the check-in lease ends 10 minutes earlier
  next.lease_grace = seconds(300);     // longer: applies from the next renewal
  auto ev = t.reconfigure(next, now + 100);
  ASSERT_EQ(linesOf(ev), (std::vector<std::string>{
                             "lease: client=home addr=203.0.113.7 source=checkin revoked (relay "
                             "is off for this client)"}));
  auto l = t.lookup(addr("192.0.2.9"), now + 100);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->source, LeaseSource::Checkin);
  EXPECT_EQ(l->expires, now + 600);
  ev = t.reconfigure(LeaseRules{}, now + 200);  // every client gone
  EXPECT_EQ(ev.size(), 2u);
  EXPECT_TRUE(t.list(now + 200).empty());
}

TEST(LeaseTable, RestoreDropsExpiredAndForbiddenLeasesAndNothingIsConnected) {
  LeaseTable t(testRules());
  const int64_t now = ManualTime().unixSeconds();
  std::vector<Lease> file = {
      {"home", addr("203.0.113.7"), LeaseSource::Tunnel, now - 100, now + 20, true},
      {"home", addr("203.0.113.8"), LeaseSource::Checkin, now - 900, now - 1, false},
      {"quiet", addr("203.0.113.9"), LeaseSource::Checkin, now - 10, now + 1000, false},
      {"office", addr("192.0.2.1"), LeaseSource::Checkin, now - 50, now + 1100, false},
      {"office", addr("192.0.2.2"), LeaseSource::Checkin, now - 40, now + 1160, false},
  };
  std::vector<Hold> holds = {{addr("198.51.100.1"), now + 60}, {addr("198.51.100.2"), now}};
  auto ev = t.restore(file, holds, now);
  EXPECT_EQ(linesOf(ev),
            (std::vector<std::string>{
                "lease: client=office addr=192.0.2.1 source=checkin ended (superseded by "
                "192.0.2.2)",
                "lease: client=quiet addr=203.0.113.9 source=checkin revoked (relay is off for "
                "this client)"}));
  auto list = t.list(now);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].addr, addr("192.0.2.2"));
  EXPECT_EQ(list[1].addr, addr("203.0.113.7"));
  EXPECT_FALSE(list[1].connected);
  EXPECT_EQ(list[1].granted, now - 100);
  // A restored tunnel lease has no connection: traffic cannot renew it until the next grant.
  EXPECT_FALSE(t.touchTunnel("home", addr("203.0.113.7"), now + 1));
  ASSERT_EQ(t.holds(now).size(), 1u);
  EXPECT_TRUE(t.checkIn("home", addr("198.51.100.1"), now).refusal);
}

TEST(LeaseRules, FromConfigTakesRelaySettingsAndEveryClientsRelayKeys) {
  auto r = parseConfig(R"([relay]
lease_grace = "3m"
lease_lifetime = "30m"
revoke_hold = "2h"
mx_addresses = ["198.51.100.25"]

[[client]]
name = "home"
host = "home.example"
domains = ["home.example"]
host_key = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak"
relay = true

[[client]]
name = "office"
host = "office.example"
domains = ["office.example"]
host_key = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak"
relay = true
relay_networks = ["192.0.2.0/24"]

[[client]]
name = "quiet"
host = "quiet.example"
domains = ["quiet.example"]
host_key = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak"
)",
                       "/etc/dynmx/dynmx.toml");
  ASSERT_TRUE(r.config) << (r.errors.empty() ? "" : r.errors[0].str());
  LeaseRules rules = LeaseRules::fromConfig(*r.config);
  EXPECT_EQ(rules.lease_grace, seconds(180));
  EXPECT_EQ(rules.lease_lifetime, seconds(1800));
  EXPECT_EQ(rules.revoke_hold, seconds(7200));
  EXPECT_TRUE(rules.isMxAddress(addr("198.51.100.25")));
  EXPECT_FALSE(rules.isMxAddress(addr("198.51.100.26")));
  EXPECT_FALSE(rules.mayLease("home", addr("203.0.113.7")));
  EXPECT_FALSE(rules.mayLease("office", addr("192.0.2.7")));
  auto why = rules.mayLease("office", addr("203.0.113.7"));
  ASSERT_TRUE(why);
  EXPECT_EQ(why->kind, RefusalKind::OutsideNetworks);
  why = rules.mayLease("quiet", addr("203.0.113.7"));
  ASSERT_TRUE(why);
  EXPECT_EQ(why->kind, RefusalKind::RelayOff);
  why = rules.mayLease("nobody", addr("203.0.113.7"));
  ASSERT_TRUE(why);
  EXPECT_EQ(why->kind, RefusalKind::UnknownClient);
}

// A wall clock set back an hour while the daemon runs: the lease clock goes on from the steady one.
class SteppingTime final : public TimeSource {
 public:
  SteadyClock::time_point steady() const override { return SteadyClock::time_point{} + elapsed; }
  int64_t unixSeconds() const override { return wall; }
  SteadyClock::duration elapsed{0};
  int64_t wall = 1'795'000'000;
};

TEST(LeaseClock, MovesWithTheSteadyClockNotTheWallClock) {
  SteppingTime time;
  LeaseClock clock(time);
  EXPECT_EQ(clock.now(), 1'795'000'000);
  time.elapsed = seconds(90);
  time.wall -= 3600;
  EXPECT_EQ(clock.now(), 1'795'000'090);
  ManualTime manual;
  LeaseClock follows(manual);
  manual.advance(seconds(1200));
  EXPECT_EQ(follows.now(), manual.unixSeconds());
}

std::mutex g_log_mu;
std::vector<std::string> g_logged;
void captureLog(LogLevel level, std::string_view line) {
  std::lock_guard<std::mutex> lk(g_log_mu);
  g_logged.push_back((level == LogLevel::Notice ? "notice " : "info ") + std::string(line));
}

TEST(LeaseEvents, EachEventIsOneLogLineAtItsLevel) {
  LeaseTable t(testRules());
  const int64_t now = 1'795'000'000;  // 2026-11-18T11:06:40Z
  std::vector<LeaseEvent> events = t.grantTunnel("home", addr("203.0.113.7"), now).events;
  auto more = t.hostKeyMismatch("home", addr("203.0.113.7"), now + 1);
  events.insert(events.end(), more.begin(), more.end());
  events.push_back(LeaseEvent::refused("home", addr("203.0.113.7"), LeaseSource::Tunnel,
                                       "peer 198.51.100.9 is not this MX"));
  g_logged.clear();
  logCaptureForTest(captureLog);
  logLeaseEvents(events);
  logCaptureForTest(nullptr);
  EXPECT_EQ(g_logged,
            (std::vector<std::string>{
                "info lease: client=home addr=203.0.113.7 source=tunnel "
                "expires=2026-11-18T11:08:40Z",
                "notice lease: client=home addr=203.0.113.7 source=tunnel revoked (host key "
                "mismatch)",
                "notice lease: client=home addr=203.0.113.7 source=tunnel refused (peer "
                "198.51.100.9 is not this MX)"}));
}

}  // namespace
}  // namespace dynmx::tunneld
