// postfix_far_end_test.cpp: dynmx-tunneld delivering to a client that runs Postfix.
//
// The whole daemon (the built dynmx-tunneld, in the foreground) delivers spooled mail through a
// real sshd on loopback whose authorized_keys line forces Postfix's `sendmail -bs` (Debian's
// package, unpacked: tests/harness/postfix_harness.hpp; a private instance with its master
// running, no queue manager, so that what it received stays in its queue for the test to read).
// The message must arrive in Postfix's queue with its envelope and body intact (a leading dot
// included), the null sender of a bounce must stay null, and nothing may stay in the dynmx
// spool. Skips only when the package cannot be had.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/postfix_harness.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(120);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

class PostfixFarEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    auto pkg = postfixPackage(&why);
    if (!pkg) GTEST_SKIP() << why;
    TestPostfixOptions po;
    po.myhostname = "farend.example";
    po.smtpd = false;  // it receives through sendmail -bs only
    farend = std::make_unique<TestPostfix>(dir / "farend", *pkg, po);
    farend->start();

    mkdir((dir / "sshd").c_str(), 0700);
    sshd = std::make_unique<TestSshd>(dir / "sshd");
    key = generateKey(dir / "id_ed25519");
    // What a Postfix client puts in authorized_keys is command="/usr/sbin/sendmail -bs"; this
    // Postfix is unpacked, so its libraries and configuration are named on the command line.
    std::string command = "/usr/bin/env";
    for (const std::string& e : farend->env()) command += " " + e;
    command += " " + farend->sendmailPath() + " -bs";
    sshd->authorize(key, command);
    sshd->start();
    writeFile(dir / "known_hosts", sshd->knownHostsLine() + "\n");
    writeFile(dir / "dynmx.toml",
              "[spool]\ndir = \"" + (dir / "spool") + "\"\n\n" + "[tunneld]\ncontrol_socket = \"" +
                  (dir / "ctl.sock") + "\"\n" + "identity = \"" + key.private_path +
                  "\"\nknown_hosts = \"" + (dir / "known_hosts") + "\"\n" +
                  "reconnect_min = \"1s\"\nreconnect_max = \"2s\"\nretry_min = \"1s\"\n" +
                  "retry_max = \"2s\"\nhostname = \"mx.test\"\nsendmail = [\"/bin/false\"]\n\n" +
                  "[[client]]\nname = \"home\"\nhost = \"127.0.0.1\"\nport = " +
                  std::to_string(sshd->port()) + "\nuser = \"" + sshd->user() +
                  "\"\ndomains = [\"home.example\"]\n",
              0644);
    ASSERT_TRUE(Spool(dir / "spool").prepare().ok());
  }

  void TearDown() override {
    if (HasFailure() && farend) {
      std::fprintf(stderr, "--- tunneld log:\n%s\n--- far end Postfix log:\n%s\n",
                   readFile(dir / "tunneld.log").c_str(), farend->log().c_str());
    }
    tunneld.reset();
    sshd.reset();
    farend.reset();
  }

  void startTunneld() {
    tunneld = std::make_unique<Process>(
        std::vector<std::string>{binDir() + "/dynmx-tunneld", "-f", "-c", dir / "dynmx.toml"},
        SpawnOptions{"", "", dir / "tunneld.log", {}, true});
  }

  std::string spool(const std::string& content, const std::vector<std::string>& rcpts,
                    const std::string& sender) {
    Spool sp(dir / "spool");
    auto w = sp.create();
    EXPECT_TRUE(w.ok()) << w.error().message;
    EXPECT_TRUE((*w)->write(content).ok());
    Envelope env;
    env.client = "home";
    env.sender = sender;
    env.arrival = time(nullptr);
    env.origin = "test";
    for (const std::string& r : rcpts) {
      SpoolRecipient sr;
      sr.address = r;
      env.rcpts.push_back(sr);
    }
    std::string id = (*w)->id();
    auto st = (*w)->commit(env);
    EXPECT_TRUE(st.ok()) << st.error().message;
    return id;
  }

  size_t spooled() {
    Spool sp(dir / "spool");
    size_t n = 0;
    for (auto st : {QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                    QueueState::Hold, QueueState::Corrupt}) {
      n += sp.list(st).size();
    }
    return n;
  }

  // The far end's queued messages once there are `n` of them in incoming/ (picked up).
  std::vector<PostfixQueued> received(size_t n) {
    std::vector<PostfixQueued> q;
    waitFor(
        [&] {
          q = farend->queue();
          size_t in = 0;
          for (const PostfixQueued& m : q) in += m.queue == "incoming";
          return in == n && q.size() == n;
        },
        kLong);
    return q;
  }

  TempDir dir{"dynmx-postfix-farend"};
  std::unique_ptr<TestPostfix> farend;
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  std::unique_ptr<Process> tunneld;
};

}  // namespace

TEST_F(PostfixFarEnd, DeliversIntoPostfixSendmailBs) {
  startTunneld();
  const std::string content =
      "From: Alice <alice@origin.example>\r\nSubject: to a Postfix client\r\n"
      "Message-ID: <farend-1@origin.example>\r\n\r\n"
      "Hello,\r\n.hidden dot\r\n..two dots\r\nline four\r\n";
  std::string id =
      spool(content, {"bob@home.example", "carol@home.example"}, "alice@origin.example");
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << readFile(dir / "tunneld.log");
  EXPECT_TRUE(contains(readFile(dir / "tunneld.log"), id + ": to=<bob@home.example>"));
  EXPECT_TRUE(contains(readFile(dir / "tunneld.log"), "status=sent"));

  auto q = received(1);
  ASSERT_EQ(q.size(), 1u) << farend->log();
  EXPECT_EQ(q[0].sender, "alice@origin.example");
  EXPECT_EQ(q[0].recipients, (std::vector<std::string>{"bob@home.example", "carol@home.example"}));
  // postcat shows the content with LF line ends; the body exactly as spooled, dots included.
  EXPECT_TRUE(contains(q[0].content, "Subject: to a Postfix client\n")) << q[0].content;
  EXPECT_TRUE(contains(q[0].content, "\n\nHello,\n.hidden dot\n..two dots\nline four\n"))
      << q[0].content;
  EXPECT_TRUE(farend->waitForLog("from=<alice@origin.example>"));
}

TEST_F(PostfixFarEnd, NullSenderStaysNull) {
  startTunneld();
  spool("Subject: a bounce\r\n\r\nreturned\r\n", {"bob@home.example"}, "");
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << readFile(dir / "tunneld.log");
  auto q = received(1);
  ASSERT_EQ(q.size(), 1u) << farend->log();
  EXPECT_EQ(q[0].sender, "");
  EXPECT_EQ(q[0].recipients, std::vector<std::string>{"bob@home.example"});
  EXPECT_TRUE(farend->waitForLog(" from=<>\n")) << "Postfix's own word for the null sender";
}
