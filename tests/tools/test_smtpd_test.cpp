// test_smtpd_test.cpp: dynmx-test-smtpd, spawned on pipes, talked to by the real SmtpClient.
//
// Proves the scripted server does what the integration tests rely on (sink byte for byte, each
// fault mode), and at the same time runs the engine against a separate program instead of a table.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"
#include "tunneld/smtp/smtp_client.hpp"

extern char** environ;

namespace dynmx::tunneld {
namespace {

namespace fs = std::filesystem;

class StringSource : public ContentSource {
 public:
  explicit StringSource(std::string s) : s_(std::move(s)) {}
  Result<std::string_view> next(size_t max) override {
    size_t n = std::min({max, size_t{4096}, s_.size() - pos_});
    std::string_view v(s_.data() + pos_, n);
    pos_ += n;
    return v;
  }

 private:
  std::string s_;
  size_t pos_ = 0;
};

// Temporary directories and file reading come from the shared test harness.
using dynmx::test::TempDir;
using dynmx::test::readFile;

// The server as a child process on two pipes; killed and reaped by pid on destruction.
class Server {
 public:
  explicit Server(std::vector<std::string> args) {
    ::signal(SIGPIPE, SIG_IGN);
    int in[2], out[2];
    EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    args.insert(args.begin(), DYNMX_TEST_SMTPD);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = ::posix_spawn(&pid_, DYNMX_TEST_SMTPD, &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    EXPECT_EQ(rc, 0);
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
  }
  ~Server() {
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Closes our end of its stdin (the server sees EOF).
  void closeInput() {
    ::close(to_);
    to_ = -1;
  }
  // Closes our end of its stdout (the server sees a hang-up when it looks).
  void closeOutput() {
    ::close(from_);
    from_ = -1;
  }
  int inputFd() const { return to_; }
  int outputFd() const { return from_; }
  // Waits for the exit status (generous deadline: the test fails rather than hangs).
  int wait() {
    for (int i = 0; i < 3000; ++i) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      ::usleep(10000);
    }
    return -1;
  }

  // Moves bytes between the engine and the server until `done` or the session ends.
  template <class Pred>
  void pump(SmtpClient& c, Pred done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done() && c.state() != SmtpClient::State::Closed &&
           c.state() != SmtpClient::State::Failed) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no progress with the server";
      auto out = c.output();
      pollfd p[2] = {{from_, POLLIN, 0}, {to_, static_cast<short>(out.empty() ? 0 : POLLOUT), 0}};
      int n = ::poll(p, to_ >= 0 ? 2 : 1, 1000);
      if (n <= 0) continue;
      auto now = SteadyClock::now();
      if (p[1].revents & (POLLOUT | POLLERR)) {
        ssize_t w = ::write(to_, out.data(), out.size());
        if (w > 0) c.consumed(static_cast<size_t>(w), now);
        if (w < 0 && errno == EPIPE) c.onEof(now);
      }
      if (p[0].revents & (POLLIN | POLLHUP)) {
        char buf[65536];
        ssize_t r = ::read(from_, buf, sizeof buf);
        if (r > 0) {
          c.onInput(std::string_view(buf, static_cast<size_t>(r)), now);
        } else {
          c.onEof(now);
        }
      }
    }
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
};

Envelope makeEnv(std::vector<std::string> rcpts) {
  Envelope env;
  env.sender = "alice@a.example";
  for (auto& r : rcpts) {
    SpoolRecipient sr;
    sr.address = r;
    env.rcpts.push_back(sr);
  }
  return env;
}

SmtpJob jobFor(const Envelope& env, ContentSource& src) {
  SmtpJob j;
  j.env = &env;
  j.content = &src;
  for (size_t i = 0; i < env.rcpts.size(); ++i) j.rcpt_indexes.push_back(i);
  return j;
}

SmtpClient::Options opts() {
  SmtpClient::Options o;
  o.helo_name = "mx.test";
  return o;
}

bool ready(SmtpClient& c) {
  return c.state() == SmtpClient::State::Ready;
}

// Runs one transaction; returns its result.
std::optional<TransactionResult> transact(Server& s, SmtpClient& c, const Envelope& env,
                                          ContentSource& src) {
  s.pump(c, [&] { return ready(c); });
  if (!ready(c)) return std::nullopt;
  c.start(jobFor(env, src), SteadyClock::now());
  std::optional<TransactionResult> r;
  s.pump(c, [&] {
    if (!r) r = c.takeResult();
    return r.has_value();
  });
  if (!r) r = c.takeResult();
  return r;
}

TEST(TestSmtpd, SinkKeepsEnvelopeAndDataByteForByte) {
  TempDir dir;
  Server s({"--maildir", dir.path(), "--transcript", dir.path() + "/transcript"});
  SmtpClient c(opts(), SteadyClock::now());
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  StringSource src("Subject: t\n\n.leading dot\nbare\rcr\r\n..two\r\nend");
  auto r = transact(s, c, env, src);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Delivered);
  c.quit(SteadyClock::now());
  s.pump(c, [] { return false; });
  EXPECT_EQ(c.state(), SmtpClient::State::Closed);
  EXPECT_EQ(s.wait(), 0);
  std::vector<fs::path> data;
  for (auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().extension() == ".data") data.push_back(e.path());
  }
  ASSERT_EQ(data.size(), 1u);
  EXPECT_EQ(readFile(data[0]), "Subject: t\r\n\r\n.leading dot\r\nbare\r\ncr\r\n..two\r\nend\r\n");
  auto envp = data[0];
  envp.replace_extension(".env");
  EXPECT_EQ(
      readFile(envp),
      "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\nRCPT TO:<carol@b.example>\r\n");
  std::string tr = readFile(dir.path() + "/transcript");
  EXPECT_NE(tr.find("EHLO mx.test\n"), std::string::npos);
  EXPECT_NE(tr.find("QUIT\n"), std::string::npos);
}

TEST(TestSmtpd, PerRecipientRepliesAndNoPipelining) {
  TempDir dir;
  Server s({"--maildir", dir.path(), "--no-pipelining", "--no-dsn", "--rcpt-reply",
            "Carol@b.example=450 4.2.0 busy", "--rcpt-reply",
            "dave@b.example=550-5.1.1 no such\\n550 5.1.1 user"});
  SmtpClient c(opts(), SteadyClock::now());
  auto env = makeEnv({"bob@b.example", "carol@b.example", "dave@b.example"});
  StringSource src("x\r\n");
  auto r = transact(s, c, env, src);
  ASSERT_TRUE(r);
  EXPECT_FALSE(c.offers("PIPELINING"));
  EXPECT_FALSE(c.offers("DSN"));
  EXPECT_TRUE(c.offers("SIZE"));
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Deferred);
  EXPECT_EQ(r->rcpts[1].reply, "450 4.2.0 busy");
  EXPECT_EQ(r->rcpts[2].outcome, Outcome::Failed);
  EXPECT_EQ(r->rcpts[2].reply, "550 5.1.1 no such user");
}

TEST(TestSmtpd, FinalDotReplyAndMailReply) {
  TempDir dir;
  {
    Server s({"--maildir", dir.path(), "--dot-reply", "554 5.7.1 rejected"});
    SmtpClient c(opts(), SteadyClock::now());
    auto env = makeEnv({"bob@b.example"});
    StringSource src("x\r\n");
    auto r = transact(s, c, env, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);
    EXPECT_EQ(r->rcpts[0].reply, "554 5.7.1 rejected");
  }
  {
    Server s({"--maildir", dir.path(), "--mail-reply", "451 4.3.0 later"});
    SmtpClient c(opts(), SteadyClock::now());
    auto env = makeEnv({"bob@b.example"});
    StringSource src("x\r\n");
    auto r = transact(s, c, env, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
    EXPECT_EQ(c.state(), SmtpClient::State::Ready);  // the pipelined DATA got its 503
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(TestSmtpd, DisconnectInDataDefers) {
  TempDir dir;
  Server s({"--maildir", dir.path(), "--disconnect-after-data-bytes", "5000"});
  SmtpClient c(opts(), SteadyClock::now());
  auto env = makeEnv({"bob@b.example"});
  StringSource src(std::string(4 << 20, 'y') + "\r\n");  // more than any pipe holds
  auto r = transact(s, c, env, src);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_FALSE(r->possible_duplicate);
  EXPECT_EQ(c.state(), SmtpClient::State::Failed);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(TestSmtpd, StallAtFinalDotThenLossIsPossibleDuplicate) {
  TempDir dir;
  Server s({"--maildir", dir.path(), "--stall", "dot"});
  SmtpClient::Options o = opts();
  o.timeouts.final_dot = std::chrono::hours(1000);  // recognisable: the dot's reply is awaited
  SmtpClient c(o, SteadyClock::now());
  auto env = makeEnv({"bob@b.example"});
  StringSource src("x\r\n");
  s.pump(c, [&] { return ready(c); });
  c.start(jobFor(env, src), SteadyClock::now());
  // Everything goes out; the server never answers the dot.
  s.pump(c, [&] {
    return !c.wantsToWrite() && c.deadline() &&
           *c.deadline() > SteadyClock::now() + std::chrono::hours(900);
  });
  EXPECT_EQ(c.state(), SmtpClient::State::Busy);
  s.closeInput();  // the stalled server exits at EOF without a reply
  s.pump(c, [] { return false; });
  auto r = c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->possible_duplicate);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(s.wait(), 0);
}

TEST(TestSmtpd, GarbageAndNoiseAndGreetingRefusal) {
  TempDir dir;
  {
    Server s({"--maildir", dir.path(), "--garbage", "mail", "--noise", "Welcome!", "--noise",
              "motd line"});
    SmtpClient c(opts(), SteadyClock::now());
    auto env = makeEnv({"bob@b.example"});
    StringSource src("x\r\n");
    auto r = transact(s, c, env, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(c.state(), SmtpClient::State::Failed);
    EXPECT_NE(c.failure().find("garbage reply"), std::string::npos);
    auto notes = c.takeNotes();
    ASSERT_GE(notes.size(), 2u);
    EXPECT_EQ(notes[0], "non-reply line before the greeting: Welcome!");
  }
  {
    Server s({"--maildir", dir.path(), "--greeting-reply", "554 5.3.2 not today"});
    SmtpClient c(opts(), SteadyClock::now());
    s.pump(c, [] { return false; });
    EXPECT_EQ(c.state(), SmtpClient::State::Failed);
    EXPECT_EQ(c.failure(), "far end refused the session: 554 5.3.2 not today");
  }
  {
    Server s({"--maildir", dir.path(), "--no-ehlo"});
    SmtpClient c(opts(), SteadyClock::now());
    s.pump(c, [&] { return ready(c); });
    EXPECT_TRUE(ready(c));  // HELO fallback
  }
}

TEST(TestSmtpd, DiscardModeCounts) {
  TempDir dir;
  Server s({"--discard", "--count-file", dir.path() + "/count"});
  SmtpClient c(opts(), SteadyClock::now());
  auto env = makeEnv({"bob@b.example"});
  for (int i = 0; i < 3; ++i) {
    StringSource src("x\r\n");
    auto r = transact(s, c, env, src);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  }
  c.quit(SteadyClock::now());
  s.pump(c, [] { return false; });
  EXPECT_EQ(s.wait(), 0);
  EXPECT_EQ(readFile(dir.path() + "/count"), "3\n");
}

TEST(TestSmtpd, StallInBodyStopsReadingAndEndsOnHangup) {
  TempDir dir;
  Server s({"--maildir", dir.path(), "--stall", "body"});
  SmtpClient c(opts(), SteadyClock::now());
  auto env = makeEnv({"bob@b.example"});
  StringSource src(std::string(8 << 20, 'z') + "\r\n");
  s.pump(c, [&] { return ready(c); });
  c.start(jobFor(env, src), SteadyClock::now());
  // Feed it until the pipe is full: the server does not read any more.
  ::fcntl(s.inputFd(), F_SETFL, O_NONBLOCK);
  bool full = false;
  s.pump(c, [&] {
    if (!c.deadline() || *c.deadline() - SteadyClock::now() < std::chrono::seconds(150)) return false;
    auto out = c.output();  // data block deadline (180 s) is the one awaited: in the body
    if (out.empty()) return false;
    ssize_t w = ::write(s.inputFd(), out.data(), out.size());
    if (w > 0) c.consumed(static_cast<size_t>(w), SteadyClock::now());
    full = w < 0 && errno == EAGAIN;
    return full;
  });
  ASSERT_TRUE(full);
  EXPECT_EQ(c.state(), SmtpClient::State::Busy);
  s.closeOutput();
  EXPECT_EQ(s.wait(), 0);  // it noticed the hang-up and left, nothing written
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(TestSmtpd, OverlappedTransactionsThroughTheSink) {
  TempDir dir;
  Server s({"--maildir", dir.path()});
  SmtpClient::Options o = opts();
  o.overlap = true;
  SmtpClient c(o, SteadyClock::now());
  const int kMessages = 20;
  std::vector<Envelope> envs;
  std::vector<std::unique_ptr<StringSource>> srcs;
  for (int i = 0; i < kMessages; ++i) {
    envs.push_back(makeEnv({"rcpt" + std::to_string(i) + "@b.example"}));
    srcs.push_back(
        std::make_unique<StringSource>("Subject: " + std::to_string(i) + "\r\n\r\n.x\r\n"));
  }
  int started = 0;
  std::vector<TransactionResult> results;
  s.pump(c, [&] {
    while (auto r = c.takeResult()) results.push_back(*r);
    if (ready(c) && started < kMessages) {
      c.start(jobFor(envs[started], *srcs[started]), SteadyClock::now());
      ++started;
    }
    return static_cast<int>(results.size()) == kMessages;
  });
  ASSERT_EQ(static_cast<int>(results.size()), kMessages);
  for (const auto& r : results) EXPECT_EQ(r.rcpts[0].outcome, Outcome::Delivered);
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().extension() == ".data") {
      ++files;
      EXPECT_EQ(readFile(e.path()).substr(readFile(e.path()).find("\r\n\r\n")), "\r\n\r\n.x\r\n");
    }
  }
  EXPECT_EQ(files, kMessages);
}

// --chunking: the sink takes BDAT as a CHUNKING server (Postfix) does, so that the tunnel's BDAT
// path can be tested and measured against it.
std::string runScript(const std::vector<std::string>& args, const std::string& script) {
  std::vector<std::string> argv{DYNMX_TEST_SMTPD};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out;
  EXPECT_EQ(dynmx::test::runCommand(argv, &out, script), 0);
  return out;
}

TEST(TestSmtpd, ChunkingIsOfferedOnlyWhenAsked) {
  TempDir dir;
  std::string script = "EHLO x\r\nBDAT 1 LAST\r\nQUIT\r\n";
  std::string plain = runScript({"--maildir", dir.path()}, script);
  EXPECT_EQ(plain.find("CHUNKING"), std::string::npos);
  EXPECT_NE(plain.find("500 5.5.2"), std::string::npos) << plain;
  std::string chunking = runScript({"--maildir", dir.path(), "--chunking"}, "EHLO x\r\nQUIT\r\n");
  EXPECT_NE(chunking.find("250-CHUNKING"), std::string::npos) << chunking;
}

TEST(TestSmtpd, BdatChunksMakeTheMessageByteForByte) {
  TempDir dir;
  // Chunk contents are taken as they are: a line "." and a bare LF are data, not an end.
  std::string c1 = "Subject: x\r\n\r\n.\r\n", c2 = "bare\nLF and no end";
  std::string script = "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT " +
                       std::to_string(c1.size()) + "\r\n" + c1 + "BDAT " +
                       std::to_string(c2.size()) + " LAST\r\n" + c2 + "QUIT\r\n";
  std::string out = runScript({"--maildir", dir.path(), "--chunking"}, script);
  EXPECT_NE(out.find("250 2.0.0 " + std::to_string(c1.size()) + " octets received"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("250 2.0.0 Ok: queued as 1"), std::string::npos) << out;
  std::vector<std::string> data;
  for (auto& e : fs::directory_iterator(dir.path()))
    if (e.path().extension() == ".data") data.push_back(readFile(e.path()));
  ASSERT_EQ(data.size(), 1u);
  EXPECT_EQ(data[0], c1 + c2);
}

TEST(TestSmtpd, BdatWithoutAcceptedRecipientsIsReadAndDiscarded) {
  TempDir dir;
  // Pipelined as a client would: the refused recipient's transaction still sends its chunk, which
  // the server must read (to stay in step) and throw away; the next transaction goes through.
  std::string script =
      "EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<nobody@d.example>\r\nBDAT 4 LAST\r\n"
      "lostMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 4 LAST\r\nkeptQUIT\r\n";
  std::string out = runScript({"--maildir", dir.path(), "--chunking", "--rcpt-reply",
                               "nobody@d.example=550 5.1.1 no such user"},
                              script);
  EXPECT_NE(out.find("554 5.5.1 Error: no valid recipients"), std::string::npos) << out;
  EXPECT_NE(out.find("250 2.0.0 Ok: queued as 1"), std::string::npos) << out;
  std::vector<std::string> data;
  for (auto& e : fs::directory_iterator(dir.path()))
    if (e.path().extension() == ".data") data.push_back(readFile(e.path()));
  ASSERT_EQ(data.size(), 1u);
  EXPECT_EQ(data[0], "kept");
}

// --hold: the script goes in whole (pipelined); the server stops at the held point, having sent
// the replies due before it; returns what it sent once the hold file is there, then hangs up.
struct Held {
  std::string out;
  int status = -1;
  size_t stored = 0;
};
Held runHeld(const std::vector<std::string>& args, const std::string& script,
             const std::string& dir, const std::string& hold_file) {
  Held h;
  Server s(args);
  EXPECT_EQ(::write(s.inputFd(), script.data(), script.size()),
            static_cast<ssize_t>(script.size()));
  EXPECT_TRUE(dynmx::test::waitFor([&] { return ::access(hold_file.c_str(), F_OK) == 0; }));
  // The replies before the hold were flushed before the file was made: all in the pipe now.
  ::fcntl(s.outputFd(), F_SETFL, O_NONBLOCK);
  char buf[65536];
  for (ssize_t n; (n = ::read(s.outputFd(), buf, sizeof buf)) > 0;)
    h.out.append(buf, static_cast<size_t>(n));
  s.closeOutput();
  h.status = s.wait();
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".data") ++h.stored;
  return h;
}

size_t occurrences(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

TEST(TestSmtpd, HoldPinsTheStageOnceAcrossSessions) {
  TempDir dir;
  std::string mail = dir.path() + "/mail", flag = dir.path() + "/held";
  fs::create_directory(mail);
  std::string txn = "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nline\r\n.\r\n";
  std::string bdat = "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 4 LAST\r\nline";
  std::string data3 = "EHLO x\r\n" + txn + txn + txn + "QUIT\r\n";
  // dot, transaction 2: two stored, the second one's reply never sent.
  Held dot = runHeld({"--maildir", mail, "--hold", "dot:2:" + flag}, data3, mail, flag);
  EXPECT_EQ(dot.status, 0);
  EXPECT_EQ(dot.stored, 2u);
  EXPECT_NE(dot.out.find("queued as 1"), std::string::npos) << dot.out;
  EXPECT_EQ(dot.out.find("queued as 2"), std::string::npos) << dot.out;
  EXPECT_EQ(readFile(flag), "dot 2\n");
  // The file is there: the next session holds nothing.
  fs::remove_all(mail);
  fs::create_directory(mail);
  std::string all = runScript({"--maildir", mail, "--hold", "dot:2:" + flag}, data3);
  EXPECT_NE(all.find("queued as 3"), std::string::npos) << all;
  // mail, transaction 2: the first message through and answered, the second MAIL unanswered.
  fs::remove(flag);
  fs::remove_all(mail);
  fs::create_directory(mail);
  Held m = runHeld({"--maildir", mail, "--hold", "mail:2:" + flag}, data3, mail, flag);
  EXPECT_EQ(m.stored, 1u);
  EXPECT_NE(m.out.find("queued as 1"), std::string::npos) << m.out;
  EXPECT_EQ(occurrences(m.out, "250 2.1.0 Ok"), 1u) << m.out;
  // body, with DATA: 354 sent, nothing stored; with BDAT: the chunk not read, no reply to it.
  fs::remove(flag);
  fs::remove_all(mail);
  fs::create_directory(mail);
  Held b = runHeld({"--maildir", mail, "--hold", "body:1:" + flag}, "EHLO x\r\n" + txn, mail, flag);
  EXPECT_EQ(b.stored, 0u);
  EXPECT_NE(b.out.find("354 "), std::string::npos) << b.out;
  fs::remove(flag);
  Held c = runHeld({"--maildir", mail, "--chunking", "--hold", "body:1:" + flag},
                   "EHLO x\r\n" + bdat, mail, flag);
  EXPECT_EQ(c.stored, 0u);
  EXPECT_EQ(c.status, 0);
  EXPECT_NE(c.out.find("250 2.1.5 Ok"), std::string::npos) << c.out;
  EXPECT_EQ(c.out.find("queued"), std::string::npos) << c.out;
}

// The engine's BDAT path against the sink: the same bytes arrive as with DATA, for a message of
// many chunks with leading dots, bare LFs and CRs and an over-long line.
std::string deliverOne(const std::vector<std::string>& extra, const std::string& content,
                       std::string* transcript) {
  TempDir dir;
  std::vector<std::string> args{"--maildir", dir.path(), "--transcript", dir.path() + "/tr"};
  args.insert(args.end(), extra.begin(), extra.end());
  Server s(args);
  SmtpClient c(opts(), SteadyClock::now());
  auto env = makeEnv({"bob@b.example"});
  StringSource src(content);
  auto r = transact(s, c, env, src);
  EXPECT_TRUE(r);
  if (!r) return "";
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered) << r->rcpts[0].reply;
  c.quit(SteadyClock::now());
  s.pump(c, [] { return false; });
  EXPECT_EQ(s.wait(), 0);
  *transcript = readFile(dir.path() + "/tr");
  std::string data;
  for (auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().extension() == ".data") data = readFile(e.path());
  }
  return data;
}

TEST(TestSmtpd, EngineBdatDeliversTheBytesDataDelivers) {
  std::string content = "Subject: t\n\n.leading dot\nbare\rcr\r\n..two\r\n.\r\n";
  for (int i = 0; i < 20000; ++i) {
    content += (i % 3 == 0 ? "." : "") + std::to_string(i) + " some text of a line" +
               (i % 7 == 0 ? "\n" : "\r\n");
  }
  content += std::string(3000, 'L') + "\nend";
  std::string tr_data, tr_bdat;
  std::string via_data = deliverOne({}, content, &tr_data);
  std::string via_bdat = deliverOne({"--chunking"}, content, &tr_bdat);
  ASSERT_GT(via_data.size(), content.size());
  EXPECT_TRUE(via_data == via_bdat) << "sizes " << via_data.size() << " and " << via_bdat.size();
  EXPECT_NE(tr_data.find("\nDATA\n"), std::string::npos);
  EXPECT_EQ(tr_bdat.find("\nDATA\n"), std::string::npos);
  size_t chunks = 0, last = 0;
  std::istringstream lines(tr_bdat);
  for (std::string l; std::getline(lines, l);) {
    if (l.rfind("BDAT ", 0) == 0) ++chunks;
    if (l.size() > 5 && l.rfind("BDAT ", 0) == 0 && l.substr(l.size() - 5) == " LAST") ++last;
  }
  EXPECT_GT(chunks, 2u) << tr_bdat;
  EXPECT_EQ(last, 1u);
}

TEST(TestSmtpd, OverlappedBdatTransactionsWithARefusedRecipient) {
  TempDir dir;
  Server s({"--maildir", dir.path(), "--chunking", "--rcpt-reply",
            "rcpt7@b.example=550 5.1.1 no such user", "--rcpt-reply",
            "rcpt8@b.example=451 4.3.0 later"});
  SmtpClient::Options o = opts();
  o.overlap = true;
  SmtpClient c(o, SteadyClock::now());
  const int kMessages = 20;
  std::vector<Envelope> envs;
  std::vector<std::unique_ptr<StringSource>> srcs;
  for (int i = 0; i < kMessages; ++i) {
    envs.push_back(makeEnv({"rcpt" + std::to_string(i) + "@b.example"}));
    srcs.push_back(
        std::make_unique<StringSource>("Subject: " + std::to_string(i) + "\r\n\r\n.x\r\n"));
  }
  int started = 0;
  std::vector<TransactionResult> results;
  s.pump(c, [&] {
    while (auto r = c.takeResult()) results.push_back(*r);
    if (ready(c) && started < kMessages) {
      c.start(jobFor(envs[started], *srcs[started]), SteadyClock::now());
      ++started;
    }
    return static_cast<int>(results.size()) == kMessages;
  });
  ASSERT_EQ(static_cast<int>(results.size()), kMessages);
  for (int i = 0; i < kMessages; ++i) {
    Outcome want = i == 7 ? Outcome::Failed : i == 8 ? Outcome::Deferred : Outcome::Delivered;
    EXPECT_EQ(results[i].rcpts[0].outcome, want) << i << ": " << results[i].rcpts[0].reply;
  }
  EXPECT_EQ(results[7].rcpts[0].reply, "550 5.1.1 no such user");
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().extension() == ".data") {
      ++files;
      std::string d = readFile(e.path());
      EXPECT_EQ(d.substr(d.find("\r\n\r\n")), "\r\n\r\n.x\r\n");
    }
  }
  EXPECT_EQ(files, kMessages - 2);
}

}  // namespace
}  // namespace dynmx::tunneld
