// postfix_relay_test.cpp: relay leases under a real Postfix. Debian 12's Postfix, unpacked
// (tests/harness/postfix_harness.hpp), runs with exactly the smtpd_relay_restrictions lines of
// the POSTFIX section of dynmx-relay(7), taken from the page source (only the socket path is the
// test's), and asks a real dynmx-relaymap that this test feeds through RelayMapProcess, as
// sendmail_relay_test.cpp does. SMTP clients bind their source address: 127.0.0.2 holds a lease,
// 127.0.0.3 is a stranger; mynetworks is 127.0.0.1/32, so neither is trusted by Postfix itself.
//
// Proven: the leased address may relay (250 at RCPT), another may not (554 5.7.1 Relay access
// denied), an expired lease is refused, and with the relaymap stopped or killed relays get
// Postfix's 451 4.3.5 while mail for a local recipient and for a relay domain is still accepted.
// A second fixture runs smtpd chrooted in the queue directory, as Debian does, with the socket
// inside it under the path the page names. Every process started is stopped by pid; skips only
// when the Postfix package cannot be had.
#include <signal.h>
#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/man_page.hpp"
#include "tests/harness/postfix_harness.hpp"
#include "tests/harness/sendmail_harness.hpp"
#include "tests/relay/relay_smtp_util.hpp"
#include "tunneld/relay/relaymap_process.hpp"

namespace dynmx::relay {
namespace {

using dynmx::test::TempDir;
using dynmx::test::TestPostfix;
using dynmx::test::TestPostfixOptions;
using dynmx::test::waitFor;
using ::testing::EndsWith;
using ::testing::HasSubstr;

constexpr const char* kPageSocket = "/run/dynmx/relay.sock";  // the path the page shows

class PostfixRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    auto pkg = dynmx::test::postfixPackage(&why);
    if (!pkg) GTEST_SKIP() << why;
    pkg_ = *pkg;
    socket_ = tmp_.path() + "/relay.sock";
  }
  void TearDown() override {
    if (postfix_) postfix_->stop();
    if (HasFailure() && postfix_) {
      std::fprintf(stderr, "--- Postfix log:\n%s\n", postfix_->log().c_str());
    }
    relaymap_.reset();
  }

  // The page's lines with `table_path` for the socket; mynetworks excludes the test clients.
  void startPostfix(const std::string& table_path, bool chroot = false,
                    const std::string& more_main_cf = "") {
    TestPostfixOptions po;
    po.chroot = chroot;
    po.relay_domains = {"alpha.example"};
    po.main_cf =
        dynmx::test::joinReplacing(dynmx::test::manPageExample("dynmx-relay.7", ".SH POSTFIX"),
                                   {{kPageSocket, table_path}}) +
        // Trusted by Postfix itself: 127.0.0.1 alone, not the test clients.
        "mynetworks = 127.0.0.1/32\n"
        // The harness bounces local mail at RCPT (error transport); accept and drop it.
        "local_transport = discard\n" + more_main_cf;
    postfix_ = std::make_unique<TestPostfix>(tmp_.path() + "/postfix", pkg_, po);
  }

  void startRelaymap() {
    RelayMapProcessConfig c;
    c.program = dynmx::test::binDir() + "/dynmx-relaymap";
    c.socket_path = socket_;
    c.socket_mode = 0660;
    c.socket_group = "mail";  // Postfix's smtpd runs as mail_owner ("postfix" in a real install)
    c.user = "nobody";
    c.log_to_stderr = true;
    c.restart_delay = std::chrono::hours(1);  // a killed relaymap stays down in these tests
    auto p = RelayMapProcess::open(c, systemTime());
    ASSERT_TRUE(p) << p.error().message;
    relaymap_ = std::move(p.value());
    Status s = relaymap_->start();
    ASSERT_TRUE(s) << s.error().message;
  }
  void lease(const std::vector<FeedLease>& leases) {
    relaymap_->setLeases(leases);
    while (relaymap_->wantsWrite()) {
      Status s = relaymap_->flush();
      ASSERT_TRUE(s) << s.error().message;
    }
  }
  static FeedLease leaseFor(const char* addr, int64_t seconds_left) {
    return {*InetAddr::parse(addr), "home", systemTime().unixSeconds() + seconds_left};
  }
  std::string rcptFrom(const std::string& source, const std::string& rcpt) {
    SmtpFrom s(source, "127.0.0.1", postfix_->port());
    return s.rcpt(rcpt);
  }

  static constexpr const char* kOutside = "friend@elsewhere.example";
  static constexpr const char* kLocal = "root@localhost";           // mydestination, a passwd user
  static constexpr const char* kRelayDomain = "bob@alpha.example";  // relay_domains
  static constexpr const char* kDenied =
      "554 5.7.1 <friend@elsewhere.example>: Relay access denied";
  // The socketmap lookup fails on the client's host name ("unknown": no PTR), the first key.
  static std::string tempfail(const std::string& addr) {
    return "451 4.3.5 <unknown[" + addr + "]>: Client host rejected: Server configuration error";
  }

  TempDir tmp_{"dynmx-relay-postfix"};
  dynmx::test::PostfixPackage pkg_;
  std::string socket_;
  std::unique_ptr<TestPostfix> postfix_;
  std::unique_ptr<RelayMapProcess> relaymap_;
};

TEST_F(PostfixRelayTest, TheManPageLinesAreTheOnesInMainCf) {
  startPostfix("/some/where/relay.sock");
  std::string out;
  ASSERT_EQ(postfix_->run({"postconf", "-c", postfix_->confDir(), "-h", "smtpd_relay_restrictions"},
                          &out),
            0)
      << out;
  // (stderr too: Postfix warns that our mynetworks line overrides the harness's.)
  EXPECT_THAT(out,
              EndsWith("permit_mynetworks, permit_sasl_authenticated, permit_auth_destination, "
                       "check_client_access socketmap:unix:/some/where/relay.sock:relay, "
                       "reject_unauth_destination\n"));
  out.clear();
  ASSERT_EQ(postfix_->run({"postconf", "-c", postfix_->confDir(), "-h", "mynetworks"}, &out), 0);
  EXPECT_THAT(out, EndsWith("\n127.0.0.1/32\n"));
}

TEST_F(PostfixRelayTest, LeasedAddressMayRelayOthersMayNot) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startPostfix(socket_);
  postfix_->start();
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside), kDenied);
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kRelayDomain).substr(0, 3), "250");
  // Again, over the connection Postfix keeps open to the relaymap.
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
}

// relay_senders through dynmx-milter in smtpd_milters: Postfix grants the leased address relaying,
// the milter asks the same relaymap whose lease it is and refuses a sender outside the client's
// domains; mail that does not leave the host ({rcpt_mailer} discard here) is not checked.
TEST_F(PostfixRelayTest, LeasedClientRelaysOnlyInItsOwnNameThroughDynmxMilter) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  dynmx::test::TestMilterOptions mo;
  mo.socket_group = "mail";  // Postfix talks to milters as its mail_owner
  mo.clients = {{"home", {"home.example"}}};
  mo.clients[0].extra = "relay = true\nrelay_senders = true\n";
  mo.extra_toml = "[relay]\nsocket = \"" + socket_ + "\"\n";
  dynmx::test::TestMilter milter(tmp_.path() + "/milter", mo);
  milter.start();
  startPostfix(socket_, false,
               "smtpd_milters = " + milter.socketSpec() +
                   "\nmilter_default_action = tempfail\nmilter_protocol = 6\n");
  postfix_->start();
  auto relay = [&](const std::string& sender, const std::string& rcpt) {
    SmtpFrom s("127.0.0.2", "127.0.0.1", postfix_->port());
    s.command("EHLO client.home.example");
    std::string r = s.command("MAIL FROM:<" + sender + ">");
    if (r.rfind("250", 0) != 0) return "MAIL: " + r;
    return s.command("RCPT TO:<" + rcpt + ">");
  };
  EXPECT_EQ(relay("alice@home.example", kOutside).substr(0, 3), "250");
  std::string r = relay("spammer@evil.example", kOutside);
  EXPECT_EQ(r.substr(0, 9), "550 5.7.1") << r;
  EXPECT_EQ(relay("spammer@evil.example", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside), kDenied) << "Postfix still decides who may relay";
  EXPECT_TRUE(milter.waitForLog("milter: relay: client=home, addr=127.0.0.2, "
                                "from=<alice@home.example>, to=<friend@elsewhere.example>"));
  if (HasFailure()) std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter.log().c_str());
  postfix_->stop();
}

TEST_F(PostfixRelayTest, ExpiredLeaseIsRefused) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", -1)});  // the daemon sent it; the server's clock says it is over
  startPostfix(socket_);
  postfix_->start();
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside), kDenied);
}

TEST_F(PostfixRelayTest, StoppedRelaymapGivesRelaysATempfailAndLocalMailStillFlows) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startPostfix(socket_);
  postfix_->start();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  relaymap_->stop();  // socket gone too
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside), tempfail("127.0.0.2"));
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside), tempfail("127.0.0.3"));
  EXPECT_EQ(rcptFrom("127.0.0.2", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kRelayDomain).substr(0, 3), "250");
  EXPECT_THAT(postfix_->log(), HasSubstr("socketmap"));
}

TEST_F(PostfixRelayTest, KilledRelaymapGivesRelaysATempfailAndLocalMailStillFlows) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startPostfix(socket_);
  postfix_->start();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");  // Postfix keeps it open
  ASSERT_EQ(kill(relaymap_->pid(), SIGKILL), 0);                   // socket left behind
  ASSERT_TRUE(waitFor([&] {
    relaymap_->check();
    return !relaymap_->running();
  }));
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside), tempfail("127.0.0.2"));
  EXPECT_EQ(rcptFrom("127.0.0.2", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kRelayDomain).substr(0, 3), "250");
}

// Debian's master.cf: smtpd chrooted in the queue directory. The socket lives inside it
// (QUEUE/dynmx/relay.sock, /var/spool/postfix/dynmx/relay.sock on Debian) and main.cf names it
// relative to the chroot, as the page says: socketmap:unix:/dynmx/relay.sock:relay.
TEST_F(PostfixRelayTest, ChrootedSmtpdFindsTheSocketInsideTheQueueDirectory) {
  startPostfix("/dynmx/relay.sock", /*chroot=*/true);
  const std::string sockdir = postfix_->queueDir() + "/dynmx";
  ASSERT_EQ(mkdir(sockdir.c_str(), 0755), 0);
  socket_ = sockdir + "/relay.sock";
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  postfix_->start();
  std::string master_cf = dynmx::test::readFile(postfix_->confDir() + "/master.cf");
  ASSERT_THAT(master_cf, HasSubstr(" inet n - y - - smtpd\n"));
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside), kDenied);
}

}  // namespace
}  // namespace dynmx::relay
