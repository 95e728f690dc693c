// sendmail_mailer_test.cpp: dynmx-enqueue as a sendmail mailer chosen by mailertable.
//
// The .mc lines (FEATURE(`mailertable'), MAILER_DEFINITIONS and the Mdynmx definition) and the
// mailertable line are taken from dynmx-enqueue(8)'s source and fed to m4 as they are printed;
// only paths and the user (nobody: there is no dynmx user here) are the test's, and the map
// directory (MAIL_SETTINGS_DIR) is private. A real sendmail (queue-only) accepts the message and
// a queue run (`sendmail -q`) hands it to the mailer: the client's copy must land in the dynmx
// spool, exit 75 must keep it in sendmail's queue until the spool is back, exit 67 must bounce it
// to the sender. The old recipe's define(`confMAILER_DEFINITIONS', ...) is shown to produce no
// mailer at all, which is why the page no longer uses it.
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
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
    "To: bob@home.example.org\r\n"
    "Subject: dynmx mailer test\r\n"
    "Message-ID: <mailer-test-1@x.example>\r\n"
    "Date: Sun, 22 Nov 2026 01:02:03 +0000\r\n"
    "\r\n"
    "Hello,\r\n"
    ".a line that starts with a dot\r\n"
    "bye\r\n";

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

void chownTree(const std::string& path, uid_t uid, gid_t gid) {
  if (chown(path.c_str(), uid, gid) != 0) throw std::runtime_error("chown " + path);
  for (const auto& e : std::filesystem::recursive_directory_iterator(path)) {
    if (chown(e.path().c_str(), uid, gid) != 0)
      throw std::runtime_error("chown " + e.path().string());
  }
}

// sendmail refuses map files with a world-writable directory (such as /tmp) on their path.
class RunDir {
 public:
  RunDir() {
    char tmpl[] = "/run/dynmx-mailer.XXXXXX";
    if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp /run/dynmx-mailer.XXXXXX failed");
    path_ = tmpl;
    chmod(path_.c_str(), 0755);
  }
  ~RunDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class SendmailMailerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    passwd* pw = getpwnam("nobody");
    ASSERT_NE(pw, nullptr);
    nobody_uid_ = pw->pw_uid;
    nobody_gid_ = pw->pw_gid;
    TestMilterOptions mo;
    mo.clients = {{"home", {"home.example.org"}}};
    dynmx_ = std::make_unique<TestMilter>(tmp_.path() + "/dynmx", mo);  // config + spool only
    chownTree(dynmx_->spoolDir(), nobody_uid_, nobody_gid_);

    // dynmx-enqueue(8), SENDMAIL: the mailertable line, and one for a domain of no client.
    const std::string settings = run_.path() + "/";
    writeFile(settings + "mailertable",
              joinReplacing(manPageExample("dynmx-enqueue.8", ".SH SENDMAIL", 2)) +
                  "unclaimed.example    dynmx:nobody\n");
    std::string out;
    ASSERT_EQ(runCommand({"/usr/sbin/makemap", "hash", settings + "mailertable"}, &out,
                         readFile(settings + "mailertable")),
              0)
        << out;
    for (const char* f : {"local-host-names", "relay-domains", "trusted-users"}) {
      writeFile(settings + f, "");
    }

    TestSendmailOptions so;
    so.relay_domains = {"home.example.org", "unclaimed.example"};
    so.extra_mc = "define(`MAIL_SETTINGS_DIR', `" + settings + "')dnl\n" +
                  joinReplacing(manPageExample("dynmx-enqueue.8", ".SH SENDMAIL", 0));
    so.tail_mc = joinReplacing(manPageExample("dynmx-enqueue.8", ".SH SENDMAIL", 1),
                               {{"/usr/sbin/dynmx-enqueue", binDir() + "/dynmx-enqueue"},
                                {"/etc/dynmx/dynmx.toml", dynmx_->configPath()},
                                {"U=dynmx:dynmx", "U=nobody:nogroup"}});
    sendmail_ = std::make_unique<TestSendmail>(tmp_.path() + "/sendmail", so);
    sendmail_->start();
  }
  void TearDown() override {
    if (sendmail_) sendmail_->stop();
    if (HasFailure()) std::fprintf(stderr, "--- last queue run:\n%s\n", queue_run_.c_str());
  }

  void send(const std::vector<std::string>& rcpts, const std::string& content = kContent,
            const std::string& from = "sender@x.example") {
    SmtpSession smtp(sendmail_->port());
    SmtpReply r = smtp.sendMail(from, rcpts, content);
    ASSERT_EQ(r.code, 250) << r.text;
    smtp.quit();
  }

  // One queue run in the foreground: sendmail hands queued mail to its mailers, then exits.
  // (Its exit status is that of the last delivery; the tests look at the queue and spool.)
  void runQueue() {
    queue_run_.clear();
    runCommand({"/usr/sbin/sendmail", "-C" + sendmail_->cfPath(), "-q", "-v"}, &queue_run_);
  }

  Spool spool() { return Spool(dynmx_->spoolDir()); }

  TempDir tmp_{"dynmx-mailer"};
  RunDir run_;
  uid_t nobody_uid_ = 0;
  gid_t nobody_gid_ = 0;
  std::unique_ptr<TestMilter> dynmx_;
  std::unique_ptr<TestSendmail> sendmail_;
  std::string queue_run_;
};

TEST_F(SendmailMailerTest, TheManPageLinesDefineTheMailer) {
  std::string cf = readFile(sendmail_->cfPath());
  EXPECT_TRUE(contains(cf, "\nMdynmx, P=" + binDir() + "/dynmx-enqueue, F=mnDFMu,")) << cf;
  EXPECT_TRUE(
      contains(cf, "A=dynmx-enqueue -c " + dynmx_->configPath() + " -f $g --queue-id $i -- $u\n"))
      << "m4 leaves the argument line alone";
  EXPECT_TRUE(contains(cf, "\nKmailertable hash " + run_.path() + "/mailertable"));
}

TEST_F(SendmailMailerTest, TheOldRecipesConfMailerDefinitionsMakesNoMailer) {
  // What dynmx-enqueue(8) used to say: m4 accepts it and nothing reads it.
  std::string mc = readFile(sendmail_->dir() + "/sendmail.mc");
  size_t at = mc.find("MAILER_DEFINITIONS\n");
  ASSERT_NE(at, std::string::npos);
  std::string old =
      mc.substr(0, at) + "define(`confMAILER_DEFINITIONS', `\n" + mc.substr(at + 19) + "')dnl\n";
  writeFile(tmp_.path() + "/old.mc", old);
  std::string cf;
  ASSERT_EQ(runCommand({"/usr/bin/m4", tmp_.path() + "/old.mc"}, &cf), 0);
  EXPECT_FALSE(contains(cf, "Mdynmx")) << "no mailer from confMAILER_DEFINITIONS";
}

TEST_F(SendmailMailerTest, ClientMailReachesTheSpoolThroughTheMailer) {
  send({"bob@home.example.org", "alice@home.example.org"});
  ASSERT_EQ(sendmail_->queue().size(), 1u) << "queue-only: waiting for the queue run";
  std::string qid = sendmail_->queue()[0].id;
  runQueue();
  auto ids = spool().list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u) << "F=m: one call for both recipients\n" << queue_run_;
  auto m = spool().load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.client, "home");
  EXPECT_EQ(m->env.sender, "sender@x.example");
  EXPECT_EQ(m->env.mta_queue_id, qid);
  std::vector<std::string> rcpts;
  for (const auto& r : m->env.rcpts) rcpts.push_back(r.address);
  std::sort(rcpts.begin(), rcpts.end());
  EXPECT_EQ(rcpts, (std::vector<std::string>{"alice@home.example.org", "bob@home.example.org"}));
  auto reader = spool().openContent(*m);
  ASSERT_TRUE(reader.ok());
  std::string content;
  for (;;) {
    auto c = reader->next();
    ASSERT_TRUE(c.ok());
    if (c->empty()) break;
    content.append(c->data(), c->size());
  }
  // sendmail's own Received: header, then the message; the body exactly as sent (no dots added).
  // F=n: no UNIX "From " line in front, which sendmail otherwise writes to a program mailer.
  EXPECT_EQ(content.rfind("Received: from ", 0), 0u) << content;
  EXPECT_TRUE(contains(content, "\r\nSubject: dynmx mailer test\r\n")) << content;
  std::string body = kContent.substr(kContent.find("\r\n\r\n"));
  EXPECT_EQ(content.substr(content.size() - body.size()), body) << content;
  EXPECT_TRUE(sendmail_->queue().empty()) << "delivered: nothing left in sendmail's queue";
}

TEST_F(SendmailMailerTest, TempfailKeepsTheMessageQueuedUntilTheSpoolIsBack) {
  std::string tmpdir = dynmx_->spoolDir() + "/tmp";
  ASSERT_EQ(rmdir(tmpdir.c_str()), 0);
  writeFile(tmpdir, "not a directory\n", 0600);
  send({"bob@home.example.org"});
  runQueue();
  EXPECT_TRUE(spool().list(QueueState::Incoming).empty());
  auto queued = sendmail_->queue();
  ASSERT_EQ(queued.size(), 1u) << "75: sendmail keeps it\n" << queue_run_;
  EXPECT_EQ(queued[0].sender, "sender@x.example");
  EXPECT_TRUE(contains(queue_run_, "Deferred")) << queue_run_;

  ASSERT_EQ(unlink(tmpdir.c_str()), 0);
  ASSERT_EQ(mkdir(tmpdir.c_str(), 0700), 0);
  ASSERT_EQ(chown(tmpdir.c_str(), nobody_uid_, nobody_gid_), 0);
  runQueue();
  EXPECT_EQ(spool().list(QueueState::Incoming).size(), 1u) << "nothing lost\n" << queue_run_;
  EXPECT_TRUE(sendmail_->queue().empty());
}

TEST_F(SendmailMailerTest, RecipientOfNoClientBouncesToTheSender) {
  send({"someone@unclaimed.example"});
  runQueue();
  EXPECT_TRUE(spool().list(QueueState::Incoming).empty());
  EXPECT_TRUE(contains(queue_run_, "User unknown")) << queue_run_;
  // The original is gone and a bounce went to the sender (x.example has no route here, so that
  // bounce in turn goes to the postmaster: whatever is left in the queue is that).
  EXPECT_TRUE(contains(queue_run_, "<sender@x.example>... ")) << queue_run_;
  for (const QueuedMessage& q : sendmail_->queue()) {
    for (const std::string& r : q.recipients) {
      EXPECT_FALSE(contains(r, "unclaimed.example")) << "67 does not keep the message queued";
    }
  }
}

TEST_F(SendmailMailerTest, OversizeMessageBouncesToTheSender) {
  dynmx_->options().max_message_size = "200";
  dynmx_->writeConfig();
  send({"bob@home.example.org"}, kContent + std::string(1000, 'x') + "\r\n");
  runQueue();
  EXPECT_TRUE(spool().list(QueueState::Incoming).empty());
  EXPECT_TRUE(contains(queue_run_, "\nData format error")) << queue_run_;
  EXPECT_TRUE(contains(queue_run_, "<sender@x.example>... ")) << "65: a bounce\n" << queue_run_;
  for (const QueuedMessage& q : sendmail_->queue()) {
    for (const std::string& r : q.recipients) {
      EXPECT_FALSE(contains(r, "bob@home.example.org")) << "65 does not keep the message queued";
    }
  }
}

TEST_F(SendmailMailerTest, NullSenderArrivesAsTheNullSender) {
  send({"bob@home.example.org"}, kContent, "");
  runQueue();
  auto ids = spool().list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u) << queue_run_;
  auto m = spool().load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.sender, "") << "$g of a bounce is the null sender, not MAILER-DAEMON";
}

}  // namespace
}  // namespace dynmx::test
