// postfix_test.cpp: dynmx-milter in a real Postfix's smtpd_milters and non_smtpd_milters.
//
// Postfix is Debian 12's package, unpacked (tests/harness/postfix_harness.hpp), configured with
// exactly the main.cf lines of dynmx-milter(8) (taken from the page source; only the socket path
// is the test's) and with no queue manager, so that what Postfix keeps stays in its queue where
// the test reads it. The client's copy must land in the dynmx spool byte for byte as sent (after
// our trace header and Postfix's own Received: header), the other recipients must stay with
// Postfix, a message for clients only must be discarded by Postfix, and with the milter down or
// failing Postfix must answer 4xx and keep nothing. Skips only when the package cannot be had.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/man_page.hpp"
#include "tests/harness/postfix_harness.hpp"
#include "tests/harness/sendmail_harness.hpp"

namespace dynmx::test {
namespace {

const std::string kContent =
    "From: Sender <sender@x.example>\r\n"
    "To: bob@alpha.example, carol@other.example\r\n"
    "Subject: dynmx postfix test\r\n"
    "Message-ID: <postfix-test-1@x.example>\r\n"
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

std::string spooledContent(Spool& spool, const SpoolMessage& m) {
  auto reader = spool.openContent(m);
  if (!reader.ok()) throw std::runtime_error(reader.error().message);
  std::string content;
  for (;;) {
    auto c = reader->next();
    if (!c.ok()) throw std::runtime_error(c.error().message);
    if (c->empty()) break;
    content.append(c->data(), c->size());
  }
  return content;
}

// Skips the header block that starts at `pos` with `name` (its folded lines included).
size_t skipHeader(const std::string& s, size_t pos) {
  for (;;) {
    size_t eol = s.find("\r\n", pos);
    if (eol == std::string::npos) return std::string::npos;
    pos = eol + 2;
    if (pos >= s.size() || (s[pos] != ' ' && s[pos] != '\t')) return pos;
  }
}

class PostfixMilterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    auto pkg = postfixPackage(&why);
    if (!pkg) GTEST_SKIP() << why;
    TestMilterOptions mo;
    // Postfix talks to milters as its mail_owner ("mail" here, "postfix" in a real install).
    mo.socket_group = "mail";
    milter_ = std::make_unique<TestMilter>(tmp_.path() + "/milter", mo);
    milter_->start();
    TestPostfixOptions po;
    po.relay_domains = {"alpha.example", "other.example"};
    // dynmx-milter(8), MTA SETUP, Postfix: the lines as printed, our socket instead of the default.
    po.main_cf = joinReplacing(manPageExample("dynmx-milter.8", ".SS Postfix"),
                               {{"unix:/run/dynmx/milter.sock", milter_->socketSpec()}});
    postfix_ = std::make_unique<TestPostfix>(tmp_.path() + "/postfix", *pkg, po);
    postfix_->start();
  }
  void TearDown() override {
    if (postfix_) postfix_->stop();
    if (milter_) milter_->stop();
    if (HasFailure() && milter_) {
      std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
      if (postfix_) std::fprintf(stderr, "--- Postfix log:\n%s\n", postfix_->log().c_str());
    }
  }

  std::vector<std::string> spoolIds(QueueState st) { return Spool(milter_->spoolDir()).list(st); }

  TempDir tmp_{"dynmx-postfix"};
  std::unique_ptr<TestMilter> milter_;
  std::unique_ptr<TestPostfix> postfix_;
};

TEST_F(PostfixMilterTest, TheManPageLinesAreTheOnesInMainCf) {
  std::string main_cf = readFile(postfix_->confDir() + "/main.cf");
  for (const char* line : {"smtpd_milters = ", "non_smtpd_milters = ",
                           "milter_default_action = tempfail\n", "milter_protocol = 6\n"}) {
    EXPECT_NE(main_cf.find(line), std::string::npos) << line;
  }
  std::string out;
  ASSERT_EQ(
      postfix_->run({"postconf", "-c", postfix_->confDir(), "-h", "milter_default_action"}, &out),
      0);
  EXPECT_EQ(out, "tempfail\n");
}

TEST_F(PostfixMilterTest, ClientCopyGoesToTheSpoolAndPostfixKeepsTheOtherRecipient) {
  SmtpSession smtp(postfix_->port());
  std::vector<SmtpReply> rcpt;
  SmtpReply r = smtp.sendMail("sender@x.example", {"bob@alpha.example", "carol@other.example"},
                              kContent, &rcpt);
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
  EXPECT_FALSE(m->env.mta_queue_id.empty()) << "Postfix's queue id, read again at end of message";

  // Our trace header, then the message exactly as sent. Like sendmail, Postfix does not show
  // milters the Received: header it adds itself. Postfix knows its queue id from MAIL FROM on
  // (smtpd assigns it then), so the trace header has it too.
  std::string content = spooledContent(spool, *m);
  std::string trace = "Received: by mx.dynmx-test.example (dynmx-milter, MTA queue id " +
                      m->env.mta_queue_id + ")\r\n\tid " + m->id + " for <bob@alpha.example>; ";
  ASSERT_EQ(content.rfind(trace, 0), 0u) << content;
  size_t pos = skipHeader(content, 0);
  ASSERT_NE(pos, std::string::npos) << content;
  EXPECT_EQ(content.substr(pos), kContent) << content;

  auto queued = postfix_->queue();
  ASSERT_EQ(queued.size(), 1u);
  EXPECT_EQ(queued[0].id, m->env.mta_queue_id) << "the spool records Postfix's queue id";
  EXPECT_EQ(queued[0].sender, "sender@x.example");
  EXPECT_EQ(queued[0].recipients, std::vector<std::string>{"carol@other.example"})
      << "Postfix keeps the recipient of no client and only that one";
  EXPECT_NE(queued[0].content.find(".a line that starts with a dot"), std::string::npos);
  EXPECT_TRUE(
      milter_->waitForLog(m->env.mta_queue_id + ": milter: captured to=<bob@alpha.example>"));
}

TEST_F(PostfixMilterTest, ClientOnlyMessageIsDiscardedByPostfix) {
  SmtpSession smtp(postfix_->port());
  SmtpReply r = smtp.sendMail("sender@x.example", {"bob@alpha.example"}, kContent);
  ASSERT_EQ(r.code, 250) << r.text;
  smtp.quit();
  ASSERT_EQ(spoolIds(QueueState::Incoming).size(), 1u);
  EXPECT_TRUE(postfix_->queue().empty()) << "nothing left for Postfix to deliver";
  EXPECT_TRUE(postfix_->waitForLog("milter-discard: END-OF-MESSAGE from"));
}

TEST_F(PostfixMilterTest, MilterDownMeansPostfixTempfailsAndKeepsNothing) {
  milter_->stop();
  SmtpSession smtp(postfix_->port());
  SmtpReply r;
  try {
    EXPECT_EQ(smtp.command("EHLO client.test").code, 250);
    r = smtp.sendMail("sender@x.example", {"bob@alpha.example", "carol@other.example"}, kContent);
  } catch (const std::exception& e) {
    FAIL() << "Postfix dropped the connection instead of answering: " << e.what();
  }
  EXPECT_EQ(r.code, 451) << r.text;
  EXPECT_NE(r.text.find("4.7.1"), std::string::npos) << r.text;
  smtp.quit();
  EXPECT_TRUE(postfix_->queue().empty()) << "milter_default_action = tempfail: nothing accepted";
  EXPECT_TRUE(spoolIds(QueueState::Incoming).empty());
}

TEST_F(PostfixMilterTest, SpoolFailureTempfailsAtEndOfDataAndPostfixKeepsNothing) {
  std::string tmpdir = milter_->spoolDir() + "/tmp";
  ASSERT_EQ(rmdir(tmpdir.c_str()), 0);
  writeFile(tmpdir, "not a directory\n", 0600);
  SmtpSession smtp(postfix_->port());
  SmtpReply r =
      smtp.sendMail("sender@x.example", {"bob@alpha.example", "carol@other.example"}, kContent);
  EXPECT_EQ(r.code, 451) << r.text;
  EXPECT_NE(r.text.find("4.3.0"), std::string::npos) << r.text;
  smtp.quit();
  EXPECT_TRUE(postfix_->queue().empty()) << "the other recipient's copy is refused with the rest";
  EXPECT_TRUE(spoolIds(QueueState::Incoming).empty());
}

// non_smtpd_milters: mail submitted on the MX host with Postfix's sendmail(1) is captured too.
// Postfix presents such mail to milters as coming from localhost[127.0.0.1] (MILTER_README), so
// the spool records 127.0.0.1 as its origin, not "local" as with sendmail's own submissions.
TEST_F(PostfixMilterTest, LocalSubmissionIsCapturedThroughNonSmtpdMilters) {
  std::string out;
  int rc = postfix_->run(
      {"sendmail", "-f", "sender@x.example", "--", "bob@alpha.example", "carol@other.example"},
      &out, "Subject: local submission\n\nhello\n");
  ASSERT_EQ(rc, 0) << out;
  Spool spool(milter_->spoolDir());
  ASSERT_TRUE(waitFor([&] { return spool.list(QueueState::Incoming).size() == 1; }))
      << postfix_->log();
  auto ids = spool.list(QueueState::Incoming);
  auto m = spool.load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.origin, "127.0.0.1");
  ASSERT_EQ(m->env.rcpts.size(), 1u);
  EXPECT_EQ(m->env.rcpts[0].address, "bob@alpha.example");
  std::string content = spooledContent(spool, *m);
  EXPECT_NE(content.find("\r\nSubject: local submission\r\n"), std::string::npos) << content;
  EXPECT_EQ(content.substr(content.size() - 11), "\r\n\r\nhello\r\n") << content;
  std::vector<PostfixQueued> queued;
  ASSERT_TRUE(waitFor([&] {
    queued = postfix_->queue();
    return queued.size() == 1 && queued[0].queue == "incoming";
  })) << postfix_->log();
  EXPECT_EQ(queued[0].recipients, std::vector<std::string>{"carol@other.example"});
}

// Debian's default master.cf: smtpd and cleanup chrooted in the queue directory. The page's
// second set of main.cf lines names the socket relative to the queue directory, with the socket
// inside it (dynmx/milter.sock), as its dynmx.toml lines say.
class PostfixChrootMilterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    auto pkg = postfixPackage(&why);
    if (!pkg) GTEST_SKIP() << why;
    TestPostfixOptions po;
    po.chroot = true;
    po.relay_domains = {"alpha.example", "other.example"};
    po.main_cf = joinReplacing(manPageExample("dynmx-milter.8", ".SS Postfix", 2));
    postfix_ = std::make_unique<TestPostfix>(tmp_.path() + "/postfix", *pkg, po);
    std::string toml = joinReplacing(manPageExample("dynmx-milter.8", ".SS Postfix", 1));
    ASSERT_NE(toml.find("socket = \"unix:/var/spool/postfix/dynmx/milter.sock\""),
              std::string::npos)
        << toml;
    const std::string sockdir = postfix_->queueDir() + "/dynmx";
    ASSERT_EQ(mkdir(sockdir.c_str(), 0755), 0);
    TestMilterOptions mo;
    mo.socket_path = sockdir + "/milter.sock";  // /var/spool/postfix/dynmx/milter.sock here
    mo.socket_group = "mail";                   // "postfix" in a real install
    milter_ = std::make_unique<TestMilter>(tmp_.path() + "/milter", mo);
    milter_->start();
    postfix_->start();
  }
  void TearDown() override {
    if (postfix_) postfix_->stop();
    if (milter_) milter_->stop();
    if (HasFailure() && milter_ && postfix_) {
      std::fprintf(stderr, "--- dynmx-milter log:\n%s\n--- Postfix log:\n%s\n",
                   milter_->log().c_str(), postfix_->log().c_str());
    }
  }

  TempDir tmp_{"dynmx-postfix-chroot"};
  std::unique_ptr<TestMilter> milter_;
  std::unique_ptr<TestPostfix> postfix_;
};

TEST_F(PostfixChrootMilterTest, ChrootedSmtpdAndCleanupReachTheMilterInsideTheQueueDirectory) {
  std::string master_cf = readFile(postfix_->confDir() + "/master.cf");
  ASSERT_NE(master_cf.find(" inet n - y - - smtpd\n"), std::string::npos) << master_cf;
  ASSERT_NE(master_cf.find("cleanup   unix  n - y - 0 cleanup\n"), std::string::npos);

  SmtpSession smtp(postfix_->port());
  SmtpReply r =
      smtp.sendMail("sender@x.example", {"bob@alpha.example", "carol@other.example"}, kContent);
  ASSERT_EQ(r.code, 250) << r.text;
  smtp.quit();
  Spool spool(milter_->spoolDir());
  ASSERT_EQ(spool.list(QueueState::Incoming).size(), 1u);
  auto queued = postfix_->queue();
  ASSERT_EQ(queued.size(), 1u);
  EXPECT_EQ(queued[0].recipients, std::vector<std::string>{"carol@other.example"});
  // The smtpd that took it (idle now, waiting for the next connection) is chrooted.
  bool seen = false;
  for (pid_t p : descendants(postfix_->pid())) {
    std::string proc = "/proc/" + std::to_string(p);
    if (readFile(proc + "/comm") != "smtpd\n") continue;
    char root[4096] = {};
    ASSERT_GT(readlink((proc + "/root").c_str(), root, sizeof root - 1), 0);
    EXPECT_EQ(std::string(root), postfix_->queueDir());
    seen = true;
  }
  EXPECT_TRUE(seen) << "no smtpd process";

  // A local submission goes through the chrooted cleanup and non_smtpd_milters.
  std::string out;
  ASSERT_EQ(postfix_->run({"sendmail", "-f", "sender@x.example", "--", "alice@alpha.example"}, &out,
                          "Subject: local, chrooted\n\nhello\n"),
            0)
      << out;
  EXPECT_TRUE(waitFor([&] { return spool.list(QueueState::Incoming).size() == 2; }))
      << postfix_->log();
}

TEST_F(PostfixChrootMilterTest, MilterDownMeansPostfixTempfails) {
  milter_->stop();
  SmtpSession smtp(postfix_->port());
  SmtpReply r = smtp.sendMail("sender@x.example", {"bob@alpha.example"}, kContent);
  EXPECT_EQ(r.code, 451) << r.text;
  smtp.quit();
  EXPECT_TRUE(postfix_->queue().empty());
}

}  // namespace
}  // namespace dynmx::test
