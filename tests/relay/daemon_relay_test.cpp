// daemon_relay_test.cpp: relay leases end to end: the whole dynmx-tunneld (the built program, in
// the foreground) connected through a real sshd on 127.0.0.2 whose authorized_keys line forces
// `echo dynmx-peer $SSH_CONNECTION; exec dynmx-test-smtpd ...`, its dynmx-relaymap, and a real
// sendmail built with the shipped etc/sendmail/dynmx-relay.m4 asking that relaymap. SMTP clients
// bind their source address: 127.0.0.2 is the client, 127.0.0.3 a stranger, 127.0.0.4 a forwarder
// (dynmx-linkemu whose outgoing side is bound to 127.0.0.4, in front of the client's sshd).
// Cases: a lease from the confirmed tunnel, a client without the echo, a forwarder, a stranger's
// host key, lease_grace after the connection is lost, dynmxctl revoke with its hold-down, leases
// across a restart, dynmx-tunneld killed (and its lease file whole after kill -9), dynmx-relaymap
// killed (SIGCHLD, restart), a reload that turns relaying off, and an IPv6 tunnel (sshd on
// 2001:db8::2, the daemon's source 2001:db8::1).
// Runs in the private UTS and network namespaces main() (sendmail_relay_test.cpp) sets up. Waiting
// is always for an event with a generous deadline; nothing asserts on elapsed time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/test_sshd.hpp"
#include "tests/relay/relay_smtp_util.hpp"
#include "tests/relay/relaymap_test_util.hpp"

namespace dynmx::relay {
namespace {

using dynmx::test::generateKey;
using dynmx::test::KeyPair;
using dynmx::test::Process;
using dynmx::test::readFile;
using dynmx::test::runCommand;
using dynmx::test::TestSshd;
using dynmx::test::waitFor;
using dynmx::test::writeFile;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr auto kLong = std::chrono::seconds(120);
constexpr const char* kOutside = "friend@elsewhere.example";
constexpr const char* kLocal = "root";
constexpr const char* kDenied = "550 5.7.1 <friend@elsewhere.example>... Relaying denied";

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// Whether main() made the IPv6 test addresses (2001:db8::1 .. ::3 on lo, root only): a socket
// binds to 2001:db8::1.
bool haveIpv6TestAddresses() {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "2001:db8::1", &a.sin6_addr);
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

class DaemonRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bin_ = dynmx::test::binDir();
    char tmpl[] = "/run/dynmx-test-relayd.XXXXXX";  // sendmail wants a safe path to the socket
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    sockdir_ = tmpl;
    chmod(sockdir_.c_str(), 0755);
    mkdir((dir_ / "sshd").c_str(), 0700);
    mkdir((dir_ / "mail").c_str(), 0755);
    mkdir((dir_ / "sendmail").c_str(), 0755);
    sshd_ = std::make_unique<TestSshd>(dir_ / "sshd");
    sshd_->setAddress("127.0.0.2");
    key_ = generateKey(dir_ / "id_ed25519");
    writeFile(dir_ / "bounce", "#!/bin/sh\ncat >/dev/null\n", 0755);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- daemon log ----\n" << log() << "----\n";
    daemon_.reset();
    stopOrphanedRelaymaps();
    proxy_.reset();
    sshd_.reset();
    sendmail_.stop();
    std::error_code ec;
    std::filesystem::remove_all(sockdir_, ec);
  }

  std::string smtpd() { return bin_ + "/dynmx-test-smtpd --maildir " + (dir_ / "mail"); }
  std::string withEcho(const std::string& command) {
    return "echo dynmx-peer $SSH_CONNECTION; exec " + command;
  }
  void startSshd(const std::string& command) {
    sshd_->authorize(key_, command);
    sshd_->start();
  }
  // dynmx-linkemu on 127.0.0.4, its outgoing side bound to 127.0.0.4, in front of sshd.
  uint16_t startForwarder() {
    std::string out = dir_ / "proxy.out";
    dynmx::test::SpawnOptions so;
    so.stdout_path = out;
    proxy_ = std::make_unique<Process>(
        std::vector<std::string>{bin_ + "/dynmx-linkemu", "--listen", "127.0.0.4", "--source",
                                 "127.0.0.4", "--target",
                                 "127.0.0.2:" + std::to_string(sshd_->port())},
        so);
    uint16_t port = 0;
    EXPECT_TRUE(waitFor([&] {
      std::string s = readFile(out);
      if (s.rfind("listening ", 0) != 0 || s.find('\n') == std::string::npos) return false;
      port = static_cast<uint16_t>(std::stoi(s.substr(10)));
      return true;
    }));
    return port;
  }

  void writeConfig(const std::string& relay_extra, const std::string& host = "127.0.0.2",
                   uint16_t port = 0) {
    std::string c;
    c += "[spool]\ndir = \"" + (dir_ / "spool") + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + (dir_ / "ctl.sock") + "\"\n";
    c += "identity = \"" + key_.private_path + "\"\n";
    c += "keepalive = \"1s\"\nconnect_timeout = \"20s\"\nreconnect_min = \"1s\"\n"
         "reconnect_max = \"2s\"\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    c += "sendmail = [\"" + (dir_ / "bounce") + "\"]\nhostname = \"mx.test\"\n\n";
    c += "[relay]\nsocket = \"" + socket() + "\"\nuser = \"nobody\"\n";
    c += "lease_file = \"" + (dir_ / "leases") + "/leases\"\n" + relay_extra + "\n";
    c += "[[client]]\nname = \"home\"\nhost = \"" + host +
         "\"\nport = " + std::to_string(port ? port : sshd_->port()) + "\nuser = \"" +
         sshd_->user() + "\"\n";
    c += "host_key = \"" + sshd_->originalHostKey().public_line + "\"\n";
    c += "domains = [\"home.test\"]\nrelay = true\n";
    writeFile(dir_ / "dynmx.toml", c, 0644);
  }
  std::string socket() { return sockdir_ + "/relay.sock"; }

  void startDaemon() {
    daemon_ = std::make_unique<Process>(
        std::vector<std::string>{bin_ + "/dynmx-tunneld", "-f", "-c", dir_ / "dynmx.toml"},
        dynmx::test::SpawnOptions{"", "", dir_ / "daemon.log", {}, true});
    ASSERT_TRUE(waitFor([&] { return !daemon_->running() || ctl({"status"}).first == 0; }, kLong));
    ASSERT_TRUE(daemon_->running()) << log();
  }
  void stopDaemon() {
    daemon_->signal(SIGTERM);
    ASSERT_TRUE(daemon_->wait(kLong));
  }
  void startSendmail() {
    startRelaySendmail(dir_ / "sendmail", socket(), "", ipv6_, port_, sendmail_);
  }

  std::pair<int, std::string> ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{bin_ + "/dynmxctl", "-s", dir_ / "ctl.sock"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    int rc = runCommand(argv, &out);
    return {rc, out};
  }
  std::string leases() { return ctl({"leases"}).second; }
  bool leased() { return contains(leases(), "127.0.0.2 "); }
  std::string log() { return readFile(dir_ / "daemon.log"); }
  bool logged(const std::string& what) { return contains(log(), what); }

  std::string rcptFrom(const std::string& source, const std::string& rcpt) {
    SmtpFrom s(source, contains(source, ":") ? "::1" : "127.0.0.1", port_);
    return s.rcpt(rcpt);
  }

  void spool(const std::string& to) {
    Spool sp(dir_ / "spool");
    ASSERT_TRUE(sp.prepare().ok());
    auto w = sp.create();
    ASSERT_TRUE(w.ok()) << w.error().message;
    ASSERT_TRUE((*w)->write("Subject: t\r\n\r\nbody\r\n").ok());
    Envelope env;
    env.client = "home";
    env.sender = "sender@origin.test";
    env.arrival = time(nullptr);
    env.origin = "test";
    SpoolRecipient r;
    r.address = to;
    env.rcpts.push_back(r);
    ASSERT_TRUE((*w)->commit(env).ok());
  }
  size_t delivered() {
    size_t n = 0;
    for (auto& f : dynmx::test::listDir(dir_ / "mail"))
      if (f.size() > 5 && f.compare(f.size() - 5, 5, ".data") == 0) ++n;
    return n;
  }

  // dynmx-relaymap children the log names that outlived a killed daemon: stopped by pid.
  void stopOrphanedRelaymaps() {
    std::string l = log();
    for (size_t at = l.find(", pid "); at != std::string::npos; at = l.find(", pid ", at + 1)) {
      pid_t pid = static_cast<pid_t>(std::atoi(l.c_str() + at + 6));
      if (pid <= 1) continue;
      std::string exe = readFile("/proc/" + std::to_string(pid) + "/cmdline");
      if (contains(exe, "dynmx-relaymap")) kill(pid, SIGKILL);
    }
  }

  dynmx::test::TempDir dir_{"dynmx-relay-daemon"};
  std::string bin_;
  std::string sockdir_;
  std::unique_ptr<TestSshd> sshd_;
  KeyPair key_;
  std::unique_ptr<Process> daemon_;
  std::unique_ptr<Process> proxy_;
  Process sendmail_;
  bool ipv6_ = false;  // sendmail listens on ::1 too
  uint16_t port_ = 0;
};

TEST_F(DaemonRelayTest, ConfirmedTunnelLeasesTheClientsAddressForRelaying) {
  startSshd(withEcho(smtpd()));
  writeConfig("");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor(
      [&] { return logged("lease: client=home addr=127.0.0.2 source=tunnel expires="); }, kLong));
  EXPECT_TRUE(leased()) << leases();
  EXPECT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  EXPECT_THAT(rcptFrom("127.0.0.3", kOutside), StartsWith(kDenied));
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
  // The peer line is not mail: delivery goes on as before.
  spool("bob@home.test");
  EXPECT_TRUE(waitFor([&] { return delivered() == 1; }, kLong)) << log();
  auto [rc, json] = ctl({"leases", "--json"});
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(json, HasSubstr("{\"leases\": [{\"address\": \"127.0.0.2\", \"client\": "
                              "\"home\", \"source\": \"tunnel\""));
  EXPECT_THAT(ctl({"status"}).second, HasSubstr("  lease: 127.0.0.2 tunnel (connected)"));
}

TEST_F(DaemonRelayTest, ClientWithoutTheEchoDeliversButGetsNoLease) {
  startSshd(smtpd());
  writeConfig("");
  startDaemon();
  startSendmail();
  spool("bob@home.test");
  ASSERT_TRUE(waitFor([&] { return delivered() == 1; }, kLong)) << log();
  EXPECT_TRUE(waitFor([&] {
    return logged(
        "lease: client=home addr=127.0.0.2 source=tunnel refused (the client sent no "
        "dynmx-peer line");
  }));
  EXPECT_FALSE(leased()) << leases();
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, ForwarderGetsNoLeaseAndMailStillFlows) {
  startSshd(withEcho(smtpd()));
  uint16_t proxy = startForwarder();
  ASSERT_NE(proxy, 0);
  writeConfig("", "127.0.0.4", proxy);
  startDaemon();
  startSendmail();
  spool("bob@home.test");
  ASSERT_TRUE(waitFor([&] { return delivered() == 1; }, kLong)) << log();
  EXPECT_TRUE(waitFor([&] {
    return logged(
        "lease: client=home addr=127.0.0.4 source=tunnel refused (peer 127.0.0.4 is not this MX)");
  }));
  EXPECT_THAT(leases(), HasSubstr("no leases"));
  EXPECT_THAT(rcptFrom("127.0.0.4", kOutside), StartsWith(kDenied));
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, StrangersHostKeyAtTheAddressEndsTheLease) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"1h\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  sshd_->restartWithHostKey(generateKey(dir_ / "stranger_host_key"));
  ASSERT_TRUE(waitFor(
      [&] {
        return logged("lease: client=home addr=127.0.0.2 source=tunnel revoked (host key mismatch");
      },
      kLong));
  EXPECT_FALSE(leased()) << leases();
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, TrafficRenewsTheLeaseAndItEndsLeaseGraceAfterTheConnectionIsLost) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"3s\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  // While the connection lives, its traffic (keepalive replies) moves the expiry on.
  auto expires = [&] {
    std::string j = ctl({"leases", "--json"}).second;
    size_t at = j.find("\"expires_unix\": ");
    return at == std::string::npos ? int64_t{0} : std::atoll(j.c_str() + at + 16);
  };
  int64_t first = expires();
  ASSERT_GT(first, 0);
  EXPECT_TRUE(waitFor([&] { return expires() > first; }, kLong));
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  sshd_->stop();
  ASSERT_TRUE(waitFor(
      [&] {
        return logged("lease: client=home addr=127.0.0.2 source=tunnel expires=") &&
               logged(" (connection lost)");
      },
      kLong));
  // The lease ends by itself once lease_grace is over.
  ASSERT_TRUE(waitFor(
      [&] { return logged("lease: client=home addr=127.0.0.2 source=tunnel expired"); }, kLong));
  EXPECT_FALSE(leased()) << leases();
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, RevokeEndsTheLeaseAndHoldsTheAddressDown) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"1h\"\nrevoke_hold = \"1h\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  auto [rc, out] = ctl({"revoke", "127.0.0.2"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("127.0.0.2: 1 lease(s) revoked, held down until "));
  EXPECT_TRUE(logged("lease: client=home addr=127.0.0.2 source=tunnel revoked ("));
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
  EXPECT_THAT(leases(), HasSubstr("127.0.0.2: held down until "));
  // A new confirmed connection does not bring it back while the hold lasts.
  sshd_->restartWithHostKey(sshd_->originalHostKey());
  ASSERT_TRUE(waitFor(
      [&] {
        return logged(
            "lease: client=home addr=127.0.0.2 source=tunnel refused (address held "
            "down until ");
      },
      kLong));
  EXPECT_FALSE(leased()) << leases();
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, LeasesSurviveARestartOfTheDaemon) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"1h\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  stopDaemon();
  sshd_->stop();  // the lease can come only from the lease file now
  startDaemon();
  EXPECT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  EXPECT_THAT(log(), HasSubstr("relay: 1 lease(s) and 0 hold-down(s) read back from "));
  EXPECT_TRUE(waitFor([&] { return rcptFrom("127.0.0.2", kOutside).substr(0, 3) == "250"; }));
  EXPECT_THAT(rcptFrom("127.0.0.3", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, KilledDaemonGivesRelaysATempfailAndLocalMailStillFlows) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"1h\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  ASSERT_EQ(rcptFrom("127.0.0.2", kOutside).substr(0, 3), "250");
  daemon_->signal(SIGKILL);
  ASSERT_TRUE(daemon_->wait(kLong));
  // Its dynmx-relaymap sees the feed end and exits; the socket goes with it.
  ASSERT_TRUE(waitFor([&] { return rcptFrom("127.0.0.2", kOutside).substr(0, 1) == "4"; }, kLong));
  EXPECT_EQ(rcptFrom("127.0.0.3", kOutside).substr(0, 1), "4");
  EXPECT_EQ(rcptFrom("127.0.0.2", kLocal).substr(0, 3), "250");
  EXPECT_EQ(rcptFrom("127.0.0.3", kLocal).substr(0, 3), "250");
  // kill -9 left a whole lease file: the next start reads the lease back.
  stopOrphanedRelaymaps();
  sshd_->stop();
  startDaemon();
  EXPECT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  EXPECT_FALSE(logged("set aside")) << log();
  EXPECT_TRUE(waitFor([&] { return rcptFrom("127.0.0.2", kOutside).substr(0, 3) == "250"; }));
}

TEST_F(DaemonRelayTest, DeadRelaymapIsRestartedAndServesTheLeasesAgain) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"1h\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  std::string l = log();
  size_t at = l.find("dynmx-relaymap, pid ");
  ASSERT_NE(at, std::string::npos) << l;
  pid_t first = static_cast<pid_t>(std::atoi(l.c_str() + at + 20));
  ASSERT_GT(first, 1);
  ASSERT_EQ(kill(first, SIGKILL), 0);
  // SIGCHLD: reaped, logged, restarted after its delay, fed the table again.
  ASSERT_TRUE(
      waitFor([&] { return logged("relaymap: pid " + std::to_string(first) + " "); }, kLong));
  EXPECT_TRUE(
      waitFor([&] { return rcptFrom("127.0.0.2", kOutside).substr(0, 3) == "250"; }, kLong));
  EXPECT_THAT(rcptFrom("127.0.0.3", kOutside), StartsWith(kDenied));
}

TEST_F(DaemonRelayTest, ReloadWithRelayOffEndsTheLease) {
  startSshd(withEcho(smtpd()));
  writeConfig("lease_grace = \"1h\"\n");
  startDaemon();
  startSendmail();
  ASSERT_TRUE(waitFor([&] { return leased(); }, kLong)) << log();
  std::string c = readFile(dir_ / "dynmx.toml");
  size_t at = c.find("relay = true");
  ASSERT_NE(at, std::string::npos);
  c.replace(at, 12, "relay = false");
  writeFile(dir_ / "dynmx.toml", c, 0644);
  auto [rc, out] = ctl({"reload"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_TRUE(logged(
      "lease: client=home addr=127.0.0.2 source=tunnel revoked (relay is off for this client)"))
      << log();
  EXPECT_FALSE(leased()) << leases();
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
}

// The daemon reaches the client's sshd over IPv6: sshd on 2001:db8::2, the daemon's source
// 2001:db8::1 (main() gives the local route that preferred source). The client confirms the
// peer, the lease is for its IPv6 address, and the relaymap answers sendmail's tagged,
// uncompressed form (and Postfix's compressed one) for it.
TEST_F(DaemonRelayTest, Ipv6TunnelLeasesTheClientsIpv6Address) {
  if (!haveIpv6TestAddresses())
    GTEST_SKIP() << "no private network namespace with IPv6 addresses (needs root)";
  sshd_->setAddress("2001:db8::2");
  startSshd(withEcho(smtpd()));
  writeConfig("", "2001:db8::2");
  startDaemon();
  ipv6_ = true;
  startSendmail();
  ASSERT_TRUE(waitFor(
      [&] { return logged("lease: client=home addr=2001:db8::2 source=tunnel expires="); }, kLong))
      << log();
  EXPECT_THAT(leases(), HasSubstr("2001:db8::2 "));
  EXPECT_THAT(ctl({"leases", "--json"}).second,
              HasSubstr("{\"leases\": [{\"address\": \"2001:db8::2\", \"client\": "
                        "\"home\", \"source\": \"tunnel\""));
  EXPECT_EQ(test::askOnce(socket(), "relay ipv6:2001:db8:0:0:0:0:0:2"), "OK OK");
  EXPECT_EQ(test::askOnce(socket(), "relay 2001:db8::2"), "OK OK");
  EXPECT_EQ(test::askOnce(socket(), "relay ipv6:2001:db8:0:0:0:0:0:1").rfind("NOTFOUND", 0), 0u);
  EXPECT_EQ(rcptFrom("2001:db8::2", kOutside).substr(0, 3), "250");
  EXPECT_THAT(rcptFrom("2001:db8::3", kOutside), StartsWith(kDenied));
  EXPECT_THAT(rcptFrom("127.0.0.2", kOutside), StartsWith(kDenied));
  spool("bob@home.test");
  EXPECT_TRUE(waitFor([&] { return delivered() == 1; }, kLong)) << log();
}

}  // namespace
}  // namespace dynmx::relay
