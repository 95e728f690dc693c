// spool_remover_test.cpp: the remover deletes finished spool files off the caller's thread,
// fsyncs their directories once per batch, reports what it cannot remove, and loses no removal
// when it is flushed or destroyed.
#include "tunneld/queue/spool_remover.hpp"

#include <fcntl.h>

#include <filesystem>
#include <gtest/gtest.h>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "shared/log.hpp"
#include "tests/harness/fake_fs.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::tunneld {
namespace {

namespace fs = std::filesystem;
using dynmx::test::TempDir;
using dynmx::test::waitFor;

std::mutex g_log_mu;
std::vector<std::string> g_log;
void captureLog(LogLevel, std::string_view line) {
  std::lock_guard<std::mutex> lk(g_log_mu);
  g_log.emplace_back(line);
}

class RemoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    {
      std::lock_guard<std::mutex> lk(g_log_mu);
      g_log.clear();
    }
    logCaptureForTest(captureLog);
    spool_ = std::make_unique<Spool>(dir_.path(), fs_);
    ASSERT_TRUE(spool_->prepare().ok());
  }
  void TearDown() override { logCaptureForTest(nullptr); }

  // A file in a state directory, as a finished message's would be.
  std::string place(QueueState st, const std::string& id) {
    std::string p = spool_->path(st, id);
    int fd = ::open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0) << p;
    ::close(fd);
    return p;
  }
  static bool logged(const std::string& needle) {
    std::lock_guard<std::mutex> lk(g_log_mu);
    for (const auto& l : g_log)
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }

  TempDir dir_;
  dynmx::test::FakeFs fs_;
  std::unique_ptr<Spool> spool_;
};

constexpr auto kNever = std::chrono::hours(24);  // an interval no test run reaches

TEST_F(RemoverTest, FlushUnlinksEverythingQueuedAndSyncsEachDirectoryOnce) {
  SpoolRemover r(*spool_, kNever);
  std::vector<std::string> paths;
  for (int i = 0; i < 5; ++i) paths.push_back(place(QueueState::Active, "A" + std::to_string(i)));
  paths.push_back(place(QueueState::Deferred, "D0"));
  for (int i = 0; i < 5; ++i) r.remove(QueueState::Active, "A" + std::to_string(i));
  r.remove(QueueState::Deferred, "D0");
  r.flush();
  for (const auto& p : paths) EXPECT_FALSE(fs::exists(p)) << p;
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
  EXPECT_EQ(fs_.dirSyncs("deferred"), 1);
  r.flush();  // nothing new: no further fsync
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
}

TEST_F(RemoverTest, SyncLaterDirectoryIsFsyncedWithTheNextSync) {
  SpoolRemover r(*spool_, kNever);
  r.syncLater(QueueState::Active);
  r.syncLater(QueueState::Active);
  r.flush();
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
  EXPECT_EQ(fs_.dirSyncs("deferred"), 0);
  r.flush();
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
}

TEST_F(RemoverTest, SyncsOnItsOwnWithinTheInterval) {
  SpoolRemover r(*spool_, std::chrono::milliseconds(10));
  std::string p = place(QueueState::Active, "A0");
  r.remove(QueueState::Active, "A0");
  // No flush: the thread unlinks and then fsyncs active/ by itself.
  EXPECT_TRUE(waitFor([&] { return fs_.dirSyncs("active") == 1; }));
  EXPECT_FALSE(fs::exists(p));
  // Likewise for a directory that only had renames.
  r.syncLater(QueueState::Deferred);
  EXPECT_TRUE(waitFor([&] { return fs_.dirSyncs("deferred") == 1; }));
}

TEST_F(RemoverTest, DestructorFinishesQueuedRemovals) {
  std::vector<std::string> paths;
  {
    SpoolRemover r(*spool_, kNever);
    for (int i = 0; i < 50; ++i) {
      std::string id = "A" + std::to_string(i);
      paths.push_back(place(QueueState::Active, id));
      r.remove(QueueState::Active, id);
    }
  }
  for (const auto& p : paths) EXPECT_FALSE(fs::exists(p)) << p;
  EXPECT_EQ(fs_.unlinks(), 50);
  EXPECT_GE(fs_.dirSyncs("active"), 1);
}

TEST_F(RemoverTest, FailedUnlinkIsLoggedAndTheOthersGoOn) {
  SpoolRemover r(*spool_, kNever);
  std::string bad = place(QueueState::Active, "BAD0");
  std::string good = place(QueueState::Active, "GOOD0");
  fs_.failUnlinksFor("BAD0");
  r.remove(QueueState::Active, "BAD0");
  r.remove(QueueState::Active, "GOOD0");
  r.remove(QueueState::Active, "GONE0");  // already gone: ENOENT
  r.flush();
  EXPECT_TRUE(fs::exists(bad));  // left for the next start, which delivers it again
  EXPECT_FALSE(fs::exists(good));
  EXPECT_TRUE(logged("BAD0: cannot remove the finished message: unlink " + bad));
  EXPECT_TRUE(logged("GONE0: cannot remove the finished message"));
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
}

TEST_F(RemoverTest, FailedDirectorySyncIsLoggedAndTheRemovalsStand) {
  SpoolRemover r(*spool_, kNever);
  std::string p = place(QueueState::Active, "A0");
  fs_.failDirSyncsOf("active");
  r.remove(QueueState::Active, "A0");
  r.flush();  // returns: a failed fsync is reported, not retried for ever
  EXPECT_FALSE(fs::exists(p));
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
  EXPECT_TRUE(logged("fsync directory " + spool_->stateDir(QueueState::Active) +
                     ": Input/output error (a crash may bring removed messages back: duplicates)"));
}

TEST_F(RemoverTest, RemovesFromAnotherThreadWhileTheCallerGoesOn) {
  // Many callers' worth of removals interleaved with flushes: every file goes, none twice.
  SpoolRemover r(*spool_, std::chrono::milliseconds(1));
  for (int i = 0; i < 300; ++i) {
    std::string id = "M" + std::to_string(i);
    place(QueueState::Active, id);
    r.remove(QueueState::Active, id);
    if (i % 97 == 0) r.flush();
  }
  r.flush();
  EXPECT_TRUE(fs::is_empty(spool_->stateDir(QueueState::Active)));
  EXPECT_EQ(fs_.unlinks(), 300);
}

}  // namespace
}  // namespace dynmx::tunneld
