// whole_path_test.cpp: the whole mail path with real parts only.
//
//   SMTP -> sendmail (MX, InputMailFilters: dynmx-milter) -> dynmx spool -> dynmx-tunneld
//        -> SSH (host key verified) -> sshd -> forced command: a real `sendmail -bs` -> mailbox
//
// The message for the client domain must arrive in the client's mailbox with its body intact
// (a line that starts with a dot included) and dynmx-milter's trace header; the copy for a local
// recipient must stay with the MX's sendmail; nothing may stay in the spool.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"
#include "tests/harness/test_sshd.hpp"

namespace dynmx::test {
namespace {

constexpr auto kLong = std::chrono::seconds(120);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

class WholePath : public ::testing::Test {
 protected:
  void SetUp() override {
    ::mkdir((tmp / "sshd").c_str(), 0700);
    ::mkdir((run / "milter").c_str(), 0755);
    ::mkdir((run / "farend").c_str(), 0755);
    ::mkdir((run / "farend/queue").c_str(), 0700);
    sshd = std::make_unique<TestSshd>(tmp / "sshd");
    key = generateKey(tmp / "id_ed25519");

    // The client: a real sendmail -bs whose local delivery for bob is a mailbox file (an alias).
    writeFile(run / "farend/farend.mc",
              "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\nOSTYPE(`debian')dnl\n"
              "FEATURE(`no_default_msa')dnl\nFEATURE(`accept_unresolvable_domains')dnl\n"
              "define(`confDOMAIN_NAME', `home.example')dnl\n"
              "define(`QUEUE_DIR', `" + (run / "farend/queue") + "')dnl\n"
              "define(`confPID_FILE', `" + (run / "farend/sendmail.pid") + "')dnl\n"
              "define(`ALIAS_FILE', `" + (run / "farend/aliases") + "')dnl\n"
              "define(`confCW_FILE', `" + (run / "farend/local-host-names") + "')dnl\n"
              "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
              "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
              "define(`confTRUSTED_USERS', `root')dnl\n"
              "MAILER(`local')dnl\nMAILER(`smtp')dnl\n");
    std::string cf;
    ASSERT_EQ(runCommand({"/usr/bin/m4", run / "farend/farend.mc"}, &cf), 0);
    writeFile(run / "farend/farend.cf", cf);
    writeFile(run / "farend/local-host-names", "home.example\n");
    writeFile(run / "farend/aliases", "bob: " + mailbox() + "\n");
    // sendmail delivers to a file named in an alias as its DefaultUser (mail:mail on Debian).
    writeFile(mailbox(), "", 0600);
    ASSERT_EQ(runCommand({"/bin/chown", "mail:mail", mailbox()}), 0);
    ASSERT_EQ(runCommand({"/usr/bin/unshare", "--uts", "/bin/sh", "-c",
                          "hostname farend.test && exec /usr/sbin/sendmail -C" +
                              (run / "farend/farend.cf") + " -bi"}),
              0);
    // sendmail sleeps a minute on an unqualified host name: give it a qualified one of its own.
    writeFile(tmp / "farend.sh",
              "#!/bin/sh\nexec /usr/bin/unshare --uts /bin/sh -c 'hostname farend.test && exec "
              "/usr/sbin/sendmail -C" + (run / "farend/farend.cf") + " -odi -bs'\n",
              0755);
    sshd->authorize(key, tmp / "farend.sh");
    sshd->start();
    writeFile(tmp / "known_hosts", sshd->knownHostsLine() + "\n");

    // One dynmx configuration for the milter and the tunnel daemon.
    writeFile(tmp / "dynmx.toml",
              "[spool]\ndir = \"" + (tmp / "spool") + "\"\n\n"
              "[milter]\nsocket = \"unix:" + (run / "milter/milter.sock") + "\"\n\n"
              "[tunneld]\ncontrol_socket = \"" + (tmp / "ctl.sock") + "\"\n"
              "identity = \"" + key.private_path + "\"\nknown_hosts = \"" + (tmp / "known_hosts") + "\"\n"
              "reconnect_min = \"1s\"\nreconnect_max = \"2s\"\nhostname = \"mx.test\"\n"
              "sendmail = [\"/bin/false\"]\n\n"
              "[[client]]\nname = \"home\"\nhost = \"127.0.0.1\"\nport = " +
                  std::to_string(sshd->port()) + "\nuser = \"" + sshd->user() +
                  "\"\ndomains = [\"home.example\"]\n",
              0644);
    ASSERT_TRUE(Spool(tmp / "spool").prepare().ok());

    milter = std::make_unique<Process>(
        std::vector<std::string>{binDir() + "/dynmx-milter", "-f", "-c", tmp / "dynmx.toml"},
        SpawnOptions{"", "", tmp / "milter.log", {}, true});
    ASSERT_TRUE(waitFor([&] { return unixSocketAccepts(run / "milter/milter.sock"); }, kLong))
        << readFile(tmp / "milter.log");
    tunneld = std::make_unique<Process>(
        std::vector<std::string>{binDir() + "/dynmx-tunneld", "-f", "-c", tmp / "dynmx.toml"},
        SpawnOptions{"", "", tmp / "tunneld.log", {}, true});

    TestSendmailOptions so;
    so.milter_socket = "unix:" + (run / "milter/milter.sock");
    so.relay_domains = {"home.example"};
    mx = std::make_unique<TestSendmail>(tmp / "mx", so);
    mx->start();
  }

  void TearDown() override {
    if (HasFailure()) {
      std::fprintf(stderr, "--- milter log:\n%s\n--- tunneld log:\n%s\n--- sshd log:\n%s\n",
                   readFile(tmp / "milter.log").c_str(), readFile(tmp / "tunneld.log").c_str(),
                   readFile(sshd->logPath()).c_str());
    }
    mx.reset();
    tunneld.reset();
    milter.reset();
    sshd.reset();
  }

  std::string mailbox() const { return run / "farend/mailbox"; }
  size_t spooled() {
    Spool sp(tmp / "spool");
    size_t n = 0;
    for (auto st : {QueueState::Tmp, QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                    QueueState::Hold, QueueState::Corrupt})
      n += sp.list(st).size();
    return n;
  }

  TempDir tmp{"dynmx-e2e"};
  // Under /run: sendmail refuses alias files, mailboxes and milter sockets with a world-writable
  // directory such as /tmp on their path.
  TempDir run{"dynmx-e2e", "/run"};
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  std::unique_ptr<Process> milter, tunneld;
  std::unique_ptr<TestSendmail> mx;
};

TEST_F(WholePath, MailForTheClientArrivesInItsMailboxOverSshAndLocalMailStaysAtTheMx) {
  const std::string content =
      "From: Alice <alice@origin.example>\r\n"
      "To: bob@home.example, root@localhost\r\n"
      "Subject: whole path\r\n"
      "Message-ID: <whole-path-1@origin.example>\r\n"
      "\r\n"
      "Hello Bob,\r\n"
      ".this line starts with a dot\r\n"
      "..and this one with two\r\n"
      "bye\r\n";
  SmtpSession smtp(mx->port());
  std::vector<SmtpReply> rcpt;
  SmtpReply r = smtp.sendMail("alice@origin.example", {"bob@home.example", "root@localhost"},
                              content, &rcpt);
  ASSERT_EQ(r.code, 250) << r.text;
  smtp.quit();

  ASSERT_TRUE(waitFor([&] { return contains(readFile(mailbox()), "Subject: whole path"); }, kLong))
      << "not delivered; mailbox:\n" << readFile(mailbox());
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << "spool not empty";
  std::string box = readFile(mailbox());
  // The body byte for byte (the mailbox keeps LF line ends), dots included.
  EXPECT_TRUE(contains(box, "\n\nHello Bob,\n.this line starts with a dot\n..and this one with two\nbye\n"))
      << box;
  EXPECT_TRUE(contains(box, "Message-ID: <whole-path-1@origin.example>")) << box;
  EXPECT_TRUE(contains(box, "dynmx-milter")) << "no trace header from the hand-off:\n" << box;
  EXPECT_TRUE(contains(readFile(tmp / "tunneld.log"), "status=sent")) << readFile(tmp / "tunneld.log");

  // The local recipient's copy is still with the MX (queue-only), without the client recipient.
  auto q = mx->queue();
  ASSERT_EQ(q.size(), 1u);
  ASSERT_EQ(q[0].recipients.size(), 1u);
  EXPECT_TRUE(contains(q[0].recipients[0], "root")) << q[0].recipients[0];
  // Exactly one copy arrived.
  size_t n = 0;
  for (size_t p = 0; (p = box.find("Subject: whole path", p)) != std::string::npos; ++p) ++n;
  EXPECT_EQ(n, 1u);
}

}  // namespace
}  // namespace dynmx::test
