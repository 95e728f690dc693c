// relay_feed_test.cpp: the lease feed from tables: snapshots applied whole at `end`, in any
// slicing; every malformed feed fails for good; the writer's output reads back.
#include "tunneld/relay/relay_feed.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace dynmx::relay {
namespace {

InetAddr ip(const char* s) {
  return *InetAddr::parse(s);
}

TEST(RelayFeed, SnapshotAppliesWholeAtEnd) {
  FeedParser p;
  ASSERT_TRUE(p.feed("begin\nlease 192.0.2.7 home 1700000100\n"));
  EXPECT_FALSE(p.takeSnapshot()) << "half a snapshot must not be seen";
  EXPECT_TRUE(p.inSnapshot());
  ASSERT_TRUE(p.feed("lease 2001:db8::1 office 1700000200\nend\n"));
  std::optional<LeaseSnapshot> s = p.takeSnapshot();
  ASSERT_TRUE(s);
  EXPECT_FALSE(p.inSnapshot());
  EXPECT_EQ(s->leases.size(), 2u);
  EXPECT_EQ(s->leases.at(ip("192.0.2.7")).client, "home");
  EXPECT_EQ(s->leases.at(ip("2001:db8::1")).expires_unix, 1700000200);
  EXPECT_FALSE(p.takeSnapshot());
}

TEST(RelayFeed, ExpiryIsJudgedByTheReadersClock) {
  FeedParser p;
  ASSERT_TRUE(p.feed("begin\nlease 192.0.2.7 home 1700000100\nend\n"));
  LeaseSnapshot s = *p.takeSnapshot();
  EXPECT_TRUE(s.leased(ip("192.0.2.7"), 1700000099));
  EXPECT_FALSE(s.leased(ip("192.0.2.7"), 1700000100));
  EXPECT_FALSE(s.leased(ip("192.0.2.8"), 1700000000));
}

TEST(RelayFeed, NewestSnapshotReplacesTheTable) {
  FeedParser p;
  ASSERT_TRUE(p.feed("begin\nlease 192.0.2.7 home 1700000100\nend\nbegin\nend\n"));
  LeaseSnapshot s = *p.takeSnapshot();
  EXPECT_TRUE(s.leases.empty());
}

TEST(RelayFeed, SameAddressTwiceKeepsTheLaterExpiry) {
  FeedParser p;
  ASSERT_TRUE(
      p.feed("begin\nlease 192.0.2.7 home 1700000300\nlease ::ffff:192.0.2.7 home "
             "1700000100\nend\n"));
  LeaseSnapshot s = *p.takeSnapshot();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases.begin()->second.expires_unix, 1700000300);
}

TEST(RelayFeed, ReadsInAnySlicing) {
  std::string feed = formatSnapshot(
      {{ip("192.0.2.7"), "home", 1700000100}, {ip("2001:db8::1"), "office.lan", 1700000200}});
  EXPECT_EQ(feed,
            "begin\nlease 192.0.2.7 home 1700000100\nlease 2001:db8::1 office.lan 1700000200\n"
            "end\n");
  for (size_t step = 1; step <= feed.size(); ++step) {
    FeedParser p;
    for (size_t i = 0; i < feed.size(); i += step) {
      ASSERT_TRUE(p.feed(std::string_view(feed).substr(i, step))) << p.error();
    }
    std::optional<LeaseSnapshot> s = p.takeSnapshot();
    ASSERT_TRUE(s) << "step " << step;
    EXPECT_EQ(s->leases.size(), 2u);
  }
}

TEST(RelayFeed, WriterLeavesOutWhatTheFormatCannotCarry) {
  size_t skipped = 0;
  std::string feed = formatSnapshot({{ip("192.0.2.7"), "home", 1700000100},
                                     {ip("192.0.2.8"), "a b", 1700000100},
                                     {ip("192.0.2.9"), "", 1700000100},
                                     {ip("192.0.2.10"), "x", 0}},
                                    &skipped);
  EXPECT_EQ(skipped, 3u);
  EXPECT_EQ(feed, "begin\nlease 192.0.2.7 home 1700000100\nend\n");
}

TEST(RelayFeed, MalformedFeedsFailForGood) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lease 192.0.2.7 home 1700000100\n", "feed line 1: lease outside a snapshot"},
      {"end\n", "feed line 1: end outside a snapshot"},
      {"begin\nbegin\n", "feed line 2: begin inside a snapshot"},
      {"begin\nhello\n", "feed line 2: not begin, end or a lease line"},
      {"begin\n\n", "feed line 2: not begin, end or a lease line"},
      {"begin \n", "feed line 1: not begin, end or a lease line"},
      {"begin\nlease 192.0.2.7 home\n", "feed line 2: not begin, end or a lease line"},
      {"begin\nlease 192.0.2.7 home 1 2\n", "feed line 2: not begin, end or a lease line"},
      {"begin\nlease  192.0.2.7 home 1\n", "feed line 2: not begin, end or a lease line"},
      {"begin\nlease 192.0.2.7 home 1 \n", "feed line 2: not begin, end or a lease line"},
      {"begin\nLEASE 192.0.2.7 home 1\n", "feed line 2: not begin, end or a lease line"},
      {"begin\nlease host.example home 1\n", "feed line 2: not an address"},
      {"begin\nlease 192.0.2.0/24 home 1\n", "feed line 2: not an address"},
      {"begin\nlease 192.0.2.7 h/me 1\n", "feed line 2: bad client name"},
      {"begin\nlease 192.0.2.7 home 0\n", "feed line 2: bad expiry"},
      {"begin\nlease 192.0.2.7 home -5\n", "feed line 2: bad expiry"},
      {"begin\nlease 192.0.2.7 home 017\n", "feed line 2: bad expiry"},
      {"begin\nlease 192.0.2.7 home 12x\n", "feed line 2: bad expiry"},
      {"begin\nlease 192.0.2.7 home 9999999999999999999\n", "feed line 2: bad expiry"},
      {"begin\r\n", "feed line 1: control character"},
      {"begin\nlease 192.0.2.7 h\xc3\xa9 1\n", "feed line 2: non-ASCII byte"},
      {std::string("begin\0\n", 7), "feed line 1: control character"},
      {std::string(201, 'x'), "feed line 1: line longer than 200 bytes"},
  };
  for (const auto& [in, why] : cases) {
    FeedParser p;
    EXPECT_FALSE(p.feed(in)) << in;
    EXPECT_EQ(p.error(), why) << in;
    EXPECT_FALSE(p.feed("begin\nend\n")) << "a failed feed stays failed: " << in;
    EXPECT_FALSE(p.takeSnapshot()) << in;
  }
}

TEST(RelayFeed, BoundedNumberOfLeases) {
  FeedParser p(2);
  ASSERT_TRUE(p.feed("begin\nlease 192.0.2.1 a 5\nlease 192.0.2.2 a 5\nlease 192.0.2.1 a 6\n"));
  EXPECT_FALSE(p.feed("lease 192.0.2.3 a 5\n"));
  EXPECT_EQ(p.error(), "feed line 5: more than 2 leases in one snapshot");
}

}  // namespace
}  // namespace dynmx::relay
