// sendmail_relay_test.cpp: a real sendmail, built from a .mc that includes exactly the shipped
// etc/sendmail/dynmx-relay.m4, asking a real dynmx-relaymap that this test feeds through
// RelayMapProcess. SMTP clients bind their source address: 127.0.0.2 holds a lease, 127.0.0.3 is
// a stranger; in a private network namespace (root) 2001:db8::2 and 2001:db8::3 play the same
// parts over IPv6 (::1 itself is "local" to sendmail and would relay anyway).
//
// main() moves the process into a private UTS namespace with a qualified host name (sendmail
// otherwise waits for its own name) and, when it can, a private network namespace with lo up and
// the IPv6 addresses 2001:db8::1 to ::3 (and 192.0.2.1, for AI_ADDRCONFIG); every process started
// is stopped by pid. daemon_relay_test.cpp runs in the same namespaces.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <memory>
#include <sstream>
#include <string>

#include "shared/clock.hpp"
#include "tests/harness/harness.hpp"
#include "tests/relay/relay_smtp_util.hpp"
#include "tunneld/relay/relaymap_process.hpp"

namespace dynmx::relay {
namespace {

using dynmx::test::Process;
using dynmx::test::runCommand;
using dynmx::test::waitFor;
using ::testing::StartsWith;

bool g_ipv6 = false;  // 2001:db8::2 and ::3 on lo, in our own network namespace

class SendmailRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/run/dynmx-test-relay.XXXXXX";  // not under /tmp: sendmail wants a safe path
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    sockdir_ = tmpl;
    chmod(sockdir_.c_str(), 0755);
    socket_ = sockdir_ + "/relay.sock";
  }
  void TearDown() override {
    sendmail_.stop();
    relaymap_.reset();
    std::error_code ec;
    std::filesystem::remove_all(sockdir_, ec);
  }

  void startRelaymap(std::chrono::milliseconds restart_delay = std::chrono::hours(1)) {
    RelayMapProcessConfig c;
    c.program = dynmx::test::binDir() + "/dynmx-relaymap";
    c.socket_path = socket_;
    c.socket_mode = 0660;
    c.user = "nobody";
    c.log_to_stderr = true;
    c.restart_delay = restart_delay;
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

  void startSendmail() {
    startRelaySendmail(dir_.path(), socket_, site_mc_, g_ipv6, port_, sendmail_);
  }
  std::string rcptFrom(const std::string& source, const std::string& rcpt) {
    SmtpFrom s(source, source.find(':') != std::string::npos ? "::1" : "127.0.0.1", port_);
    return s.rcpt(rcpt);
  }
  void killRelaymap() {
    ASSERT_EQ(kill(relaymap_->pid(), SIGKILL), 0);
    ASSERT_TRUE(waitFor([&] {
      relaymap_->check();
      return !relaymap_->running();
    }));
  }

  static constexpr const char* kOutside = "friend@elsewhere.example";
  static constexpr const char* kLocal = "root";  // a local user (no aliases needed)
  // sendmail adds why ("Relaying denied. IP name lookup failed [127.0.0.3]" for a client without
  // a PTR record); the code, the enhanced code and the words are what matter.
  static constexpr const char* kDenied = "550 5.7.1 <friend@elsewhere.example>... Relaying denied";
  dynmx::test::TempDir dir_{"dynmx-relay-sendmail"};
  std::string sockdir_;
  std::string socket_;
  uint16_t port_ = 0;
  Process sendmail_;
  std::unique_ptr<RelayMapProcess> relaymap_;
  std::string site_mc_;  // the site's own lines, before the fragment
};

TEST_F(SendmailRelayTest, LeasedAddressMayRelayOthersMayNot) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startSendmail();
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  EXPECT_THAT(rcptFrom("127.0.0.3", kOutside), StartsWith(kDenied));
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
}

TEST_F(SendmailRelayTest, ExpiredLeaseIsDeniedWhateverTheFeedSays) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", -1)});  // the daemon sent it; the server's clock says it is over
  startSendmail();
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

TEST_F(SendmailRelayTest, KilledRelaymapGivesRelaysATempfailAndLocalMailStillFlows) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startSendmail();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  killRelaymap();  // and not restarted yet (an hour's delay)
  std::string leased = rcptFrom("127.0.0.2", kOutside);
  EXPECT_EQ(leased, "451 4.3.0 Relay lease lookup failed; try again later");
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside).substr(0, 1), "4");
  EXPECT_EQ(rcptFrom("127.0.0.2", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
}

TEST_F(SendmailRelayTest, StoppedRelaymapGivesRelaysATempfail) {
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startSendmail();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  relaymap_->stop();  // socket gone too
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "451");
  EXPECT_EQ(rcptFrom("127.0.0.2", kLocal).substr(0, 3), "250");
}

constexpr const char* kReadTimeout =
    "451 4.3.0 socket_map_lookup(relay): read timeout: Resource temporarily unavailable";

TEST_F(SendmailRelayTest, HungRelaymapGivesATempfailAfterTheTimeout) {
  site_mc_ = "define(`DYNMX_RELAY_TIMEOUT', `2')dnl\n";  // sendmail waits 2 s for an answer
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startSendmail();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  ASSERT_EQ(kill(relaymap_->pid(), SIGSTOP), 0);  // alive, listening, never answering
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside), kReadTimeout);
  // sendmail reports a socket map read timeout as a system error of the whole RCPT, so local
  // recipients get the 451 as well (unlike a refused connection): dynmx-relay(7) says so.
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal), kReadTimeout);
  kill(relaymap_->pid(), SIGCONT);
}

TEST_F(SendmailRelayTest, RestartedRelaymapServesTheLeaseAgain) {
  startRelaymap(std::chrono::milliseconds(100));
  lease({leaseFor("127.0.0.2", 3600)});
  startSendmail();
  pid_t first = relaymap_->pid();
  ASSERT_EQ(kill(first, SIGKILL), 0);
  ASSERT_TRUE(waitFor([&] {
    relaymap_->check();
    return relaymap_->running() && relaymap_->pid() != first;
  }));
  while (relaymap_->wantsWrite()) ASSERT_TRUE(relaymap_->flush());
  EXPECT_TRUE(waitFor([&] { return rcptFrom("127.0.0.2", kOutside).substr(0, 3) == "250"; }));
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside).substr(0, 3), "550");
}

TEST_F(SendmailRelayTest, SitesAccessDatabaseAndDelayChecksKeepWorking) {
  // The site's own relay rule (an access entry) still applies beside the fragment; the fragment
  // does not take the access database over.
  std::string db = sockdir_ + "/access";  // sendmail wants a safe path, like the socket
  ASSERT_EQ(runCommand({"/usr/sbin/makemap", "hash", db}, nullptr,
                       "Connect:127.0.0.4\tRELAY\nConnect:127.0.0.5\tREJECT\n"),
            0);
  site_mc_ = "FEATURE(`access_db', `hash -T<TMPF> " + db + "')dnl\nFEATURE(`delay_checks')dnl\n";
  startRelaymap();
  lease({leaseFor("127.0.0.2", 3600)});
  startSendmail();
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.4", kOutside).substr(0, 3), "250") << "the site's RELAY entry";
  EXPECT_THAT(rcptFrom("127.0.0.3", kOutside), StartsWith(kDenied));
  EXPECT_EQ(rcptFrom("127.0.0.5", kLocal).substr(0, 3), "550") << "the site's REJECT entry";
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
  relaymap_->stop();
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "451");
  EXPECT_EQ(rcptFrom("127.0.0.4", kOutside).substr(0, 3), "250") << "the site's RELAY entry";
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
}

TEST_F(SendmailRelayTest, Ipv6LeaseWithSendmailsTaggedKey) {
  if (!g_ipv6) GTEST_SKIP() << "no private network namespace with IPv6 addresses (needs root)";
  startRelaymap();
  lease({leaseFor("2001:db8::2", 3600)});
  startSendmail();
  EXPECT_EQ(rcptFrom("2001:db8::2", kOutside).substr(0, 3), "250");
  EXPECT_THAT(rcptFrom("2001:db8::3", kOutside), StartsWith(kDenied));
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "550");
}

// Host names from /etc/hosts only, in a private mount namespace: there is no DNS inside the
// private network namespace, and a resolver that cannot be reached makes sendmail answer
// "450 Relaying temporarily denied. Cannot resolve PTR record" before any relay rule runs.
bool hostsFromFilesOnly() {
  if (unshare(CLONE_NEWNS) != 0) return false;
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return false;
  char tmpl[] = "/run/dynmx-test-nss.XXXXXX";
  int fd = mkstemp(tmpl);
  if (fd < 0) return false;
  const char text[] = "passwd: files\ngroup: files\nhosts: files\n";
  bool ok = write(fd, text, sizeof text - 1) == static_cast<ssize_t>(sizeof text - 1);
  fchmod(fd, 0644);
  close(fd);
  ok = ok && mount(tmpl, "/etc/nsswitch.conf", nullptr, MS_BIND, nullptr) == 0;
  unlink(tmpl);  // the bind mount keeps the file
  return ok;
}

// A private UTS namespace with a dotted name, and a private network namespace with lo up and
// three IPv6 test addresses (documentation prefix), when this process may make them.
void isolate() {
  if (unshare(CLONE_NEWUTS) == 0) {
    const char name[] = "mx.dynmx-test.example";
    sethostname(name, sizeof name - 1);
  }
  if (unshare(CLONE_NEWNET) != 0) return;
  if (!hostsFromFilesOnly()) {
    std::fprintf(stderr, "relay_sendmail_tests: cannot make host lookups local: %s\n",
                 std::strerror(errno));
    std::exit(1);
  }
  if (runCommand({"/usr/sbin/ip", "link", "set", "lo", "up"}) != 0) return;
  // A global IPv4 address (documentation prefix), so that getaddrinfo's AI_ADDRCONFIG, which
  // dynmx-tunneld uses, still returns IPv4 addresses in a namespace that has only loopback ones.
  runCommand({"/usr/sbin/ip", "addr", "add", "192.0.2.1/32", "dev", "lo"});
  bool ok = true;
  for (const char* a : {"2001:db8::1/128", "2001:db8::2/128", "2001:db8::3/128"}) {
    ok = ok && runCommand({"/usr/sbin/ip", "-6", "addr", "add", a, "dev", "lo", "nodad"}) == 0;
  }
  // A connection to 2001:db8::2 that binds no source would come from 2001:db8::2 itself (IPv6
  // source selection prefers the destination when it is local), and a tunnel lease for the MX's
  // own address is refused: its local route gets 2001:db8::1 as preferred source, as a real MX's
  // address differs from its client's (daemon_relay_test.cpp's IPv6 tunnel). Clients that bind
  // their source (SmtpFrom) are not affected.
  ok = ok &&
       runCommand({"/usr/sbin/ip", "-6", "route", "del", "local", "2001:db8::2", "dev", "lo",
                   "table", "local"}) == 0 &&
       runCommand({"/usr/sbin/ip", "-6", "route", "add", "local", "2001:db8::2", "dev", "lo",
                   "table", "local", "src", "2001:db8::1"}) == 0;
  g_ipv6 = ok;
}

}  // namespace
}  // namespace dynmx::relay

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!GTEST_FLAG_GET(list_tests)) dynmx::relay::isolate();  // not for test discovery
  return RUN_ALL_TESTS();
}
