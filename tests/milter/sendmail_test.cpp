// sendmail_test.cpp: dynmx-milter in a real sendmail's InputMailFilters.
//
// sendmail (queue-only, loopback, free port, .cf built with m4) takes a message over SMTP for a
// client recipient and a local one. The client's copy must land in the dynmx spool byte for byte
// as sent (after our trace header) and the local copy must
// stay in sendmail's queue with the local recipient only. With the milter down or failing,
// sendmail must refuse the message temporarily (F=T) and keep nothing.
#include <unistd.h>

#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"

namespace dynmx::test {
namespace {

const std::string kContent =
    "From: Sender <sender@x.example>\r\n"
    "To: bob@alpha.example, root@localhost\r\n"
    "Subject: dynmx sendmail test\r\n"
    "Message-ID: <sendmail-test-1@x.example>\r\n"
    "Date: Sun, 22 Nov 2026 01:02:03 +0000\r\n"
    "X-Folded: first\r\n"
    "\tsecond\r\n"
    "X-Two-Spaces:  kept\r\n"
    "X-No-Space:kept\r\n"
    "\r\n"
    "Hello,\r\n"
    ".a line that starts with a dot\r\n"
    "\r\n"
    "bye\r\n";

class SendmailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    milter_ = std::make_unique<TestMilter>(tmp_.path() + "/milter");
    milter_->start();
    TestSendmailOptions so;
    so.milter_socket = milter_->socketSpec();
    so.relay_domains = {"alpha.example"};
    sendmail_ = std::make_unique<TestSendmail>(tmp_.path() + "/sendmail", so);
    sendmail_->start();
  }
  void TearDown() override {
    sendmail_->stop();
    milter_->stop();
    if (HasFailure()) {
      std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
    }
  }

  std::vector<std::string> spoolIds(QueueState st) { return Spool(milter_->spoolDir()).list(st); }

  TempDir tmp_{"dynmx-sendmail"};
  std::unique_ptr<TestMilter> milter_;
  std::unique_ptr<TestSendmail> sendmail_;
};

TEST_F(SendmailTest, ClientCopyGoesToTheSpoolAndLocalCopyStaysWithSendmail) {
  SmtpSession smtp(sendmail_->port());
  std::vector<SmtpReply> rcpt;
  SmtpReply r =
      smtp.sendMail("sender@x.example", {"bob@alpha.example", "root@localhost"}, kContent, &rcpt);
  ASSERT_EQ(r.code, 250) << r.text;
  smtp.quit();

  Spool spool(milter_->spoolDir());
  auto ids = spool.list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u);
  auto m = spool.load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.client, "alpha");
  EXPECT_EQ(m->env.sender, "sender@x.example");
  EXPECT_EQ(m->env.origin, "127.0.0.1");
  ASSERT_EQ(m->env.rcpts.size(), 1u);
  EXPECT_EQ(m->env.rcpts[0].address, "bob@alpha.example");
  auto reader = spool.openContent(*m);
  ASSERT_TRUE(reader.ok());
  std::string content;
  for (;;) {
    auto c = reader->next();
    ASSERT_TRUE(c.ok()) << c.error().message;
    if (c->empty()) break;
    content.append(c->data(), c->size());
  }
  // Our trace header, then the message exactly as sent (sendmail does not show milters the
  // Received: header it adds itself).
  std::string trace = "Received: by mx.dynmx.test (dynmx-milter, MTA queue id " +
                      m->env.mta_queue_id + ")\r\n\tid " + m->id + " for <bob@alpha.example>; ";
  ASSERT_EQ(content.rfind(trace, 0), 0u) << content;
  size_t end = content.find("\r\n", trace.size());
  ASSERT_NE(end, std::string::npos);
  EXPECT_EQ(content.substr(end + 2), kContent) << content;
  EXPECT_FALSE(m->env.mta_queue_id.empty());
  auto queued = sendmail_->queue();
  ASSERT_EQ(queued.size(), 1u);
  EXPECT_EQ(queued[0].id, m->env.mta_queue_id) << "the spool records sendmail's queue id";
  ASSERT_EQ(queued[0].recipients.size(), 1u);
  EXPECT_NE(queued[0].recipients[0].find("root"), std::string::npos) << queued[0].recipients[0];
  EXPECT_TRUE(
      milter_->waitForLog(m->env.mta_queue_id + ": milter: captured to=<bob@alpha.example>"));
}

TEST_F(SendmailTest, ClientOnlyMessageIsDiscardedBySendmail) {
  SmtpSession smtp(sendmail_->port());
  SmtpReply r = smtp.sendMail("sender@x.example", {"bob@alpha.example"}, kContent);
  ASSERT_EQ(r.code, 250) << r.text;
  smtp.quit();
  EXPECT_EQ(spoolIds(QueueState::Incoming).size(), 1u);
  EXPECT_TRUE(sendmail_->queue().empty()) << "nothing left for sendmail to deliver";
}

TEST_F(SendmailTest, MilterDownMeansSendmailTempfails) {
  milter_->stop();
  SmtpSession smtp(sendmail_->port());
  SmtpReply r;
  try {
    r = smtp.sendMail("sender@x.example", {"bob@alpha.example", "root@localhost"}, kContent);
  } catch (const std::exception& e) {
    FAIL() << "sendmail dropped the connection instead of answering: " << e.what();
  }
  EXPECT_GE(r.code, 400) << r.text;
  EXPECT_LT(r.code, 500) << r.text;
  EXPECT_TRUE(sendmail_->queue().empty()) << "F=T: nothing accepted while the filter is down";
  EXPECT_TRUE(spoolIds(QueueState::Incoming).empty());
}

TEST_F(SendmailTest, SpoolFailureTempfailsAtEndOfData) {
  std::string tmpdir = milter_->spoolDir() + "/tmp";
  ASSERT_EQ(rmdir(tmpdir.c_str()), 0);
  writeFile(tmpdir, "not a directory\n", 0600);
  SmtpSession smtp(sendmail_->port());
  SmtpReply r =
      smtp.sendMail("sender@x.example", {"bob@alpha.example", "root@localhost"}, kContent);
  EXPECT_EQ(r.code, 451) << r.text;
  EXPECT_NE(r.text.find("4.3.0"), std::string::npos) << r.text;
  EXPECT_TRUE(sendmail_->queue().empty()) << "the local copy is refused with the rest";
  EXPECT_TRUE(spoolIds(QueueState::Incoming).empty());
}

}  // namespace
}  // namespace dynmx::test
