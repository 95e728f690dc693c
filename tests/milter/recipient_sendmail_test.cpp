// recipient_sendmail_test.cpp: the recipient lists with a real sendmail in front of dynmx-milter.
//
// An unlisted recipient of a client domain is refused at RCPT with sendmail relaying the milter's
// 550 5.1.1 while the sender is still connected (no bounce later); the listed ones and a local one
// go on in the same transaction. The list file is read again when it changes (no reload needed)
// and on SIGUSR1 (a changed inline list).
#include <signal.h>
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
    "To: bob@alpha.example\r\n"
    "Subject: recipient list test\r\n"
    "\r\n"
    "Hello\r\n";

class RecipientSendmailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    writeFile(listFile(), "# alpha's users\ncarol@alpha.example\n");
    TestMilterOptions mo;
    mo.clients = {{"alpha", {"alpha.example"}}, {"beta", {"beta.example"}}};
    mo.clients[0].extra =
        "recipients = [\"bob@alpha.example\"]\nrecipient_file = \"" + listFile() + "\"\n";
    milter_ = std::make_unique<TestMilter>(tmp_.path() + "/milter", mo);
    milter_->start();
    TestSendmailOptions so;
    so.milter_socket = milter_->socketSpec();
    so.relay_domains = {"alpha.example", "beta.example"};
    sendmail_ = std::make_unique<TestSendmail>(tmp_.path() + "/sendmail", so);
    sendmail_->start();
  }
  void TearDown() override {
    sendmail_->stop();
    milter_->stop();
    if (HasFailure()) std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
  }
  std::string listFile() const { return tmp_.path() + "/alpha.recipients"; }
  size_t spooled() { return Spool(milter_->spoolDir()).list(QueueState::Incoming).size(); }

  // One RCPT in a fresh transaction; returns its reply.
  SmtpReply rcpt(const std::string& to) {
    SmtpSession smtp(sendmail_->port());
    smtp.command("EHLO client.x.example");
    SmtpReply m = smtp.command("MAIL FROM:<sender@x.example>");
    EXPECT_EQ(m.code, 250) << m.text;
    SmtpReply r = smtp.command("RCPT TO:<" + to + ">");
    smtp.quit();
    return r;
  }

  TempDir tmp_{"dynmx-rcpt-sendmail"};
  std::unique_ptr<TestMilter> milter_;
  std::unique_ptr<TestSendmail> sendmail_;
};

TEST_F(RecipientSendmailTest, UnlistedRecipientIsRefusedAtRcptAndTheOthersAreDelivered) {
  SmtpSession smtp(sendmail_->port());
  std::vector<SmtpReply> replies;
  SmtpReply r = smtp.sendMail(
      "sender@x.example",
      {"bob@alpha.example", "nosuchuser@alpha.example", "carol@alpha.example", "root@localhost"},
      kContent, &replies);
  smtp.quit();
  ASSERT_EQ(replies.size(), 4u);
  EXPECT_EQ(replies[0].code, 250) << replies[0].text;
  EXPECT_EQ(replies[1].code, 550) << replies[1].text;
  // sendmail puts "<addr>... " in front of a milter's RCPT reply text; Postfix passes it as is.
  EXPECT_EQ(replies[1].text,
            "550 5.1.1 <nosuchuser@alpha.example>... <nosuchuser@alpha.example>: Recipient "
            "address rejected: User unknown");
  EXPECT_EQ(replies[2].code, 250) << replies[2].text;
  EXPECT_EQ(replies[3].code, 250) << replies[3].text;
  ASSERT_EQ(r.code, 250) << r.text;

  Spool spool(milter_->spoolDir());
  auto ids = spool.list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u);
  auto m = spool.load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  ASSERT_EQ(m->env.rcpts.size(), 2u);
  EXPECT_EQ(m->env.rcpts[0].address, "bob@alpha.example");
  EXPECT_EQ(m->env.rcpts[1].address, "carol@alpha.example");
  auto queued = sendmail_->queue();
  ASSERT_EQ(queued.size(), 1u) << "the local copy stays with sendmail";
  ASSERT_EQ(queued[0].recipients.size(), 1u);
  EXPECT_NE(queued[0].recipients[0].find("root"), std::string::npos);
  EXPECT_TRUE(milter_->waitForLog(
      "milter: reject: RCPT to=<nosuchuser@alpha.example>, client=alpha: 550 5.1.1"));
  // beta has no list: every address of it is taken, as before.
  EXPECT_EQ(rcpt("anyone@beta.example").code, 250);
}

TEST_F(RecipientSendmailTest, AChangedFileCountsAtTheNextRcptWithoutReload) {
  EXPECT_EQ(rcpt("dave@alpha.example").code, 550);
  writeFile(listFile() + ".new", "carol@alpha.example\ndave@alpha.example\n");
  ASSERT_EQ(::rename((listFile() + ".new").c_str(), listFile().c_str()), 0);
  EXPECT_EQ(rcpt("dave@alpha.example").code, 250);
  EXPECT_EQ(spooled(), 0u) << "nothing was sent";
}

TEST_F(RecipientSendmailTest, ReloadTakesAChangedInlineList) {
  EXPECT_EQ(rcpt("erin@alpha.example").code, 550);
  TestMilterOptions mo = milter_->options();
  mo.clients[0].extra =
      "recipients = [\"erin@alpha.example\"]\nrecipient_file = \"" + listFile() + "\"\n";
  milter_->setOptions(mo);
  milter_->writeConfig();
  ASSERT_EQ(::kill(milter_->process().pid(), SIGUSR1), 0);
  ASSERT_TRUE(milter_->waitForLog("reload: taken: client alpha: recipients"));
  EXPECT_EQ(rcpt("erin@alpha.example").code, 250);
  EXPECT_EQ(rcpt("bob@alpha.example").code, 550) << "bob was only in the old inline list";
}

}  // namespace
}  // namespace dynmx::test
