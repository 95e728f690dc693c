// storage_limits_test.cpp: the storage limits as pure policies (the free-space threshold and the
// per-client quota, from tables) and SpoolUsage against a real spool directory: what it counts,
// what it leaves out, and when it looks again (on a manual clock).
#include "shared/storage_limits.hpp"

#include <filesystem>
#include <gtest/gtest.h>
#include <string>

#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

TEST(MinFree, ThresholdIsTheKeyOrOneAndAHalfMaxMessageSize) {
  SpoolConfig s;
  s.max_message_size = 50ull << 20;
  EXPECT_EQ(minFreeThreshold(s), 75ull << 20) << "unset: Postfix's floor";
  s.min_free = 10ull << 20;
  EXPECT_EQ(minFreeThreshold(s), 10ull << 20) << "set: as written, even below the floor";
  s.min_free = 0;
  EXPECT_EQ(minFreeThreshold(s), 0u);
}

TEST(MinFree, CheckSpaceFromATable) {
  SpoolConfig s;
  s.dir = "/spool";
  s.min_free = 1000;
  struct Case {
    uint64_t free, size;
    bool refused;
  } cases[] = {
      {5000, 0, false},   {1000, 0, false}, {999, 0, true}, {5000, 4000, false},
      {5000, 4001, true}, {100, 200, true}, {0, 0, true},
  };
  for (const Case& c : cases) {
    auto r = checkSpace(s, Result<uint64_t>(c.free), c.size);
    EXPECT_EQ(r.has_value(), c.refused) << c.free << " free, size " << c.size;
    if (r) {
      EXPECT_EQ(r->code + " " + r->xcode + " " + r->text, "452 4.3.1 Insufficient system storage");
      EXPECT_NE(r->why.find("spool /spool has " + std::to_string(c.free) + " bytes free"),
                std::string::npos)
          << r->why;
    }
  }
  // statvfs failed: refused (fail closed), unless the check is off.
  Result<uint64_t> broken(Error{5, "statvfs /spool: Input/output error"});
  auto r = checkSpace(s, broken, 0);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->why, "statvfs /spool: Input/output error");
  s.min_free = 0;
  EXPECT_FALSE(checkSpace(s, broken, 0));
  EXPECT_FALSE(checkSpace(s, Result<uint64_t>(uint64_t{0}), 100));
}

TEST(ClientQuota, MessagesOrBytesAtTheLimitRefuseZeroIsNoLimit) {
  ClientConfig c;
  c.name = "home";
  EXPECT_FALSE(checkClientQuota(c, {1000000, 1ull << 40})) << "no limits";
  c.max_queue_messages = 3;
  EXPECT_FALSE(checkClientQuota(c, {2, 0}));
  auto r = checkClientQuota(c, {3, 0});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code + " " + r->xcode, "452 4.2.2");
  EXPECT_EQ(r->why, "client home has 3 messages queued, max_queue_messages 3");
  c.max_queue_messages = 0;
  c.max_queue_bytes = 1000;
  EXPECT_FALSE(checkClientQuota(c, {50, 999}));
  r = checkClientQuota(c, {1, 1000});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->why, "client home has 1000 bytes queued, max_queue_bytes 1000");
}

class SpoolUsageTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(spool_.prepare().ok()); }
  std::string commit(const std::string& client, const std::string& content) {
    auto w = spool_.create();
    EXPECT_TRUE(w.ok());
    EXPECT_TRUE((*w)->write(content).ok());
    Envelope env;
    env.client = client;
    env.sender = "a@example.net";
    env.arrival = 1;
    env.rcpts.push_back(
        SpoolRecipient{"b@" + client + ".example", "", "", RcptState::Pending, "", 0});
    std::string id = (*w)->id();
    EXPECT_TRUE((*w)->commit(env).ok());
    return id;
  }
  uint64_t fileSize(QueueState st, const std::string& id) {
    return std::filesystem::file_size(spool_.path(st, id));
  }

  test::TempDir dir_{"dynmx-usage"};
  Spool spool_{dir_.path() + "/spool"};
  ManualTime time_;
};

TEST_F(SpoolUsageTest, CountsEveryQueuedStateButNotTmpOrCorrupt) {
  std::string a = commit("home", "one\r\n");
  std::string b = commit("home", "two two\r\n");
  std::string c = commit("office", "three\r\n");
  std::string d = commit("home", "held\r\n");
  std::string e = commit("home", "broken\r\n");
  ASSERT_TRUE(spool_.moveId(b, QueueState::Incoming, QueueState::Deferred).ok());
  ASSERT_TRUE(spool_.moveId(d, QueueState::Incoming, QueueState::Hold).ok());
  ASSERT_TRUE(spool_.moveId(e, QueueState::Incoming, QueueState::Corrupt).ok());
  auto tmp = spool_.create();  // being written: not counted
  ASSERT_TRUE(tmp.ok());
  SpoolUsage usage(spool_, std::chrono::milliseconds(0), time_);
  ClientUsage home = usage.of("home");
  EXPECT_EQ(home.messages, 3u);
  EXPECT_EQ(home.bytes, fileSize(QueueState::Incoming, a) + fileSize(QueueState::Deferred, b) +
                            fileSize(QueueState::Hold, d));
  EXPECT_EQ(usage.of("office").messages, 1u);
  EXPECT_EQ(usage.of("nobody").messages, 0u);
  auto all = usage.all();
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(all["office"].bytes, fileSize(QueueState::Incoming, c));
}

TEST_F(SpoolUsageTest, CachedScanSeesOwnCommitsAtOnceOthersAfterMaxAge) {
  commit("home", "one\r\n");
  SpoolUsage usage(spool_, std::chrono::milliseconds(2000), time_);
  EXPECT_EQ(usage.of("home").messages, 1u);
  std::string other = commit("home", "by another writer\r\n");
  EXPECT_EQ(usage.of("home").messages, 1u) << "within max_age: the last scan";
  usage.noteCommitted("0000000000000000", "home", 100);
  EXPECT_EQ(usage.of("home").messages, 2u) << "this process's own commit counts at once";
  time_.advance(std::chrono::milliseconds(2000));
  // Rescanned: the other writer's file is found, and the noted id (not on disk) is dropped.
  EXPECT_EQ(usage.of("home").messages, 2u);
  ASSERT_TRUE(spool_.removeUnsynced(QueueState::Incoming, other).ok());
  time_.advance(std::chrono::milliseconds(2000));
  EXPECT_EQ(usage.of("home").messages, 1u) << "a delivered message no longer counts";
}

}  // namespace
}  // namespace dynmx
