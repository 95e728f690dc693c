// sendmail_man_page_test.cpp: the sendmail lines of dynmx-milter(8), run as printed.
//
// The INPUT_MAIL_FILTER line and the by-hand confMILTER_MACROS_* lines are taken from the page
// source and given to m4 in a real sendmail's .mc (only the socket path is the test's). With
// them, mail for a client must be captured while the other recipient stays with sendmail, the
// spool must record sendmail's queue id and the trace header its host name, and with the filter
// down sendmail must tempfail (F=T) and keep nothing.
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/man_page.hpp"
#include "tests/harness/sendmail_harness.hpp"

namespace dynmx::test {
namespace {

const std::string kContent =
    "From: Sender <sender@x.example>\r\n"
    "To: bob@alpha.example, root@localhost\r\n"
    "Subject: man page lines\r\n"
    "\r\n"
    "Hello\r\n";

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

class SendmailManPage : public ::testing::Test {
 protected:
  void start(bool with_macro_lines) {
    milter_ = std::make_unique<TestMilter>(tmp_.path() + "/milter");
    milter_->start();
    const std::vector<std::pair<std::string, std::string>> sock = {
        {"unix:/run/dynmx/milter.sock", milter_->socketSpec()}};
    TestSendmailOptions so;
    so.milter_socket.clear();  // no filter line of the harness's own: the page's line only
    so.relay_domains = {"alpha.example"};
    so.extra_mc = joinReplacing(manPageExample("dynmx-milter.8", ".SS sendmail", 0), sock);
    if (with_macro_lines) {
      so.extra_mc += joinReplacing(manPageExample("dynmx-milter.8", ".SS sendmail", 1));
    }
    sendmail_ = std::make_unique<TestSendmail>(tmp_.path() + "/sendmail", so);
    sendmail_->start();
  }
  void TearDown() override {
    if (sendmail_) sendmail_->stop();
    if (milter_) {
      milter_->stop();
      if (HasFailure()) std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
    }
  }

  void expectCapture() {
    SmtpSession smtp(sendmail_->port());
    SmtpReply r =
        smtp.sendMail("sender@x.example", {"bob@alpha.example", "root@localhost"}, kContent);
    ASSERT_EQ(r.code, 250) << r.text;
    smtp.quit();
    Spool spool(milter_->spoolDir());
    auto ids = spool.list(QueueState::Incoming);
    ASSERT_EQ(ids.size(), 1u);
    auto m = spool.load(QueueState::Incoming, ids[0]);
    ASSERT_TRUE(m.ok()) << m.error().message;
    ASSERT_EQ(m->env.rcpts.size(), 1u);
    EXPECT_EQ(m->env.rcpts[0].address, "bob@alpha.example");
    auto queued = sendmail_->queue();
    ASSERT_EQ(queued.size(), 1u);
    EXPECT_EQ(m->env.mta_queue_id, queued[0].id) << "macro i reached the filter";
    ASSERT_EQ(queued[0].recipients.size(), 1u);
    EXPECT_TRUE(contains(queued[0].recipients[0], "root")) << queued[0].recipients[0];
    auto reader = spool.openContent(*m);
    ASSERT_TRUE(reader.ok());
    auto first = reader->next();
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(std::string(first->data(), first->size()).rfind("Received: by mx.dynmx.test ", 0), 0u)
        << "macro j reached the filter";
  }

  TempDir tmp_{"dynmx-sendmail-man"};
  std::unique_ptr<TestMilter> milter_;
  std::unique_ptr<TestSendmail> sendmail_;
};

TEST_F(SendmailManPage, TheFilterLineCapturesAndTempfailsWhileTheFilterIsDown) {
  start(false);
  std::string cf = readFile(sendmail_->cfPath());
  EXPECT_TRUE(contains(cf, "\nXdynmx, S=" + milter_->socketSpec() + ", F=T, T=S:4m;R:4m;E:10m\n"))
      << cf;
  expectCapture();

  milter_->stop();
  SmtpSession smtp(sendmail_->port());
  SmtpReply r =
      smtp.sendMail("sender@x.example", {"bob@alpha.example", "root@localhost"}, kContent);
  EXPECT_GE(r.code, 400) << r.text;
  EXPECT_LT(r.code, 500) << r.text;
  EXPECT_EQ(sendmail_->queue().size(), 1u) << "only the first message's local copy";
}

TEST_F(SendmailManPage, TheByHandMacroLinesGiveTheFilterWhatItUses) {
  start(true);
  std::string cf = readFile(sendmail_->cfPath());
  EXPECT_TRUE(contains(cf,
                       "O Milter.macros.connect=j, _, {daemon_name}, {if_name}, {if_addr}, "
                       "{client_addr}\n"))
      << cf;
  EXPECT_TRUE(contains(cf, "O Milter.macros.eom={msg_id}, i\n")) << cf;
  expectCapture();
}

}  // namespace
}  // namespace dynmx::test
