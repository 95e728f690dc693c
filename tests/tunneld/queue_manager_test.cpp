// queue_manager_test.cpp: the queue manager over a real spool in a temp dir, with a clock of the
// test's own and a BounceSender that records (or refuses) notifications.
//
// The real SendmailBounceSender has its own tests (bounce_test.cpp); here the point is what the
// queue manager does with results, time and notifications, and that the spool says so after a
// "restart" (a new QueueManager over the same directory).
#include "tunneld/queue/queue_manager.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <mutex>
#include <set>

#include "shared/log.hpp"
#include "tests/harness/fake_fs.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::tunneld {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

constexpr int64_t kT0 = 1700000000;

std::vector<std::string>& logLines() {
  static std::vector<std::string> v;
  return v;
}
void captureLog(LogLevel, std::string_view line) {
  logLines().emplace_back(line);
}
bool logged(std::string_view needle) {
  for (const auto& l : logLines()) {
    if (l.find(needle) != std::string::npos) return true;
  }
  return false;
}

using dynmx::test::TempDir;

class RecordingBounceSender : public BounceSender {
 public:
  Status send(const std::string& recipient, const std::string& message) override {
    ++calls;
    if (fail) return Error{0, "sendmail exit status 75"};
    sent.push_back({recipient, message});
    return {};
  }
  struct Sent {
    std::string rcpt, text;
  };
  std::vector<Sent> sent;
  bool fail = false;
  int calls = 0;
};

TEST(RetryDelay, Table) {
  RetryPolicy p;
  p.retry_min = seconds(300);
  p.retry_max = seconds(4000);
  struct Case {
    uint32_t attempts;
    int64_t age;
    int64_t want;
  } cases[] = {
      {0, 0, 300},           {1, 0, 300},     {2, 0, 600},  {3, 0, 1200},
      {4, 0, 2400},          {5, 0, 4000},    {6, 0, 4000}, {100, 0, 4000},
      {UINT32_MAX, 0, 4000}, {1, 1000, 1000},  // older than the doubling: its age
      {2, 100000, 4000},                       // capped
      {3, 10, 1200},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(retryDelay(p, c.attempts, seconds(c.age)).count(), c.want)
        << "attempts=" << c.attempts << " age=" << c.age;
  }
  RetryPolicy odd;
  odd.retry_min = seconds(0);
  odd.retry_max = seconds(0);
  EXPECT_EQ(retryDelay(odd, 3, seconds(0)).count(), 1);  // never a zero delay (busy loop)
  odd.retry_min = seconds(500);
  odd.retry_max = seconds(100);  // max below min: min wins
  EXPECT_EQ(retryDelay(odd, 9, seconds(0)).count(), 500);
}

class QueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    logLines().clear();
    logCaptureForTest(captureLog);
    spool_ = std::make_unique<Spool>(dir_.path(), fs_);
    ASSERT_TRUE(spool_->prepare().ok());
    cfg_.tunneld.hostname = "mx.test";
    cfg_.tunneld.retry.retry_min = seconds(300);
    cfg_.tunneld.retry.retry_max = seconds(4000);
    cfg_.tunneld.retry.queue_lifetime = seconds(5 * 86400);
    cfg_.tunneld.retry.delay_warning = seconds(4 * 3600);
    ClientConfig c;
    c.name = "c1";
    c.host = "client.example.org";
    c.retry = cfg_.tunneld.retry;
    cfg_.clients.push_back(c);
    qm_ = std::make_unique<QueueManager>(*spool_, cfg_, bounces_);
  }
  void TearDown() override { logCaptureForTest(nullptr); }

  // Commits a message to incoming/ as the milter would.
  std::string commit(std::vector<std::string> rcpts, std::string sender = "alice@a.example",
                     int64_t arrival = kT0, std::string client = "c1",
                     std::vector<std::string> notify = {}) {
    Envelope env;
    env.client = client;
    env.sender = sender;
    env.arrival = arrival;
    for (size_t i = 0; i < rcpts.size(); ++i) {
      SpoolRecipient r;
      r.address = rcpts[i];
      if (i < notify.size()) r.notify = notify[i];
      env.rcpts.push_back(r);
    }
    auto w = spool_->create();
    EXPECT_TRUE(w.ok());
    EXPECT_TRUE((*w)->write("Subject: test\r\n\r\nhello\r\n").ok());
    std::string id = (*w)->id();
    EXPECT_TRUE((*w)->commit(env).ok());
    return id;
  }

  // What the spool holds once the queue manager's remover has caught up.
  size_t count(QueueState st) {
    if (qm_) qm_->flushRemovals();
    return spool_->list(st).size();
  }
  size_t total() {
    size_t n = 0;
    for (auto st : {QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                    QueueState::Hold, QueueState::Corrupt}) {
      n += count(st);
    }
    return n;
  }

  static TransactionResult results(const Job& job,
                                   std::vector<std::pair<Outcome, std::string>> rs) {
    TransactionResult r;
    for (size_t i = 0; i < job.rcpt_indexes.size(); ++i) {
      r.rcpts.push_back(RcptResult{job.rcpt_indexes[i], rs[i].first, rs[i].second});
    }
    return r;
  }

  void restart() { qm_ = std::make_unique<QueueManager>(*spool_, cfg_, bounces_); }

  TempDir dir_;
  dynmx::test::FakeFs fs_;
  std::unique_ptr<Spool> spool_;
  Config cfg_;
  RecordingBounceSender bounces_;
  std::unique_ptr<QueueManager> qm_;
  const std::string relay_ = "client.example.org[192.0.2.1]:22";
};

TEST_F(QueueTest, DeliversStreamsContentAndRemoves) {
  std::string id = commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  EXPECT_EQ(count(QueueState::Active), 1u);
  EXPECT_TRUE(qm_->hasDue("c1", kT0));
  EXPECT_FALSE(qm_->hasDue("other", kT0));
  auto job = qm_->nextJob("c1", kT0 + 5);
  ASSERT_TRUE(job);
  EXPECT_EQ(job->msg.id, id);
  EXPECT_EQ(job->rcpt_indexes, (std::vector<size_t>{0, 1}));
  EXPECT_FALSE(qm_->nextJob("c1", kT0 + 5));  // in flight
  EXPECT_EQ(job->msg.env.rcpts[1].address, "carol@b.example");
  std::string content;
  for (;;) {
    auto c = job->content->next(7);
    ASSERT_TRUE(c.ok());
    if (c->empty()) break;
    content += *c;
  }
  EXPECT_EQ(content, "Subject: test\r\n\r\nhello\r\n");
  auto r = results(*job, {{Outcome::Delivered, "250 2.0.0 Ok: queued as X1"},
                          {Outcome::Delivered, "250 2.0.0 Ok: queued as X1"}});
  qm_->finish(std::move(*job), r, relay_, kT0 + 5);
  EXPECT_EQ(total(), 0u);
  EXPECT_TRUE(logged(id +
                     ": to=<bob@b.example>, client=c1, relay=client.example.org[192.0.2.1]:22, "
                     "delay=5, attempts=1, status=sent (250 2.0.0 Ok: queued as X1)"));
  EXPECT_TRUE(logged(id + ": removed"));
  EXPECT_TRUE(bounces_.sent.empty());
  EXPECT_EQ(qm_->nextWakeup(), 0);
}

TEST_F(QueueTest, PartialFailureBouncesNowAndDefersTheRest) {
  std::string id = commit({"bob@b.example", "carol@b.example", "dave@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  auto r = results(*job, {{Outcome::Delivered, "250 2.0.0 Ok"},
                          {Outcome::Failed, "550 5.1.1 <carol@b.example>: unknown user"},
                          {Outcome::Deferred, "450 4.2.0 <dave@b.example>: mailbox busy"}});
  qm_->finish(std::move(*job), r, relay_, kT0 + 1);

  ASSERT_EQ(bounces_.sent.size(), 1u);
  EXPECT_EQ(bounces_.sent[0].rcpt, "alice@a.example");
  const std::string& dsn = bounces_.sent[0].text;
  EXPECT_NE(dsn.find("Final-Recipient: rfc822; carol@b.example\r\nAction: failed\r\n"
                     "Status: 5.1.1\r\nRemote-MTA: dns; client.example.org\r\n"
                     "Diagnostic-Code: smtp; 550 5.1.1 <carol@b.example>: unknown user\r\n"),
            std::string::npos)
      << dsn;
  EXPECT_EQ(dsn.find("Final-Recipient: rfc822; bob@b.example"), std::string::npos);
  EXPECT_EQ(dsn.find("Final-Recipient: rfc822; dave@b.example"), std::string::npos);
  EXPECT_NE(dsn.find("From: Mail Delivery System <MAILER-DAEMON@mx.test>"), std::string::npos);
  EXPECT_TRUE(logged("status=bounced (550 5.1.1 <carol@b.example>: unknown user)"));
  EXPECT_TRUE(logged("status=deferred (450 4.2.0 <dave@b.example>: mailbox busy)"));

  // Journaled: what the spool says after the attempt.
  ASSERT_EQ(count(QueueState::Deferred), 1u);
  auto m = spool_->load(QueueState::Deferred, id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->env.rcpts[0].state, RcptState::Delivered);
  EXPECT_EQ(m->env.rcpts[1].state, RcptState::Failed);
  EXPECT_EQ(m->env.rcpts[2].state, RcptState::Pending);
  EXPECT_EQ(m->env.rcpts[2].reply, "450 4.2.0 <dave@b.example>: mailbox busy");
  EXPECT_EQ(m->delivery.attempts, 1u);
  EXPECT_EQ(m->delivery.next_attempt, kT0 + 1 + 300);

  // Nothing due until the backoff has passed; then only dave.
  EXPECT_FALSE(qm_->hasDue("c1", kT0 + 2));
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 301);
  qm_->tick(kT0 + 301);
  EXPECT_EQ(count(QueueState::Active), 1u);
  auto job2 = qm_->nextJob("c1", kT0 + 301);
  ASSERT_TRUE(job2);
  EXPECT_EQ(job2->rcpt_indexes, (std::vector<size_t>{2}));
  qm_->finish(std::move(*job2), results(*job2, {{Outcome::Delivered, "250 Ok"}}), relay_,
              kT0 + 302);
  EXPECT_EQ(total(), 0u);
  EXPECT_TRUE(logged("delay=302, attempts=2, status=sent (250 Ok)"));
}

TEST_F(QueueTest, BackoffGrowsWithAttempts) {
  std::string id = commit({"bob@b.example"});
  qm_->start(kT0);
  int64_t now = kT0;
  std::vector<int64_t> gaps;
  for (int i = 0; i < 5; ++i) {
    auto job = qm_->nextJob("c1", now);
    ASSERT_TRUE(job) << i;
    qm_->finish(std::move(*job), results(*job, {{Outcome::Deferred, "451 4.3.0 later"}}), relay_,
                now);
    int64_t next = qm_->nextWakeup();
    gaps.push_back(next - now);
    now = next;
    qm_->tick(now);
  }
  EXPECT_EQ(gaps, (std::vector<int64_t>{300, 600, 1200, 2400, 4000}));
}

TEST_F(QueueTest, NotifyNeverOrWithoutFailureMeansNoBounce) {
  commit({"bob@b.example", "carol@b.example"}, "alice@a.example", kT0, "c1",
         {"NEVER", "SUCCESS,DELAY"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Failed, "550 5.1.1 no"}, {Outcome::Failed, "550 5.1.1 no"}}),
              relay_, kT0);
  EXPECT_TRUE(bounces_.sent.empty());
  EXPECT_EQ(bounces_.calls, 0);
  EXPECT_EQ(total(), 0u);
}

TEST_F(QueueTest, NullSenderIsNeverBounced) {
  std::string id = commit({"bob@b.example"}, "");
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  EXPECT_EQ(bounces_.calls, 0);
  EXPECT_EQ(total(), 0u);
  EXPECT_TRUE(logged(id + ": sender is <>, no non-delivery notification"));
}

TEST_F(QueueTest, ExpiryReturnsPendingRecipientsAndRemoves) {
  const int64_t life = 5 * 86400;
  std::string id = commit({"bob@b.example", "carol@b.example", "dave@b.example"}, "alice@a.example",
                          kT0, "c1", {"", "NEVER", "FAILURE"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Deferred, "451 4.3.0 later"},
                             {Outcome::Deferred, "451 4.3.0 later"},
                             {Outcome::Delivered, "250 Ok"}}),
              relay_, kT0);
  qm_->tick(kT0 + life - 1);
  size_t warnings = bounces_.sent.size();
  EXPECT_EQ(warnings, 1u);  // the delay warning for bob (NOTIFY absent), long before
  EXPECT_EQ(count(QueueState::Active) + count(QueueState::Deferred), 1u);
  EXPECT_LE(qm_->nextWakeup(), kT0 + life);
  qm_->tick(kT0 + life);
  EXPECT_EQ(total(), 0u);
  ASSERT_EQ(bounces_.sent.size(), warnings + 1);
  const std::string& dsn = bounces_.sent.back().text;
  EXPECT_NE(dsn.find("Subject: Undelivered Mail Returned to Sender"), std::string::npos);
  EXPECT_NE(dsn.find("Final-Recipient: rfc822; bob@b.example\r\nAction: failed\r\nStatus: 4.3.0"),
            std::string::npos);
  EXPECT_EQ(dsn.find("carol@b.example"), std::string::npos);                // NOTIFY=NEVER
  EXPECT_EQ(dsn.find("Final-Recipient: rfc822; dave"), std::string::npos);  // delivered
  EXPECT_TRUE(logged(id + ": to=<bob@b.example>, client=c1, relay=none, delay=432000, attempts=1, "
                          "status=expired, returned to sender (451 4.3.0 later)"));
  EXPECT_TRUE(logged("status=expired, not returned (NOTIFY)"));
}

TEST_F(QueueTest, ExpiryWithoutAnyAttemptSaysSo) {
  commit({"bob@b.example"}, "alice@a.example", kT0 - 6 * 86400);
  qm_->start(kT0);  // the client never came up
  qm_->tick(kT0);
  EXPECT_EQ(total(), 0u);
  ASSERT_EQ(bounces_.sent.size(), 1u);
  EXPECT_NE(bounces_.sent[0].text.find("Status: 4.4.7"), std::string::npos);
  EXPECT_NE(bounces_.sent[0].text.find("without a delivery attempt"), std::string::npos);
}

TEST_F(QueueTest, ExpiredNullSenderMessageIsDroppedWithLog) {
  std::string id = commit({"bob@b.example"}, "", kT0 - 6 * 86400);
  qm_->start(kT0);
  qm_->tick(kT0);
  EXPECT_EQ(total(), 0u);
  EXPECT_EQ(bounces_.calls, 0);
  EXPECT_TRUE(logged(id + ": to=<bob@b.example>") &&
              logged("status=expired, dropped (the sender is <>)"));
}

TEST_F(QueueTest, DelayWarningOnceForRecipientsThatAllowIt) {
  std::string id = commit({"bob@b.example", "carol@b.example", "dave@b.example"}, "alice@a.example",
                          kT0, "c1", {"", "FAILURE", "DELAY,FAILURE"});
  qm_->start(kT0);
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 4 * 3600);
  qm_->tick(kT0 + 4 * 3600 - 1);
  EXPECT_TRUE(bounces_.sent.empty());
  qm_->tick(kT0 + 4 * 3600);
  ASSERT_EQ(bounces_.sent.size(), 1u);
  const std::string& dsn = bounces_.sent[0].text;
  EXPECT_NE(dsn.find("Subject: Delayed Mail (still being retried)"), std::string::npos);
  EXPECT_NE(dsn.find("Final-Recipient: rfc822; bob@b.example\r\nAction: delayed"),
            std::string::npos);
  EXPECT_NE(dsn.find("Final-Recipient: rfc822; dave@b.example\r\nAction: delayed"),
            std::string::npos);
  EXPECT_EQ(dsn.find("carol@b.example"), std::string::npos);
  qm_->tick(kT0 + 5 * 3600);
  EXPECT_EQ(bounces_.sent.size(), 1u);
  // Journaled: a restart does not warn again.
  restart();
  qm_->start(kT0 + 6 * 3600);
  qm_->tick(kT0 + 6 * 3600);
  EXPECT_EQ(bounces_.sent.size(), 1u);
  // The message itself is still there, still pending.
  EXPECT_TRUE(qm_->hasDue("c1", kT0 + 6 * 3600));
}

TEST_F(QueueTest, DelayWarningOffWhenZeroOrNullSender) {
  cfg_.clients[0].retry.delay_warning = seconds(0);
  qm_->reconfigure(cfg_);
  commit({"bob@b.example"});
  commit({"carol@b.example"}, "", kT0, "c1");
  qm_->start(kT0);
  qm_->tick(kT0 + 86400);
  EXPECT_EQ(bounces_.calls, 0);
}

TEST_F(QueueTest, FailedHandOffIsKeptInTheSpoolAndRetriedOnTick) {
  bounces_.fail = true;
  commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  EXPECT_EQ(bounces_.calls, 1);
  // The original is gone (its recipient is final); the notification waits in deferred/.
  ASSERT_EQ(count(QueueState::Deferred), 1u);
  auto nid = spool_->list(QueueState::Deferred)[0];
  auto n = spool_->load(QueueState::Deferred, nid);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->env.client, kBounceClient);
  EXPECT_EQ(n->env.sender, "");
  EXPECT_EQ(n->env.rcpts[0].address, "alice@a.example");
  EXPECT_TRUE(logged(nid + ": to=<alice@a.example>, client=<bounce>, relay=local, delay=0, "
                           "attempts=1, status=deferred (sendmail exit status 75)"));
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 300);
  EXPECT_FALSE(qm_->hasDue(kBounceClient, kT0 + 300));  // never handed out as SMTP
  qm_->tick(kT0 + 299);
  EXPECT_EQ(bounces_.calls, 1);
  bounces_.fail = false;
  qm_->tick(kT0 + 300);
  ASSERT_EQ(bounces_.sent.size(), 1u);
  EXPECT_NE(bounces_.sent[0].text.find("550 5.1.1 no"), std::string::npos);
  EXPECT_EQ(total(), 0u);
}

// A sendmail that hangs: send() blocks until released (or, should the code under test wait for
// it, until a deadline far beyond any test run, after which the test fails rather than hangs).
class HangingBounceSender : public BounceSender {
 public:
  Status send(const std::string& recipient, const std::string& message) override {
    std::unique_lock<std::mutex> lk(mu);
    started = true;
    cv.notify_all();
    cv.wait_for(lk, std::chrono::seconds(60), [&] { return released; });
    finished = true;
    if (fail) return Error{0, "sendmail exit status 75"};
    sent.push_back(recipient + "\n" + message);
    return {};
  }
  void release() {
    std::lock_guard<std::mutex> lk(mu);
    released = true;
    cv.notify_all();
  }
  bool isStarted() {
    std::lock_guard<std::mutex> lk(mu);
    return started;
  }
  bool isFinished() {
    std::lock_guard<std::mutex> lk(mu);
    return finished;
  }
  std::mutex mu;
  std::condition_variable cv;
  bool started = false, released = false, finished = false, fail = false;
  std::vector<std::string> sent;
};

TEST_F(QueueTest, HandOffOnItsThreadDoesNotHoldUpDeliveries) {
  HangingBounceSender hang;
  std::atomic<int> wakes{0};
  ThreadHandoffRunner runner([&] { ++wakes; });
  qm_ = std::make_unique<QueueManager>(*spool_, cfg_, hang, kRemovalSync, &runner);
  commit({"bob@b.example"}, "alice@a.example");
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  // finish() spooled the notification and started its hand-off, and came back while sendmail
  // still hangs: the rest of the queue moves on meanwhile.
  EXPECT_TRUE(dynmx::test::waitFor([&] { return hang.isStarted(); }));
  EXPECT_FALSE(hang.isFinished());
  std::string other = commit({"carol@b.example"});
  qm_->scanIncoming(kT0);
  auto next = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->msg.id, other);
  qm_->finish(std::move(*next), results(*next, {{Outcome::Delivered, "250 Ok"}}), relay_, kT0);
  // In flight: not handed off again by a tick, shown as in flight.
  qm_->tick(kT0 + 1);
  bool in_flight = false;
  for (const auto& st : qm_->status())
    if (st.client == kBounceClient) in_flight = st.in_flight == 1;
  EXPECT_TRUE(in_flight);
  hang.release();
  ASSERT_TRUE(
      dynmx::test::waitFor([&] { return wakes.load() == 1; }));  // the runner woke its owner
  qm_->collectHandoffs(kT0 + 2);
  EXPECT_EQ(hang.sent.size(), 1u);
  EXPECT_EQ(total(), 0u);  // the notification went, and with it the last file
  EXPECT_TRUE(logged("client=<bounce>, relay=local, delay=2, attempts=1, status=sent"));
}

TEST_F(QueueTest, FailedHandOffOnItsThreadIsRetriedLater) {
  HangingBounceSender hang;
  hang.fail = true;
  hang.release();
  std::atomic<int> wakes{0};
  ThreadHandoffRunner runner([&] { ++wakes; });
  qm_ = std::make_unique<QueueManager>(*spool_, cfg_, hang, kRemovalSync, &runner);
  commit({"bob@b.example"}, "alice@a.example");
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  ASSERT_TRUE(dynmx::test::waitFor([&] { return wakes.load() == 1; }));
  qm_->collectHandoffs(kT0);
  EXPECT_EQ(count(QueueState::Deferred), 1u);
  EXPECT_TRUE(
      logged("client=<bounce>, relay=local, delay=0, attempts=1, "
             "status=deferred (sendmail exit status 75)"));
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 300);
  hang.fail = false;
  qm_->tick(kT0 + 300);
  ASSERT_TRUE(dynmx::test::waitFor([&] { return wakes.load() == 2; }));
  qm_->collectHandoffs(kT0 + 300);
  EXPECT_EQ(hang.sent.size(), 1u);
  EXPECT_EQ(total(), 0u);
}

TEST_F(QueueTest, PendingNotificationSurvivesRestart) {
  bounces_.fail = true;
  commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  bounces_.fail = false;
  restart();
  qm_->start(kT0 + 1000);
  ASSERT_EQ(bounces_.sent.size(), 1u);
  EXPECT_EQ(total(), 0u);
}

// The spool format of a notification (dynmx-spool(5)): client field "<bounce>", sender <>. A file
// written so (by any version) is a notification: handed to sendmail, never to a client.
TEST_F(QueueTest, SpooledNotificationIsHandedToSendmailNotToAClient) {
  std::string nid = commit({"alice@a.example"}, "", kT0, "<bounce>");
  qm_->start(kT0);
  ASSERT_EQ(bounces_.sent.size(), 1u);
  EXPECT_EQ(bounces_.sent[0].rcpt, "alice@a.example");
  EXPECT_NE(bounces_.sent[0].text.find("hello"), std::string::npos);
  EXPECT_TRUE(logged(nid + ": to=<alice@a.example>, client=<bounce>, relay=local"));
  EXPECT_EQ(total(), 0u);
}

TEST_F(QueueTest, NotificationsHaveAStatusLineOfTheirOwnAndNoClientSchedule) {
  bounces_.fail = true;
  commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  ASSERT_EQ(count(QueueState::Deferred), 1u);
  size_t lines = 0;
  for (const auto& st : qm_->status()) {
    if (!st.notifications) continue;
    ++lines;
    EXPECT_EQ(st.client, kBounceClient);
    EXPECT_EQ(st.deferred, 1u);
  }
  EXPECT_EQ(lines, 1u);
  // The label is no client: naming it schedules nothing and hands nothing out.
  qm_->clientUp(kBounceClient, kT0 + 1);
  qm_->flush("c1", kT0 + 1);
  EXPECT_FALSE(qm_->nextJob(kBounceClient, kT0 + 300));
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 300);
  EXPECT_EQ(bounces_.calls, 1);
}

TEST_F(QueueTest, NotificationThatNeverGetsOutIsDroppedAtExpiry) {
  bounces_.fail = true;
  commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  for (int64_t t = kT0; t <= kT0 + 6 * 86400; t += 3600) qm_->tick(t);
  EXPECT_EQ(total(), 0u);
  EXPECT_TRUE(logged("dropped (it is from <>)"));
}

TEST_F(QueueTest, CrashWhileInFlightResendsEverythingPending) {
  std::string id = commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  EXPECT_EQ(count(QueueState::Active), 1u);
  job.reset();  // the daemon dies here: no finish()
  restart();
  auto rep = qm_->start(kT0 + 10);
  EXPECT_EQ(rep.active_requeued, 1u);
  auto again = qm_->nextJob("c1", kT0 + 10);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->msg.id, id);
  EXPECT_EQ(again->rcpt_indexes, (std::vector<size_t>{0, 1}));
}

TEST_F(QueueTest, JournaledResultsSurviveRestart) {
  std::string id = commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Delivered, "250 Ok"}, {Outcome::Deferred, "451 later"}}),
              relay_, kT0);
  restart();
  qm_->start(kT0 + 1);
  EXPECT_FALSE(qm_->hasDue("c1", kT0 + 1));  // the schedule survives too
  qm_->clientUp("c1", kT0 + 2);              // ... until the client comes (back) up
  auto again = qm_->nextJob("c1", kT0 + 2);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->rcpt_indexes, (std::vector<size_t>{1}));
  EXPECT_EQ(again->msg.delivery.attempts, 1u);
}

TEST_F(QueueTest, AbandonDefersEveryRecipient) {
  commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  qm_->abandon(std::move(*job), "SSH connection lost", kT0 + 3);
  EXPECT_EQ(count(QueueState::Deferred), 1u);
  EXPECT_TRUE(
      logged("to=<carol@b.example>, client=c1, relay=none, delay=3, attempts=1, "
             "status=deferred (SSH connection lost)"));
}

TEST_F(QueueTest, PossibleDuplicateIsLogged) {
  std::string id = commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  auto r = results(*job, {{Outcome::Deferred, "lost connection"}});
  r.possible_duplicate = true;
  qm_->finish(std::move(*job), r, relay_, kT0);
  EXPECT_TRUE(logged(id + ": conversation with client.example.org[192.0.2.1]:22 ended after the "
                          "end of data: possible duplicate delivery"));
  EXPECT_EQ(count(QueueState::Deferred), 1u);
}

TEST_F(QueueTest, ContentErrorMovesToCorrupt) {
  commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  auto r = results(*job, {{Outcome::Deferred, "cannot read"}});
  r.content_error = true;
  qm_->finish(std::move(*job), r, relay_, kT0);
  EXPECT_EQ(count(QueueState::Corrupt), 1u);
  EXPECT_EQ(total(), 1u);
  EXPECT_FALSE(qm_->nextJob("c1", kT0 + 10000));
}

TEST_F(QueueTest, UnreadableIncomingFileGoesToCorrupt) {
  qm_->start(kT0);
  std::string id = newQueueId();
  std::ofstream(spool_->path(QueueState::Incoming, id)) << "this is no spool file\n";
  qm_->scanIncoming(kT0);
  EXPECT_EQ(count(QueueState::Corrupt), 1u);
  EXPECT_EQ(count(QueueState::Incoming), 0u);
}

TEST_F(QueueTest, HoldAndRelease) {
  std::string id = commit({"bob@b.example"});
  qm_->start(kT0);
  ASSERT_TRUE(qm_->hold(id).ok());
  EXPECT_EQ(count(QueueState::Hold), 1u);
  EXPECT_FALSE(qm_->nextJob("c1", kT0));
  auto lines = qm_->listQueue();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], id + " hold client=c1 size=24 arrival=1700000000 from=<alice@a.example> "
                           "to=<bob@b.example>");
  qm_->tick(kT0 + 10 * 86400);  // held mail does not expire
  EXPECT_EQ(count(QueueState::Hold), 1u);
  EXPECT_FALSE(qm_->release("NOSUCHID", kT0).ok());
  ASSERT_TRUE(qm_->release(id, kT0 + 1).ok());
  auto job = qm_->nextJob("c1", kT0 + 1);
  ASSERT_TRUE(job);
  // Hold while in flight: it goes to hold/ when the attempt ends.
  ASSERT_TRUE(qm_->hold(id).ok());
  qm_->finish(std::move(*job), results(*job, {{Outcome::Deferred, "451 later"}}), relay_, kT0 + 2);
  EXPECT_EQ(count(QueueState::Hold), 1u);
  EXPECT_FALSE(qm_->hasDue("c1", kT0 + 100000));
}

TEST_F(QueueTest, FlushMakesDeferredDueNow) {
  commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Deferred, "451 later"}}), relay_, kT0);
  EXPECT_FALSE(qm_->hasDue("c1", kT0 + 1));
  qm_->flush("", kT0 + 1);
  EXPECT_TRUE(qm_->hasDue("c1", kT0 + 1));
  EXPECT_TRUE(qm_->nextJob("c1", kT0 + 1));
}

TEST_F(QueueTest, StatusCountsPerClientIncludingUnknownOnes) {
  commit({"bob@b.example"});
  commit({"bob@b.example"});
  commit({"x@gone.example"}, "alice@a.example", kT0 - 5, "removed-client");
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  auto st = qm_->status();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].client, "c1");
  EXPECT_EQ(st[0].in_flight, 1u);
  EXPECT_EQ(st[0].active, 1u);
  EXPECT_EQ(st[0].oldest_arrival, kT0);
  EXPECT_EQ(st[1].client, "removed-client");
  EXPECT_EQ(st[1].active, 1u);
}

TEST_F(QueueTest, JournalFailureLeavesMessageInActiveUntilRestart) {
  std::string id = commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  fs_.failOpensFor("/active/");
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Delivered, "250 Ok"}, {Outcome::Deferred, "451 later"}}),
              relay_, kT0);
  EXPECT_TRUE(logged(id + ": cannot record delivery results"));
  EXPECT_EQ(count(QueueState::Active), 1u);
  EXPECT_FALSE(qm_->hasDue("c1", kT0 + 100000));
  EXPECT_FALSE(qm_->nextJob("c1", kT0 + 100000));
  EXPECT_NE(qm_->listQueue()[0].find(" stuck "), std::string::npos);
  fs_.failOpensFor("");
  // After a restart both recipients are tried again: bob may get it twice, nobody loses it.
  restart();
  qm_->start(kT0 + 10);
  auto again = qm_->nextJob("c1", kT0 + 10);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->rcpt_indexes, (std::vector<size_t>{0, 1}));
}

TEST_F(QueueTest, NotificationThatCannotBeSpooledKeepsRecipientPending) {
  std::string id = commit({"bob@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  fs_.failOpensFor(spool_->stateDir(QueueState::Tmp) + "/");
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  EXPECT_TRUE(logged(id + ": cannot spool the notification"));
  EXPECT_EQ(bounces_.calls, 0);
  auto m = spool_->load(QueueState::Deferred, id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->env.rcpts[0].state, RcptState::Pending);
  EXPECT_EQ(m->env.rcpts[0].reply, "550 5.1.1 no");
  fs_.failOpensFor("");
  // The next attempt meets the same refusal and reports it this time.
  qm_->tick(kT0 + 300);
  auto job2 = qm_->nextJob("c1", kT0 + 300);
  ASSERT_TRUE(job2);
  qm_->finish(std::move(*job2), results(*job2, {{Outcome::Failed, "550 5.1.1 no"}}), relay_,
              kT0 + 300);
  EXPECT_EQ(bounces_.sent.size(), 1u);
  EXPECT_EQ(total(), 0u);
}

TEST_F(QueueTest, ExpiryWhoseNotificationCannotBeSpooledIsRetriedLater) {
  commit({"bob@b.example"}, "alice@a.example", kT0 - 6 * 86400);
  fs_.failOpensFor(spool_->stateDir(QueueState::Tmp) + "/");
  qm_->start(kT0);
  EXPECT_EQ(total(), 1u);                  // kept: nothing may be lost
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 60);  // not a busy loop
  fs_.failOpensFor("");
  qm_->tick(kT0 + 60);
  EXPECT_EQ(bounces_.sent.size(), 1u);
  EXPECT_EQ(total(), 0u);
}

TEST_F(QueueTest, FullyDeliveredMessageIsRemovedWithoutJournalWrite) {
  commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  fs_.failOpensFor("/active/");  // any journal append would fail
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Delivered, "250 Ok"}, {Outcome::Delivered, "250 Ok"}}),
              relay_, kT0);
  EXPECT_EQ(total(), 0u);
  EXPECT_FALSE(logged("cannot record"));
}

// --- batched directory fsyncs

TEST_F(QueueTest, IncomingIsTakenWithOneDeferredDirectorySyncForTheBatch) {
  for (int i = 0; i < 5; ++i) commit({"bob@b.example"});
  // An interval no test run reaches: the only fsyncs are those flushRemovals() asks for.
  qm_ = std::make_unique<QueueManager>(*spool_, cfg_, bounces_, std::chrono::hours(24));
  fs_.clearCounts();
  qm_->start(kT0);
  EXPECT_EQ(spool_->list(QueueState::Active).size(), 5u);
  EXPECT_EQ(spool_->list(QueueState::Incoming).size(), 0u);
  // Handed out before active/ is fsynced: that waits for the remover's next sync.
  EXPECT_EQ(fs_.dirSyncs("active"), 0);
  EXPECT_TRUE(qm_->nextJob("c1", kT0));
  qm_->flushRemovals();
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
  // Nothing new: no rename, no fsync.
  EXPECT_FALSE(qm_->scanIncoming(kT0 + 1));
  qm_->flushRemovals();
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
  commit({"carol@b.example"});
  commit({"dave@b.example"});
  EXPECT_FALSE(qm_->scanIncoming(kT0 + 2));
  qm_->flushRemovals();
  EXPECT_EQ(count(QueueState::Active), 7u);
  EXPECT_EQ(fs_.dirSyncs("active"), 2);
}

TEST_F(QueueTest, IncomingIsTakenInSlicesInQueueIdOrder) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(commit({"bob@b.example"}));
  std::sort(ids.begin(), ids.end());
  qm_->start(kT0, 2);  // the first slice
  EXPECT_EQ(spool_->list(QueueState::Active).size(), 2u);
  // Only what was taken is handed out, oldest first.
  auto j1 = qm_->nextJob("c1", kT0);
  auto j2 = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(j1 && j2);
  EXPECT_EQ(j1->msg.id, ids[0]);
  EXPECT_EQ(j2->msg.id, ids[1]);
  EXPECT_FALSE(qm_->nextJob("c1", kT0));
  // The rest of the listing, a slice at a time; mail arriving meanwhile is listed once more at
  // the end, as the call came while a listing was being worked through.
  std::string late = commit({"carol@b.example"});
  EXPECT_TRUE(qm_->scanIncoming(kT0, 2));
  EXPECT_EQ(spool_->list(QueueState::Active).size(), 4u);
  EXPECT_TRUE(qm_->scanIncoming(kT0, 2));  // ids[4]; then: list again
  EXPECT_EQ(spool_->list(QueueState::Active).size(), 5u);
  EXPECT_FALSE(qm_->scanIncoming(kT0, 2));  // a fresh listing: the late one
  EXPECT_EQ(spool_->list(QueueState::Active).size(), 6u);
  EXPECT_EQ(spool_->list(QueueState::Incoming).size(), 0u);
  std::vector<std::string> handed;
  while (auto j = qm_->nextJob("c1", kT0)) handed.push_back(j->msg.id);
  EXPECT_EQ(handed, (std::vector<std::string>{ids[2], ids[3], ids[4], late}));
}

TEST_F(QueueTest, CrashBeforeTheBatchSyncLeavesEveryMessageDeliverable) {
  std::set<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.insert(commit({"bob@b.example"}));
  qm_->start(kT0);
  ASSERT_EQ(count(QueueState::Active), 5u);
  // A crash before the fsync of active/ may undo any of the renames: put two back as the disk
  // may have them, and restart.
  qm_.reset();
  int undone = 0;
  for (const std::string& id : ids) {
    if (undone == 2) break;
    fs::rename(spool_->path(QueueState::Active, id), spool_->path(QueueState::Incoming, id));
    ++undone;
  }
  restart();
  auto rep = qm_->start(kT0 + 10);
  EXPECT_EQ(rep.active_requeued, 3u);
  std::set<std::string> handed;
  std::vector<Job> jobs;
  while (auto job = qm_->nextJob("c1", kT0 + 10)) {
    handed.insert(job->msg.id);
    jobs.push_back(std::move(*job));
  }
  EXPECT_EQ(handed, ids);
  for (Job& j : jobs) {
    auto r = results(j, {{Outcome::Delivered, "250 Ok"}});
    qm_->finish(std::move(j), r, relay_, kT0 + 11);
  }
  EXPECT_EQ(total(), 0u);
}

TEST_F(QueueTest, RemovalsAreSyncedOnceForTheBatch) {
  for (int i = 0; i < 3; ++i) commit({"bob@b.example"});
  // An interval no test run reaches: the only fsync is the one flushRemovals() asks for.
  qm_ = std::make_unique<QueueManager>(*spool_, cfg_, bounces_, std::chrono::hours(24));
  qm_->start(kT0);
  std::vector<Job> jobs;
  while (auto job = qm_->nextJob("c1", kT0)) jobs.push_back(std::move(*job));
  ASSERT_EQ(jobs.size(), 3u);
  qm_->flushRemovals();
  fs_.clearCounts();
  for (Job& j : jobs) {
    auto r = results(j, {{Outcome::Delivered, "250 Ok"}});
    qm_->finish(std::move(j), r, relay_, kT0 + 1);
  }
  qm_->flushRemovals();
  EXPECT_EQ(spool_->list(QueueState::Active).size(), 0u);
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
  qm_->flushRemovals();  // nothing more to sync
  EXPECT_EQ(fs_.dirSyncs("active"), 1);
}

TEST_F(QueueTest, RemovalUndoneByACrashBeforeItsSyncIsDeliveredAgain) {
  std::string id = commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  // What the disk may still hold after a crash before the directory fsync: the file as it was.
  const std::string saved = dir_.path() + "/saved";
  fs::copy_file(spool_->path(QueueState::Active, id), saved);
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Delivered, "250 Ok"}, {Outcome::Delivered, "250 Ok"}}),
              relay_, kT0 + 1);
  EXPECT_EQ(total(), 0u);
  qm_.reset();
  fs::rename(saved, spool_->path(QueueState::Active, id));
  restart();
  qm_->start(kT0 + 10);
  auto again = qm_->nextJob("c1", kT0 + 10);
  ASSERT_TRUE(again);  // a duplicate, never a loss
  EXPECT_EQ(again->msg.id, id);
  EXPECT_EQ(again->rcpt_indexes, (std::vector<size_t>{0, 1}));
}

TEST_F(QueueTest, NextWakeupFollowsChanges) {
  EXPECT_EQ(qm_->nextWakeup(), 0);
  commit({"bob@b.example"});
  qm_->start(kT0);
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 4 * 3600);  // the delay warning
  auto job = qm_->nextJob("c1", kT0);
  EXPECT_EQ(qm_->nextWakeup(), 0);  // in flight: nothing for tick()
  qm_->finish(std::move(*job), results(*job, {{Outcome::Deferred, "451 later"}}), relay_, kT0);
  EXPECT_EQ(qm_->nextWakeup(), kT0 + 300);
}

// dynmxctl bounce of a message in flight: what the attempt delivers stays delivered, the rest is
// returned to the sender when it ends (only those recipients in the report, Status 5.0.0).
TEST_F(QueueTest, BounceInFlightReturnsWhatTheAttemptLeftPending) {
  std::string id = commit({"bob@b.example", "carol@b.example"});
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  auto rep = qm_->dispose(Disposal::Bounce, id, "uid 0 (root)", kT0 + 1);
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->failed, 0u);
  EXPECT_EQ(rep->lines, std::vector<std::string>{id + ": being delivered now; returned to sender "
                                                      "when the attempt ends (what it delivers "
                                                      "stays delivered)"});
  EXPECT_EQ(bounces_.calls, 0);
  qm_->finish(std::move(*job),
              results(*job, {{Outcome::Delivered, "250 ok"}, {Outcome::Deferred, "451 later"}}),
              relay_, kT0 + 2);
  ASSERT_EQ(bounces_.sent.size(), 1u);
  const std::string& text = bounces_.sent[0].text;
  EXPECT_EQ(bounces_.sent[0].rcpt, "alice@a.example");
  EXPECT_NE(text.find("Final-Recipient: rfc822; carol@b.example"), std::string::npos) << text;
  EXPECT_EQ(text.find("Final-Recipient: rfc822; bob@b.example"), std::string::npos) << text;
  EXPECT_NE(text.find("Status: 5.0.0"), std::string::npos) << text;
  EXPECT_TRUE(logged(id + ": to=<bob@b.example>")) << "the delivery is logged as such";
  EXPECT_TRUE(logged("status=bounced by uid 0 (root) (dynmxctl bounce)"));
  EXPECT_EQ(total(), 0u);
}

// A report that cannot be spooled: the bounce fails, nothing changes, a later one works.
TEST_F(QueueTest, BounceWhoseNotificationCannotBeSpooledChangesNothing) {
  std::string id = commit({"bob@b.example"});
  qm_->start(kT0);
  fs_.failOpensFor(spool_->stateDir(QueueState::Tmp) + "/");
  auto rep = qm_->dispose(Disposal::Bounce, id, "uid 0 (root)", kT0);
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->failed, 1u);
  ASSERT_EQ(rep->lines.size(), 1u);
  EXPECT_NE(rep->lines[0].find("nothing changed"), std::string::npos) << rep->lines[0];
  EXPECT_EQ(bounces_.calls, 0);
  EXPECT_EQ(qm_->listQueue().size(), 1u);
  fs_.failOpensFor("");
  ASSERT_TRUE(qm_->nextJob("c1", kT0));  // still deliverable; in flight now
}

// Notifications: deleted like any message, never bounced; ALL of an unknown client is an error,
// ALL of a configured client without mail is not.
TEST_F(QueueTest, DisposalOfNotificationsAndOfAllOfAClient) {
  commit({"bob@b.example"}, "alice@a.example", kT0, "c1", {});
  bounces_.fail = true;  // the notification stays spooled
  qm_->start(kT0);
  auto job = qm_->nextJob("c1", kT0);
  ASSERT_TRUE(job);
  qm_->finish(std::move(*job), results(*job, {{Outcome::Failed, "550 5.1.1 no"}}), relay_, kT0);
  auto lines = qm_->listQueue();
  ASSERT_EQ(lines.size(), 1u);
  std::string nid = lines[0].substr(0, lines[0].find(' '));
  auto b = qm_->dispose(Disposal::Bounce, nid, "uid 0 (root)", kT0 + 1);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->failed, 1u);
  auto all = qm_->disposeAll(Disposal::Delete, kBounceClient, "uid 0 (root)", kT0 + 1);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->lines, std::vector<std::string>{nid + ": deleted"});
  EXPECT_EQ(total(), 0u);
  EXPECT_FALSE(qm_->disposeAll(Disposal::Delete, "nosuch", "uid 0 (root)", kT0).ok());
  auto none = qm_->disposeAll(Disposal::Bounce, "c1", "uid 0 (root)", kT0);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->lines, std::vector<std::string>{"client c1: no mail in the queue"});
  EXPECT_FALSE(qm_->dispose(Disposal::Delete, nid, "uid 0 (root)", kT0).ok());
}

}  // namespace
}  // namespace dynmx::tunneld
