// daemon_delivery_test.cpp: the whole dynmx-tunneld (the built program, run in the foreground)
// delivering spooled mail through a real sshd on loopback into the far end the client's
// authorized_keys line forces: dynmx-test-smtpd (sink and fault modes) or a real sendmail -bs.
// Cases: delivery byte for byte, real sendmail, host-key mismatch and restore, client offline and
// back, partial recipient failure, expiry with a bounce, kill -9 during a run, a 50 MB message in
// bounded memory, SIGTERM with a transaction in flight, dynmxctl and reload, delivery over IPv6,
// and the switch to tunneld.user.
// Waiting is always for an event with a generous deadline; nothing asserts on elapsed time.
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <regex>
#include <set>
#include <sstream>

#include "shared/spool.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(120);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bin = binDir();
    mkdir(sshd_dir().c_str(), 0700);
    mkdir(maildir().c_str(), 0755);
    mkdir(bouncedir().c_str(), 0755);
    sshd = std::make_unique<TestSshd>(sshd_dir());
    key = generateKey(dir / "id_ed25519");
    writeFile(dir / "recorder",
              "#!/bin/sh\nd=" + bouncedir() +
                  "\nprintf '%s\\n' \"$@\" > $d/.args.$$\ncat > $d/.msg.$$\n"
                  "mv $d/.args.$$ $d/$$.args\nmv $d/.msg.$$ $d/$$.msg\n",
              0755);
  }

  std::string sshd_dir() { return dir / "sshd"; }
  std::string maildir() { return dir / "mail"; }
  std::string bouncedir() { return dir / "bounces"; }
  std::string spooldir() { return dir / "spool"; }
  std::string sock() { return dir / "ctl.sock"; }
  std::string smtpd() { return bin + "/dynmx-test-smtpd"; }

  // Authorizes the client key with the far-end command and starts sshd.
  void startSshd(const std::string& command) {
    sshd->authorize(key, command);
    sshd->start();
    writeFile(dir / "known_hosts", sshd->knownHostsLine() + "\n");
  }

  void writeConfig(const std::string& tunneld_extra = "", const std::string& client_extra = "",
                   const std::string& more_clients = "") {
    std::string c;
    c += "[spool]\ndir = \"" + spooldir() + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + sock() + "\"\n";
    c += "identity = \"" + key.private_path + "\"\nknown_hosts = \"" + (dir / "known_hosts") +
         "\"\n";
    if (!contains(tunneld_extra, "keepalive")) c += "keepalive = \"10s\"\n";
    c += "connect_timeout = \"20s\"\nreconnect_min = \"1s\"\n"
         "reconnect_max = \"2s\"\nretry_min = \"1s\"\nretry_max = \"2s\"\n";
    c += "sendmail = [\"" + sendmail + "\"]\nhostname = \"mx.test\"\n";
    c += tunneld_extra + "\n";
    c += "[[client]]\nname = \"alpha\"\nhost = \"" + sshd->address() +
         "\"\nport = " + std::to_string(sshd->port()) + "\nuser = \"" + sshd->user() +
         "\"\ndomains = [\"alpha.test\"]\n" + client_extra + "\n" + more_clients;
    writeFile(dir / "dynmx.toml", c, 0644);
  }

  // `prefix`: a program that runs the daemon in its place (prlimit, say).
  void startDaemon(std::vector<std::string> prefix = {}) {
    // Under AddressSanitizer, freed buffers would sit in its quarantine and count as resident:
    // keep it small so that the memory bound of the 50 MB test measures the daemon.
    const char* asan = std::getenv("ASAN_OPTIONS");
    std::string asan_opts =
        "ASAN_OPTIONS=" + (asan ? std::string(asan) + ":" : std::string()) + "quarantine_size_mb=1";
    std::vector<std::string> argv = std::move(prefix);
    for (std::string a : {bin + "/dynmx-tunneld", std::string("-f"), std::string("-c"),
                          std::string(dir / "dynmx.toml")})
      argv.push_back(a);
    daemon = std::make_unique<Process>(argv,
                                       SpawnOptions{"", "", dir / "daemon.log", {asan_opts}, true});
    ASSERT_TRUE(waitFor([&] { return !daemon->running() || ctl({"status"}).first == 0; }, kLong));
    ASSERT_TRUE(daemon->running()) << readFile(dir / "daemon.log");
  }

  std::pair<int, std::string> ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{bin + "/dynmxctl", "-s", sock()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    int rc = runCommand(argv, &out);
    return {rc, out};
  }
  std::string status() { return ctl({"status"}).second; }
  bool connected() { return contains(status(), "client alpha: connected"); }

  std::string spool(const std::string& content, const std::vector<std::string>& rcpts,
                    const std::string& sender = "sender@origin.test",
                    const std::string& client = "alpha") {
    Spool sp(spooldir());
    EXPECT_TRUE(sp.prepare().ok());
    auto w = sp.create();
    EXPECT_TRUE(w.ok()) << w.error().message;
    EXPECT_TRUE((*w)->write(content).ok());
    Envelope env;
    env.client = client;
    env.sender = sender;
    env.arrival = time(nullptr);
    env.origin = "test";
    for (auto& r : rcpts) {
      SpoolRecipient sr;
      sr.address = r;
      env.rcpts.push_back(sr);
    }
    std::string id = (*w)->id();
    auto st = (*w)->commit(env);
    EXPECT_TRUE(st.ok()) << st.error().message;
    return id;
  }

  size_t delivered() {
    size_t n = 0;
    for (auto& f : listDir(maildir()))
      if (f.size() > 5 && f.compare(f.size() - 5, 5, ".data") == 0) ++n;
    return n;
  }
  size_t spooled() {
    Spool sp(spooldir());
    return sp.list(QueueState::Incoming).size() + sp.list(QueueState::Active).size() +
           sp.list(QueueState::Deferred).size() + sp.list(QueueState::Hold).size();
  }
  std::vector<std::string> bounces() {
    std::vector<std::string> out;
    for (auto& f : listDir(bouncedir()))
      if (f.size() > 4 && f.compare(f.size() - 4, 4, ".msg") == 0)
        out.push_back(bouncedir() + "/" + f);
    return out;
  }
  std::string log() { return readFile(dir / "daemon.log"); }
  // The sink's files are named PID-N.data / PID-N.env: the one message's file with this suffix.
  std::string onlyFile(const std::string& suffix) {
    std::string found;
    for (auto& f : listDir(maildir()))
      if (f.size() > suffix.size() &&
          f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0)
        found = maildir() + "/" + f;
    return found;
  }

  void TearDown() override {
    if (HasFailure()) {
      std::cerr << "---- daemon log ----\n" << log() << "---- status ----\n";
      if (daemon && daemon->running()) std::cerr << status();
    }
    daemon.reset();
    sshd.reset();
  }

  TempDir dir{"dynmx-daemon"};
  std::string bin;
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  std::unique_ptr<Process> daemon;
  std::string sendmail = dir / "recorder";  // tunneld.sendmail: records each bounce
};

}  // namespace

TEST_F(DaemonTest, DeliversByteForByteWithDotStuffingAndLineEndsNormalised) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  std::string content =
      "Subject: dots\r\nX-Test: 1\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\n"
      "bare LF\nbare CR\rCRLF\r\n\r\n.\r\nlast line without end";
  std::string expect =
      "Subject: dots\r\nX-Test: 1\r\n\r\n.\r\n..\r\n.leading dot\r\n...three\r\n"
      "bare LF\r\nbare CR\r\nCRLF\r\n\r\n.\r\nlast line without end\r\n";
  std::string id = spool(content, {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong));
  EXPECT_EQ(readFile(onlyFile(".data")), expect);
  std::string env = readFile(onlyFile(".env"));
  EXPECT_TRUE(contains(env, "MAIL FROM:<sender@origin.test>")) << env;
  EXPECT_TRUE(contains(env, "RCPT TO:<bob@alpha.test>")) << env;
  EXPECT_TRUE(waitFor([&] { return contains(log(), id + ": to=<bob@alpha.test>"); }, kLong));
  EXPECT_TRUE(contains(log(), "status=sent")) << log();
  std::string st = status();
  EXPECT_TRUE(contains(st, "ssh: kex ")) << st;
  EXPECT_TRUE(contains(st, "cipher aes")) << st;
}

TEST_F(DaemonTest, DeliversIntoARealSendmailBs) {
  std::string q = dir / "farend-queue";
  mkdir(q.c_str(), 0700);
  std::string mc =
      "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\nOSTYPE(`debian')dnl\n"
      "FEATURE(`no_default_msa')dnl\ndefine(`QUEUE_DIR', `" +
      q +
      "')dnl\n"
      "define(`confPID_FILE', `" +
      (dir / "farend.pid") +
      "')dnl\n"
      "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
      "define(`confDOMAIN_NAME', `farend.test')dnl\n"
      "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
      "FEATURE(`accept_unresolvable_domains')dnl\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n";
  writeFile(dir / "farend.mc", mc);
  std::string cf;
  ASSERT_EQ(runCommand({"/usr/bin/m4", dir / "farend.mc"}, &cf), 0);
  writeFile(dir / "farend.cf", cf);
  // The far end's sendmail wants a qualified host name of its own (else it sleeps a minute):
  // give it one in a private UTS namespace.
  writeFile(dir / "farend.sh",
            "#!/bin/sh\nexec /usr/bin/unshare --uts /bin/sh -c 'hostname farend.test && exec "
            "/usr/sbin/sendmail -C" +
                (dir / "farend.cf") + " -odq -bs'\n",
            0755);
  startSshd(dir / "farend.sh");
  writeConfig();
  startDaemon();
  std::string body = "Subject: real sendmail\r\n\r\n.hidden dot\r\nline two\r\n";
  spool(body, {"bob@alpha.test", "carol@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  std::string qf, df;
  for (auto& f : listDir(q)) {
    if (f.rfind("qf", 0) == 0) qf = readFile(q + "/" + f);
    if (f.rfind("df", 0) == 0) df = readFile(q + "/" + f);
  }
  ASSERT_FALSE(qf.empty()) << "nothing in the far end's queue: " << log();
  EXPECT_TRUE(contains(qf, "bob@alpha.test")) << qf;
  EXPECT_TRUE(contains(qf, "carol@alpha.test")) << qf;
  EXPECT_TRUE(contains(qf, "Subject: real sendmail")) << qf;
  EXPECT_EQ(df, ".hidden dot\nline two\n");  // sendmail keeps df files with LF line ends
  EXPECT_TRUE(contains(log(), "status=sent")) << log();
}

TEST_F(DaemonTest, HostKeyMismatchDeliversNothingUntilTheRightKeyIsBack) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  KeyPair right = sshd->hostKey();
  KeyPair stranger = generateKey(dir / "stranger_host_key");
  sshd->restartWithHostKey(stranger);
  size_t accepted_before = 0;
  {
    std::string l = readFile(sshd->logPath());
    for (size_t p = 0; (p = l.find("Accepted publickey", p)) != std::string::npos; ++p)
      ++accepted_before;
  }
  spool("Subject: x\r\n\r\nhello\r\n", {"bob@alpha.test"});
  std::string fp_stranger, fp_right;
  {
    std::string out;
    runCommand({"/usr/bin/ssh-keygen", "-l", "-E", "sha256", "-f", stranger.private_path + ".pub"},
               &out);
    fp_stranger =
        out.substr(out.find("SHA256:"), out.find(' ', out.find("SHA256:")) - out.find("SHA256:"));
    out.clear();
    runCommand({"/usr/bin/ssh-keygen", "-l", "-E", "sha256", "-f", right.private_path + ".pub"},
               &out);
    fp_right =
        out.substr(out.find("SHA256:"), out.find(' ', out.find("SHA256:")) - out.find("SHA256:"));
  }
  ASSERT_TRUE(waitFor([&] { return contains(status(), "host-key-mismatch"); }, kLong)) << status();
  std::string st = status();
  EXPECT_TRUE(contains(st, "presented " + fp_stranger)) << st;
  EXPECT_TRUE(contains(st, "expected " + fp_right)) << st;
  // Let it retry a few times: still nothing delivered, never authenticated.
  ASSERT_TRUE(waitFor(
      [&] {
        std::string l = log();
        size_t n = 0;
        for (size_t p = 0; (p = l.find("host key mismatch", p)) != std::string::npos; ++p) ++n;
        return n >= 3;
      },
      kLong));
  EXPECT_EQ(delivered(), 0u);
  size_t accepted_after = 0;
  {
    std::string l = readFile(sshd->logPath());
    for (size_t p = 0; (p = l.find("Accepted publickey", p)) != std::string::npos; ++p)
      ++accepted_after;
  }
  EXPECT_EQ(accepted_after, accepted_before);
  // One warning per change of the presented key, not one per retry.
  std::string l = log();
  size_t warnings = 0;
  for (size_t p = 0;
       (p = l.find("warning: client=alpha: host key mismatch", p)) != std::string::npos; ++p)
    ++warnings;
  EXPECT_EQ(warnings, 1u) << l;

  sshd->restartWithHostKey(right);
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
  EXPECT_TRUE(contains(status(), "client alpha: connected"));
}

TEST_F(DaemonTest, ClientOfflineThenBackGetsItsMail) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  sshd->stop();
  startDaemon();
  spool("Subject: while offline\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(status(), "last error: connect to"); }, kLong))
      << status();
  EXPECT_TRUE(contains(status(), "client alpha: backoff"));
  EXPECT_EQ(delivered(), 0u);
  sshd->start();
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
}

TEST_F(DaemonTest, PartialRecipientFailureBouncesOnlyTheFailedRecipient) {
  startSshd(smtpd() + " --maildir " + maildir() +
            " --rcpt-reply 'nobody@alpha.test=550 5.1.1 no such user here'");
  writeConfig();
  startDaemon();
  spool("Subject: partial\r\n\r\nhi\r\n", {"bob@alpha.test", "nobody@alpha.test"});
  ASSERT_TRUE(
      waitFor([&] { return delivered() == 1 && bounces().size() == 1 && spooled() == 0; }, kLong))
      << status();
  std::string env = readFile(onlyFile(".env"));
  EXPECT_TRUE(contains(env, "bob@alpha.test"));
  EXPECT_FALSE(contains(env, "RCPT TO:<nobody@alpha.test>"));
  std::string bounce = readFile(bounces()[0]);
  std::string args = readFile(bounces()[0].substr(0, bounces()[0].size() - 4) + ".args");
  EXPECT_TRUE(contains(args, "sender@origin.test")) << args;
  EXPECT_TRUE(contains(bounce, "nobody@alpha.test")) << bounce;
  EXPECT_TRUE(contains(bounce, "550 5.1.1 no such user here")) << bounce;
  EXPECT_FALSE(contains(bounce, "Final-Recipient: rfc822; bob@alpha.test")) << bounce;
  EXPECT_TRUE(contains(log(), "status=bounced")) << log();
}

TEST_F(DaemonTest, HangingLocalSendmailDoesNotHoldUpDeliveries) {
  // The local sendmail takes the bounce only once the test says so (it waits for a file).
  const std::string started = dir / "handoff-started", go = dir / "handoff-go";
  writeFile(dir / "hanging",
            "#!/bin/sh\n: > " + started + "\nwhile [ ! -e " + go +
                " ]; do sleep 0.05; done\nexec " + (dir / "recorder") + " \"$@\"\n",
            0755);
  startSshd(smtpd() + " --maildir " + maildir() +
            " --rcpt-reply 'nobody@alpha.test=550 5.1.1 no such user here'");
  sendmail = dir / "hanging";
  writeConfig();
  startDaemon();
  spool("Subject: bounces\r\n\r\nhi\r\n", {"nobody@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return std::filesystem::exists(started); }, kLong)) << status();
  // sendmail hangs with the bounce; mail keeps flowing meanwhile.
  for (int i = 0; i < 3; ++i) spool("Subject: meanwhile\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return delivered() == 3; }, kLong)) << status();
  // ... while the hand-off is still under way (not given up on, which would be logged).
  EXPECT_TRUE(bounces().empty());
  EXPECT_FALSE(contains(log(), "client=<bounce>, relay=local")) << log();
  EXPECT_TRUE(contains(ctl({"queue"}).second, "<bounce>")) << ctl({"queue"}).second;
  writeFile(go, "");
  ASSERT_TRUE(waitFor([&] { return bounces().size() == 1 && spooled() == 0; }, kLong)) << status();
  EXPECT_TRUE(waitFor(
      [&] { return contains(log(), "status=sent (notification handed to sendmail)"); }, kLong))
      << log();
}

TEST_F(DaemonTest, SigtermDoesNotWaitForAHangingLocalSendmail) {
  const std::string started = dir / "handoff-started";
  writeFile(dir / "hanging", "#!/bin/sh\n: > " + started + "\nexec sleep 600\n", 0755);
  startSshd(smtpd() + " --maildir " + maildir() +
            " --rcpt-reply 'nobody@alpha.test=550 5.1.1 no such user here'");
  sendmail = dir / "hanging";
  writeConfig();
  startDaemon();
  spool("Subject: bounces\r\n\r\nhi\r\n", {"nobody@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return std::filesystem::exists(started); }, kLong)) << status();
  daemon->signal(SIGTERM);
  // Not after the hand-off's two-minute timeout: its sendmail is killed at once.
  auto st = daemon->wait(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value()) << "still running: " << log();
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << *st;
  EXPECT_TRUE(contains(log(), "given up on: dynmx-tunneld is stopping; killed it")) << log();
  EXPECT_EQ(spooled(), 1u);  // the notification, for the next start
}

TEST_F(DaemonTest, ExpiredMailIsBouncedAndRemoved) {
  startSshd(smtpd() + " --maildir " + maildir() +
            " --rcpt-reply 'bob@alpha.test=450 4.2.0 mailbox busy'");
  writeConfig("queue_lifetime = \"3s\"\ndelay_warning = \"0s\"\n");
  startDaemon();
  spool("Subject: will expire\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return bounces().size() == 1 && spooled() == 0; }, kLong)) << status();
  EXPECT_EQ(delivered(), 0u);
  std::string bounce = readFile(bounces()[0]);
  EXPECT_TRUE(contains(bounce, "bob@alpha.test")) << bounce;
  EXPECT_TRUE(contains(bounce, "Auto-Submitted: auto-replied")) << bounce;
}

TEST_F(DaemonTest, KillNineDuringARunLosesNothing) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig("max_transactions = 100\n", "concurrency = 2\n");
  const int kMessages = 600;  // many SMTP sessions' worth (100 transactions each)
  for (int i = 0; i < kMessages; ++i)
    spool(
        "Subject: n\r\nX-Seq: " + std::to_string(i) + "\r\n\r\nbody " + std::to_string(i) + "\r\n",
        {"bob@alpha.test"});
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return delivered() >= 1; }, kLong, std::chrono::milliseconds(2)))
      << status();
  daemon->signal(SIGKILL);
  daemon->wait();
  size_t at_kill = delivered();
  ASSERT_LT(at_kill, static_cast<size_t>(kMessages)) << "all delivered before the kill; no test";
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, std::chrono::seconds(300))) << status();
  std::set<int> seen;
  for (auto& f : listDir(maildir())) {
    if (f.size() < 5 || f.compare(f.size() - 5, 5, ".data") != 0) continue;
    std::string d = readFile(maildir() + "/" + f);
    auto p = d.find("X-Seq: ");
    ASSERT_NE(p, std::string::npos);
    seen.insert(std::stoi(d.substr(p + 7)));
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kMessages));  // every one at least once
}

TEST_F(DaemonTest, FiftyMegabyteMessageStreamsInBoundedMemory) {
  startSshd(smtpd() + " --discard --count-file " + (dir / "count"));
  writeConfig();
  startDaemon();
  // Baseline: the daemon after one small delivery (sanitizer builds start much higher).
  spool("Subject: small\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  long base = procStatusKb(daemon->pid(), "VmHWM");
  ASSERT_GT(base, 0);
  {
    Spool sp(spooldir());
    ASSERT_TRUE(sp.prepare().ok());
    auto w = sp.create();
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->write("Subject: big\r\n\r\n").ok());
    std::string line(76, 'x');
    line += "\r\n";
    std::string chunk;
    for (int i = 0; i < 840; ++i) chunk += line;                         // 65 KB
    for (int i = 0; i < 800; ++i) ASSERT_TRUE((*w)->write(chunk).ok());  // 52 MB
    Envelope env;
    env.client = "alpha";
    env.sender = "big@origin.test";
    env.arrival = time(nullptr);
    SpoolRecipient r;
    r.address = "bob@alpha.test";
    env.rcpts.push_back(r);
    ASSERT_TRUE((*w)->commit(env).ok());
  }
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, std::chrono::seconds(300))) << status();
  EXPECT_TRUE(contains(readFile(dir / "count"), "2"));  // the small one and the big one
  long hwm = procStatusKb(daemon->pid(), "VmHWM");
  ASSERT_GT(hwm, 0);
  RecordProperty("daemon_VmHWM_kB", static_cast<int>(hwm));
  std::cerr << "daemon VmHWM: " << base << " kB before, " << hwm << " kB after a 52 MB message\n";
  // A memory bound, not a timing: the peak grew by far less than the message (52 MB).
  EXPECT_LT(hwm - base, 13 * 1024) << "peak RSS grew from " << base << " to " << hwm << " kB";
}

TEST_F(DaemonTest, SigtermWithATransactionInFlightMarksNothingDelivered) {
  startSshd(smtpd() + " --maildir " + maildir() + " --stall dot");
  writeConfig();
  startDaemon();
  std::string id = spool("Subject: stalled\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(status(), "in flight 1"); }, kLong)) << status();
  daemon->signal(SIGTERM);
  ASSERT_TRUE(waitFor([&] { return contains(log(), "stopping"); }, kLong));
  daemon->signal(SIGTERM);  // the second one abandons at once instead of after the grace period
  auto st = daemon->wait(kLong);
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0);
  EXPECT_EQ(delivered(), 0u);
  Spool sp(spooldir());
  std::optional<SpoolMessage> msg;
  for (auto s : {QueueState::Incoming, QueueState::Active, QueueState::Deferred}) {
    auto l = sp.list(s);
    if (!l.empty()) {
      auto m = sp.load(s, l[0]);
      ASSERT_TRUE(m.ok());
      msg = *m;
    }
  }
  ASSERT_TRUE(msg.has_value()) << "the message left the spool";
  EXPECT_EQ(msg->id, id);
  EXPECT_EQ(msg->env.rcpts[0].state, RcptState::Pending);
}

TEST_F(DaemonTest, DynmxctlCommandsAndReload) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  EXPECT_EQ(ctl({"bogus"}).first, 64);
  EXPECT_EQ(ctl({"flush", "nosuchclient"}).first, 1);
  EXPECT_EQ(ctl({"flush"}).first, 0);
  EXPECT_EQ(ctl({"queue"}).first, 0);
  {
    std::string out;
    int rc = runCommand({bin + "/dynmxctl", "-s", dir / "nothing-here.sock", "status"}, &out);
    EXPECT_EQ(rc, 69);
  }
  struct stat st;
  ASSERT_EQ(stat(sock().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // A bad file is refused and the running configuration stays.
  std::string good = readFile(dir / "dynmx.toml");
  writeFile(dir / "dynmx.toml", good + "\n[tunneld.nonsense]\n");
  auto bad = ctl({"reload"});
  EXPECT_EQ(bad.first, 1);
  daemon->signal(SIGHUP);
  ASSERT_TRUE(waitFor([&] { return contains(log(), "keeping the running configuration"); }, kLong));
  EXPECT_TRUE(connected());
  // A new client appears on reload.
  writeFile(dir / "dynmx.toml", good);
  writeConfig(
      "", "",
      "[[client]]\nname = \"beta\"\nhost = \"127.0.0.1\"\nport = " + std::to_string(sshd->port()) +
          "\nuser = \"" + sshd->user() + "\"\ndomains = [\"beta.test\"]\n");
  auto ok = ctl({"reload"});
  EXPECT_EQ(ok.first, 0) << ok.second;
  ASSERT_TRUE(waitFor([&] { return contains(status(), "client beta: connected"); }, kLong))
      << status();
  EXPECT_TRUE(contains(log(), "reload: taken: client beta added")) << log();
  // A second daemon on the same socket refuses to start.
  std::string out;
  Process second({bin + "/dynmx-tunneld", "-f", "-c", dir / "dynmx.toml"},
                 SpawnOptions{"", "", dir / "second.log", {}, true});
  auto st2 = second.wait(kLong);
  ASSERT_TRUE(st2.has_value());
  EXPECT_NE(WEXITSTATUS(*st2), 0);
  EXPECT_TRUE(contains(readFile(dir / "second.log"), "another dynmx-tunneld"))
      << readFile(dir / "second.log");
}

TEST_F(DaemonTest, SigtermWhenIdleQuitsAndExitsZero) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  startDaemon();
  spool("Subject: one\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
  daemon->signal(SIGTERM);
  auto st = daemon->wait(kLong);
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0);
  EXPECT_TRUE(contains(log(), "stopped"));
  struct stat sb;
  EXPECT_NE(stat(sock().c_str(), &sb), 0) << "the admin socket was left behind";
}

TEST_F(DaemonTest, SigtermGracePeriodEndsAStuckTransactionWithoutMarkingIt) {
  startSshd(smtpd() + " --maildir " + maildir() + " --stall dot");
  writeConfig();
  startDaemon();
  spool("Subject: stuck\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(status(), "in flight 1"); }, kLong)) << status();
  daemon->signal(SIGTERM);  // one signal: the grace period runs out, then the session is abandoned
  auto st = daemon->wait(kLong);
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0);
  EXPECT_TRUE(contains(log(), "grace period over")) << log();
  EXPECT_EQ(delivered(), 0u);
  EXPECT_EQ(spooled(), 1u);
}

TEST_F(DaemonTest, HeldMessageWaitsUntilReleased) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  sshd->stop();
  startDaemon();
  std::string id = spool("Subject: held\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(ctl({"queue"}).second, id); }, kLong));
  auto held = ctl({"hold", id});
  ASSERT_EQ(held.first, 0) << held.second;
  EXPECT_EQ(ctl({"hold", "0000000000000000"}).first, 1);
  sshd->start();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  EXPECT_EQ(ctl({"flush", "alpha"}).first, 0);
  EXPECT_TRUE(contains(status(), "hold 1")) << status();
  EXPECT_EQ(delivered(), 0u);
  ASSERT_EQ(ctl({"release", id}).first, 0);
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
}

// `queue` shows the arrival as a date; `queue --json` is valid JSON (checked by python3's parser)
// with the documented fields, strings escaped.
TEST_F(DaemonTest, QueueShowsArrivalAsADateAndAsJson) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  sshd->stop();
  startDaemon();
  const std::string sender = "q\"uo\\te@origin.test";
  std::string id =
      spool("Subject: listed\r\n\r\nhi\r\n", {"bob@alpha.test", "carol@alpha.test"}, sender);
  ASSERT_TRUE(waitFor([&] { return contains(ctl({"queue"}).second, id); }, kLong));
  auto human = ctl({"queue"});
  EXPECT_EQ(human.first, 0);
  EXPECT_TRUE(contains(human.second, id + " ")) << human.second;
  EXPECT_TRUE(contains(human.second, " arrival=20")) << human.second;
  EXPECT_TRUE(
      contains(human.second, "Z from=<" + sender + "> to=<bob@alpha.test>,<carol@alpha.test>"))
      << human.second;
  auto json = ctl({"queue", "--json"});
  ASSERT_EQ(json.first, 0) << json.second;
  const char* check =
      "import json, sys, datetime\n"
      "d = json.load(sys.stdin)\n"
      "m = [m for m in d['queue'] if m['id'] == sys.argv[1]][0]\n"
      "assert m['client'] == 'alpha', m\n"
      "assert m['sender'] == sys.argv[2], m\n"
      "assert m['recipients'] == ['bob@alpha.test', 'carol@alpha.test'], m\n"
      "assert m['state'] in ('active', 'deferred', 'in-flight'), m\n"
      "assert isinstance(m['size'], int) and m['size'] > 0, m\n"
      "assert isinstance(m['attempts'], int), m\n"
      "t = datetime.datetime.strptime(m['arrival'], '%Y-%m-%dT%H:%M:%SZ')\n"
      "assert int(t.replace(tzinfo=datetime.timezone.utc).timestamp()) == m['arrival_unix'], m\n";
  std::string out;
  EXPECT_EQ(runCommand({"/usr/bin/python3", "-c", check, id, sender}, &out, json.second), 0) << json.second;
}

TEST_F(DaemonTest, StatusShowsSpoolSpaceAndQueueUsageAgainstLimits) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig("", "max_queue_messages = 10\nmax_queue_bytes = \"1M\"\n");
  sshd->stop();
  startDaemon();
  std::string a = spool("Subject: one\r\n\r\nhi\r\n", {"bob@alpha.test"});
  std::string b = spool("Subject: two\r\n\r\nhi\r\n", {"bob@alpha.test"});
  const std::string want = "  queue usage: 2 messages of max 10, ";
  ASSERT_TRUE(waitFor([&] { return contains(status(), want); }, kLong)) << status();
  // At least the files' sizes when spooled (failed attempts may add journal lines).
  auto size = [&](const std::string& id) -> uint64_t {
    for (const char* st : {"incoming", "active", "deferred"}) {
      std::error_code ec;
      uint64_t n = std::filesystem::file_size(spooldir() + "/" + st + "/" + id, ec);
      if (!ec) return n;
    }
    return 0;
  };
  uint64_t bytes = size(a) + size(b);
  EXPECT_GT(bytes, 0u);
  std::string st = status();
  size_t at = st.find(want) + want.size();
  EXPECT_GE(std::stoull(st.substr(at)), bytes) << st;
  EXPECT_TRUE(contains(st.substr(at), " bytes of max 1048576\n")) << st;
  EXPECT_TRUE(contains(st, "spool: " + spooldir() + ", ")) << st;
  // Unset spool.min_free: 1.5 x the default max_message_size of 50M.
  EXPECT_TRUE(contains(st, " bytes free, new client mail refused below 78643200 (spool.min_free)"))
      << st;
}

TEST_F(DaemonTest, FarEndRefusingEverySessionIsRetriedWithBackoffAndMailStays) {
  startSshd(smtpd() + " --maildir " + maildir() + " --greeting-reply '554 5.3.2 not today'");
  writeConfig();
  startDaemon();
  std::string id = spool("Subject: refused\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(log(), "next SMTP session in"); }, kLong)) << log();
  std::string st = status();
  EXPECT_TRUE(contains(st, "ended before any transaction")) << st;
  EXPECT_TRUE(contains(st, "554 5.3.2 not today")) << st;
  EXPECT_TRUE(contains(st, "client alpha: connected")) << st;  // the SSH connection stays up
  EXPECT_EQ(delivered(), 0u);
  EXPECT_EQ(spooled(), 1u);
  EXPECT_TRUE(bounces().empty());
}

TEST_F(DaemonTest, AStalledTransactionDoesNotMakeTheConnectionLookDead) {
  // The far end takes the message and then says nothing: keepalive replies must keep the
  // connection up (dead would be declared after 3 keepalives without a byte received).
  startSshd(smtpd() + " --maildir " + maildir() + " --stall dot");
  writeConfig("keepalive = \"2s\"\n");
  startDaemon();
  spool("Subject: slow far end\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(status(), "in flight 1"); }, kLong)) << status();
  auto count = [&](const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos; ++p) ++n;
    return n;
  };
  size_t before = count(readFile(sshd->logPath()), "rtype keepalive@libssh2.org");
  // Six keepalives answered (twice the dead-peer limit): the connection must still be the same.
  ASSERT_TRUE(waitFor(
      [&] { return count(readFile(sshd->logPath()), "rtype keepalive@libssh2.org") >= before + 6; },
      kLong));
  std::string st = status();
  EXPECT_TRUE(contains(st, "client alpha: connected")) << st;
  EXPECT_TRUE(contains(st, "in flight 1")) << st;
  EXPECT_EQ(count(readFile(sshd->logPath()), "Accepted publickey"), 1u);
  EXPECT_FALSE(contains(log(), "dead")) << log();
}

TEST_F(DaemonTest, DeliversOverIPv6) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_addr = in6addr_loopback;
  bool v6 = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  if (fd >= 0) close(fd);
  if (!v6) GTEST_SKIP() << "no IPv6 loopback (::1) on this machine";
  sshd->setAddress("::1");
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();  // host = "::1"; known_hosts has "[::1]:PORT"
  startDaemon();
  std::string id = spool("Subject: six\r\n\r\nover IPv6\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
  EXPECT_EQ(readFile(onlyFile(".data")), "Subject: six\r\n\r\nover IPv6\r\n");
  std::string relay = "relay=::1[::1]:" + std::to_string(sshd->port());
  EXPECT_TRUE(waitFor([&] { return contains(log(), id + ": to=<bob@alpha.test>"); }, kLong));
  EXPECT_TRUE(contains(log(), relay)) << log();
}

// Uid, Gid (real, effective, saved, file system) of every thread of pid, as /proc shows them.
std::vector<std::string> threadIds(pid_t pid) {
  std::vector<std::string> out;
  std::string task = "/proc/" + std::to_string(pid) + "/task";
  for (auto& t : listDir(task)) {
    std::string st = readFile(task + "/" + t + "/status");
    for (const char* key : {"\nUid:", "\nGid:"}) {
      auto p = st.find(key);
      if (p == std::string::npos) continue;
      auto e = st.find('\n', p + 1);
      out.push_back(t + st.substr(p, e - p));
    }
  }
  return out;
}

TEST_F(DaemonTest, SwitchesToTunneldUserAndStillDelivers) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, as dynmx-tunneld started by init";
  passwd* pw = getpwnam("nobody");
  ASSERT_NE(pw, nullptr) << "no user nobody";
  const uid_t uid = pw->pw_uid;
  const gid_t gid = pw->pw_gid;
  startSshd(smtpd() + " --maildir " + maildir());
  // What the user needs, as an administrator would set it up: the spool and the key are its own,
  // the directories above can be passed, known_hosts can be read. The pid file's directory stays
  // root's, as /run/dynmx from the init scripts does.
  const std::string run = dir / "run";
  ASSERT_EQ(mkdir(run.c_str(), 0755), 0);
  writeConfig("user = \"nobody\"\npid_file = \"" + run + "/tunneld.pid\"\n");
  std::string id = spool("Subject: unprivileged\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_EQ(chmod(dir.path().c_str(), 0711), 0);
  ASSERT_EQ(runCommand({"/bin/chown", "-R", "nobody:" + std::to_string(gid), spooldir()}), 0);
  ASSERT_EQ(chown(key.private_path.c_str(), uid, gid), 0);
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
  EXPECT_EQ(readFile(onlyFile(".data")), "Subject: unprivileged\r\n\r\nhi\r\n");
  // Every thread switched (the spool remover's too), real, effective, saved and fs ids alike.
  std::string u = std::to_string(uid), g = std::to_string(gid);
  auto ids = threadIds(daemon->pid());
  ASSERT_GE(ids.size(), 4u);  // at least two threads
  for (const auto& l : ids) {
    bool is_uid = contains(l, "Uid:");
    std::string want = is_uid ? "Uid:\t" + u + "\t" + u + "\t" + u + "\t" + u
                              : "Gid:\t" + g + "\t" + g + "\t" + g + "\t" + g;
    EXPECT_TRUE(contains(l, want)) << l;
  }
  EXPECT_EQ(readFile(run + "/tunneld.pid"), std::to_string(daemon->pid()) + "\n");
  // The pid file in root's directory cannot go: the daemon says so, and exits cleanly.
  daemon->signal(SIGTERM);
  EXPECT_EQ(daemon->wait(), 0);
  EXPECT_TRUE(contains(log(), "pid file left behind: unlink " + run + "/tunneld.pid")) << log();
  EXPECT_TRUE(std::filesystem::exists(run + "/tunneld.pid"));
  // Given to the user, the directory lets the daemon remove its pid file at exit.
  ASSERT_EQ(chown(run.c_str(), uid, gid), 0);
  daemon.reset();
  startDaemon();
  daemon->signal(SIGTERM);
  EXPECT_EQ(daemon->wait(), 0);
  EXPECT_FALSE(std::filesystem::exists(run + "/tunneld.pid"));
  (void)id;
}

// ---- dynmxctl status --json, delete and bounce ----------------------------------------------

namespace {

// Runs python3 `check` with the JSON on stdin and `args`; its exit status (0: every assert held).
int checkJson(const std::string& json, const std::string& check,
              const std::vector<std::string>& args = {}) {
  std::vector<std::string> argv{"/usr/bin/python3", "-c", check};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  int rc = runCommand(argv, &out, json);
  if (rc != 0) std::cerr << out;
  return rc;
}

// The pids of our dynmx-test-smtpd processes writing into `maildir` (found in /proc by their
// command line: the test started them, through its sshd).
std::vector<pid_t> farEndPids(const std::string& maildir) {
  std::vector<pid_t> pids;
  for (auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = readFile(e.path() / "cmdline");
    if (contains(cmd, "dynmx-test-smtpd") && contains(cmd, maildir) && !contains(cmd, "sshd"))
      pids.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return pids;
}

}  // namespace

// status --json: valid JSON (python3's parser) with the documented fields, for a connected client
// and for a client found only in the spool.
TEST_F(DaemonTest, StatusAsJsonHasTheDocumentedFields) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  spool("Subject: ghost\r\n\r\nhi\r\n", {"bob@ghost.test"}, "sender@origin.test", "ghost");
  ASSERT_TRUE(waitFor([&] { return contains(status(), "client ghost: not configured"); }, kLong))
      << status();
  auto json = ctl({"status", "--json"});
  ASSERT_EQ(json.first, 0) << json.second;
  const char* check =
      "import json, sys, datetime\n"
      "d = json.load(sys.stdin)\n"
      "assert d['daemon']['state'] == 'running', d\n"
      "assert d['daemon']['clients'] == 1 and d['daemon']['version'], d\n"
      "assert d['notifications'] == {'waiting': 0}, d\n"
      "c = {c['name']: c for c in d['clients']}\n"
      "a = c['alpha']\n"
      "assert a['configured'] is True and a['state'] == 'connected', a\n"
      "assert a['address'].endswith(':' + sys.argv[1]), a\n"
      "t = datetime.datetime.strptime(a['connected_since'], '%Y-%m-%dT%H:%M:%SZ')\n"
      "assert int(t.replace(tzinfo=datetime.timezone.utc).timestamp()) == "
      "a['connected_since_unix'], a\n"
      "assert a['next_attempt'] is None and a['next_attempt_unix'] is None, a\n"
      "assert set(a['ssh']) == {'kex', 'hostkey', 'cipher', 'mac', 'login_key'}, a\n"
      "assert a['ssh']['login_key'].startswith('/'), a\n"
      "s = d['spool']\n"
      "assert s['dir'] and isinstance(s['free_bytes'], int) and s['free_bytes'] > 0, s\n"
      "assert isinstance(s['min_free'], int), s\n"
      "assert a['ssh']['hostkey'] == 'ssh-ed25519', a\n"
      "assert a['host_key']['presented'].startswith('SHA256:'), a\n"
      "assert a['last_error'] is None, a\n"
      "assert isinstance(a['failures'], int) and isinstance(a['channels'], int), a\n"
      "assert set(a['queue']) == {'active', 'deferred', 'hold', 'in_flight', 'bytes',"
      " 'max_messages', 'max_bytes', 'oldest_arrival', 'oldest_arrival_unix'}, a\n"
      "assert a['queue']['max_messages'] == 0 and a['queue']['max_bytes'] == 0, a\n"
      "g = c['ghost']\n"
      "assert g['configured'] is False and g['state'] == 'not-configured', g\n"
      "assert g['queue']['active'] + g['queue']['deferred'] == 1, g\n"
      "assert g['queue']['oldest_arrival_unix'] > 0, g\n"
      "assert g['queue']['bytes'] > 0, g\n"
      "assert g['ssh'] is None and g['address'] is None, g\n";
  EXPECT_EQ(checkJson(json.second, check, {std::to_string(sshd->port())}), 0) << json.second;
}

// The soft limit of open files goes up to the hard one at start (systemd's 1024 soft is short of
// what 64 channels with CHUNKING may hold open), and a hard limit below what max_channels may need
// is logged. prlimit(1) sets the limits and execs the daemon (same pid).
TEST_F(DaemonTest, OpenFileLimitIsRaisedToTheHardOneAndAShortOneIsLogged) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  startDaemon({"/usr/bin/prlimit", "--nofile=256:4096", "--"});
  std::string limits = readFile("/proc/" + std::to_string(daemon->pid()) + "/limits");
  EXPECT_TRUE(std::regex_search(limits, std::regex("Max open files +4096 +4096 "))) << limits;
  EXPECT_TRUE(contains(log(), "open files: limit raised from 256 to 4096 (the hard limit)"))
      << log();
  EXPECT_FALSE(contains(log(), "is below what max_channels")) << log();
  spool("Subject: x\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
  // No max_queue_messages / max_queue_bytes: the usage line says so.
  EXPECT_TRUE(waitFor(
      [&] {
        return contains(status(), "  queue usage: 0 messages (no limit), 0 bytes (no limit)\n");
      },
      kLong))
      << status();
  daemon->stop();
  std::filesystem::remove(dir / "daemon.log");
  startDaemon({"/usr/bin/prlimit", "--nofile=256:512", "--"});
  EXPECT_TRUE(contains(log(), "open files: limit 512 is below what max_channels 64 may need (2304"))
      << log();
}

// delete: the message is gone from the queue and the spool, the log says who deleted it, and
// nobody is told; for one id and for ALL of a client.
TEST_F(DaemonTest, DeleteRemovesMailWithoutTellingTheSender) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  sshd->stop();
  startDaemon();
  std::string one = spool("Subject: one\r\n\r\nhi\r\n", {"bob@alpha.test"});
  std::string two = spool("Subject: two\r\n\r\nhi\r\n", {"bob@alpha.test"});
  std::string three = spool("Subject: three\r\n\r\nhi\r\n", {"carol@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(ctl({"queue"}).second, three); }, kLong));
  ASSERT_EQ(ctl({"hold", two}).first, 0);
  auto d = ctl({"delete", one});
  ASSERT_EQ(d.first, 0) << d.second;
  EXPECT_EQ(d.second, one + ": deleted\n");
  EXPECT_FALSE(contains(ctl({"queue"}).second, one));
  EXPECT_EQ(spooled(), 2u);
  EXPECT_TRUE(contains(log(), one +
                                  ": from=<sender@origin.test>, client=alpha, pending=1, "
                                  "status=deleted by uid " +
                                  std::to_string(geteuid())))
      << log();
  std::string err;
  EXPECT_EQ(runCommand({"/bin/sh", "-c", "exec \"$@\" 2>&1", "sh", bin + "/dynmxctl", "-s", sock(),
                        "delete", one},
                       &err),
            1);
  EXPECT_EQ(err, "dynmxctl: no message " + one + " in the queue\n");
  EXPECT_EQ(ctl({"delete", "ALL", "nosuchclient"}).first, 1);
  EXPECT_EQ(ctl({"delete", "ALL"}).first, 64);
  auto all = ctl({"delete", "ALL", "alpha"});  // the held one too
  ASSERT_EQ(all.first, 0) << all.second;
  EXPECT_TRUE(contains(all.second, two + ": deleted")) << all.second;
  EXPECT_TRUE(contains(all.second, three + ": deleted")) << all.second;
  EXPECT_EQ(spooled(), 0u);
  // The client comes back: nothing is delivered, nobody was told.
  sshd->start();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  EXPECT_EQ(ctl({"flush", "alpha"}).first, 0);
  EXPECT_EQ(delivered(), 0u);
  EXPECT_TRUE(bounces().empty());
  EXPECT_TRUE(contains(ctl({"delete", "ALL", "alpha"}).second, "client alpha: no mail"));
}

// bounce: the sender gets an RFC 3464 report now (through tunneld.sendmail, from <>), the
// message leaves the queue; a sender <> gets nothing; a notification cannot be bounced.
TEST_F(DaemonTest, BounceReturnsMailToItsSenderNow) {
  startSshd(smtpd() + " --maildir " + maildir());
  writeConfig();
  sshd->stop();
  startDaemon();
  std::string one = spool("Subject: one\r\n\r\nhi\r\n", {"bob@alpha.test", "carol@alpha.test"});
  std::string two = spool("Subject: two\r\n\r\nhi\r\n", {"dave@alpha.test"}, "other@origin.test");
  std::string null = spool("Subject: null\r\n\r\nhi\r\n", {"erin@alpha.test"}, "");
  ASSERT_TRUE(waitFor([&] { return contains(ctl({"queue"}).second, null); }, kLong));
  auto b = ctl({"bounce", one});
  ASSERT_EQ(b.first, 0) << b.second;
  EXPECT_EQ(b.second, one + ": returned to sender\n");
  ASSERT_TRUE(waitFor([&] { return bounces().size() == 1; }, kLong)) << log();
  std::string report = readFile(bounces()[0]);
  std::string args = readFile(bounces()[0].substr(0, bounces()[0].size() - 4) + ".args");
  EXPECT_EQ(args, "-oi\n-f\n<>\n--\nsender@origin.test\n");
  EXPECT_TRUE(contains(report, "report-type=delivery-status")) << report;
  EXPECT_TRUE(contains(report, "Final-Recipient: rfc822; bob@alpha.test")) << report;
  EXPECT_TRUE(contains(report, "Final-Recipient: rfc822; carol@alpha.test")) << report;
  EXPECT_TRUE(contains(report, "Action: failed")) << report;
  EXPECT_TRUE(contains(report, "Status: 5.0.0")) << report;
  EXPECT_TRUE(contains(report, "returned to the sender by the mail administrator")) << report;
  EXPECT_TRUE(contains(report, "Subject: one")) << report;
  EXPECT_TRUE(contains(log(), "status=bounced by uid " + std::to_string(geteuid()))) << log();
  EXPECT_FALSE(contains(ctl({"queue"}).second, one));
  // ALL of the client: the other sender is told, the null sender's mail just goes.
  auto all = ctl({"bounce", "ALL", "alpha"});
  ASSERT_EQ(all.first, 0) << all.second;
  EXPECT_TRUE(contains(all.second, two + ": returned to sender")) << all.second;
  EXPECT_TRUE(contains(all.second, null + ": deleted (the sender is <>")) << all.second;
  ASSERT_TRUE(waitFor([&] { return bounces().size() == 2 && spooled() == 0; }, kLong)) << log();
  EXPECT_EQ(delivered(), 0u);
}

// A message whose attempt is under way is not taken from under the delivery: delete says so and
// acts when the attempt ends (here: the far end dies before it answers the final dot).
TEST_F(DaemonTest, DeleteOfAMessageInFlightActsWhenTheAttemptEnds) {
  startSshd(smtpd() + " --maildir " + maildir() + " --stall dot");
  writeConfig();
  startDaemon();
  std::string id = spool("Subject: stuck\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(status(), "in flight 1"); }, kLong)) << status();
  auto d = ctl({"delete", id});
  ASSERT_EQ(d.first, 0) << d.second;
  EXPECT_TRUE(contains(d.second, id + ": being delivered now; deleted when the attempt ends"))
      << d.second;
  EXPECT_EQ(spooled(), 1u);
  EXPECT_TRUE(contains(ctl({"queue"}).second, id + " in-flight"));
  auto pids = farEndPids(maildir());
  ASSERT_FALSE(pids.empty());
  for (pid_t p : pids) kill(p, SIGKILL);
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << status();
  EXPECT_TRUE(contains(log(), id + ": from=<sender@origin.test>, client=alpha, pending=1, "
                                   "status=deleted by uid"))
      << log();
  EXPECT_TRUE(bounces().empty());
  EXPECT_EQ(delivered(), 0u);
}

// ---- dynmxctl trust ----------------------------------------------------------------------------

namespace {

// "SHA256:..." of a public key file, as its administrator reads it (ssh-keygen -lf).
std::string sshKeygenFingerprint(const std::string& pub) {
  std::string out;
  runCommand({"/usr/bin/ssh-keygen", "-l", "-E", "sha256", "-f", pub}, &out);
  size_t at = out.find("SHA256:");
  return at == std::string::npos ? "" : out.substr(at, out.find(' ', at) - at);
}

}  // namespace

// The client's new host key is taken only for the fingerprint typed: a wrong one changes nothing;
// the right one replaces the client's (hashed, as ssh-keygen -H leaves it) entry in known_hosts,
// keeps the other hosts' lines, and the mail goes.
TEST_F(DaemonTest, TrustTakesTheNewHostKeyOnlyForTheTypedFingerprint) {
  startSshd(smtpd() + " --maildir " + maildir());
  std::string kh = dir / "known_hosts";
  std::string other =
      "mx.other.test ssh-ed25519 "
      "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
  writeFile(kh, sshd->knownHostsLine() + "\n" + other + "\n");
  ASSERT_EQ(runCommand({"/usr/bin/ssh-keygen", "-q", "-H", "-f", kh}), 0);
  std::string hashed = readFile(kh);
  ASSERT_EQ(hashed.rfind("|1|", 0), 0u) << hashed;
  writeConfig();
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  KeyPair right = sshd->hostKey();
  KeyPair stranger = generateKey(dir / "new_host_key");
  sshd->restartWithHostKey(stranger);
  spool("Subject: after the new key\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return contains(status(), "host-key-mismatch"); }, kLong)) << status();
  std::string fp_new = sshKeygenFingerprint(stranger.private_path + ".pub");
  std::string fp_old = sshKeygenFingerprint(right.private_path + ".pub");
  ASSERT_FALSE(fp_new.empty());
  // status --json says what is in question.
  auto json = ctl({"status", "--json"});
  ASSERT_EQ(json.first, 0) << json.second;
  EXPECT_EQ(
      checkJson(json.second,
                "import json, sys\n"
                "a = json.load(sys.stdin)['clients'][0]\n"
                "assert a['state'] == 'host-key-mismatch', a\n"
                "assert a['host_key'] == {'presented': sys.argv[1], 'expected': sys.argv[2]}, "
                "a\n"
                "assert a['last_error'].startswith('host key mismatch'), a\n",
                {fp_new, fp_old}),
      0)
      << json.second;
  auto trust = [&](const std::string& fp) {
    std::string out;
    int rc = runCommand({"/bin/sh", "-c", "exec \"$@\" 2>&1", "sh", bin + "/dynmxctl", "-c",
                         dir / "dynmx.toml", "trust", "alpha", fp},
                        &out);
    return std::make_pair(rc, out);
  };
  // The old key's fingerprint (what an attacker would hope is typed without looking): refused.
  auto wrong = trust(fp_old);
  EXPECT_EQ(wrong.first, 65) << wrong.second;
  EXPECT_EQ(wrong.second, "dynmxctl: trust: client alpha presents ssh-ed25519 " + fp_new +
                              ", not the " + fp_old + " you typed; nothing changed\n");
  EXPECT_EQ(readFile(kh), hashed);
  EXPECT_EQ(trust("SHA256:short").first, 64);
  EXPECT_EQ(readFile(kh), hashed);
  EXPECT_EQ(delivered(), 0u);
  // The right one.
  auto ok = trust(fp_new);
  ASSERT_EQ(ok.first, 0) << ok.second;
  EXPECT_TRUE(contains(ok.second, "1 line(s) for [127.0.0.1]:" + std::to_string(sshd->port()) +
                                      " removed, ssh-ed25519 " + fp_new + " added (hashed)"))
      << ok.second;
  EXPECT_TRUE(contains(ok.second, "client alpha: reconnecting")) << ok.second;
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();
  // What OpenSSH reads in the file now: the new key for the client, the other host's line kept.
  std::string found;
  runCommand({"/usr/bin/ssh-keygen", "-F", "[127.0.0.1]:" + std::to_string(sshd->port()), "-f", kh},
             &found);
  std::string pub = readFile(stranger.private_path + ".pub");
  std::string b64 = pub.substr(pub.find(' ') + 1);
  b64 = b64.substr(0, b64.find_first_of(" \n"));
  EXPECT_TRUE(contains(found, b64)) << found;
  std::string now = readFile(kh);
  EXPECT_EQ(std::count(now.begin(), now.end(), '\n'), 2) << now;
  found.clear();
  runCommand({"/usr/bin/ssh-keygen", "-F", "mx.other.test", "-f", kh}, &found);
  EXPECT_TRUE(
      contains(found, "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"))
      << now;
}

// A client pinned with host_key: trust prints the line for the configuration and changes nothing.
TEST_F(DaemonTest, TrustOfAPinnedClientPrintsTheConfigurationLine) {
  startSshd(smtpd() + " --maildir " + maildir());
  std::string line = sshd->knownHostsLine();
  writeConfig("", "host_key = \"" + line.substr(line.find(' ') + 1) + "\"\n");
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return connected(); }, kLong)) << status();
  EXPECT_EQ(ctl({"hostkey", "alpha"}).first, 1);  // nothing in question while it verifies
  KeyPair stranger = generateKey(dir / "new_host_key");
  sshd->restartWithHostKey(stranger);
  ASSERT_TRUE(waitFor([&] { return contains(status(), "host-key-mismatch"); }, kLong)) << status();
  std::string conf = readFile(dir / "dynmx.toml"), kh = readFile(dir / "known_hosts");
  auto r = ctl({"-c", dir / "dynmx.toml", "trust", "alpha",
                sshKeygenFingerprint(stranger.private_path + ".pub")});
  ASSERT_EQ(r.first, 0) << r.second;
  std::string pub = readFile(stranger.private_path + ".pub");
  std::string key = pub.substr(0, pub.find(' ', pub.find(' ') + 1));
  EXPECT_TRUE(contains(r.second, "is pinned with host_key in " + dir / "dynmx.toml")) << r.second;
  EXPECT_TRUE(contains(r.second, "\nhost_key = \"" + key + "\"\n")) << r.second;
  EXPECT_EQ(readFile(dir / "dynmx.toml"), conf);
  EXPECT_EQ(readFile(dir / "known_hosts"), kh);
}

// ---- dynmxctl add-client -----------------------------------------------------------------------

// The authorized_keys line add-client prints works as printed: installed in sshd, the tunnel logs
// in through it (restrict, from= with the MX's address, the tunnel's key) and delivers into the
// forced command. The far end here is dynmx-test-smtpd behind --sendmail (a script that ignores
// -bs). The [[client]] block it prints passes --check-config once added.
TEST_F(DaemonTest, AddClientsAuthorizedKeysLineLetsTheTunnelDeliver) {
  // Before the client exists: the configuration has the tunnel's identity and no client yet.
  writeFile(dir / "before.toml", "[spool]\ndir = \"" + spooldir() +
                                     "\"\n[tunneld]\nhostname = \"mx.test\"\nidentity = \"" +
                                     key.private_path + "\"\n");
  std::string farend = dir / "farend.sh";
  writeFile(farend, "#!/bin/sh\nexec " + smtpd() + " --maildir " + maildir() + "\n", 0755);
  auto printed = ctl({"-c", dir / "before.toml", "add-client", "alpha", "127.0.0.1", "--from",
                      "127.0.0.1", "--sendmail", farend, "--user", sshd->user()});
  ASSERT_EQ(printed.first, 0) << printed.second;
  std::string line;
  std::istringstream in(printed.second);
  for (std::string l; std::getline(in, l);)
    if (l.rfind("restrict,", 0) == 0) line = l;
  std::string expected = "restrict,command=\"" + farend + " -bs\",from=\"127.0.0.1\" " +
                         key.public_line + " dynmx@mx.test";
  EXPECT_EQ(line, expected) << printed.second;
  EXPECT_TRUE(contains(printed.second, "define(`confTRUSTED_USERS', `" + sshd->user() + "')dnl\n"))
      << printed.second;
  EXPECT_TRUE(contains(printed.second, "\nssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub\n"));
  EXPECT_TRUE(contains(printed.second, "Postfix's sendmail -bs adds no such warning"));
  EXPECT_FALSE(contains(printed.second, "PRIVATE KEY"));
  sshd->authorizeLine(line);
  sshd->start();
  writeFile(dir / "known_hosts", sshd->knownHostsLine() + "\n");
  writeConfig();
  startDaemon();
  spool("Subject: through the printed line\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return delivered() == 1 && spooled() == 0; }, kLong)) << status();

  // Without --from: this host's addresses, never loopback; the block for a new client is valid.
  auto other = ctl({"-c", dir / "before.toml", "add-client", "gamma", "gamma.example.net"});
  if (other.first == 64) GTEST_SKIP() << "no non-loopback address on this machine";
  ASSERT_EQ(other.first, 0) << other.second;
  EXPECT_TRUE(contains(other.second, "from this host's interfaces")) << other.second;
  EXPECT_FALSE(contains(other.second, "127.0.0.1")) << other.second;
  EXPECT_FALSE(contains(other.second, "\"::1")) << other.second;
  std::string block = other.second.substr(other.second.find("[[client]]"));
  writeFile(dir / "with-gamma.toml", readFile(dir / "dynmx.toml") + "\n" + block);
  std::string out;
  EXPECT_EQ(runCommand({bin + "/dynmxctl", "-c", dir / "with-gamma.toml", "--check-config"}, &out),
            0)
      << out << block;
}
