// postfix_pipe_test.cpp: dynmx-enqueue as a Postfix pipe(8) transport chosen by transport_maps.
//
// A real Postfix (Debian's package, unpacked: tests/harness/postfix_harness.hpp) with its queue
// manager runs exactly the master.cf, main.cf and transport lines of dynmx-enqueue(8), taken from
// the page source; only paths, and the user (nobody: there is no dynmx user here), are the
// test's. Mail for the client's domain must reach the dynmx spool as sent, one invocation for
// all its recipients, with Postfix's queue id and the null sender kept; and Postfix must read the
// program's exit codes as the page says: 75 defers (the message stays queued and arrives once the
// spool is back), 67 and 65 bounce. Skips only when the package cannot be had.
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
#include "tests/harness/postfix_harness.hpp"
#include "tests/harness/sendmail_harness.hpp"

namespace dynmx::test {
namespace {

const std::string kContent =
    "From: Sender <sender@x.example>\r\n"
    "To: bob@home.example.org\r\n"
    "Subject: dynmx pipe test\r\n"
    "Message-ID: <pipe-test-1@x.example>\r\n"
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

class PostfixPipeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    auto pkg = postfixPackage(&why);
    if (!pkg) GTEST_SKIP() << why;
    passwd* pw = getpwnam("nobody");
    ASSERT_NE(pw, nullptr);
    nobody_uid_ = pw->pw_uid;
    nobody_gid_ = pw->pw_gid;

    // The dynmx configuration and spool (TestMilter writes them; no milter runs here).
    TestMilterOptions mo;
    mo.clients = {{"home", {"home.example.org"}}};
    dynmx_ = std::make_unique<TestMilter>(tmp_.path() + "/dynmx", mo);
    chownTree(dynmx_->spoolDir(), nobody_uid_, nobody_gid_);

    const std::vector<std::pair<std::string, std::string>> paths = {
        {"/usr/sbin/dynmx-enqueue", binDir() + "/dynmx-enqueue"},
        {"/etc/dynmx/dynmx.toml", dynmx_->configPath()},
        {"user=dynmx", "user=nobody"},
        {"/etc/postfix/transport", tmp_.path() + "/transport"},
        // A second relay domain that no dynmx client claims (the EX_NOUSER case).
        {"relay_domains = home.example.org", "relay_domains = home.example.org unclaimed.example"}};
    writeFile(tmp_.path() + "/transport",
              joinReplacing(manPageExample("dynmx-enqueue.8", ".SH POSTFIX", 2)) +
                  "unclaimed.example    dynmx:\n");
    TestPostfixOptions po;
    po.deliver = true;
    po.master_cf = joinReplacing(manPageExample("dynmx-enqueue.8", ".SH POSTFIX", 0), paths);
    po.main_cf = joinReplacing(manPageExample("dynmx-enqueue.8", ".SH POSTFIX", 1), paths);
    postfix_ = std::make_unique<TestPostfix>(tmp_.path() + "/postfix", *pkg, po);
    std::string out;
    ASSERT_EQ(postfix_->run({"postmap", "hash:" + tmp_.path() + "/transport"}, &out), 0) << out;
    postfix_->start();
  }
  void TearDown() override {
    if (postfix_) {
      postfix_->stop();
      if (HasFailure()) std::fprintf(stderr, "--- Postfix log:\n%s\n", postfix_->log().c_str());
    }
  }

  Spool spool() { return Spool(dynmx_->spoolDir()); }

  std::string spooledContent(const SpoolMessage& m) {
    Spool s = spool();
    auto reader = s.openContent(m);
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

  // The Postfix log line about `rcpt` that carries a status, once there is one.
  std::string statusLine(const std::string& rcpt) {
    std::string found;
    waitFor([&] {
      std::string log = postfix_->log();
      for (size_t p = log.find("to=<" + rcpt + ">"); p != std::string::npos;
           p = log.find("to=<" + rcpt + ">", p + 1)) {
        size_t bol = log.rfind('\n', p) + 1, eol = log.find('\n', p);
        std::string line = log.substr(bol, eol - bol);
        if (contains(line, "status=")) found = line;
      }
      return !found.empty();
    });
    return found;
  }

  void send(const std::string& from, const std::vector<std::string>& rcpts,
            const std::string& content = kContent) {
    SmtpSession smtp(postfix_->port());
    SmtpReply r = smtp.sendMail(from, rcpts, content);
    ASSERT_EQ(r.code, 250) << r.text;
    smtp.quit();
  }

  TempDir tmp_{"dynmx-postfix-pipe"};
  uid_t nobody_uid_ = 0;
  gid_t nobody_gid_ = 0;
  std::unique_ptr<TestMilter> dynmx_;
  std::unique_ptr<TestPostfix> postfix_;
};

TEST_F(PostfixPipeTest, ClientMailReachesTheSpoolThroughThePipeInOneCall) {
  send("sender@x.example", {"bob@home.example.org", "alice@home.example.org"});
  std::string line = statusLine("bob@home.example.org");
  ASSERT_TRUE(contains(line, "relay=dynmx") && contains(line, "status=sent")) << line;
  EXPECT_TRUE(contains(statusLine("alice@home.example.org"), "status=sent"));

  auto ids = spool().list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u) << "one pipe call for both recipients";
  auto m = spool().load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.client, "home");
  EXPECT_EQ(m->env.sender, "sender@x.example");
  ASSERT_EQ(m->env.rcpts.size(), 2u);
  std::vector<std::string> rcpts{m->env.rcpts[0].address, m->env.rcpts[1].address};
  std::sort(rcpts.begin(), rcpts.end());  // Postfix sorts them
  EXPECT_EQ(rcpts, (std::vector<std::string>{"alice@home.example.org", "bob@home.example.org"}));
  size_t colon = line.find(": to=<");
  size_t start = line.rfind(' ', colon) + 1;
  std::string qid = line.substr(start, colon - start);
  EXPECT_EQ(m->env.mta_queue_id, qid) << line;

  // Postfix's Received: header (smtpd adds it), then the message exactly as sent: no
  // Return-Path:, Delivered-To: or X-Original-To: (no R, D, O flags), no dot-stuffing.
  std::string content = spooledContent(*m);
  ASSERT_EQ(content.rfind("Received: from ", 0), 0u) << content;
  size_t body = content.find("\r\nFrom: Sender");
  ASSERT_NE(body, std::string::npos) << content;
  EXPECT_TRUE(contains(content.substr(0, body), "(Postfix) with ESMTP id " + qid)) << content;
  EXPECT_EQ(content.substr(body + 2), kContent) << content;
  EXPECT_TRUE(waitFor([&] { return postfix_->queue().empty(); })) << "Postfix keeps nothing";
}

TEST_F(PostfixPipeTest, NullSenderArrivesAsTheNullSender) {
  send("", {"bob@home.example.org"});
  ASSERT_TRUE(contains(statusLine("bob@home.example.org"), "status=sent"));
  auto ids = spool().list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u);
  auto m = spool().load(QueueState::Incoming, ids[0]);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.sender, "") << "null_sender= passes <> on, not MAILER-DAEMON";
}

TEST_F(PostfixPipeTest, TempfailDefersAndTheMessageArrivesOnceTheSpoolIsBack) {
  std::string tmpdir = dynmx_->spoolDir() + "/tmp";
  ASSERT_EQ(rmdir(tmpdir.c_str()), 0);
  writeFile(tmpdir, "not a directory\n", 0600);
  send("sender@x.example", {"bob@home.example.org"});
  std::string line = statusLine("bob@home.example.org");
  EXPECT_TRUE(contains(line, "status=deferred")) << line;
  // The queue manager moves it from active/ to deferred/ after the pipe's report.
  std::vector<PostfixQueued> queued;
  ASSERT_TRUE(waitFor([&] {
    queued = postfix_->queue();
    return queued.size() == 1 && queued[0].queue == "deferred";
  })) << "75 keeps the message in Postfix's deferred queue";
  EXPECT_EQ(queued[0].recipients, std::vector<std::string>{"bob@home.example.org"});
  EXPECT_TRUE(spool().list(QueueState::Incoming).empty());

  ASSERT_EQ(unlink(tmpdir.c_str()), 0);
  ASSERT_EQ(mkdir(tmpdir.c_str(), 0700), 0);
  ASSERT_EQ(chown(tmpdir.c_str(), nobody_uid_, nobody_gid_), 0);
  std::string out;
  ASSERT_EQ(postfix_->run({"postqueue", "-c", postfix_->confDir(), "-f"}, &out), 0) << out;
  EXPECT_TRUE(waitFor([&] { return spool().list(QueueState::Incoming).size() == 1; }))
      << "nothing lost: the retry delivers it";
  EXPECT_TRUE(waitFor([&] { return postfix_->queue().empty(); }));
}

TEST_F(PostfixPipeTest, RecipientOfNoClientBounces) {
  send("sender@x.example", {"someone@unclaimed.example"});
  std::string line = statusLine("someone@unclaimed.example");
  EXPECT_TRUE(contains(line, "status=bounced")) << line;
  EXPECT_TRUE(contains(line, "dsn=5.")) << line;
  EXPECT_TRUE(spool().list(QueueState::Incoming).empty());
  EXPECT_TRUE(postfix_->waitForLog("sender non-delivery notification: "))
      << "the bounce goes back to the sender";
}

TEST_F(PostfixPipeTest, OversizeMessageBounces) {
  dynmx_->options().max_message_size = "200";
  dynmx_->writeConfig();
  send("sender@x.example", {"bob@home.example.org"}, kContent + std::string(1000, 'x') + "\r\n");
  std::string line = statusLine("bob@home.example.org");
  EXPECT_TRUE(contains(line, "status=bounced")) << line;
  EXPECT_TRUE(spool().list(QueueState::Incoming).empty());
}

}  // namespace
}  // namespace dynmx::test
