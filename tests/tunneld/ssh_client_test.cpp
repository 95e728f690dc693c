// ssh_client_test.cpp: the SSH layer against a real OpenSSH sshd on loopback: host-key checking
// before authentication (pin, known_hosts, hashed entries, other key type, unknown host), the
// identity file's mode, negotiated algorithms, reconnect after a restart, dead-peer detection,
// unix times read from the TimeSource the client is given.
// The far end's forced command is `cat`; no mail moves here (the JobSource has none), so these
// tests isolate the connection layer. Delivery is tested in daemon_*_test.cpp.
#include "tunneld/ssh/ssh_client.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::tunneld;
using namespace dynmx::test;

namespace {

class NoJobs : public JobSource {
 public:
  bool hasDue(const std::string&, int64_t) override { return false; }
  std::optional<Job> nextJob(const std::string&, int64_t) override { return std::nullopt; }
  void finish(Job, const TransactionResult&, const std::string&, int64_t) override {}
  void abandon(Job, const std::string&, int64_t) override {}
  void clientUp(const std::string&, int64_t) override { ++ups; }
  int ups = 0;
};

class FdWaker : public Waker {
 public:
  FdWaker() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~FdWaker() override { close(fd); }
  void wake() override {
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);
    (void)n;
  }
  int fd;
};

class SshClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    libssh2_init(0);
    sshd = std::make_unique<TestSshd>(dir.path());
    key = sshd->newClientKey("id_client", "/bin/cat");
    sshd->start();
    tcfg.identity = key.private_path;
    tcfg.known_hosts = dir / "known_hosts";
    tcfg.keepalive = std::chrono::seconds(30);
    tcfg.connect_timeout = std::chrono::seconds(30);
    tcfg.reconnect_min = std::chrono::seconds(1);
    tcfg.reconnect_max = std::chrono::seconds(2);
    writeFile(tcfg.known_hosts, sshd->knownHostsLine() + "\n");
    ccfg.name = "alpha";
    ccfg.host = "127.0.0.1";
    ccfg.port = sshd->port();
    ccfg.user = sshd->user();
  }

  // Runs the client's event loop until pred() holds or the generous deadline passes.
  bool driveUntil(SshClient& c, const std::function<bool()>& pred,
                  std::chrono::seconds limit = std::chrono::seconds(60)) {
    auto end = SteadyClock::now() + limit;
    c.step(clock->steady());
    while (!pred()) {
      if (SteadyClock::now() >= end) return false;
      int timeout = 100;
      if (auto d = c.deadline()) {
        auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(*d - clock->steady()).count();
        timeout = static_cast<int>(std::clamp<int64_t>(ms, 0, 100));
      }
      pollfd p[2] = {{c.fd(), c.events(), 0}, {waker.fd, POLLIN, 0}};
      poll(p, 2, timeout);
      uint64_t v;
      while (read(waker.fd, &v, sizeof v) > 0) {
      }
      c.step(clock->steady(), p[0].fd >= 0 ? p[0].revents : 0);
    }
    return true;
  }

  bool acceptedInSshdLog() {
    return readFile(sshd->logPath()).find("Accepted publickey") != std::string::npos;
  }

  TempDir dir{"dynmx-ssh"};
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  TunneldConfig tcfg;
  ClientConfig ccfg;
  NoJobs jobs;
  FdWaker waker;
  const TimeSource* clock = &systemTime();  // what driveUntil() passes to step()
};

std::string blobOf(const KeyPair& k) {
  return *base64Decode(k.public_line.substr(k.public_line.find(' ') + 1));
}

}  // namespace

TEST_F(SshClientTest, ConnectsWithKnownHostsAndRecordsStrongAlgorithms) {
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }))
      << c.status().state << ": " << c.status().last_error;
  auto s = c.status();
  EXPECT_EQ(s.hostkey, "ssh-ed25519");
  EXPECT_NE(std::string(kCipherPref).find(s.cipher), std::string::npos) << s.cipher;
  EXPECT_NE(std::string(kMacPref).find(s.mac), std::string::npos) << s.mac;
  EXPECT_NE(std::string(kKexPref).find(s.kex), std::string::npos) << s.kex;
  EXPECT_EQ(s.presented_fp, fingerprint(blobOf(sshd->hostKey())));
  EXPECT_EQ(s.address, "127.0.0.1[127.0.0.1]:" + std::to_string(sshd->port()));
  EXPECT_EQ(jobs.ups, 1);
  EXPECT_TRUE(acceptedInSshdLog());
}

TEST_F(SshClientTest, ConnectsWithPinnedLineAndPinnedFingerprint) {
  writeFile(tcfg.known_hosts, "");
  for (std::string pin : {sshd->hostKey().public_line, fingerprint(blobOf(sshd->hostKey()))}) {
    ccfg.host_key = pin;
    SshClient c(ccfg, tcfg, jobs, waker, systemTime());
    EXPECT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }))
        << pin << ": " << c.status().state << ": " << c.status().last_error;
  }
}

TEST_F(SshClientTest, ConnectsWithHashedKnownHostsEntry) {
  ASSERT_EQ(runCommand({"/usr/bin/ssh-keygen", "-H", "-f", tcfg.known_hosts}), 0);
  ASSERT_EQ(readFile(tcfg.known_hosts).find("127.0.0.1"), std::string::npos);
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  EXPECT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }))
      << c.status().last_error;
}

TEST_F(SshClientTest, HostKeyMismatchStopsBeforeAuthenticationAndNamesBothFingerprints) {
  KeyPair other = generateKey(dir / "other_host_key");
  writeFile(tcfg.known_hosts,
            "[127.0.0.1]:" + std::to_string(sshd->port()) + " " + other.public_line + "\n");
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "host-key-mismatch"; }))
      << c.status().state << ": " << c.status().last_error;
  auto s = c.status();
  EXPECT_EQ(s.presented_fp, fingerprint(blobOf(sshd->hostKey())));
  EXPECT_EQ(s.expected_fp, fingerprint(blobOf(other)));
  EXPECT_NE(s.last_error.find(s.presented_fp), std::string::npos);
  EXPECT_NE(s.last_error.find(s.expected_fp), std::string::npos);
  EXPECT_EQ(jobs.ups, 0);
  EXPECT_FALSE(acceptedInSshdLog());
}

TEST_F(SshClientTest, UnknownHostIsNeverTrustedOnFirstUse) {
  writeFile(tcfg.known_hosts, "# empty\n");
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "host-key-unknown"; }))
      << c.status().state << ": " << c.status().last_error;
  EXPECT_EQ(c.status().presented_fp, fingerprint(blobOf(sshd->hostKey())));
  EXPECT_FALSE(acceptedInSshdLog());
}

TEST_F(SshClientTest, StoredKeyOfAnotherTypeReadsAsMismatch) {
  KeyPair ecdsa = generateKey(dir / "ecdsa_host_key", "ecdsa");
  writeFile(tcfg.known_hosts,
            "[127.0.0.1]:" + std::to_string(sshd->port()) + " " + ecdsa.public_line + "\n");
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "host-key-mismatch"; }))
      << c.status().state << ": " << c.status().last_error;
  EXPECT_EQ(c.status().expected_fp, fingerprint(blobOf(ecdsa)));
  EXPECT_FALSE(acceptedInSshdLog());
}

TEST_F(SshClientTest, RefusesIdentityReadableByOthersBeforeAuthenticating) {
  chmod(key.private_path.c_str(), 0644);
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return !c.status().last_error.empty(); }));
  auto s = c.status();
  EXPECT_EQ(s.state, "backoff");
  EXPECT_NE(s.last_error.find(key.private_path), std::string::npos) << s.last_error;
  EXPECT_NE(s.last_error.find("0644"), std::string::npos) << s.last_error;
  EXPECT_FALSE(acceptedInSshdLog());
}

TEST_F(SshClientTest, WrongKeyIsRefusedByTheServer) {
  KeyPair stranger = generateKey(dir / "stranger");
  tcfg.identity = stranger.private_path;
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return !c.status().last_error.empty(); }));
  EXPECT_NE(c.status().last_error.find("refused"), std::string::npos) << c.status().last_error;
  EXPECT_EQ(jobs.ups, 0);
}

TEST_F(SshClientTest, ReconnectsAfterTheServerWasDownAndBack) {
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }));
  sshd->stop();
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state != "connected"; }))
      << "loss of the server not noticed";
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().failures >= 2; }));  // refused while down
  sshd->start();
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }))
      << c.status().last_error;
  EXPECT_EQ(jobs.ups, 2);
}

TEST_F(SshClientTest, StatusTimesComeFromTheTimeSource) {
  // A clock that stands still, far from today: what the client reports as unix time must be read
  // from it, and its steady time drives the state machine (no deadline passes).
  ManualTime t(1'000'000'000);
  clock = &t;
  SshClient c(ccfg, tcfg, jobs, waker, t);
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }))
      << c.status().state << ": " << c.status().last_error;
  EXPECT_EQ(c.status().connected_since, 1'000'000'000);
  sshd->stop();
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "backoff"; }))
      << "loss of the server not noticed";
  // reconnect_min 1 s, reconnect_max 2 s.
  EXPECT_GE(c.status().backoff_until, 1'000'000'001);
  EXPECT_LE(c.status().backoff_until, 1'000'000'002);
}

TEST_F(SshClientTest, DeadPeerIsNoticedAfterThreeKeepalivesWithoutReply) {
  tcfg.keepalive = std::chrono::seconds(2);
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }));
  // Freeze the server side of this connection (TCP stays up, nothing answers).
  auto frozen = descendants(sshd->pid());
  ASSERT_FALSE(frozen.empty());
  for (pid_t p : frozen) kill(p, SIGSTOP);
  bool noticed = driveUntil(c, [&] { return c.status().state != "connected"; });
  for (pid_t p : frozen) kill(p, SIGCONT);
  ASSERT_TRUE(noticed);
  EXPECT_NE(c.status().last_error.find("nothing received"), std::string::npos)
      << c.status().last_error;
  EXPECT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }));
}

TEST_F(SshClientTest, ResolvesTheHostNameAndTriesEachAddress) {
  // "localhost" may resolve to ::1 first, where nothing listens: the next address must be tried.
  ccfg.host = "localhost";
  writeFile(tcfg.known_hosts, "[localhost]:" + std::to_string(sshd->port()) + " " +
                                  sshd->hostKey().public_line + "\n");
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(c, [&] { return c.status().state == "connected"; }))
      << c.status().state << ": " << c.status().last_error;
  EXPECT_EQ(c.status().address, "localhost[127.0.0.1]:" + std::to_string(sshd->port()));
}

TEST_F(SshClientTest, UnresolvableHostIsRetriedWithBackoff) {
  ccfg.host = "no-such-host.invalid";
  SshClient c(ccfg, tcfg, jobs, waker, systemTime());
  ASSERT_TRUE(driveUntil(
      c, [&] { return c.status().failures >= 2; }, std::chrono::seconds(120)))
      << c.status().last_error;
  EXPECT_NE(c.status().last_error.find("cannot resolve no-such-host.invalid"), std::string::npos)
      << c.status().last_error;
  EXPECT_EQ(c.status().state, "backoff");
}
