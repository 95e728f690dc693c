// key_rotation_test.cpp: identity = ["NEW", "OLD"] while the clients move to a new tunnel key.
//
// The whole dynmx-tunneld delivers through a real sshd (into dynmx-test-smtpd) whose
// authorized_keys holds first only the old key, then only the new one, then both: mail goes in
// every phase, the new key is tried first (it is the one that logs in when both are allowed), and
// the log and `dynmxctl status` name the key each login used, so that the administrator knows
// when every client has moved. Waiting is for events with a generous deadline, never for time.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "shared/spool.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(120);

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos; ++p) ++n;
  return n;
}

class KeyRotationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bin = binDir();
    mkdir((dir / "sshd").c_str(), 0700);
    mkdir((dir / "mail").c_str(), 0755);
    sshd = std::make_unique<TestSshd>(dir / "sshd");
    fresh = generateKey(dir / "id_new");
    old = generateKey(dir / "id_old");
  }

  std::string sink() { return bin + "/dynmx-test-smtpd --maildir " + (dir / "mail"); }

  void startDaemon() {
    writeFile(dir / "known_hosts", sshd->knownHostsLine() + "\n");
    std::string c = "[spool]\ndir = \"" + (dir / "spool") + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + (dir / "ctl.sock") + "\"\n";
    c += "identity = [\"" + fresh.private_path + "\", \"" + old.private_path + "\"]\n";
    c += "known_hosts = \"" + (dir / "known_hosts") +
         "\"\nkeepalive = \"10s\"\nconnect_timeout = \"20s\"\nreconnect_min = \"1s\"\n"
         "reconnect_max = \"2s\"\nretry_min = \"1s\"\nretry_max = \"2s\"\n"
         "sendmail = [\"/bin/true\"]\nhostname = \"mx.test\"\n\n";
    c += "[[client]]\nname = \"alpha\"\nhost = \"127.0.0.1\"\nport = " +
         std::to_string(sshd->port()) + "\nuser = \"" + sshd->user() +
         "\"\ndomains = [\"alpha.test\"]\n";
    writeFile(dir / "dynmx.toml", c, 0644);
    daemon = std::make_unique<Process>(
        std::vector<std::string>{bin + "/dynmx-tunneld", "-f", "-c", dir / "dynmx.toml"},
        SpawnOptions{"", "", dir / "daemon.log", {}, true});
  }

  std::string status() {
    std::string out;
    runCommand({bin + "/dynmxctl", "-s", dir / "ctl.sock", "status"}, &out);
    return out;
  }
  std::string log() { return readFile(dir / "daemon.log"); }
  size_t delivered() {
    size_t n = 0;
    for (auto& f : listDir(dir / "mail"))
      if (f.size() > 5 && f.compare(f.size() - 5, 5, ".data") == 0) ++n;
    return n;
  }
  void spool(const std::string& subject) {
    Spool sp(dir / "spool");
    ASSERT_TRUE(sp.prepare().ok());
    auto w = sp.create();
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->write("Subject: " + subject + "\r\n\r\nhi\r\n").ok());
    Envelope env;
    env.client = "alpha";
    env.sender = "sender@origin.test";
    env.arrival = time(nullptr);
    env.origin = "test";
    SpoolRecipient r;
    r.address = "bob@alpha.test";
    env.rcpts.push_back(r);
    ASSERT_TRUE((*w)->commit(env).ok());
  }
  // The next login after the far end restarts: its log line, which names the key.
  bool waitForLogin(size_t logins_before, const KeyPair& key) {
    return waitFor(
        [&] {
          return count(log(), "client=alpha: connected to ") > logins_before &&
                 status().find("login key: " + key.private_path + "\n") != std::string::npos;
        },
        kLong);
  }

  void TearDown() override {
    if (HasFailure())
      std::cerr << "---- daemon log ----\n" << log() << "---- status ----\n" << status();
    daemon.reset();
    sshd.reset();
  }

  TempDir dir{"dynmx-rotation"};
  std::string bin;
  std::unique_ptr<TestSshd> sshd;
  KeyPair fresh, old;
  std::unique_ptr<Process> daemon;
};

}  // namespace

TEST_F(KeyRotationTest, BothKeysDeliverTheNewOneIsTriedFirstAndTheLogNamesTheKeyUsed) {
  // Phase 1: the client still has only the old key in its authorized_keys.
  sshd->authorize(old, sink());
  sshd->start();
  startDaemon();
  ASSERT_TRUE(waitForLogin(0, old));
  EXPECT_EQ(count(log(), "(user " + sshd->user() + ", key " + old.private_path + ", "), 1u)
      << log();
  spool("old key");
  ASSERT_TRUE(waitFor([&] { return delivered() == 1; }, kLong));

  // Phase 2: the client has moved to the new key only.
  size_t logins = count(log(), "client=alpha: connected to ");
  sshd->revokeAll();
  sshd->authorize(fresh, sink());
  sshd->restartWithHostKey(sshd->hostKey());
  ASSERT_TRUE(waitForLogin(logins, fresh));
  EXPECT_EQ(count(log(), "(user " + sshd->user() + ", key " + fresh.private_path + ", "), 1u)
      << log();
  spool("new key");
  ASSERT_TRUE(waitFor([&] { return delivered() == 2; }, kLong));

  // Phase 3: both keys are allowed: the new one is tried first, so it is the one that logs in.
  logins = count(log(), "client=alpha: connected to ");
  sshd->authorize(old, sink());
  sshd->restartWithHostKey(sshd->hostKey());
  ASSERT_TRUE(waitForLogin(logins, fresh));
  EXPECT_EQ(count(log(), "(user " + sshd->user() + ", key " + fresh.private_path + ", "), 2u)
      << log();
  EXPECT_EQ(count(log(), "key " + old.private_path + ", "), 1u) << log();
  // The metrics say the same, for a monitoring system that counts the clients still on the old key.
  std::string metrics;
  runCommand({bin + "/dynmxctl", "-s", dir / "ctl.sock", "metrics"}, &metrics);
  EXPECT_NE(metrics.find("dynmx_client_login_key_info{client=\"alpha\",key=\"" +
                         fresh.private_path + "\"} 1\n"),
            std::string::npos)
      << metrics;
}

TEST_F(KeyRotationTest, NeitherKeyAcceptedNamesBothInTheError) {
  KeyPair stranger = generateKey(dir / "id_stranger");
  sshd->authorize(stranger, sink());
  sshd->start();
  startDaemon();
  ASSERT_TRUE(waitFor(
      [&] {
        std::string l = log();
        return l.find("refused (" + fresh.private_path + ": ") != std::string::npos &&
               l.find(", " + old.private_path + ": ") != std::string::npos;
      },
      kLong));
  EXPECT_EQ(status().find("client alpha: connected"), std::string::npos) << status();
}
