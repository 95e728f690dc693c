// relay_senders_test.cpp: a leased client relays only in its own name. A real sendmail built with
// the shipped etc/sendmail/dynmx-relay.m4 asks a real dynmx-relaymap whether the connecting
// address may relay, and hands the mail to a real dynmx-milter (INPUT_MAIL_FILTER), which asks the
// same dynmx-relaymap (map relayclient) whose lease it is and checks the envelope sender against
// the client's domains and relay_senders. 127.0.0.2 holds client home's lease.
//
// Runs in relay_sendmail_tests, whose main() gives it a private UTS (and network) namespace.
#include <filesystem>
#include <gtest/gtest.h>
#include <memory>
#include <string>

#include "shared/clock.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"
#include "tests/relay/relay_smtp_util.hpp"
#include "tunneld/relay/relaymap_process.hpp"

namespace dynmx::relay {
namespace {

class RelaySendersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/run/dynmx-test-senders.XXXXXX";  // not under /tmp: sendmail wants a safe path
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    sockdir_ = tmpl;
    chmod(sockdir_.c_str(), 0755);
    socket_ = sockdir_ + "/relay.sock";

    RelayMapProcessConfig c;
    c.program = test::binDir() + "/dynmx-relaymap";
    c.socket_path = socket_;
    c.socket_mode = 0660;
    c.user = "nobody";
    c.log_to_stderr = true;
    c.restart_delay = std::chrono::hours(1);
    auto p = RelayMapProcess::open(c, systemTime());
    ASSERT_TRUE(p) << p.error().message;
    relaymap_ = std::move(p.value());
    Status s = relaymap_->start();
    ASSERT_TRUE(s) << s.error().message;
    relaymap_->setLeases(
        {{*InetAddr::parse("127.0.0.2"), "home", systemTime().unixSeconds() + 3600}});
    while (relaymap_->wantsWrite()) {
      Status f = relaymap_->flush();
      ASSERT_TRUE(f) << f.error().message;
    }
  }
  void TearDown() override {
    sendmail_.stop();
    if (milter_) {
      if (HasFailure()) std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
      milter_->stop();
    }
    relaymap_.reset();
    std::error_code ec;
    std::filesystem::remove_all(sockdir_, ec);
  }

  // dynmx-milter asking `milter_socket` (the real relaymap unless a test says otherwise), and
  // sendmail with the relay fragment and the milter.
  void start(const std::string& milter_relay_socket) {
    test::TestMilterOptions mo;
    mo.clients = {{"home", {"home.example"}}, {"other", {"other.example"}}};
    mo.clients[0].extra =
        "relay = true\nrelay_senders = [\"boss@partner.example\", \"@corp.example\"]\n";
    mo.clients[1].extra = "relay = true\n";
    mo.extra_toml = "[relay]\nsocket = \"" + milter_relay_socket + "\"\n";
    milter_ = std::make_unique<test::TestMilter>(dir_.path() + "/milter", mo);
    milter_->start();
    std::string site = "INPUT_MAIL_FILTER(`dynmx', `S=" + milter_->socketSpec() +
                       ", F=T, T=S:10s;R:30s;E:1m')dnl\n";
    startRelaySendmail(dir_.path() + "/sendmail", socket_, site, false, port_, sendmail_);
  }

  // MAIL FROM:<sender> from 127.0.0.2, then the reply to RCPT TO:<rcpt>.
  std::string relay(const std::string& sender, const std::string& rcpt) {
    SmtpFrom s("127.0.0.2", "127.0.0.1", port_);
    std::string r = s.command("EHLO client.home.example");
    r = s.command("MAIL FROM:<" + sender + ">");
    if (r.rfind("250", 0) != 0) return "MAIL: " + r;
    return s.command("RCPT TO:<" + rcpt + ">");
  }

  static constexpr const char* kOutside = "friend@elsewhere.example";
  test::TempDir dir_{"dynmx-relay-senders"};
  std::string sockdir_;
  std::string socket_;
  uint16_t port_ = 0;
  test::Process sendmail_;
  std::unique_ptr<RelayMapProcess> relaymap_;
  std::unique_ptr<test::TestMilter> milter_;
};

TEST_F(RelaySendersTest, OwnDomainAndListedSendersRelayForeignSenderIsRefused) {
  std::filesystem::create_directories(dir_.path() + "/sendmail");
  start(socket_);
  EXPECT_EQ(relay("alice@home.example", kOutside).substr(0, 3), "250");
  EXPECT_EQ(relay("boss@partner.example", kOutside).substr(0, 3), "250");
  EXPECT_EQ(relay("Anyone@Corp.Example", kOutside).substr(0, 3), "250");
  EXPECT_EQ(relay("", kOutside).substr(0, 3), "250") << "a DSN has no sender to check";
  std::string r = relay("spammer@evil.example", kOutside);
  EXPECT_EQ(r.substr(0, 9), "550 5.7.1") << r;
  r = relay("bob@other.example", kOutside);
  EXPECT_EQ(r.substr(0, 9), "550 5.7.1") << "another client's domain is not home's: " << r;
  // What the MTA delivers itself is not relayed: a local user gets mail from anyone.
  EXPECT_EQ(relay("spammer@evil.example", "root").substr(0, 3), "250");
  EXPECT_TRUE(
      milter_->waitForLog("milter: relay: client=home, addr=127.0.0.2, from=<alice@home.example>, "
                          "to=<friend@elsewhere.example>"));
  EXPECT_TRUE(milter_->waitForLog(
      "milter: reject: RCPT from=<spammer@evil.example>, to=<friend@elsewhere.example>, "
      "client=home, addr=127.0.0.2: 550 5.7.1"));
}

TEST_F(RelaySendersTest, LeaseServerUnreachableFromTheMilterTempfailsRelayedMail) {
  std::filesystem::create_directories(dir_.path() + "/sendmail");
  start(sockdir_ + "/nothing-here.sock");  // sendmail still reaches the relaymap; the milter not
  std::string r = relay("alice@home.example", kOutside);
  EXPECT_EQ(r.substr(0, 9), "451 4.3.5") << r;
  EXPECT_EQ(relay("spammer@evil.example", "root").substr(0, 3), "250")
      << "local mail does not need the lease server";
  EXPECT_TRUE(milter_->waitForLog("451 4.3.5 relay lease lookup failed: socketmap " + sockdir_ +
                                  "/nothing-here.sock: connect"));
}

}  // namespace
}  // namespace dynmx::relay
