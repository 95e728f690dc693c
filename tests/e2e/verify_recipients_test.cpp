// verify_recipients_test.cpp: recipient verification through the tunnel, with real parts only.
//
//   SMTP -> sendmail (MX) -> dynmx-milter --verify--> dynmx-tunneld -> SSH -> sshd -> a real
//   `sendmail -bs` at the far end, whose aliases know bob and nobody else
//
// An address the far end refuses (550 5.1.1 User unknown) is refused at the MX's RCPT, one it
// takes is accepted; the second RCPT for an address is answered from dynmx-tunneld's cache without
// a probe (counted in its log); the cache survives a restart of dynmx-tunneld; with the client
// unreachable the configured default applies (here "tempfail": 450 4.1.1). The probe never
// carries a message: the far end's mailbox stays empty until real mail is sent.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <memory>
#include <string>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"
#include "tests/harness/test_sshd.hpp"

namespace dynmx::test {
namespace {

constexpr auto kLong = std::chrono::seconds(60);

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos; p += needle.size()) ++n;
  return n;
}

class VerifyRecipients : public ::testing::Test {
 protected:
  void SetUp() override {
    ::mkdir((tmp / "sshd").c_str(), 0700);
    ::mkdir((run / "milter").c_str(), 0755);
    ::mkdir((run / "farend").c_str(), 0755);
    ::mkdir((run / "farend/queue").c_str(), 0700);
    sshd = std::make_unique<TestSshd>(tmp / "sshd");
    key = generateKey(tmp / "id_ed25519");
    farEnd();
    sshd->authorize(key, tmp / "farend.sh");
    sshd->start();
    writeFile(tmp / "known_hosts", sshd->knownHostsLine() + "\n");
    writeFile(tmp / "dynmx.toml",
              "[spool]\ndir = \"" + (tmp / "spool") + "\"\n\n[milter]\nsocket = \"unix:" +
                  (run / "milter/milter.sock") + "\"\n\n[tunneld]\ncontrol_socket = \"" +
                  (tmp / "ctl.sock") + "\"\nidentity = \"" + key.private_path +
                  "\"\nknown_hosts = \"" + (tmp / "known_hosts") +
                  "\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\nhostname = \"mx.test\"\n"
                  "sendmail = [\"/bin/false\"]\n\n[[client]]\nname = \"home\"\nhost = "
                  "\"127.0.0.1\"\nport = " +
                  std::to_string(sshd->port()) + "\nuser = \"" + sshd->user() +
                  "\"\ndomains = [\"home.example\"]\nverify_recipients = true\n"
                  "verify_default = \"tempfail\"\nverify_timeout = \"8s\"\n",
              0644);
    ASSERT_TRUE(Spool(tmp / "spool").prepare().ok());
    milter = std::make_unique<Process>(
        std::vector<std::string>{binDir() + "/dynmx-milter", "-f", "-c", tmp / "dynmx.toml"},
        SpawnOptions{"", "", tmp / "milter.log", {}, true});
    ASSERT_TRUE(waitFor([&] { return unixSocketAccepts(run / "milter/milter.sock"); }, kLong))
        << readFile(tmp / "milter.log");
    startTunneld("tunneld.log");
    TestSendmailOptions so;
    so.milter_socket = "unix:" + (run / "milter/milter.sock");
    so.relay_domains = {"home.example"};
    so.milter_timeouts = "S:10s;R:20s;E:1m";
    mx = std::make_unique<TestSendmail>(tmp / "mx", so);
    mx->start();
  }

  // The client: a real sendmail -bs whose aliases know bob (a mailbox file) and nobody else.
  void farEnd() {
    writeFile(
        run / "farend/farend.mc",
        "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\nOSTYPE(`debian')dnl\n"
        "FEATURE(`no_default_msa')dnl\nFEATURE(`accept_unresolvable_domains')dnl\n"
        "define(`confDOMAIN_NAME', `home.example')dnl\n"
        "define(`QUEUE_DIR', `" +
            (run / "farend/queue") + "')dnl\ndefine(`confPID_FILE', `" +
            (run / "farend/sendmail.pid") + "')dnl\ndefine(`ALIAS_FILE', `" +
            (run / "farend/aliases") + "')dnl\ndefine(`confCW_FILE', `" +
            (run / "farend/local-host-names") +
            "')dnl\ndefine(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
            "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
            "define(`confTRUSTED_USERS', `root')dnl\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n");
    std::string cf;
    ASSERT_EQ(runCommand({"/usr/bin/m4", run / "farend/farend.mc"}, &cf), 0);
    writeFile(run / "farend/farend.cf", cf);
    writeFile(run / "farend/local-host-names", "home.example\n");
    writeFile(run / "farend/aliases", "bob: " + mailbox() + "\n");
    writeFile(mailbox(), "", 0600);
    ASSERT_EQ(runCommand({"/bin/chown", "mail:mail", mailbox()}), 0);
    ASSERT_EQ(runCommand({"/usr/bin/unshare", "--uts", "/bin/sh", "-c",
                          "hostname farend.test && exec /usr/sbin/sendmail -C" +
                              (run / "farend/farend.cf") + " -bi"}),
              0);
    writeFile(tmp / "farend.sh",
              "#!/bin/sh\nexec /usr/bin/unshare --uts /bin/sh -c 'hostname farend.test && exec "
              "/usr/sbin/sendmail -C" +
                  (run / "farend/farend.cf") + " -odi -bs'\n",
              0755);
  }

  void startTunneld(const std::string& log) {
    tunneld_log = tmp / log;
    tunneld = std::make_unique<Process>(
        std::vector<std::string>{binDir() + "/dynmx-tunneld", "-f", "-c", tmp / "dynmx.toml"},
        SpawnOptions{"", "", tunneld_log, {}, true});
  }
  bool connected() {
    return readFile(tunneld_log).find("client=home: connected to") != std::string::npos;
  }

  void TearDown() override {
    if (HasFailure()) {
      std::fprintf(stderr, "--- milter log:\n%s\n--- tunneld log:\n%s\n--- sshd log:\n%s\n",
                   readFile(tmp / "milter.log").c_str(), readFile(tunneld_log).c_str(),
                   readFile(sshd->logPath()).c_str());
    }
    mx.reset();
    tunneld.reset();
    milter.reset();
    sshd.reset();
  }

  // One RCPT in its own transaction at the MX.
  SmtpReply rcpt(const std::string& to) {
    SmtpSession smtp(mx->port());
    smtp.command("EHLO origin.example");
    SmtpReply m = smtp.command("MAIL FROM:<alice@origin.example>");
    EXPECT_EQ(m.code, 250) << m.text;
    SmtpReply r = smtp.command("RCPT TO:<" + to + ">");
    smtp.quit();
    return r;
  }

  std::string mailbox() const { return run / "farend/mailbox"; }

  TempDir tmp{"dynmx-verify"};
  TempDir run{"dynmx-verify", "/run"};
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  std::unique_ptr<Process> milter, tunneld;
  std::unique_ptr<TestSendmail> mx;
  std::string tunneld_log;
};

TEST_F(VerifyRecipients, TheClientsOwnMtaDecidesAtRcptAndTheAnswerIsCached) {
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << readFile(tunneld_log);
  SmtpReply unknown = rcpt("nosuchuser@home.example");
  EXPECT_EQ(unknown.code, 550) << unknown.text;
  EXPECT_NE(unknown.text.find("5.1.1"), std::string::npos) << unknown.text;
  EXPECT_NE(unknown.text.find("<nosuchuser@home.example>: Recipient address rejected: "
                              "undeliverable address: 550 5.1.1 <nosuchuser@home.example>... "
                              "User unknown"),
            std::string::npos)
      << unknown.text;
  SmtpReply bob = rcpt("bob@home.example");
  EXPECT_EQ(bob.code, 250) << bob.text;
  std::string log = readFile(tunneld_log);
  EXPECT_EQ(count(log, "verify probe to=<nosuchuser@home.example>: invalid"), 1u) << log;
  EXPECT_EQ(count(log, "verify probe to=<bob@home.example>: valid"), 1u) << log;

  // Asked again: from the cache, no new probe.
  EXPECT_EQ(rcpt("nosuchuser@home.example").code, 550);
  EXPECT_EQ(rcpt("Bob@home.example").code, 250);
  log = readFile(tunneld_log);
  EXPECT_EQ(count(log, "verify probe to="), 2u) << log;
  EXPECT_EQ(count(log, "verify to=<nosuchuser@home.example>: invalid, from the cache"), 1u) << log;
  EXPECT_EQ(count(log, "verify to=<Bob@home.example>: valid, from the cache"), 1u) << log;
  EXPECT_EQ(readFile(mailbox()), "") << "a probe never delivers anything";
}

TEST_F(VerifyRecipients, TheCacheSurvivesARestartOfTunneld) {
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << readFile(tunneld_log);
  ASSERT_EQ(rcpt("nosuchuser@home.example").code, 550);
  tunneld->stop();
  startTunneld("tunneld2.log");
  ASSERT_TRUE(
      waitFor([&] { return readFile(tunneld_log).find("starting:") != std::string::npos; }, kLong));
  // Before or after it connects again: the answer comes from the cache file.
  SmtpReply again = rcpt("nosuchuser@home.example");
  EXPECT_EQ(again.code, 550) << again.text;
  std::string log = readFile(tunneld_log);
  EXPECT_EQ(count(log, "verify probe to="), 0u) << log;
  EXPECT_EQ(count(log, "verify to=<nosuchuser@home.example>: invalid, from the cache"), 1u) << log;
}

TEST_F(VerifyRecipients, AnUnreachableClientGetsTheConfiguredDefault) {
  sshd->stop();  // the client is down: dynmx-tunneld cannot connect
  SmtpReply r = rcpt("carol@home.example");
  EXPECT_EQ(r.code, 450) << r.text;
  EXPECT_NE(r.text.find("4.1.1"), std::string::npos) << r.text;
  // "client home is not connected", or the lost connection if it had just connected.
  EXPECT_NE(r.text.find("<carol@home.example>: Recipient address rejected: unverified address: "),
            std::string::npos)
      << r.text;
}

}  // namespace
}  // namespace dynmx::test
