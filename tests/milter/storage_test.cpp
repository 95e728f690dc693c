// storage_test.cpp: the storage limits of dynmx-milter in a real sendmail's InputMailFilters.
//
// spool.min_free: the milter's spool lives on a small tmpfs; a filler file takes it below the
// threshold. New mail for a client must then be tempfailed with 452 4.3.1 (at MAIL with SIZE=,
// else at RCPT, or at end of message when the space went while the message was on its way),
// mail for others must pass, what is already spooled must stay byte for byte as it was, and once
// the filler is gone the next message must be spooled. max_queue_messages: a client at its limit
// gets 452 4.2.2 at RCPT while another client's recipient in the same transaction is accepted.
#include <unistd.h>

#include <gtest/gtest.h>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"
#include "tests/harness/small_fs.hpp"

namespace dynmx::test {
namespace {

const std::string kContent =
    "From: Sender <sender@x.example>\r\n"
    "Subject: dynmx storage test\r\n"
    "\r\n"
    "Hello\r\n";

constexpr uint64_t kMinFree = 1024 * 1024;

// Every file of the spool's state directories with its bytes.
std::map<std::string, std::string> spoolFiles(const std::string& spool_dir) {
  std::map<std::string, std::string> out;
  for (const char* st : {"tmp", "incoming", "active", "deferred", "hold", "corrupt"})
    for (const auto& name : listDir(spool_dir + "/" + st))
      out[std::string(st) + "/" + name] = readFile(spool_dir + "/" + st + "/" + name);
  return out;
}

class StorageTest : public ::testing::Test {
 protected:
  void start(TestMilterOptions mo, const std::string& milter_dir) {
    milter_ = std::make_unique<TestMilter>(milter_dir, std::move(mo));
    milter_->start();
    TestSendmailOptions so;
    so.milter_socket = milter_->socketSpec();
    so.relay_domains = {"alpha.example", "beta.example"};
    sendmail_ = std::make_unique<TestSendmail>(tmp_.path() + "/sendmail", so);
    sendmail_->start();
  }
  void TearDown() override {
    if (sendmail_) sendmail_->stop();
    if (milter_) milter_->stop();
    if (HasFailure() && milter_)
      std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
  }

  size_t incoming() { return Spool(milter_->spoolDir()).list(QueueState::Incoming).size(); }

  TempDir tmp_{"dynmx-storage"};
  std::unique_ptr<SmallFs> fs_;  // after tmp_: unmounted before the directory is removed
  std::unique_ptr<TestMilter> milter_;
  std::unique_ptr<TestSendmail> sendmail_;
};

TEST_F(StorageTest, BelowMinFreeClientMailIsTempfailedAndResumesWhenSpaceReturns) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  fs_ = std::make_unique<SmallFs>(tmp_.path() + "/small", "4m");
  TestMilterOptions mo;
  mo.max_message_size = "\"64K\"";
  mo.spool_extra = "min_free = \"1M\"\n";
  start(mo, fs_->path() + "/milter");
  const std::string filler = fs_->path() + "/filler";

  {
    SmtpSession smtp(sendmail_->port());
    ASSERT_EQ(smtp.sendMail("sender@x.example", {"bob@alpha.example"}, kContent).code, 250);
    smtp.quit();
  }
  auto before = spoolFiles(milter_->spoolDir());
  ASSERT_EQ(before.size(), 1u);

  fs_->fillLeaving(filler, kMinFree / 2);
  {
    SmtpSession smtp(sendmail_->port());
    ASSERT_EQ(smtp.command("EHLO client.test").code, 250);
    // SIZE= declared: refused at MAIL.
    SmtpReply r = smtp.command("MAIL FROM:<sender@x.example> SIZE=1000");
    EXPECT_EQ(r.code, 452) << r.text;
    EXPECT_NE(r.text.find("4.3.1 Insufficient system storage"), std::string::npos) << r.text;
    // No SIZE=: refused at RCPT for the client's recipient only.
    ASSERT_EQ(smtp.command("MAIL FROM:<sender@x.example>").code, 250);
    r = smtp.command("RCPT TO:<bob@alpha.example>");
    EXPECT_EQ(r.code, 452) << r.text;
    EXPECT_NE(r.text.find("4.3.1 Insufficient system storage"), std::string::npos) << r.text;
    r = smtp.command("RCPT TO:<root@localhost>");
    EXPECT_EQ(r.code, 250) << "mail for others is not the spool's business: " << r.text;
    smtp.command("RSET");
    smtp.quit();
  }
  EXPECT_EQ(spoolFiles(milter_->spoolDir()), before) << "the spooled message is untouched";
  EXPECT_TRUE(
      milter_->waitForLog("milter: tempfail: RCPT to=<bob@alpha.example>, client=alpha: "
                          "452 4.3.1 spool " +
                          milter_->spoolDir() + " has "));

  // The space goes while the message is on its way: refused at end of message, nothing kept.
  ASSERT_EQ(::unlink(filler.c_str()), 0);
  {
    SmtpSession smtp(sendmail_->port());
    ASSERT_EQ(smtp.command("EHLO client.test").code, 250);
    ASSERT_EQ(smtp.command("MAIL FROM:<sender@x.example>").code, 250);
    ASSERT_EQ(smtp.command("RCPT TO:<bob@alpha.example>").code, 250);
    fs_->fillLeaving(filler, kMinFree / 2);
    ASSERT_EQ(smtp.command("DATA").code, 354);
    SmtpReply r = smtp.data(kContent);
    EXPECT_EQ(r.code, 452) << r.text;
    EXPECT_NE(r.text.find("4.3.1 Insufficient system storage"), std::string::npos) << r.text;
    smtp.quit();
  }
  EXPECT_EQ(spoolFiles(milter_->spoolDir()), before) << "no temporary file left behind";
  EXPECT_TRUE(sendmail_->queue().empty()) << "sendmail kept nothing of the refused message";

  // Room again: the next message is spooled.
  ASSERT_EQ(::unlink(filler.c_str()), 0);
  {
    SmtpSession smtp(sendmail_->port());
    SmtpReply r = smtp.sendMail("sender@x.example", {"bob@alpha.example"}, kContent);
    EXPECT_EQ(r.code, 250) << r.text;
    smtp.quit();
  }
  EXPECT_EQ(incoming(), 2u);
  auto after = spoolFiles(milter_->spoolDir());
  for (const auto& [name, bytes] : before) EXPECT_EQ(after[name], bytes) << name;
}

TEST_F(StorageTest, ClientOverQueueLimitIsTempfailedOtherClientAccepted) {
  TestMilterOptions mo;
  mo.clients = {{"alpha", {"alpha.example"}}, {"beta", {"beta.example"}}};
  mo.clients[0].extra = "max_queue_messages = 2\n";
  mo.clients[1].extra = "max_queue_messages = 2\n";
  start(mo, tmp_.path() + "/milter");
  for (int i = 0; i < 2; ++i) {
    SmtpSession smtp(sendmail_->port());
    ASSERT_EQ(smtp.sendMail("sender@x.example", {"bob@alpha.example"}, kContent).code, 250);
    smtp.quit();
  }
  SmtpSession smtp(sendmail_->port());
  ASSERT_EQ(smtp.command("EHLO client.test").code, 250);
  ASSERT_EQ(smtp.command("MAIL FROM:<sender@x.example>").code, 250);
  SmtpReply r = smtp.command("RCPT TO:<bob@alpha.example>");
  EXPECT_EQ(r.code, 452) << r.text;
  EXPECT_NE(r.text.find("4.2.2"), std::string::npos) << r.text;
  r = smtp.command("RCPT TO:<carol@beta.example>");
  EXPECT_EQ(r.code, 250) << r.text;
  ASSERT_EQ(smtp.command("DATA").code, 354);
  r = smtp.data(kContent);
  EXPECT_EQ(r.code, 250) << r.text;
  smtp.quit();

  Spool spool(milter_->spoolDir());
  std::map<std::string, int> by_client;
  for (const auto& id : spool.list(QueueState::Incoming)) {
    auto m = spool.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok()) << m.error().message;
    ++by_client[m->env.client];
  }
  EXPECT_EQ(by_client["alpha"], 2);
  EXPECT_EQ(by_client["beta"], 1);
  EXPECT_TRUE(milter_->waitForLog(
      "client=alpha: 452 4.2.2 client alpha has 2 messages queued, max_queue_messages 2"));
}

}  // namespace
}  // namespace dynmx::test
