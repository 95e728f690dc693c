// channel_shares_test.cpp: the channel cap's fair shares (fairShares, a pure policy, from a table),
// when a client opens one more SSH connection (wantAnotherConnection), and the tally the
// connections report to (ChannelShares): the cap is never handed out twice, an idle client's part
// goes to those with mail, a small client's first channel is granted while a big backlog holds
// the rest, and the big client is told to give channels back.
#include "tunneld/ssh/channel_shares.hpp"

#include <cstdint>
#include <gtest/gtest.h>
#include <numeric>
#include <vector>

using namespace dynmx::tunneld;

TEST(FairShares, Table) {
  struct Case {
    size_t cap;
    std::vector<size_t> demands;
    std::vector<size_t> want;
  } cases[] = {
      {0, {5, 100, 0}, {5, 100, 0}},                // no cap: every demand met
      {12, {}, {}},                                 // nobody
      {12, {3, 4}, {3, 4}},                         // under the cap: every demand met
      {12, {20}, {12}},                             // one client takes the whole cap
      {12, {20, 0}, {12, 0}},                       // an idle client's part goes to the other
      {12, {20, 20, 20}, {4, 4, 4}},                // equal shares
      {12, {20, 20, 1}, {6, 5, 1}},                 // the small one first; remainder in order
      {12, {9, 9, 9, 1}, {4, 4, 3, 1}},             // 11 over 3: 4, 4, 3
      {10, {1, 2, 30}, {1, 2, 7}},                  // the big one gets what the small leave
      {4, {5, 5, 5, 5, 5, 5}, {1, 1, 1, 1, 0, 0}},  // fewer channels than clients
      {7, {2, 9, 2, 9}, {2, 2, 2, 1}},              // 3 left for two: 2, 1 in order
  };
  for (auto& c : cases) {
    auto got = fairShares(c.cap, c.demands);
    EXPECT_EQ(got, c.want) << "cap " << c.cap;
    if (c.cap > 0) {
      EXPECT_LE(std::accumulate(got.begin(), got.end(), size_t{0}), c.cap);
      for (size_t i = 0; i < got.size(); ++i) EXPECT_LE(got[i], c.demands[i]);
    }
  }
}

TEST(WantAnotherConnection, Table) {
  struct Case {
    size_t conns, saturated, setting_up;
    uint32_t max;
    bool may_open, want;
  } cases[] = {
      {1, 1, 0, 2, true, true},    // the one connection is full: a second
      {1, 0, 0, 2, true, false},   // room left on it
      {2, 2, 0, 2, true, false},   // at max_connections
      {1, 1, 0, 1, true, false},   // max_connections 1: today's single connection
      {2, 1, 0, 4, true, false},   // one of two still has room
      {2, 1, 1, 4, true, false},   // one is being set up: wait for it
      {3, 3, 0, 4, true, true},    // all three full, a fourth allowed
      {1, 1, 0, 2, false, false},  // the channel cap leaves this client nothing more
      {0, 0, 0, 2, true, false},   // not even the first connection
  };
  for (auto& c : cases)
    EXPECT_EQ(wantAnotherConnection(c.conns, c.saturated, c.setting_up, c.max, c.may_open), c.want)
        << c.conns << " " << c.saturated << " " << c.setting_up << " " << c.max << " "
        << c.may_open;
}

namespace {
const int kBigA = 1, kBigB = 2, kSmall = 3, kBigA2 = 4;  // connection identities
}  // namespace

TEST(ChannelShares, NoCapLetsEveryoneOpen) {
  ChannelShares s(0);
  s.report(&kBigA, "big", 60, 60, true);
  EXPECT_TRUE(s.mayOpen("big"));
  EXPECT_TRUE(s.mayOpen("small"));
  EXPECT_EQ(s.excess("big"), 0u);
}

TEST(ChannelShares, NeverGrantsMoreThanTheCap) {
  ChannelShares s(12);
  // One client grows one channel at a time, as SshClient does, while it wants more.
  size_t open = 0;
  for (int i = 0; i < 40; ++i) {
    s.report(&kBigA, "big", open, open, true);
    if (s.mayOpen("big")) ++open;
  }
  EXPECT_EQ(open, 12u);
  EXPECT_EQ(s.open(), 12u);
  EXPECT_FALSE(s.mayOpen("big"));
}

TEST(ChannelShares, SmallClientGetsItsChannelWhileABacklogHoldsTheCap) {
  ChannelShares s(12);
  s.report(&kBigA, "big", 11, 11, true);
  s.report(&kBigB, "big2", 0, 0, false);  // idle: its share is available to others
  EXPECT_TRUE(s.mayOpen("big"));
  s.report(&kBigA, "big", 12, 12, true);
  EXPECT_FALSE(s.mayOpen("big"));
  (void)s.takeWake();
  // A small client has a message: it is blocked, and the big one is over its share by one.
  s.report(&kSmall, "small", 0, 0, true);
  EXPECT_TRUE(s.takeWake()) << "the connections must be stepped: one gives a channel back";
  EXPECT_FALSE(s.mayOpen("small"));  // the cap is still full
  EXPECT_EQ(s.share("small"), 1u);
  EXPECT_EQ(s.excess("big"), 1u);
  // The big client's session stops taking jobs (no longer keeping), then closes.
  s.report(&kBigA, "big", 12, 11, true);
  EXPECT_EQ(s.excess("big"), 0u);
  EXPECT_FALSE(s.mayOpen("small"));
  s.report(&kBigA, "big", 11, 11, true);
  EXPECT_TRUE(s.takeWake()) << "a channel freed while the small client waits";
  EXPECT_TRUE(s.mayOpen("small"));
  EXPECT_FALSE(s.mayOpen("big"));  // the freed channel is the small client's
  s.report(&kSmall, "small", 1, 1, false);
  EXPECT_EQ(s.open(), 12u);
  EXPECT_FALSE(s.mayOpen("big"));
}

TEST(ChannelShares, ConnectionsOfOneClientShareItsPart) {
  ChannelShares s(12);
  s.report(&kBigA, "big", 6, 6, false);
  s.report(&kBigA2, "big", 5, 5, true);
  s.report(&kBigB, "other", 1, 1, true);
  EXPECT_EQ(s.open("big"), 11u);
  EXPECT_EQ(s.open(), 12u);
  // Demands: big 12, other 2 -> shares 10 and 2: big gives one back.
  EXPECT_EQ(s.share("big"), 10u);
  EXPECT_EQ(s.share("other"), 2u);
  EXPECT_EQ(s.excess("big"), 1u);
  // A connection that goes frees its channels.
  s.forget(&kBigA);
  EXPECT_EQ(s.open(), 6u);
  EXPECT_EQ(s.excess("big"), 0u);
  EXPECT_TRUE(s.mayOpen("other"));
}

TEST(ChannelShares, ALoweredCapTakesChannelsBack) {
  ChannelShares s(20);
  s.report(&kBigA, "big", 10, 10, false);
  s.report(&kBigB, "big2", 10, 10, false);
  EXPECT_EQ(s.excess("big"), 0u);
  s.setCap(8);
  EXPECT_EQ(s.excess("big"), 6u);
  EXPECT_EQ(s.excess("big2"), 6u);
  EXPECT_FALSE(s.mayOpen("big"));
}

// What an even split leaves over goes round: with `turn` advanced, each unmet demand gets the
// extra channel in turn, and the total stays the cap.
TEST(FairShares, RemainderGoesRoundWithTheTurn) {
  std::vector<size_t> demands{9, 9, 9, 1};  // 11 for three: 4, 4, 3
  EXPECT_EQ(fairShares(12, demands, 0), (std::vector<size_t>{4, 4, 3, 1}));
  EXPECT_EQ(fairShares(12, demands, 1), (std::vector<size_t>{3, 4, 4, 1}));
  EXPECT_EQ(fairShares(12, demands, 2), (std::vector<size_t>{4, 3, 4, 1}));
  EXPECT_EQ(fairShares(12, demands, 3), (std::vector<size_t>{4, 4, 3, 1}));  // three unmet: again
  EXPECT_EQ(fairShares(12, demands, 5), (std::vector<size_t>{4, 3, 4, 1}));
  size_t short_of_level[3] = {0, 0, 0};
  for (size_t turn = 0; turn < 12; ++turn) {
    auto s = fairShares(12, demands, turn);
    EXPECT_EQ(s[0] + s[1] + s[2] + s[3], 12u);
    for (size_t i = 0; i < 3; ++i) short_of_level[i] += s[i] == 3 ? 1 : 0;
  }
  EXPECT_EQ(short_of_level[0], short_of_level[2]);  // over whole rounds, each as often
  EXPECT_EQ(short_of_level[1], short_of_level[2]);
}

TEST(ChannelShares, RotateMovesTheExtraChannelAndWakesTheWaiting) {
  ChannelShares s(5);
  s.report(&kBigA, "a", 3, 3, true);
  s.report(&kBigB, "b", 2, 2, true);
  EXPECT_EQ(s.share("a"), 3u);  // 5 for two: 3, 2
  EXPECT_EQ(s.share("b"), 2u);
  (void)s.takeWake();
  s.rotate();
  EXPECT_EQ(s.share("a"), 2u);
  EXPECT_EQ(s.share("b"), 3u);
  EXPECT_EQ(s.excess("a"), 1u);  // a gives one back, then b may open it
  EXPECT_TRUE(s.takeWake());
}
