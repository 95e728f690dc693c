// link_fault_test.cpp: the whole dynmx-tunneld delivering through dynmx-linkemu (an emulated slow,
// distant link) and a real sshd into dynmx-test-smtpd, while the link fails under it.
//
// Cases: connections reset (RST) while transfers run, with DATA and with BDAT (CHUNKING): every
// message delivered, at most the ones in flight twice, the spool empty; a reset pinned between
// transactions, in the middle of the payload and after the final dot (the far end's sink holds at
// that point and says so); kill -9 of the daemon twice during a backlog into a real sendmail -bs
// (restarted each time): nothing lost; a blackhole longer than
// the keepalive deadline: the peer is declared dead, the daemon reconnects after the link comes
// back and delivers everything; an sshd whose MaxSessions is below the client's concurrency: the
// refused channel opens fail no mail and teach the daemon the limit.
// The fixture follows DaemonTest (daemon_delivery_test.cpp); it is its own here so that the two
// files do not share state. Waiting is always for an event with a generous deadline; nothing
// asserts on elapsed time.
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <gtest/gtest.h>
#include <iostream>
#include <map>
#include <tuple>

#include "shared/spool.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(180);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

class LinkFaultTest : public ::testing::Test {
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

  // sshd with the sink as the forced command, and the link in front of it.
  void startFarEnd(const std::string& sink_args, int delay_ms, int rate_kbit) {
    startFarEndCommand(bin + "/dynmx-test-smtpd --maildir " + maildir() + sink_args, delay_ms,
                       rate_kbit);
  }

  // A real `sendmail -bs` (queue only, into its own queue directory) as the forced command.
  void startSendmailFarEnd(int delay_ms, int rate_kbit) {
    mkdir(farendQueue().c_str(), 0700);
    std::string mc =
        "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\nOSTYPE(`debian')dnl\n"
        "FEATURE(`no_default_msa')dnl\ndefine(`QUEUE_DIR', `" +
        farendQueue() + "')dnl\ndefine(`confPID_FILE', `" + (dir / "farend.pid") +
        "')dnl\n"
        "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
        "define(`confDOMAIN_NAME', `farend.test')dnl\n"
        "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
        "FEATURE(`accept_unresolvable_domains')dnl\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n";
    writeFile(dir / "farend.mc", mc);
    std::string cf;
    ASSERT_EQ(runCommand({"/usr/bin/m4", dir / "farend.mc"}, &cf), 0);
    writeFile(dir / "farend.cf", cf);
    // sendmail wants a qualified host name of its own: a private UTS namespace gives it one.
    writeFile(dir / "farend.sh",
              "#!/bin/sh\nexec /usr/bin/unshare --uts /bin/sh -c 'hostname farend.test && exec "
              "/usr/sbin/sendmail -C" +
                  (dir / "farend.cf") + " -odq -bs'\n",
              0755);
    startFarEndCommand(dir / "farend.sh", delay_ms, rate_kbit);
  }
  std::string farendQueue() { return dir / "farend-queue"; }

  void startFarEndCommand(const std::string& command, int delay_ms, int rate_kbit) {
    sshd->authorize(key, command);
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

  void link(const std::string& command) {
    std::string out;
    ASSERT_EQ(
        runCommand({bin + "/dynmx-linkemu", "--control", dir / "link.ctl", "--command", command},
                   &out),
        0)
        << out;
  }

  // Bytes the emulator took from the daemon's side so far (its "stats" answer).
  uint64_t linkBytesUp() {
    std::string out;
    runCommand({bin + "/dynmx-linkemu", "--control", dir / "link.ctl", "--command", "stats"}, &out);
    auto p = out.find("bytes_up=");
    return p == std::string::npos ? 0 : std::stoull(out.substr(p + 9));
  }

  void writeConfig(const std::string& tunneld_extra, const std::string& client_extra) {
    std::string c;
    c += "[spool]\ndir = \"" + spooldir() + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + sock() + "\"\n";
    c += "identity = \"" + key.private_path + "\"\nknown_hosts = \"" + (dir / "known_hosts") +
         "\"\n";
    c += "connect_timeout = \"5s\"\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n"
         "retry_min = \"1s\"\nretry_max = \"2s\"\nhostname = \"mx.test\"\n";
    c += tunneld_extra + "\n";
    c += "[[client]]\nname = \"alpha\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(emu_port) +
         "\nuser = \"" + sshd->user() + "\"\ndomains = [\"alpha.test\"]\n" + client_extra + "\n";
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

  // Messages numbered from `first`, each `body_lines` lines of 78 characters.
  void spoolMany(int first, int n, int body_lines) {
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
      env.client = "alpha";
      env.sender = "sender@origin.test";
      env.arrival = time(nullptr);
      SpoolRecipient r;
      r.address = "bob@alpha.test";
      env.rcpts.push_back(r);
      ASSERT_TRUE((*w)->commit(env).ok());
    }
  }
  size_t spooled() {
    Spool sp(spooldir());
    return sp.list(QueueState::Incoming).size() + sp.list(QueueState::Active).size() +
           sp.list(QueueState::Deferred).size() + sp.list(QueueState::Hold).size();
  }
  // X-Seq -> how many times it arrived: in the sink's maildir, or (`sendmail`) in the queue
  // files of the far end's sendmail.
  std::map<int, int> arrived(bool sendmail = false) {
    std::map<int, int> seen;
    std::string where = sendmail ? farendQueue() : maildir();
    for (auto& f : listDir(where)) {
      if (sendmail ? f.rfind("qf", 0) != 0
                   : f.size() < 5 || f.compare(f.size() - 5, 5, ".data") != 0)
        continue;
      std::string d = readFile(where + "/" + f);
      auto p = d.find("X-Seq: ");
      if (p != std::string::npos) ++seen[std::stoi(d.substr(p + 7))];
    }
    return seen;
  }
  size_t delivered(bool sendmail = false) {
    size_t n = 0;
    for (auto& [seq, times] : arrived(sendmail)) n += static_cast<size_t>(times);
    return n;
  }
  static size_t duplicates(const std::map<int, int>& seen) {
    size_t n = 0;
    for (auto& [seq, times] : seen) n += static_cast<size_t>(times - 1);
    return n;
  }

  void TearDown() override {
    if (HasFailure()) {
      std::cerr << "---- daemon log ----\n" << log() << "---- status ----\n";
      if (daemon && daemon->running()) std::cerr << status();
    }
    daemon.reset();
    emu = Process();
    sshd.reset();
  }

  TempDir dir{"dynmx-linkfault"};
  std::string bin;
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  Process emu;
  int emu_port = 0;
  std::unique_ptr<Process> daemon;
};

// Resets while messages of 16 KB cross a 4 Mbit/s, 20 ms RTT link: the first lands in the middle
// of transfers (most of the time goes to message content), the second after more were delivered.
// What arrives twice is bounded by what the connections had sent without a reply at each reset:
// concurrency sessions of at most kOpen transactions each, on each of up to max_connections
// connections (the backlog opens a second one). With and without CHUNKING.
class LinkResetTest : public LinkFaultTest, public ::testing::WithParamInterface<bool> {};

TEST_P(LinkResetTest, ResetsDuringTransfersLoseNothing) {
  bool chunking = GetParam();
  const int kMessages = 150, kConcurrency = 3;
  const int kConnections = 2;              // [[client]] max_connections, its default
  const size_t kOpen = chunking ? 32 : 2;  // channel_session.cpp: jobs open per session
  startFarEnd(chunking ? " --chunking" : "", 10, 4000);
  writeConfig("keepalive = \"10s\"\n", "concurrency = " + std::to_string(kConcurrency) + "\n");
  spoolMany(0, kMessages, 200);
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return delivered() >= 10; }, kLong)) << status();
  link("reset");
  ASSERT_TRUE(waitFor([&] { return delivered() >= 60; }, kLong)) << status();
  link("reset");
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  auto seen = arrived();
  EXPECT_EQ(seen.size(), static_cast<size_t>(kMessages));  // every one at least once
  size_t twice = 0;
  for (auto& [seq, times] : seen) {
    EXPECT_LE(times, 3) << "X-Seq " << seq;
    if (times > 1) twice += static_cast<size_t>(times - 1);
  }
  EXPECT_LE(twice, 2 * kConnections * kConcurrency * kOpen);  // only what was in flight at a reset
  std::string l = log();
  EXPECT_GE(count(l, "status=sent"), static_cast<size_t>(kMessages));
  EXPECT_FALSE(contains(l, "status=bounced")) << l;
}

INSTANTIATE_TEST_SUITE_P(LinkFault, LinkResetTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Bdat" : "Data"; });

// A reset pinned at one point of one transaction: the far end's sink (--hold) stops at that point
// of the session's 3rd transaction and says so in a file; the test waits until the daemon has the
// replies to the two before (logged sent), and then resets the link. One SMTP session (concurrency
// 1, max_connections 1), so what was in flight is known exactly: at "mail" (between transactions)
// and "body" (in the middle of the DATA payload or before a BDAT chunk) nothing was accepted by the
// far end and nothing may arrive twice; at "dot" the far end stored the message and its reply was
// lost: exactly that one arrives twice (the daemon cannot know; at least once is the contract).
// Messages of 3 MB, more than sshd's channel window (2 MB) and the pipe to the sink: at "body"
// the daemon is still sending the held message when the link resets (the emulator's byte count
// shows it).
class PinnedResetTest : public LinkFaultTest,
                        public ::testing::WithParamInterface<std::tuple<std::string, bool>> {};

TEST_P(PinnedResetTest, ResetAtAPinnedPointDeliversEverythingOnce) {
  const auto& [stage, chunking] = GetParam();
  const int kMessages = 6, kHeld = 3, kLines = 40000;  // 40000 lines of 80 bytes: 3.2 MB
  const uint64_t kMessageBytes = 80ull * kLines;
  std::string held = maildir() + "/held";
  startFarEnd(std::string(chunking ? " --chunking" : "") + " --hold " + stage + ":" +
                  std::to_string(kHeld) + ":" + held,
              10, 100000);
  // One connection too: a second one (max_connections) would open beside the busy session.
  writeConfig("keepalive = \"10s\"\n", "concurrency = 1\nmax_connections = 1\n");
  spoolMany(0, kMessages, kLines);
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return std::filesystem::exists(held); }, kLong)) << status();
  EXPECT_EQ(readFile(held), stage + " " + std::to_string(kHeld) + "\n");
  ASSERT_TRUE(waitFor([&] { return count(log(), "status=sent") >= kHeld - 1; }, kLong)) << log();
  EXPECT_EQ(count(log(), "status=sent"), static_cast<size_t>(kHeld - 1));  // the held one waits
  if (stage == "body") {
    // The held message had begun to cross the link, and not all of it had left the daemon: the
    // reset cuts its payload.
    uint64_t up = linkBytesUp();
    EXPECT_GT(up, (kHeld - 1) * kMessageBytes);
    EXPECT_LT(up, kHeld * kMessageBytes);
  }
  link("reset");
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  auto seen = arrived();
  EXPECT_EQ(seen.size(), static_cast<size_t>(kMessages));  // every one at least once
  EXPECT_EQ(duplicates(seen), stage == "dot" ? 1u : 0u);
  std::string l = log();
  EXPECT_GE(count(l, "client=alpha: connected to"), 2u) << l;  // the reset was felt
  EXPECT_FALSE(contains(l, "status=bounced")) << l;
}

INSTANTIATE_TEST_SUITE_P(LinkFault, PinnedResetTest,
                         ::testing::Combine(::testing::Values("mail", "body", "dot"),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) ? "Bdat" : "Data");
                         });

// kill -9 of dynmx-tunneld twice while a backlog crosses a slow link into a real sendmail -bs,
// restarted each time: every message arrives (at least once), the spool ends empty.
TEST_F(LinkFaultTest, KillNineTwiceDuringABacklogLosesNothing) {
  const int kMessages = 150;
  startSendmailFarEnd(25, 2000);  // 50 ms RTT, 2 Mbit/s: the backlog takes some 10 s of link
  writeConfig("keepalive = \"10s\"\n", "");
  spoolMany(0, kMessages, 200);
  startDaemon();
  for (size_t at : {20u, 70u}) {
    ASSERT_TRUE(waitFor([&] { return delivered(true) >= at; }, kLong)) << status();
    daemon->signal(SIGKILL);
    ASSERT_TRUE(daemon->wait(kLong)) << "dynmx-tunneld did not die of SIGKILL";
    EXPECT_GT(spooled(), 0u) << "killed after the backlog was gone: nothing tested";
    startDaemon();
  }
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  auto seen = arrived(true);
  EXPECT_EQ(seen.size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) EXPECT_TRUE(seen.count(i)) << "X-Seq " << i << " lost";
  std::cout << "kill -9 twice: " << kMessages << " messages, " << duplicates(seen)
            << " arrived twice\n";
}

TEST_F(LinkFaultTest, BlackholeLongerThanKeepaliveIsDeadPeerThenReconnectAndDeliver) {
  startFarEnd(" --chunking", 10, 20000);
  writeConfig("keepalive = \"2s\"\n", "");
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return contains(status(), "client alpha: connected"); }, kLong))
      << status();
  spoolMany(0, 20, 10);
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  link("blackhole");
  spoolMany(20, 30, 10);  // waits: nothing crosses the link
  ASSERT_TRUE(waitFor([&] { return contains(log(), "dead: nothing received for 6s"); }, kLong))
      << status();
  EXPECT_GT(spooled(), 0u);
  link("resume");
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  auto seen = arrived();
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_GE(count(log(), "client=alpha: connected to"), 2u) << log();
}

// sshd allows fewer sessions than the client's concurrency asks for: the refused channel opens
// fail no mail; the daemon learns the limit, says so in the log, and delivers everything. The
// link's delay keeps sessions busy long enough for the daemon to want more of them.
TEST_F(LinkFaultTest, RefusedChannelOpensTeachTheLimitAndLoseNothing) {
  sshd->setMaxSessions(3);  // the idle channel and two SMTP sessions
  startFarEnd("", 20, 20000);
  writeConfig("keepalive = \"10s\"\nmax_transactions = 40\n", "concurrency = 6\n");
  const int kMessages = 200;
  spoolMany(0, kMessages, 10);
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  EXPECT_EQ(arrived().size(), static_cast<size_t>(kMessages));
  std::string l = log();
  EXPECT_TRUE(contains(l, "at most 2 SMTP sessions on this connection")) << l;
  EXPECT_EQ(count(l, "SMTP sessions on this connection from now on"), 1u) << l;
  EXPECT_FALSE(contains(l, "status=deferred")) << l;
  EXPECT_EQ(count(l, "client=alpha: connected to"), 1u) << l;
}

}  // namespace
