// connections_test.cpp: the whole dynmx-tunneld delivering through dynmx-linkemu and a real sshd
// into dynmx-test-smtpd with several SSH connections per client ([[client]] max_connections) and
// a cap on the channels of all clients together ([tunneld] max_channels).
//
// Cases: a backlog that fills the first connection opens a second one (counted at sshd and in
// dynmxctl status), and once the backlog is gone and the sessions went idle the client is back to
// one connection; a second connection that meets another host key is refused (the log says so),
// and the first connection delivers every message; with max_channels, the channels of all
// clients never exceed the cap (status, read all along), and a small client's message gets through
// while a big client's backlog still drains (an order check, not a timing).
// Waiting is always for an event with a generous deadline; nothing asserts on elapsed time.
#include <signal.h>
#include <sys/stat.h>

#include <gtest/gtest.h>
#include <map>
#include <regex>

#include "shared/spool.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(180);
constexpr int kBetaSeq = 100000;  // X-Seq of beta's messages start here

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

class ConnectionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bin = binDir();
    mkdir((dir / "sshd").c_str(), 0700);
    mkdir(maildir().c_str(), 0755);
    sshd = std::make_unique<TestSshd>(dir / "sshd");
    key = generateKey(dir / "id_ed25519");
  }

  std::string maildir() { return dir / "mail"; }
  std::string spooldir() { return dir / "spool"; }
  std::string sock() { return dir / "ctl.sock"; }

  void startFarEnd(int delay_ms, int rate_kbit) {
    sshd->authorize(key, bin + "/dynmx-test-smtpd --maildir " + maildir());
    sshd->start();
    SpawnOptions so;
    so.stdout_path = dir / "linkemu.out";
    so.stderr_path = dir / "linkemu.err";
    emu = Process({bin + "/dynmx-linkemu", "--target", "127.0.0.1:" + std::to_string(sshd->port()),
                   "--delay-ms", std::to_string(delay_ms), "--rate-kbit", std::to_string(rate_kbit),
                   "--control", dir / "link.ctl"},
                  so);
    ASSERT_TRUE(waitFor([&] { return contains(readFile(dir / "linkemu.out"), "\n"); }, kLong));
    emu_port = std::stoi(readFile(dir / "linkemu.out").substr(10));
    writeFile(dir / "known_hosts",
              "[127.0.0.1]:" + std::to_string(emu_port) + " " + sshd->hostKey().public_line + "\n");
  }

  std::string clientSection(const std::string& name, const std::string& extra) {
    return "[[client]]\nname = \"" + name +
           "\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(emu_port) + "\nuser = \"" +
           sshd->user() + "\"\ndomains = [\"" + name + ".test\"]\n" + extra + "\n";
  }

  void writeConfig(const std::string& tunneld_extra, const std::string& clients) {
    std::string c;
    c += "[spool]\ndir = \"" + spooldir() + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + sock() + "\"\n";
    c += "identity = \"" + key.private_path + "\"\nknown_hosts = \"" + (dir / "known_hosts") +
         "\"\n";
    c += "connect_timeout = \"5s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n"
         "retry_min = \"1s\"\nretry_max = \"2s\"\nhostname = \"mx.test\"\nkeepalive = \"10s\"\n";
    c += tunneld_extra + "\n" + clients;
    writeFile(dir / "dynmx.toml", c, 0644);
  }

  void startDaemon() {
    daemon = std::make_unique<Process>(
        std::vector<std::string>{bin + "/dynmx-tunneld", "-f", "-c", dir / "dynmx.toml"},
        SpawnOptions{"", "", dir / "daemon.log", {}, true});
    ASSERT_TRUE(waitFor([&] { return !daemon->running() || ctl("status").first == 0; }, kLong));
    ASSERT_TRUE(daemon->running()) << log();
  }

  std::pair<int, std::string> ctl(const std::string& verb) {
    std::string out;
    int rc = runCommand({bin + "/dynmxctl", "-s", sock(), verb}, &out);
    return {rc, out};
  }
  std::string status() { return ctl("status").second; }
  std::string log() { return readFile(dir / "daemon.log"); }
  // "connections N" of the client's queue line in dynmxctl status, or -1.
  int connections(const std::string& st) {
    std::smatch m;
    static const std::regex re("channels [0-9]+, connections ([0-9]+)");
    return std::regex_search(st, m, re) ? std::stoi(m[1]) : -1;
  }
  // Logins sshd accepted so far.
  size_t sshdLogins() { return count(readFile(sshd->logPath()), "Accepted publickey for"); }

  // Messages numbered from `first` for `client`, each `body_lines` lines of 78 characters.
  void spoolMany(const std::string& client, int first, int n, int body_lines) {
    Spool sp(spooldir());
    ASSERT_TRUE(sp.prepare().ok());
    std::string body;
    for (int l = 0; l < body_lines; ++l)
      body += std::string(78, static_cast<char>('a' + l % 26)) + "\r\n";
    for (int i = first; i < first + n; ++i) {
      auto w = sp.create();
      ASSERT_TRUE(w.ok()) << w.error().message;
      ASSERT_TRUE(
          (*w)->write("Subject: n\r\nX-Seq: " + std::to_string(i) + "\r\n\r\n" + body).ok());
      Envelope env;
      env.client = client;
      env.sender = "sender@origin.test";
      env.arrival = time(nullptr);
      SpoolRecipient r;
      r.address = "bob@" + client + ".test";
      env.rcpts.push_back(r);
      ASSERT_TRUE((*w)->commit(env).ok());
    }
  }
  size_t spooled() {
    Spool sp(spooldir());
    return sp.list(QueueState::Incoming).size() + sp.list(QueueState::Active).size() +
           sp.list(QueueState::Deferred).size() + sp.list(QueueState::Hold).size();
  }
  // X-Seq -> how many times it arrived.
  std::map<int, int> arrived() {
    std::map<int, int> seen;
    for (auto& f : listDir(maildir())) {
      if (f.size() < 5 || f.compare(f.size() - 5, 5, ".data") != 0) continue;
      std::string d = readFile(maildir() + "/" + f);
      auto p = d.find("X-Seq: ");
      if (p != std::string::npos) ++seen[std::stoi(d.substr(p + 7))];
    }
    return seen;
  }

  void TearDown() override {
    if (HasFailure()) {
      std::cerr << "---- daemon log ----\n" << log() << "---- status ----\n";
      if (daemon && daemon->running()) std::cerr << status();
    }
    daemon.reset();
    emu = Process();
    sshd.reset();
    for (pid_t p : orphans) kill(p, SIGKILL);  // sshd's per-connection children, left on purpose
  }

  TempDir dir{"dynmx-conns"};
  std::string bin;
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  Process emu;
  int emu_port = 0;
  std::unique_ptr<Process> daemon;
  std::vector<pid_t> orphans;
};

// 16 KB messages over a 4 Mbit/s, 20 ms RTT link with two channels per connection: the first
// connection is full at once, a second one opens, verified and logged in on its own; when the
// backlog is gone and the sessions closed (idle_close), the client is back to one connection.
TEST_F(ConnectionsTest, BacklogOpensASecondConnectionAndIdleClosesIt) {
  startFarEnd(10, 4000);
  writeConfig("idle_close = \"2s\"\n", clientSection("alpha",
                                                     "concurrency = 2\n"
                                                     "max_connections = 2\n"));
  const int kMessages = 200;
  spoolMany("alpha", 0, kMessages, 200);
  startDaemon();
  int most = 0;
  ASSERT_TRUE(waitFor(
      [&] {
        most = std::max(most, connections(status()));
        return spooled() == 0;
      },
      kLong))
      << status();
  EXPECT_EQ(most, 2) << "status never showed a second connection";
  EXPECT_EQ(arrived().size(), static_cast<size_t>(kMessages));
  std::string l = log();
  EXPECT_EQ(count(l, "client=alpha: connected to"), 1u) << l;
  // The extra connection checked the host key itself: its line names the key it verified.
  EXPECT_GE(count(l, "client=alpha: extra connection connected to"), 1u) << l;
  EXPECT_TRUE(contains(l, "extra connection connected to 127.0.0.1[127.0.0.1]:" +
                              std::to_string(emu_port) + " (user " + sshd->user()))
      << l;
  EXPECT_GE(sshdLogins(), 2u);
  // Idle: the extra connection goes, the first stays.
  ASSERT_TRUE(waitFor([&] { return contains(log(), "extra connection idle; closing"); }, kLong))
      << status();
  ASSERT_TRUE(waitFor([&] { return connections(status()) == 1; }, kLong)) << status();
  EXPECT_TRUE(contains(status(), "client alpha: connected to"));
  EXPECT_FALSE(contains(log(), "status=deferred")) << log();
}

// With max_connections = 1 (the behaviour before there were several) a backlog never opens a
// second connection.
TEST_F(ConnectionsTest, MaxConnectionsOneKeepsOneConnection) {
  startFarEnd(10, 4000);
  writeConfig("", clientSection("alpha", "concurrency = 2\nmax_connections = 1\n"));
  const int kMessages = 60;
  spoolMany("alpha", 0, kMessages, 200);
  startDaemon();
  int most = 0;
  ASSERT_TRUE(waitFor(
      [&] {
        most = std::max(most, connections(status()));
        return spooled() == 0;
      },
      kLong))
      << status();
  EXPECT_EQ(most, 1);
  EXPECT_EQ(arrived().size(), static_cast<size_t>(kMessages));
  EXPECT_EQ(sshdLogins(), 1u);
  EXPECT_FALSE(contains(log(), "extra connection"));
}

// The first connection is up; then the listener is replaced by one presenting another host key
// (the first connection's sshd process stays). A backlog makes the daemon open a second
// connection: it meets the other key and is refused before authenticating; the first connection
// delivers every message.
TEST_F(ConnectionsTest, SecondConnectionMeetingAnotherHostKeyIsRefusedAndNothingIsLost) {
  startFarEnd(10, 4000);
  writeConfig("", clientSection("alpha", "concurrency = 2\nmax_connections = 2\n"));
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return contains(status(), "client alpha: connected"); }, kLong))
      << status();
  // Keep the first connection's sshd process, end only the listener, start another one.
  orphans = descendants(sshd->pid());
  ASSERT_FALSE(orphans.empty());
  kill(sshd->pid(), SIGKILL);
  KeyPair other = generateKey(dir / "other_host_key");
  sshd->restartWithHostKey(other);
  size_t logins_before = sshdLogins();  // the new listener's log

  const int kMessages = 120;
  spoolMany("alpha", 0, kMessages, 200);
  ASSERT_TRUE(
      waitFor([&] { return contains(log(), "extra connection: host key mismatch"); }, kLong))
      << status();
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  auto seen = arrived();
  EXPECT_EQ(seen.size(), static_cast<size_t>(kMessages));
  std::string l = log();
  EXPECT_FALSE(contains(l, "extra connection connected to")) << l;
  EXPECT_TRUE(contains(l, "not authenticating")) << l;
  EXPECT_EQ(sshdLogins(), logins_before) << "a connection logged in past the wrong host key";
  EXPECT_FALSE(contains(l, "status=bounced")) << l;
  EXPECT_TRUE(contains(status(), "client alpha: connected to"));
}

// Two clients, max_channels = 3: alpha's backlog could use 2 connections of 4 channels; the
// total shown by status never passes 3. While alpha drains, a message for beta (connected, no
// session open) gets through: alpha gives one channel back; beta's message arrives before
// alpha's backlog is gone.
TEST_F(ConnectionsTest, ChannelCapHoldsAndASmallClientGetsThroughABigBacklog) {
  startFarEnd(10, 4000);
  writeConfig("max_channels = 3\nidle_close = \"60s\"\n",
              clientSection("alpha", "concurrency = 4\nmax_connections = 2\n") +
                  clientSection("beta", "concurrency = 4\n"));
  const int kMessages = 300;
  spoolMany("alpha", 0, kMessages, 200);
  startDaemon();
  static const std::regex total("client\\(s\\), channels ([0-9]+) of max_channels 3");
  size_t most = 0, samples = 0;
  auto sample = [&] {
    std::string st = status();
    std::smatch m;
    if (std::regex_search(st, m, total)) {
      most = std::max<size_t>(most, std::stoul(m[1]));
      ++samples;
    }
  };
  ASSERT_TRUE(waitFor(
      [&] {
        sample();
        return arrived().size() >= 20 && contains(status(), "client beta: connected");
      },
      kLong))
      << status();
  spoolMany("beta", kBetaSeq, 1, 2);
  ASSERT_TRUE(waitFor(
      [&] {
        sample();
        return arrived().count(kBetaSeq) > 0;
      },
      kLong))
      << status();
  size_t alpha_then = arrived().size() - 1;
  EXPECT_LT(alpha_then, static_cast<size_t>(kMessages)) << "beta waited for alpha's backlog";
  ASSERT_TRUE(waitFor(
      [&] {
        sample();
        return spooled() == 0;
      },
      kLong))
      << status();
  EXPECT_GT(samples, 0u);
  EXPECT_LE(most, 3u);
  EXPECT_GE(most, 2u) << "the cap was never approached: the test proves nothing";
  EXPECT_EQ(arrived().size(), static_cast<size_t>(kMessages + 1));
  EXPECT_FALSE(contains(log(), "status=deferred")) << log();
}

}  // namespace
