// miltertest_test.cpp: dynmx-milter driven by OpenDKIM's miltertest, an independent milter client.
//
// Each test starts the real dynmx-milter on a private socket and spool, runs one Lua script from
// tests/milter/lua/ with `miltertest -v` (the script checks the milter's replies and exits
// nonzero on any mismatch), then reads the spool with the Spool API to check what was committed
// and that no temporary file is left.
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shared/spool.hpp"
#include "shared/sysexits.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"

namespace dynmx::test {
namespace {

const std::string kLuaDir = DYNMX_MILTER_LUA_DIR;

struct Committed {
  SpoolMessage msg;
  std::string content;
};

class MiltertestTest : public ::testing::Test {
 protected:
  void SetUp() override { milter_ = std::make_unique<TestMilter>(tmp_.path() + "/m", opts_); }
  void TearDown() override {
    milter_->stop();
    if (HasFailure()) std::fprintf(stderr, "--- dynmx-milter log:\n%s\n", milter_->log().c_str());
  }

  void start() {
    milter_->setOptions(opts_);
    milter_->writeConfig();
    milter_->start();
  }

  // Runs a script; returns miltertest's exit status and keeps its output in output_.
  int run(const std::string& script, const std::map<std::string, std::string>& defs = {}) {
    std::vector<std::string> argv = scriptArgv(script, defs);
    output_.clear();
    int st = runCommand(argv, &output_);
    if (st != 0)
      std::fprintf(stderr, "--- miltertest %s (exit %d):\n%s\n", script.c_str(), st,
                   output_.c_str());
    return st;
  }

  // Starts a script in the background, its output (both streams) into `out`.
  Process runInBackground(const std::string& script, const std::string& out) {
    SpawnOptions so;
    so.stdout_path = out;
    so.stderr_path = out + ".err";
    return Process(scriptArgv(script, {}), so);
  }

  std::vector<std::string> scriptArgv(const std::string& script,
                                      const std::map<std::string, std::string>& defs) const {
    std::vector<std::string> argv = {"/usr/bin/miltertest",
                                     "-v",
                                     "-D",
                                     "socket=" + milter_->socketSpec(),
                                     "-D",
                                     "spool=" + milter_->spoolDir(),
                                     "-D",
                                     "luadir=" + kLuaDir,
                                     "-D",
                                     "datadir=" + tmp_.path()};
    for (const auto& [k, v] : defs) {
      argv.push_back("-D");
      argv.push_back(k + "=" + v);
    }
    argv.push_back("-D");
    argv.push_back("script=" + script);
    argv.push_back("-s");
    argv.push_back(kLuaDir + "/run.lua");
    return argv;
  }

  Spool spool() const { return Spool(milter_->spoolDir()); }

  std::vector<Committed> committed() const {
    Spool sp = spool();
    std::vector<Committed> out;
    for (const std::string& id : sp.list(QueueState::Incoming)) {
      Result<SpoolMessage> m = sp.load(QueueState::Incoming, id);
      EXPECT_TRUE(m.ok()) << (m.ok() ? "" : m.error().message);
      if (!m.ok()) continue;
      Committed c{*m, ""};
      Result<ContentReader> r = sp.openContent(*m);
      EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
      if (!r.ok()) continue;
      for (;;) {
        Result<std::string_view> chunk = r->next();
        EXPECT_TRUE(chunk.ok()) << (chunk.ok() ? "" : chunk.error().message);
        if (!chunk.ok() || chunk->empty()) break;
        c.content.append(chunk->data(), chunk->size());
      }
      out.push_back(std::move(c));
    }
    return out;
  }

  size_t count(QueueState st) const { return spool().list(st).size() + stray(st); }
  // Files in a state directory that are not even queue ids (should never exist).
  size_t stray(QueueState st) const {
    size_t n = 0;
    for (const std::string& f : listDir(spool().stateDir(st))) n += isQueueId(f) ? 0 : 1;
    return n;
  }

  // Splits the trace header off a spooled message and checks its form.
  static std::string withoutTrace(const Committed& c, const std::string& rcpt) {
    std::string want = "Received: by ";
    EXPECT_EQ(c.content.rfind(want, 0), 0u) << c.content.substr(0, 200);
    std::regex form(
        "^Received: by [^ ]+ \\(dynmx-milter(, MTA queue id [^)]+)?\\)\r\n"
        "\tid " +
        c.msg.id + (rcpt.empty() ? "" : " for <" + rcpt + ">") +
        "; [A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9:]{8} [+-][0-9]{4}\r\n");
    std::smatch m;
    std::string head = c.content.substr(0, c.content.find("\r\n\t") + 200);
    EXPECT_TRUE(std::regex_search(head, m, form)) << head;
    size_t end = c.content.find("\r\n", c.content.find("\r\n\t") + 3);
    return c.content.substr(end + 2);
  }

  TempDir tmp_{"dynmx-miltertest"};
  TestMilterOptions opts_;
  std::unique_ptr<TestMilter> milter_;
  std::string output_;
};

TEST_F(MiltertestTest, PartialCaptureDeletesExactlyTheCapturedRecipients) {
  start();
  ASSERT_EQ(run("partial_capture.lua"), 0);
  auto msgs = committed();
  ASSERT_EQ(msgs.size(), 1u);
  const Envelope& env = msgs[0].msg.env;
  EXPECT_EQ(env.client, "alpha");
  EXPECT_EQ(env.sender, "sender@x.example");
  EXPECT_EQ(env.envid, "abc+2Bdef");
  EXPECT_EQ(env.ret, "HDRS");
  EXPECT_EQ(env.body, "8BITMIME");
  EXPECT_EQ(env.mta_queue_id, "QEOM1");  // re-read at end of message
  EXPECT_EQ(env.origin, "192.0.2.7");
  EXPECT_GT(env.arrival, 0);
  ASSERT_EQ(env.rcpts.size(), 2u);
  EXPECT_EQ(env.rcpts[0].address, "Bob@Alpha.Example");
  EXPECT_EQ(env.rcpts[0].notify, "SUCCESS,FAILURE");
  EXPECT_EQ(env.rcpts[0].orcpt, "rfc822;Bob@Alpha.Example");
  EXPECT_EQ(env.rcpts[1].address, "dave@sub.alpha.example");
  // Two recipients: no "for <...>" in the trace header.
  EXPECT_EQ(withoutTrace(msgs[0], ""),
            "Subject: hello\r\n\tfolded world\r\nFrom: sender@x.example\r\n\r\n"
            "line one\r\nline two\r\n");
  EXPECT_NE(msgs[0].content.find("MTA queue id QMAIL1"), std::string::npos)
      << "the trace header names the queue id known when the headers came";
  EXPECT_EQ(count(QueueState::Tmp), 0u);
  EXPECT_TRUE(
      milter_->waitForLog("QEOM1: milter: captured to=<Bob@Alpha.Example>, client=alpha, "
                          "spool=" +
                          msgs[0].msg.id + ", size="));
}

TEST_F(MiltertestTest, AllRecipientsCapturedDiscardsTheMtaCopy) {
  start();
  ASSERT_EQ(run("all_captured.lua"), 0);
  auto msgs = committed();
  ASSERT_EQ(msgs.size(), 1u);
  ASSERT_EQ(msgs[0].msg.env.rcpts.size(), 2u);
  EXPECT_EQ(msgs[0].msg.env.rcpts[0].address, "bob@alpha.example");
  EXPECT_EQ(msgs[0].msg.env.rcpts[1].address, "eve@alpha.example");
  EXPECT_EQ(count(QueueState::Tmp), 0u);
}

TEST_F(MiltertestTest, NullSenderIsCaptured) {
  start();
  ASSERT_EQ(run("null_sender.lua"), 0);
  auto msgs = committed();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].msg.env.sender, "");
  EXPECT_EQ(withoutTrace(msgs[0], "bob@alpha.example"),
            "Subject: Undelivered Mail Returned to Sender\r\n\r\nbounce\r\n");
}

TEST_F(MiltertestTest, SeveralClientsGetOneSpoolFileEach) {
  start();
  ASSERT_EQ(run("several_clients.lua"), 0);
  auto msgs = committed();
  ASSERT_EQ(msgs.size(), 2u);
  std::map<std::string, const Committed*> by;
  for (const auto& c : msgs) by[c.msg.env.client] = &c;
  ASSERT_TRUE(by.count("alpha") && by.count("beta"));
  ASSERT_EQ(by["alpha"]->msg.env.rcpts.size(), 2u);
  EXPECT_EQ(by["alpha"]->msg.env.rcpts[0].address, "bob@alpha.example");
  EXPECT_EQ(by["alpha"]->msg.env.rcpts[1].address, "eve@alpha.example");
  ASSERT_EQ(by["beta"]->msg.env.rcpts.size(), 1u);
  EXPECT_EQ(by["beta"]->msg.env.rcpts[0].address, "fred@beta.example");
  std::string body = "Subject: several\r\n\r\nsame body for all\r\n";
  EXPECT_EQ(withoutTrace(*by["alpha"], ""), body);
  EXPECT_EQ(withoutTrace(*by["beta"], "fred@beta.example"), body);
  EXPECT_EQ(count(QueueState::Tmp), 0u);
}

TEST_F(MiltertestTest, UnwritableSpoolTempfailsAndLeavesNoFile) {
  start();
  // The milter checked the spool at start-up; now tmp/ becomes a plain file, so creating a
  // message fails (root ignores permission bits, so a mode change would prove nothing).
  std::string tmpdir = milter_->spoolDir() + "/tmp";
  ASSERT_EQ(rmdir(tmpdir.c_str()), 0);
  writeFile(tmpdir, "not a directory\n", 0600);
  ASSERT_EQ(run("spool_unwritable.lua"), 0);
  EXPECT_EQ(count(QueueState::Incoming), 0u);
  EXPECT_TRUE(milter_->waitForLog("QUNW: milter: tempfail:"));
}

TEST_F(MiltertestTest, OnErrorAcceptLetsTheMessagePass) {
  opts_.on_error = "accept";
  start();
  std::string tmpdir = milter_->spoolDir() + "/tmp";
  ASSERT_EQ(rmdir(tmpdir.c_str()), 0);
  writeFile(tmpdir, "not a directory\n", 0600);
  ASSERT_EQ(run("on_error_accept.lua"), 0);
  EXPECT_EQ(count(QueueState::Incoming), 0u);
  EXPECT_TRUE(milter_->waitForLog("on_error=accept: message passed on WITHOUT capture"));
}

TEST_F(MiltertestTest, AbortInTheBodyRemovesTheTemporaryFile) {
  start();
  ASSERT_EQ(run("abort_in_body.lua"), 0);
  auto msgs = committed();
  ASSERT_EQ(msgs.size(), 1u);  // only the second message
  EXPECT_EQ(withoutTrace(msgs[0], "bob@alpha.example"), "Subject: second\r\n\r\nsecond body\r\n");
  EXPECT_EQ(count(QueueState::Tmp), 0u);
}

TEST_F(MiltertestTest, BodyInManyChunksWithNulsIsKeptByteForByte) {
  start();
  // 40 chunks: NULs, 8-bit bytes, a CR ending one chunk and its LF starting the next, and long
  // lines filling nearly a whole milter body packet.
  std::string expected_body;
  const int kChunks = 40;
  for (int i = 1; i <= kChunks; ++i) {
    std::string c;
    if (i % 7 == 0) {
      c = std::string(65000, 'z') + "\r\n";  // one milter body packet holds 65535
    } else {
      c = "chunk " + std::to_string(i) + " ";
      c += std::string("nul\0here\0", 9);
      c += static_cast<char>(0xff);
      c += static_cast<char>(0x80 + i);
      c += "\r\nsecond line\r";  // CR at the end: its LF starts the next chunk
    }
    if (i > 1 && (i - 1) % 7 != 0) c = "\n" + c;
    if (i == kChunks && c.back() == '\r') c += "\n";
    writeFile(tmp_.path() + "/chunk" + std::to_string(i), c, 0644);
    expected_body += c;
  }
  ASSERT_EQ(run("nul_chunks.lua", {{"chunks", std::to_string(kChunks)}}), 0);
  auto msgs = committed();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].msg.env.body, "BINARYMIME");
  std::string got = withoutTrace(msgs[0], "bob@alpha.example");
  std::string want = "Subject: binary\r\n\r\n" + expected_body;
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "content differs from what was sent";
}

TEST_F(MiltertestTest, DeclaredSizeOverTheLimitIsRefusedAtRcpt) {
  opts_.max_message_size = "10000";
  start();
  ASSERT_EQ(run("oversize_early.lua"), 0);
  EXPECT_EQ(count(QueueState::Incoming), 0u);
  EXPECT_EQ(count(QueueState::Tmp), 0u);
  EXPECT_TRUE(milter_->waitForLog("552 5.3.4 declared SIZE=20000"));
}

TEST_F(MiltertestTest, MessageGrowingOverTheLimitIsRefusedAtEom) {
  opts_.max_message_size = "10000";
  start();
  ASSERT_EQ(run("oversize_late.lua"), 0);
  EXPECT_EQ(count(QueueState::Incoming), 0u);
  EXPECT_EQ(count(QueueState::Tmp), 0u);
  EXPECT_TRUE(milter_->waitForLog("larger than spool.max_message_size 10000: 552 5.3.4"));
}

TEST_F(MiltertestTest, ParallelConnectionsEachGetTheirOwnFile) {
  start();
  // Several MTA connections at once (libmilter runs one thread per connection).
  const int kParallel = 6;
  std::vector<Process> runs;
  for (int i = 0; i < kParallel; ++i) {
    SpawnOptions so;
    so.stdout_path = tmp_.path() + "/parallel" + std::to_string(i) + ".out";
    runs.emplace_back(
        std::vector<std::string>{"/usr/bin/miltertest", "-D", "socket=" + milter_->socketSpec(),
                                 "-D", "spool=" + milter_->spoolDir(), "-D", "luadir=" + kLuaDir,
                                 "-D", "script=several_clients.lua", "-s", kLuaDir + "/run.lua"},
        so);
  }
  for (int i = 0; i < kParallel; ++i) {
    auto st = runs[i].wait(std::chrono::seconds(120));
    ASSERT_TRUE(st.has_value());
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
        << readFile(tmp_.path() + "/parallel" + std::to_string(i) + ".out");
  }
  auto msgs = committed();
  EXPECT_EQ(msgs.size(), 2u * kParallel);
  for (const auto& c : msgs) {
    EXPECT_EQ(withoutTrace(c, c.msg.env.client == "beta" ? "fred@beta.example" : ""),
              "Subject: several\r\n\r\nsame body for all\r\n");
  }
  EXPECT_EQ(count(QueueState::Tmp), 0u);
}

TEST_F(MiltertestTest, MtaWithoutDeleteRecipientIsRefusedAtNegotiation) {
  start();
  EXPECT_NE(run("no_delrcpt.lua"), 0);
  EXPECT_TRUE(milter_->waitForLog("does not offer the delete-recipient action (SMFIF_DELRCPT)"));
  // The filter itself keeps serving MTAs that do offer it.
  EXPECT_TRUE(milter_->process().running());
  ASSERT_EQ(run("all_captured.lua"), 0);
}

TEST_F(MiltertestTest, Sigusr1ReloadsRoutingAndKeepsItOnABadFile) {
  start();
  ASSERT_EQ(run("route_probe.lua", {{"expect", "pass"}}), 0);

  opts_.clients.push_back({"gamma", {"gamma.example"}});
  milter_->setOptions(opts_);
  milter_->writeConfig();
  milter_->process().signal(SIGUSR1);
  ASSERT_TRUE(milter_->waitForLog("reload: configuration " + milter_->configPath() +
                                  " loaded, 3 client(s)"));
  EXPECT_TRUE(milter_->waitForLog("reload: taken: client gamma added"));
  ASSERT_EQ(run("route_probe.lua", {{"expect", "capture"}}), 0);
  ASSERT_EQ(committed().size(), 1u);
  EXPECT_EQ(committed()[0].msg.env.client, "gamma");

  writeFile(milter_->configPath(), "[spool]\nbogus_key = 1\n");
  milter_->process().signal(SIGUSR1);
  ASSERT_TRUE(milter_->waitForLog("keeping the running configuration"));
  EXPECT_NE(milter_->log().find("bogus_key"), std::string::npos) << "the log says why";
  EXPECT_TRUE(milter_->process().running());
  ASSERT_EQ(run("route_probe.lua", {{"expect", "capture"}}), 0);
  EXPECT_EQ(committed().size(), 2u);
}

TEST_F(MiltertestTest, ReloadedSizeLimitAppliesAndSpoolDirWaitsForARestart) {
  start();
  std::string spool_dir = milter_->spoolDir();
  opts_.max_message_size = "10000";
  milter_->setOptions(opts_);
  milter_->writeConfig();
  std::string text = readFile(milter_->configPath());
  std::string dir_line = "dir = \"" + spool_dir + "\"";
  size_t at = text.find(dir_line);
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, dir_line.size(), "dir = \"/nonexistent/dynmx-spool\"");
  writeFile(milter_->configPath(), text);
  milter_->process().signal(SIGUSR1);
  ASSERT_TRUE(milter_->waitForLog("reload: taken: spool.max_message_size"));
  EXPECT_TRUE(milter_->waitForLog("kept as running until a restart: spool.dir"));
  // The new limit is the one the next message meets, as the log said.
  ASSERT_EQ(run("oversize_late.lua"), 0);
  EXPECT_TRUE(milter_->waitForLog("larger than spool.max_message_size 10000: 552 5.3.4"));
  // The spool stays where it was: mail is still captured there.
  ASSERT_EQ(run("all_captured.lua"), 0);
  EXPECT_EQ(count(QueueState::Incoming), 1u);
}

TEST_F(MiltertestTest, SighupStopsTheFilterAsLibmilterDefines) {
  // libmilter's own signal thread treats SIGHUP like SIGTERM (graceful stop); the man page says
  // so and names SIGUSR1 for reloads. This test keeps that statement true.
  start();
  milter_->process().signal(SIGHUP);
  auto st = milter_->process().wait(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 0);
}

// Waits (generous deadline, no timing asserted) until `cond` holds; false when it never did.
template <class F>
bool waitUntil(F cond) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

TEST_F(MiltertestTest, SigtermWhenIdleStopsAndRemovesTheSocket) {
  // Idle is where libmilter alone was slow: its accept loop sleeps in poll() for seconds.
  start();
  auto sent = std::chrono::steady_clock::now();
  milter_->process().signal(SIGTERM);
  auto st = milter_->process().wait(std::chrono::seconds(60));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
  std::printf("idle dynmx-milter exited %.3f s after SIGTERM\n", secs);
  ASSERT_TRUE(st.has_value()) << "dynmx-milter still runs 60 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 0);
  EXPECT_NE(milter_->log().find("]: stopped\n"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(milter_->socketPath()));
}

TEST_F(MiltertestTest, SigtermStopsWithoutLeavingAHalfWrittenMessage) {
  // One message stays in its body (a temporary file exists) and a stream of complete messages
  // runs while SIGTERM arrives: the milter exits 0 and logs it; the spool holds only whole
  // messages and no temporary file. How long the stop took is printed, not asserted.
  start();
  std::string tmpdir = spool().stateDir(QueueState::Tmp);
  Process in_body = runInBackground("stop_in_body.lua", tmp_ / "in_body.out");
  ASSERT_TRUE(waitUntil([&] { return listDir(tmpdir).size() == 1; }))
      << "no temporary file for the message in its body";
  Process stream = runInBackground("stop_in_stream.lua", tmp_ / "stream.out");
  ASSERT_TRUE(waitUntil([&] { return spool().list(QueueState::Incoming).size() >= 3; }))
      << "the stream of messages did not get spooled";

  auto sent = std::chrono::steady_clock::now();
  milter_->process().signal(SIGTERM);
  auto st = milter_->process().wait(std::chrono::seconds(60));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
  std::printf("dynmx-milter exited %.3f s after SIGTERM\n", secs);
  ASSERT_TRUE(st.has_value()) << "dynmx-milter still runs 60 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 0);
  // "stopping on SIGTERM" when the main thread took the signal (Linux prefers it), "libmilter's
  // loop ended by itself" when libmilter's own signal thread did: both end in "stopped".
  EXPECT_NE(milter_->log().find("]: stopping"), std::string::npos);
  EXPECT_NE(milter_->log().find("]: stopped\n"), std::string::npos);

  EXPECT_TRUE(in_body.wait(std::chrono::seconds(60)).has_value());
  EXPECT_TRUE(stream.wait(std::chrono::seconds(60)).has_value());
  std::printf("in body: %s", readFile(tmp_ / "in_body.out").c_str());
  std::printf("stream: %s", readFile(tmp_ / "stream.out").c_str());
  EXPECT_EQ(listDir(tmpdir), std::vector<std::string>{}) << "left in the spool's tmp/";
  EXPECT_EQ(stray(QueueState::Incoming), 0u);
  std::vector<Committed> all = committed();
  EXPECT_GE(all.size(), 3u);
  std::regex subject("Subject: stream ([0-9]+)\r\n");
  for (const Committed& c : all) {
    EXPECT_EQ(c.content.find("never finished"), std::string::npos) << "the cut message was spooled";
    std::smatch m;
    ASSERT_TRUE(std::regex_search(c.content, m, subject)) << c.content.substr(0, 300);
    std::string body;
    for (int i = 0; i < 2000; ++i) body += "message " + m[1].str() + "\r\n";
    EXPECT_TRUE(c.content.size() > body.size() &&
                c.content.compare(c.content.size() - body.size(), body.size(), body) == 0)
        << "message " << m[1] << " is not whole (" << c.content.size() << " bytes)";
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up.

class MilterStartupTest : public MiltertestTest {};

TEST_F(MilterStartupTest, StaleSocketIsRemoved) {
  // A socket file nobody listens on, as left by a crash.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, milter_->socketPath().c_str(), sizeof sa.sun_path - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  close(fd);
  start();
  EXPECT_TRUE(milter_->waitForLog("removed stale socket " + milter_->socketPath()));
  ASSERT_EQ(run("all_captured.lua"), 0);
}

TEST_F(MilterStartupTest, LiveSocketIsNotTakenOver) {
  start();
  int st = runCommand({binDir() + "/dynmx-milter", "-f", "-c", milter_->configPath()});
  EXPECT_EQ(st, kExitCantCreat);
  EXPECT_TRUE(unixSocketAccepts(milter_->socketPath())) << "the running one keeps its socket";
  ASSERT_EQ(run("all_captured.lua"), 0);
}

TEST_F(MilterStartupTest, SomethingElseAtTheSocketPathIsNotRemoved) {
  writeFile(milter_->socketPath(), "precious\n", 0600);
  int st = runCommand({binDir() + "/dynmx-milter", "-f", "-c", milter_->configPath()});
  EXPECT_EQ(st, kExitCantCreat);
  EXPECT_EQ(readFile(milter_->socketPath()), "precious\n");
}

TEST_F(MilterStartupTest, SocketGetsTheConfiguredMode) {
  opts_.socket_mode = "0600";
  start();
  struct stat st {};
  ASSERT_EQ(stat(milter_->socketPath().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(MilterStartupTest, SocketGetsTheConfiguredGroup) {
  struct group* gr = getgrnam("mail");
  ASSERT_NE(gr, nullptr) << "Debian has a group named mail";
  opts_.socket_group = "mail";
  start();
  struct stat st {};
  ASSERT_EQ(stat(milter_->socketPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_gid, gr->gr_gid);
}

TEST_F(MilterStartupTest, DropsPrivilegesToTheConfiguredUser) {
  struct passwd* pw = getpwnam("nobody");
  ASSERT_NE(pw, nullptr);
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  // The spool belongs to the filter's user, as an installation would set it up.
  for (const auto& e : std::filesystem::recursive_directory_iterator(milter_->spoolDir())) {
    ASSERT_EQ(chown(e.path().c_str(), uid, gid), 0);
  }
  ASSERT_EQ(chown(milter_->spoolDir().c_str(), uid, gid), 0);
  opts_.user = "nobody";
  start();
  // "Uid:\treal\teffective\tsaved\tfs" in /proc/PID/status.
  std::istringstream status(
      readFile("/proc/" + std::to_string(milter_->process().pid()) + "/status"));
  std::string line, uids;
  while (std::getline(status, line)) {
    if (line.rfind("Uid:", 0) == 0) uids = line.substr(4);
  }
  std::istringstream u(uids);
  long real = -1, effective = -1, saved = -1;
  u >> real >> effective >> saved;
  EXPECT_EQ(real, static_cast<long>(uid));
  EXPECT_EQ(effective, static_cast<long>(uid));
  EXPECT_EQ(saved, static_cast<long>(uid)) << "no way back to root";
  ASSERT_EQ(run("all_captured.lua"), 0);
  auto ids = spool().list(QueueState::Incoming);
  ASSERT_EQ(ids.size(), 1u);
  struct stat st {};
  ASSERT_EQ(stat(spool().path(QueueState::Incoming, ids[0]).c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, uid) << "the spool file was written by the unprivileged filter";
}

TEST_F(MilterStartupTest, BadConfigurationExitsWithExConfig) {
  writeFile(milter_->configPath(), "[milter]\nsocket = \"tcp:nowhere\"\n");
  std::string out;
  EXPECT_EQ(
      runCommand({binDir() + "/dynmx-milter", "-c", milter_->configPath(), "--check-config"}, &out),
      kExitConfig);
  EXPECT_EQ(runCommand({binDir() + "/dynmx-milter", "-f", "-c", milter_->configPath()}),
            kExitConfig);
}

TEST_F(MilterStartupTest, MissingSpoolExitsWithExCantCreat) {
  std::filesystem::remove_all(milter_->spoolDir());
  EXPECT_EQ(runCommand({binDir() + "/dynmx-milter", "-f", "-c", milter_->configPath()}),
            kExitCantCreat);
}

TEST_F(MilterStartupTest, MissingStateDirectoriesAreCreated) {
  std::filesystem::remove_all(milter_->spoolDir());
  ASSERT_EQ(mkdir(milter_->spoolDir().c_str(), 0700), 0);
  start();
  ASSERT_EQ(run("all_captured.lua"), 0);
  EXPECT_EQ(Spool(milter_->spoolDir()).list(QueueState::Incoming).size(), 1u);
}

TEST_F(MilterStartupTest, UnknownOptionIsAUsageError) {
  EXPECT_EQ(runCommand({binDir() + "/dynmx-milter", "--bogus"}), kExitUsage);
}

}  // namespace
}  // namespace dynmx::test
