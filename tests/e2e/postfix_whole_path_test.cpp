// postfix_whole_path_test.cpp: the whole mail path with Postfix on both ends, real parts only.
//
//   SMTP -> Postfix (MX, smtpd_milters: dynmx-milter, the lines of dynmx-milter(8)) -> dynmx spool
//        -> dynmx-tunneld -> SSH (host key verified) -> sshd -> forced command: Postfix's
//        `sendmail -bs` -> the client's Postfix queue
//
// Both Postfix instances are Debian's package, unpacked (tests/harness/postfix_harness.hpp),
// neither with a queue manager, so that what each holds can be read. The client's copy must
// arrive at the far end with dynmx-milter's trace header and the body intact, the copy for a
// recipient of no client must stay with the MX's Postfix, and nothing may stay in the spool.
// Skips only when the package cannot be had.
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
#include "tests/harness/test_sshd.hpp"

namespace dynmx::test {
namespace {

constexpr auto kLong = std::chrono::seconds(120);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

class PostfixWholePath : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    auto pkg = postfixPackage(&why);
    if (!pkg) GTEST_SKIP() << why;

    // The client: Postfix's sendmail -bs behind sshd.
    TestPostfixOptions fo;
    fo.myhostname = "farend.example";
    fo.smtpd = false;
    farend = std::make_unique<TestPostfix>(tmp / "farend", *pkg, fo);
    farend->start();
    mkdir((tmp / "sshd").c_str(), 0700);
    sshd = std::make_unique<TestSshd>(tmp / "sshd");
    key = generateKey(tmp / "id_ed25519");
    std::string command = "/usr/bin/env";
    for (const std::string& e : farend->env()) command += " " + e;
    sshd->authorize(key, command + " " + farend->sendmailPath() + " -bs");
    sshd->start();
    writeFile(tmp / "known_hosts", sshd->knownHostsLine() + "\n");

    // One dynmx configuration for the milter and the tunnel daemon.
    TestMilterOptions mo;
    mo.socket_group = "mail";  // Postfix's mail_owner here ("postfix" in a real install)
    TestClient home("home", {"home.example"});
    home.port = sshd->port();
    home.host_key = "";  // known_hosts instead
    home.extra = "user = \"" + sshd->user() + "\"\n";
    mo.clients = {home};
    mo.extra_toml = "[tunneld]\ncontrol_socket = \"" + (tmp / "ctl.sock") + "\"\n" +
                    "identity = \"" + key.private_path + "\"\nknown_hosts = \"" +
                    (tmp / "known_hosts") + "\"\n" +
                    "reconnect_min = \"1s\"\nreconnect_max = \"2s\"\nhostname = \"mx.test\"\n" +
                    "sendmail = [\"/bin/false\"]\n";
    milter = std::make_unique<TestMilter>(tmp / "milter", mo);
    milter->start();
    tunneld = std::make_unique<Process>(
        std::vector<std::string>{binDir() + "/dynmx-tunneld", "-f", "-c", milter->configPath()},
        SpawnOptions{"", "", tmp / "tunneld.log", {}, true});

    // The MX: Postfix with the milter, as dynmx-milter(8) says.
    TestPostfixOptions mo_pf;
    mo_pf.relay_domains = {"home.example", "other.example"};
    mo_pf.main_cf = joinReplacing(manPageExample("dynmx-milter.8", ".SS Postfix"),
                                  {{"unix:/run/dynmx/milter.sock", milter->socketSpec()}});
    mx = std::make_unique<TestPostfix>(tmp / "mx", *pkg, mo_pf);
    mx->start();
  }

  void TearDown() override {
    if (HasFailure() && mx) {
      std::fprintf(stderr,
                   "--- milter log:\n%s\n--- tunneld log:\n%s\n--- MX Postfix log:\n%s\n"
                   "--- far end Postfix log:\n%s\n",
                   milter->log().c_str(), readFile(tmp / "tunneld.log").c_str(), mx->log().c_str(),
                   farend->log().c_str());
    }
    mx.reset();
    tunneld.reset();
    milter.reset();
    sshd.reset();
    farend.reset();
  }

  size_t spooled() {
    Spool sp(milter->spoolDir());
    size_t n = 0;
    for (auto st : {QueueState::Tmp, QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                    QueueState::Hold, QueueState::Corrupt}) {
      n += sp.list(st).size();
    }
    return n;
  }

  TempDir tmp{"dynmx-e2e-postfix"};
  std::unique_ptr<TestPostfix> farend, mx;
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  std::unique_ptr<TestMilter> milter;
  std::unique_ptr<Process> tunneld;
};

TEST_F(PostfixWholePath, MailForTheClientReachesItsPostfixOverSshAndTheRestStaysAtTheMx) {
  const std::string content =
      "From: Alice <alice@origin.example>\r\n"
      "To: bob@home.example, carol@other.example\r\n"
      "Subject: whole path, Postfix to Postfix\r\n"
      "Message-ID: <postfix-whole-path-1@origin.example>\r\n"
      "\r\n"
      "Hello Bob,\r\n"
      ".this line starts with a dot\r\n"
      "..and this one with two\r\n"
      "bye\r\n";
  SmtpSession smtp(mx->port());
  SmtpReply r =
      smtp.sendMail("alice@origin.example", {"bob@home.example", "carol@other.example"}, content);
  ASSERT_EQ(r.code, 250) << r.text;
  smtp.quit();

  std::vector<PostfixQueued> arrived;
  ASSERT_TRUE(waitFor(
      [&] {
        arrived = farend->queue();
        return arrived.size() == 1 && arrived[0].queue == "incoming";
      },
      kLong))
      << "nothing arrived at the far end";
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << "spool not empty";
  EXPECT_EQ(arrived[0].sender, "alice@origin.example");
  EXPECT_EQ(arrived[0].recipients, std::vector<std::string>{"bob@home.example"});
  const std::string& got = arrived[0].content;
  EXPECT_TRUE(contains(got, "(dynmx-milter, MTA queue id ")) << "no trace header:\n" << got;
  EXPECT_TRUE(contains(got, "Message-ID: <postfix-whole-path-1@origin.example>\n")) << got;
  // postcat shows LF line ends; the body byte for byte otherwise, dots included.
  EXPECT_TRUE(contains(got,
                       "\n\nHello Bob,\n.this line starts with a dot\n..and this one with "
                       "two\nbye\n"))
      << got;
  EXPECT_TRUE(contains(readFile(tmp / "tunneld.log"), "status=sent"));

  // The MX keeps the copy for the recipient of no client, and only that recipient.
  auto kept = mx->queue();
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].recipients, std::vector<std::string>{"carol@other.example"});
}

}  // namespace
}  // namespace dynmx::test
