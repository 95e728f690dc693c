// smtp_client_test.cpp: the sans-IO SMTP engine driven from scripted exchanges.
//
// Each test plays the far end: it feeds the engine server bytes and compares what the engine
// wants to send with the exact bytes expected. Time is a fake steady clock.
#include "tunneld/smtp/smtp_client.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "shared/smtp_reply.hpp"
#include "tunneld/smtp/smtp_body.hpp"

namespace dynmx::tunneld {
namespace {

using namespace std::chrono_literals;

// Content from a string, handed out in chunks of at most `chunk` bytes (and at most `max`).
class StringSource : public ContentSource {
 public:
  explicit StringSource(std::string s, size_t chunk = 1 << 20) : s_(std::move(s)), chunk_(chunk) {}
  Result<std::string_view> next(size_t max) override {
    if (fail_at_ && pos_ >= *fail_at_) return Error{EIO, "spool file X: CRC mismatch"};
    size_t n = std::min({max, chunk_, s_.size() - pos_});
    std::string_view v(s_.data() + pos_, n);
    pos_ += n;
    return v;
  }
  std::optional<size_t> fail_at_;

 private:
  std::string s_;
  size_t chunk_;
  size_t pos_ = 0;
};

// A source of `size` bytes of generated lines, never holding them all.
class GeneratedSource : public ContentSource {
 public:
  explicit GeneratedSource(uint64_t size) : left_(size) {}
  Result<std::string_view> next(size_t max) override {
    size_t n = static_cast<size_t>(std::min<uint64_t>({max, left_, 65536}));
    buf_.clear();
    for (size_t i = 0; i < n; ++i) {
      // lines of 77 characters, some starting with '.', LF-only ends to exercise the encoder
      buf_ += (col_ == 76) ? '\n' : (col_ == 0 && (line_ % 5 == 0)) ? '.' : 'a' + (col_ % 26);
      if (++col_ == 77) {
        col_ = 0;
        ++line_;
      }
    }
    left_ -= n;
    return std::string_view(buf_);
  }

 private:
  uint64_t left_;
  std::string buf_;
  size_t col_ = 0;
  uint64_t line_ = 0;
};

Envelope makeEnv(std::vector<std::string> rcpts, std::string sender = "alice@a.example") {
  Envelope env;
  env.client = "c1";
  env.sender = std::move(sender);
  for (auto& r : rcpts) {
    SpoolRecipient sr;
    sr.address = r;
    env.rcpts.push_back(sr);
  }
  return env;
}

struct Harness {
  SteadyClock::time_point now{std::chrono::hours(1)};
  SmtpClient c;
  std::string sent;
  size_t max_seen = 0;

  explicit Harness(SmtpClient::Options o = opts()) : c(std::move(o), now) {}
  static SmtpClient::Options opts() {
    SmtpClient::Options o;
    o.helo_name = "mx.test";
    return o;
  }
  // Sends everything the engine has (as an always-writable channel would).
  void drain(size_t max_write = SIZE_MAX) {
    for (;;) {
      auto o = c.output();
      max_seen = std::max(max_seen, o.size());
      if (o.empty()) break;
      size_t n = std::min(o.size(), max_write);
      sent.append(o.data(), n);
      c.consumed(n, now);
    }
  }
  void server(std::string_view s) {
    c.onInput(s, now);
    drain();
  }
  std::string take() {
    drain();
    std::string s;
    s.swap(sent);
    return s;
  }
  void greet(std::string ehlo_reply) {
    drain();
    server("220 far.example ESMTP Sendmail\r\n");
    ASSERT_EQ(take(), "EHLO mx.test\r\n");
    server(ehlo_reply);
    ASSERT_EQ(c.state(), SmtpClient::State::Ready);
  }
};

const char* kEhloPipelining =
    "250-far.example Hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n";
const char* kEhloPlain = "250-far.example Hello\r\n250 HELP\r\n";
const char* kEhloChunking =
    "250-far.example Hello\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

SmtpJob job(const Envelope& env, ContentSource& src, std::vector<size_t> idx = {},
            uint64_t size = 0) {
  SmtpJob j;
  j.env = &env;
  j.content = &src;
  j.size_hint = size;
  if (idx.empty()) {
    for (size_t i = 0; i < env.rcpts.size(); ++i) idx.push_back(i);
  }
  j.rcpt_indexes = idx;
  return j;
}

TEST(SmtpClient, PipelinedTransactionWithPerRecipientOutcome) {
  Harness h;
  h.greet(kEhloPipelining);
  EXPECT_TRUE(h.c.offers("pipelining"));
  EXPECT_TRUE(h.c.offers("DSN"));
  EXPECT_EQ(h.c.greeting(), "220 far.example ESMTP Sendmail");
  auto env = makeEnv({"bob@b.example", "carol@b.example", "dave@b.example"});
  StringSource src("Subject: hi\r\n\r\nbody\r\n");
  h.c.start(job(env, src, {}, 23), h.now);
  EXPECT_EQ(h.take(),
            "MAIL FROM:<alice@a.example> SIZE=23\r\nRCPT TO:<bob@b.example>\r\n"
            "RCPT TO:<carol@b.example>\r\nRCPT TO:<dave@b.example>\r\nDATA\r\n");
  h.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <carol@b.example>: unknown\r\n");
  EXPECT_EQ(h.take(), "");
  h.server("450 4.2.0 <dave@b.example>: busy\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(h.take(), "Subject: hi\r\n\r\nbody\r\n.\r\n");
  EXPECT_FALSE(h.c.takeResult().has_value());
  h.server("250 2.0.0 Ok: queued as ABC\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->rcpts.size(), 3u);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r->rcpts[0].reply, "250 2.0.0 Ok: queued as ABC");
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Failed);
  EXPECT_EQ(r->rcpts[1].reply, "550 5.1.1 <carol@b.example>: unknown");
  EXPECT_EQ(r->rcpts[2].outcome, Outcome::Deferred);
  EXPECT_EQ(r->rcpts[2].reply, "450 4.2.0 <dave@b.example>: busy");
  EXPECT_FALSE(r->possible_duplicate);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);

  // The next transaction starts with RSET, in the same group.
  auto env2 = makeEnv({"erin@b.example"});
  StringSource src2("x\r\n");
  h.c.start(job(env2, src2), h.now);
  EXPECT_EQ(h.take(),
            "RSET\r\nMAIL FROM:<alice@a.example>\r\nRCPT TO:<erin@b.example>\r\nDATA\r\n");
  h.server("250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
  EXPECT_EQ(h.take(), "x\r\n.\r\n");
  h.server("250 2.0.0 Ok\r\n");
  r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  h.c.quit(h.now);
  EXPECT_EQ(h.take(), "QUIT\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Quitting);
  h.server("221 2.0.0 Bye\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Closed);
}

TEST(SmtpClient, LockStepWithoutPipelining) {
  Harness h;
  h.greet(kEhloPlain);
  EXPECT_FALSE(h.c.offers("PIPELINING"));
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  StringSource src("hello\r\n");
  h.c.start(job(env, src, {}, 7), h.now);
  EXPECT_EQ(h.take(), "MAIL FROM:<alice@a.example>\r\n");  // no SIZE: not offered
  h.server("250 2.1.0 Ok\r\n");
  EXPECT_EQ(h.take(), "RCPT TO:<bob@b.example>\r\n");
  h.server("451 4.3.0 try later\r\n");
  EXPECT_EQ(h.take(), "RCPT TO:<carol@b.example>\r\n");
  h.server("250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.take(), "DATA\r\n");
  h.server("354 go ahead\r\n");
  EXPECT_EQ(h.take(), "hello\r\n.\r\n");
  h.server("250 2.0.0 Ok\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(r->rcpts[0].reply, "451 4.3.0 try later");
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Delivered);

  // Second transaction: RSET first, and waited for.
  StringSource src2("again\r\n");
  auto env2 = makeEnv({"bob@b.example"});
  h.c.start(job(env2, src2), h.now);
  EXPECT_EQ(h.take(), "RSET\r\n");
  h.server("250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.take(), "MAIL FROM:<alice@a.example>\r\n");
}

TEST(SmtpClient, AllRecipientsRefusedLockStepEndsWithoutData) {
  Harness h;
  h.greet(kEhloPlain);
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  StringSource src("hello\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 2.1.0 Ok\r\n");
  h.take();
  h.server("550 5.1.1 no bob\r\n");
  EXPECT_EQ(h.take(), "RCPT TO:<carol@b.example>\r\n");
  h.server("450 4.1.1 no carol yet\r\n");
  EXPECT_EQ(h.take(), "");  // no DATA
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Deferred);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
  auto env2 = makeEnv({"dave@b.example"});
  h.c.start(job(env2, src), h.now);
  EXPECT_EQ(h.take(), "RSET\r\n");  // the open transaction is reset before the next
}

TEST(SmtpClient, AllRecipientsRefusedPipelinedExpectsDataRefusal) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("hello\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 2.1.0 Ok\r\n550 5.1.1 no bob\r\n554 5.5.1 Error: no valid recipients\r\n");
  EXPECT_EQ(h.take(), "");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);
  EXPECT_EQ(r->rcpts[0].reply, "550 5.1.1 no bob");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
}

TEST(SmtpClient, DataAcceptedWithoutRecipientEndsSession) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("hello\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 2.1.0 Ok\r\n550 5.1.1 no bob\r\n354 go\r\n");
  EXPECT_EQ(h.take(), "");  // never content nobody asked for
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);
}

struct TxCase {
  const char* name;
  bool pipelining;
  std::vector<std::pair<std::string, std::string>> script;  // server says -> client must send
  std::vector<Outcome> outcomes;
  std::vector<std::string> replies;
  SmtpClient::State end_state;
};

void PrintTo(const TxCase& c, std::ostream* os) {
  *os << c.name;
}

class TransactionTable : public ::testing::TestWithParam<TxCase> {};

TEST_P(TransactionTable, Outcomes) {
  const TxCase& tc = GetParam();
  Harness h;
  h.greet(tc.pipelining ? kEhloPipelining : kEhloPlain);
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  std::string first = tc.pipelining ? "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\n"
                                      "RCPT TO:<carol@b.example>\r\nDATA\r\n"
                                    : "MAIL FROM:<alice@a.example>\r\n";
  EXPECT_EQ(h.take(), first);
  for (auto& [say, expect] : tc.script) {
    if (say == "<EOF>") {
      h.c.onEof(h.now);
    } else {
      h.server(say);
    }
    EXPECT_EQ(h.take(), expect) << "after server said " << say;
  }
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->rcpts.size(), tc.outcomes.size());
  for (size_t i = 0; i < tc.outcomes.size(); ++i) {
    EXPECT_EQ(r->rcpts[i].outcome, tc.outcomes[i]) << i;
    EXPECT_EQ(r->rcpts[i].reply, tc.replies[i]) << i;
  }
  EXPECT_EQ(h.c.state(), tc.end_state);
  EXPECT_FALSE(r->possible_duplicate);
}

const std::string kLost = "lost connection with the far end while sending message body";

INSTANTIATE_TEST_SUITE_P(
    SmtpClient, TransactionTable,
    ::testing::Values(
        TxCase{"MailRefusedPipelined",
               true,
               {{"550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n"
                 "503 5.5.1 need MAIL\r\n",
                 ""}},
               {Outcome::Failed, Outcome::Failed},
               {"550 5.7.1 sender refused", "550 5.7.1 sender refused"},
               SmtpClient::State::Ready},
        TxCase{"MailDeferredLockStep",
               false,
               {{"451 4.3.2 not now\r\n", ""}},
               {Outcome::Deferred, Outcome::Deferred},
               {"451 4.3.2 not now", "451 4.3.2 not now"},
               SmtpClient::State::Ready},
        TxCase{"DataRefusedKeepsRcptFailure",
               true,
               {{"250 Ok\r\n550 5.1.1 no bob\r\n250 Ok\r\n451 4.3.0 DATA later\r\n", ""}},
               {Outcome::Failed, Outcome::Deferred},
               {"550 5.1.1 no bob", "451 4.3.0 DATA later"},
               SmtpClient::State::Ready},
        TxCase{"FinalDotTempfail",
               true,
               {{"250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n", "m\r\n.\r\n"},
                {"452 4.3.1 queue full\r\n", ""}},
               {Outcome::Deferred, Outcome::Deferred},
               {"452 4.3.1 queue full", "452 4.3.1 queue full"},
               SmtpClient::State::Ready},
        TxCase{"FinalDotRefused",
               false,
               {{"250 Ok\r\n", "RCPT TO:<bob@b.example>\r\n"},
                {"250 Ok\r\n", "RCPT TO:<carol@b.example>\r\n"},
                {"250 Ok\r\n", "DATA\r\n"},
                {"354 go\r\n", "m\r\n.\r\n"},
                {"554 5.7.1 spam\r\n", ""}},
               {Outcome::Failed, Outcome::Failed},
               {"554 5.7.1 spam", "554 5.7.1 spam"},
               SmtpClient::State::Ready},
        TxCase{"MultiLineReplyFlattened",
               true,
               {{"250 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 user here\r\n250 Ok\r\n354 go\r\n",
                 "m\r\n.\r\n"},
                {"250 Ok\r\n", ""}},
               {Outcome::Failed, Outcome::Delivered},
               {"550 5.1.1 no such user here", "250 Ok"},
               SmtpClient::State::Ready},
        TxCase{"GarbageReplyEndsSession",
               true,
               {{"250 Ok\r\nhello there\r\n", ""}},
               {Outcome::Deferred, Outcome::Deferred},
               {"garbage reply from the far end: \"hello there\"",
                "garbage reply from the far end: \"hello there\""},
               SmtpClient::State::Failed},
        TxCase{"UnexpectedCodeToRcpt",
               true,
               {{"250 Ok\r\n354 what\r\n", ""}},
               {Outcome::Deferred, Outcome::Deferred},
               {"unexpected reply to RCPT TO: 354 what", "unexpected reply to RCPT TO: 354 what"},
               SmtpClient::State::Failed}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(SmtpClient, DisconnectWhileSendingBodyDefersWithoutDuplicate) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  StringSource src(std::string(100000, 'x'));
  SmtpClient::Options o;
  h.c.start(job(env, src), h.now);
  h.take();
  h.c.onInput("250 Ok\r\n250 Ok\r\n550 5.1.1 no carol\r\n354 go\r\n", h.now);
  auto o1 = h.c.output();
  ASSERT_FALSE(o1.empty());
  h.c.consumed(o1.size() / 2, h.now);  // part of the body went out
  h.c.onEof(h.now);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  EXPECT_EQ(h.c.failure(), kLost);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->possible_duplicate);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(r->rcpts[0].reply, kLost);
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Failed);  // its own 5xx stays
  EXPECT_TRUE(h.c.output().empty());
}

TEST(SmtpClient, LossAfterFinalDotIsPossibleDuplicate) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(h.take(), "m\r\n.\r\n");
  h.c.onEof(h.now);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->possible_duplicate);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_NE(r->rcpts[0].reply.find("may be sent more than once"), std::string::npos);
}

TEST(SmtpClient, FinalDotNotYetSentIsNoDuplicate) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.c.onInput("250 Ok\r\n250 Ok\r\n354 go\r\n", h.now);
  auto o = h.c.output();
  ASSERT_EQ(o, "m\r\n.\r\n");
  h.c.consumed(o.size() - 1, h.now);  // the last LF of the dot never left
  h.c.onEof(h.now);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->possible_duplicate);
}

TEST(SmtpClient, TimeoutsFollowTheAwaitedCommand) {
  SmtpClient::Options o = Harness::opts();
  o.timeouts.mail = 10s;
  o.timeouts.block = 20s;
  o.timeouts.final_dot = 30s;
  Harness h(o);
  ASSERT_TRUE(h.c.deadline());
  EXPECT_EQ(*h.c.deadline(), h.now + 300s);  // greeting
  h.greet(kEhloPlain);
  EXPECT_FALSE(h.c.deadline());  // idle: nothing awaited
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  EXPECT_EQ(*h.c.deadline(), h.now + 10s);
  h.c.onTimeout(h.now + 9s);  // early: ignored
  EXPECT_EQ(h.c.state(), SmtpClient::State::Busy);
  h.c.onTimeout(h.now + 10s);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  EXPECT_EQ(h.c.failure(), "conversation with the far end timed out while sending MAIL FROM");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_FALSE(r->possible_duplicate);
}

TEST(SmtpClient, TimeoutAfterFinalDotIsPossibleDuplicate) {
  SmtpClient::Options o = Harness::opts();
  o.timeouts.final_dot = 30s;
  o.timeouts.block = 20s;
  Harness h(o);
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.c.onInput("250 Ok\r\n250 Ok\r\n354 go\r\n", h.now);
  EXPECT_EQ(*h.c.deadline(), h.now + 20s);  // data block: the channel must take the body
  h.drain();
  EXPECT_EQ(*h.c.deadline(), h.now + 30s);  // final dot
  h.c.onTimeout(h.now + 30s);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->possible_duplicate);
}

TEST(SmtpClient, NonReplyLinesBeforeGreetingAreNotedAndSkipped) {
  Harness h;
  h.server("Welcome to host far!\r\nLast login: never\n\r\n");
  EXPECT_EQ(h.take(), "");
  h.server("220-far.example ESMTP\r\n220 second line\r\n");
  EXPECT_EQ(h.take(), "EHLO mx.test\r\n");
  auto notes = h.c.takeNotes();
  ASSERT_EQ(notes.size(), 3u);
  EXPECT_EQ(notes[0], "non-reply line before the greeting: Welcome to host far!");
  EXPECT_EQ(notes[1], "non-reply line before the greeting: Last login: never");
  EXPECT_EQ(h.c.greeting(), "220 far.example ESMTP second line");
  // After the greeting, a line that is no reply is garbage.
  h.server("250-x\r\nnot a reply\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
}

TEST(SmtpClient, RefusingGreetingEndsSession) {
  Harness h;
  h.server("554 5.3.2 no service\r\n");
  EXPECT_EQ(h.take(), "");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  EXPECT_EQ(h.c.failure(), "far end refused the session: 554 5.3.2 no service");
}

TEST(SmtpClient, HeloFallbackWhenEhloRefused) {
  Harness h;
  h.server("220 old.example\r\n");
  EXPECT_EQ(h.take(), "EHLO mx.test\r\n");
  h.server("502 5.5.2 command not recognized\r\n");
  EXPECT_EQ(h.take(), "HELO mx.test\r\n");
  h.server("250 old.example\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
  EXPECT_FALSE(h.c.offers("PIPELINING"));
}

TEST(SmtpClient, ReplyWhenNoneAwaitedEndsSession) {
  Harness h;
  h.greet(kEhloPlain);
  h.server("421 4.3.2 shutting down\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  EXPECT_EQ(h.c.failure(), "unexpected reply from the far end: 421 4.3.2 shutting down");
}

TEST(SmtpClient, DsnParametersOnlyWhenOffered) {
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  env.envid = "id+1=x y";
  env.ret = "HDRS";
  env.body = "8BITMIME";
  env.smtputf8 = true;
  env.rcpts[0].notify = "SUCCESS,DELAY";
  env.rcpts[0].orcpt = "rfc822;Bob+Tag@b.example";
  env.rcpts[1].notify = "NEVER";
  env.rcpts[1].orcpt = "rfc822;carol+2Bx@b.example";  // as received: xtext already
  {
    Harness h;
    h.greet("250-far\r\n250-PIPELINING\r\n250-DSN\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE\r\n");
    StringSource src("m\r\n");
    h.c.start(job(env, src, {}, 3), h.now);
    EXPECT_EQ(h.take(),
              "MAIL FROM:<alice@a.example> SIZE=3 BODY=8BITMIME SMTPUTF8 RET=HDRS "
              "ENVID=id+2B1+3Dx+20y\r\n"
              "RCPT TO:<bob@b.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+2BTag@b.example\r\n"
              "RCPT TO:<carol@b.example> NOTIFY=NEVER ORCPT=rfc822;carol+2Bx@b.example\r\n"
              "DATA\r\n");
  }
  {
    Harness h;
    h.greet("250-far\r\n250 PIPELINING\r\n");
    StringSource src("m\r\n");
    h.c.start(job(env, src, {}, 3), h.now);
    EXPECT_EQ(h.take(),
              "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\n"
              "RCPT TO:<carol@b.example>\r\nDATA\r\n");
  }
}

TEST(SmtpClient, OnlyPendingRecipientsAreTried) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example", "carol@b.example", "dave@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src, {2, 0}), h.now);
  EXPECT_EQ(h.take(),
            "MAIL FROM:<alice@a.example>\r\nRCPT TO:<dave@b.example>\r\n"
            "RCPT TO:<bob@b.example>\r\nDATA\r\n");
  h.server("250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n");
  h.server("250 Ok\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->rcpts.size(), 2u);
  EXPECT_EQ(r->rcpts[0].index, 2u);
  EXPECT_EQ(r->rcpts[1].index, 0u);
}

TEST(SmtpClient, SizeOverTheFarEndsLimitFailsWithoutRoundTrip) {
  Harness h;
  h.greet(kEhloPipelining);  // SIZE 100000
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src, {}, 200000), h.now);
  EXPECT_EQ(h.take(), "");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
}

TEST(SmtpClient, ContentErrorEndsSessionWithoutFinalDot) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src(std::string(5000, 'a') + "\r\n", 1000);
  src.fail_at_ = 3000;
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  std::string body = h.take();
  EXPECT_EQ(body.find(".\r\n"), std::string::npos);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->content_error);
  EXPECT_FALSE(r->possible_duplicate);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
}

TEST(SmtpClient, QuitWhileBusyWaitsForTheTransaction) {
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.c.quit(h.now);
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(h.take(), "m\r\n.\r\n");
  h.server("250 Ok\r\n");
  EXPECT_EQ(h.take(), "QUIT\r\n");
  EXPECT_TRUE(h.c.takeResult());
  h.c.onEof(h.now);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Closed);
}

// --- overlapped transactions (Options::overlap)

SmtpClient::Options overlapOpts() {
  SmtpClient::Options o = Harness::opts();
  o.overlap = true;
  return o;
}

TEST(SmtpClientOverlap, NextTransactionFollowsTheFinalDotInOneGroup) {
  Harness h(overlapOpts());
  h.greet(kEhloPipelining);
  auto env1 = makeEnv({"bob@b.example"});
  auto env2 = makeEnv({"carol@b.example"});
  StringSource src1("one\r\n"), src2("two\r\n");
  h.c.start(job(env1, src1), h.now);
  EXPECT_EQ(h.take(), "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\nDATA\r\n");
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(h.take(), "one\r\n.\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);  // the dot's reply is still to come
  EXPECT_FALSE(h.c.takeResult());
  h.c.start(job(env2, src2), h.now);
  EXPECT_EQ(h.take(),
            "RSET\r\nMAIL FROM:<alice@a.example>\r\nRCPT TO:<carol@b.example>\r\nDATA\r\n");
  h.server("250 2.0.0 queued one\r\n250 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n");
  auto r1 = h.c.takeResult();
  ASSERT_TRUE(r1);
  EXPECT_EQ(r1->rcpts[0].index, 0u);
  EXPECT_EQ(r1->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r1->rcpts[0].reply, "250 2.0.0 queued one");
  EXPECT_EQ(h.take(), "two\r\n.\r\n");
  h.server("451 4.3.0 not two\r\n");
  auto r2 = h.c.takeResult();
  ASSERT_TRUE(r2);
  EXPECT_EQ(r2->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(r2->rcpts[0].reply, "451 4.3.0 not two");
  EXPECT_FALSE(h.c.takeResult());
}

TEST(SmtpClientOverlap, LossFailsBothTransactionsInOrder) {
  Harness h(overlapOpts());
  h.greet(kEhloPipelining);
  auto env1 = makeEnv({"bob@b.example"});
  auto env2 = makeEnv({"carol@b.example"});
  StringSource src1("one\r\n"), src2("two\r\n");
  h.c.start(job(env1, src1), h.now);
  h.take();
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  h.take();
  h.c.start(job(env2, src2), h.now);
  h.take();
  h.c.onEof(h.now);
  auto r1 = h.c.takeResult();
  auto r2 = h.c.takeResult();
  ASSERT_TRUE(r1 && r2);
  EXPECT_TRUE(r1->possible_duplicate);  // its dot went out
  EXPECT_FALSE(r2->possible_duplicate);
  EXPECT_EQ(r1->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(r2->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(r2->rcpts[0].index, 0u);
}

TEST(SmtpClientOverlap, ResultsKeepStartOrderWhenALaterOneEndsFirst) {
  Harness h(overlapOpts());
  h.greet(kEhloPipelining);  // SIZE 100000
  auto env = makeEnv({"bob@b.example"});
  StringSource src1("one\r\n"), src2("two\r\n");
  h.c.start(job(env, src1), h.now);
  h.take();
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  h.take();
  h.c.start(job(env, src2, {}, 999999), h.now);  // refused locally at once (SIZE)
  EXPECT_EQ(h.take(), "");
  EXPECT_FALSE(h.c.takeResult());  // not before the first one's
  h.server("250 Ok\r\n");
  auto r1 = h.c.takeResult();
  auto r2 = h.c.takeResult();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r2->rcpts[0].outcome, Outcome::Failed);
}

TEST(SmtpClientOverlap, QuitFollowsTheDotAndWaitsForItsReply) {
  Harness h(overlapOpts());
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("one\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(h.take(), "one\r\n.\r\n");
  h.c.quit(h.now);
  EXPECT_EQ(h.take(), "QUIT\r\n");
  h.c.onEof(h.now);  // gone before the dot's reply: not a clean end
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->possible_duplicate);
}

TEST(SmtpClientOverlap, NoOverlapWithoutPipelining) {
  Harness h(overlapOpts());
  h.greet(kEhloPlain);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("one\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 Ok\r\n");
  h.take();
  h.server("250 Ok\r\n");
  h.take();
  h.server("354 go\r\n");
  EXPECT_EQ(h.take(), "one\r\n.\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Busy);
}

// --- body encoding, byte for byte

struct BodyCase {
  const char* name;
  std::string in;
  std::string wire;  // without the final ".\r\n"
};

void PrintTo(const BodyCase& c, std::ostream* os) {
  *os << c.name;
}

class BodyTable : public ::testing::TestWithParam<BodyCase> {};

std::string encodeChunked(const std::string& in, size_t chunk, bool stuff_dots = true) {
  SmtpBodyEncoder e(stuff_dots);
  std::string out;
  for (size_t i = 0; i < in.size(); i += chunk) {
    e.feed(std::string_view(in).substr(i, chunk), out);
  }
  e.finish(out);
  return out;
}

TEST_P(BodyTable, SameBytesForEveryChunking) {
  const BodyCase& bc = GetParam();
  for (size_t chunk : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{1000}, size_t{100000}}) {
    EXPECT_EQ(encodeChunked(bc.in, chunk), bc.wire) << "chunk " << chunk;
  }
  // And through the engine, with the terminator.
  Harness h;
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  StringSource src(bc.in, 3);
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_EQ(h.take(), bc.wire + ".\r\n");
}

// What a DATA receiver stores: each line that starts with '.' loses it.
std::string unstuff(const std::string& wire) {
  std::string r;
  size_t pos = 0;
  while (pos < wire.size()) {
    size_t end = wire.find("\r\n", pos);
    end = end == std::string::npos ? wire.size() : end + 2;
    r.append(wire, pos + (wire[pos] == '.' ? 1 : 0), end - pos - (wire[pos] == '.' ? 1 : 0));
    pos = end;
  }
  return r;
}

// BDAT carries exactly the bytes a DATA receiver stores (no stuffing, same folds).
TEST_P(BodyTable, BdatCarriesTheBytesDataDelivers) {
  const BodyCase& bc = GetParam();
  std::string stored = unstuff(bc.wire);
  for (size_t chunk : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{1000}, size_t{100000}}) {
    EXPECT_EQ(encodeChunked(bc.in, chunk, false), stored) << "chunk " << chunk;
  }
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  StringSource src(bc.in, 3);
  h.c.start(job(env, src), h.now);
  EXPECT_EQ(h.take(), "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\nBDAT " +
                          std::to_string(stored.size()) + " LAST\r\n" + stored);
}

std::string longLine(size_t n, char c = 'x') {
  return std::string(n, c);
}

INSTANTIATE_TEST_SUITE_P(
    SmtpClient, BodyTable,
    ::testing::Values(
        BodyCase{"Empty", "", ""}, BodyCase{"CrlfUnchanged", "a\r\nb\r\n", "a\r\nb\r\n"},
        BodyCase{"BareLfBecomesCrlf", "a\nb\n", "a\r\nb\r\n"},
        BodyCase{"BareCrBecomesCrlf", "a\rb\r", "a\r\nb\r\n"},
        BodyCase{"CrCrLf", "a\r\r\nb", "a\r\n\r\nb\r\n"},
        BodyCase{"LfCr", "a\n\rb", "a\r\n\r\nb\r\n"},
        BodyCase{"UnterminatedLastLine", "a\r\nb", "a\r\nb\r\n"},
        BodyCase{"DotStuffing", ".\r\n..x\r\n.\n", "..\r\n...x\r\n..\r\n"},
        BodyCase{"SmugglingAttemptLfDotLf", "a\n.\nMAIL FROM:<x>\r\n",
                 "a\r\n..\r\nMAIL FROM:<x>\r\n"},
        BodyCase{"SmugglingAttemptCrDotCr", "a\r.\rb", "a\r\n..\r\nb\r\n"},
        BodyCase{"DotNotAtLineStart", "a.b\r\n", "a.b\r\n"},
        BodyCase{"NulBytesPass", std::string("a\0b\r\n", 5), std::string("a\0b\r\n", 5)},
        BodyCase{"Exactly998", longLine(998) + "\r\n", longLine(998) + "\r\n"},
        BodyCase{"FoldedAt998", longLine(999) + "\r\n", longLine(998) + "\r\n x\r\n"},
        BodyCase{"FoldedTwice", longLine(998 + 997 + 5) + "\n",
                 longLine(998) + "\r\n " + longLine(997) + "\r\n " + longLine(5) + "\r\n"},
        BodyCase{"StuffedDotCountsTowardTheLimit", "." + longLine(997) + "\r\n",
                 ".." + longLine(996) + "\r\n x\r\n"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(SmtpClient, FiftyMegabytesStreamWithBoundedOutput) {
  SmtpClient::Options o = Harness::opts();
  o.max_output = 64 * 1024;
  Harness h(o);
  h.greet(kEhloPipelining);
  auto env = makeEnv({"bob@b.example"});
  const uint64_t kSize = 50ull * 1024 * 1024;
  GeneratedSource src(kSize);
  h.c.start(job(env, src, {}, 0), h.now);
  h.take();
  h.c.onInput("250 Ok\r\n250 Ok\r\n354 go\r\n", h.now);
  uint64_t total = 0, lines = 0;
  size_t max_seen = 0;
  std::string tail;
  // A slow channel: takes at most 5000 bytes per write.
  while (h.c.wantsToWrite()) {
    auto out = h.c.output();
    max_seen = std::max(max_seen, out.size());
    ASSERT_LE(out.size(), o.max_output);
    size_t n = std::min<size_t>(out.size(), 5000);
    for (size_t i = 0; i < n; ++i) {
      if (out[i] == '\n') ++lines;
    }
    total += n;
    tail.append(out.data(), n);
    if (tail.size() > 64) tail.erase(0, tail.size() - 64);
    h.c.consumed(n, h.now);
  }
  EXPECT_LE(max_seen, o.max_output);
  EXPECT_GT(max_seen, o.max_output / 4);  // the buffer was actually used
  EXPECT_EQ(tail.substr(tail.size() - 5), "\r\n.\r\n");
  // 77-byte lines with a LF each become CRLF; one in five gets a stuffed dot.
  uint64_t in_lines = kSize / 77;
  EXPECT_GE(total, kSize + in_lines);
  EXPECT_GE(lines, in_lines);
  h.c.onInput("250 2.0.0 Ok\r\n", h.now);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
}

// --- CHUNKING/BDAT (RFC 3030)

TEST(SmtpClientBdat, EnvelopeAndContentGoInOneGroupWithPerRecipientOutcome) {
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example", "carol@b.example", "dave@b.example"});
  StringSource src("Subject: hi\n\n.dot stays single\r\n");
  h.c.start(job(env, src), h.now);
  EXPECT_EQ(h.take(),
            "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\n"
            "RCPT TO:<carol@b.example>\r\nRCPT TO:<dave@b.example>\r\n"
            "BDAT 34 LAST\r\nSubject: hi\r\n\r\n.dot stays single\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Busy);
  h.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <carol@b.example>: unknown\r\n");
  h.server("450 4.2.0 <dave@b.example>: busy\r\n");
  EXPECT_FALSE(h.c.takeResult());
  h.server("250 2.0.0 Ok: queued as ABC\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r->rcpts[0].reply, "250 2.0.0 Ok: queued as ABC");
  EXPECT_EQ(r->rcpts[1].outcome, Outcome::Failed);
  EXPECT_EQ(r->rcpts[1].reply, "550 5.1.1 <carol@b.example>: unknown");
  EXPECT_EQ(r->rcpts[2].outcome, Outcome::Deferred);
  EXPECT_FALSE(r->possible_duplicate);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
  // The next one: RSET first, in the same group.
  StringSource src2("x");
  auto env2 = makeEnv({"erin@b.example"});
  h.c.start(job(env2, src2), h.now);
  EXPECT_EQ(h.take(),
            "RSET\r\nMAIL FROM:<alice@a.example>\r\nRCPT TO:<erin@b.example>\r\n"
            "BDAT 3 LAST\r\nx\r\n");
  h.server("250 Ok\r\n250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: queued as DEF\r\n");
  r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  h.c.quit(h.now);
  EXPECT_EQ(h.take(), "QUIT\r\n");
}

// Replies to the chunk sent after a refused envelope: the far end discards it and says so; the
// recipients keep their own replies and the session stays in step for the next transaction.
struct RefusedEnvelopeCase {
  const char* name;
  std::string replies;  // to MAIL, RCPT, RCPT, BDAT
  Outcome o0, o1;
  std::string reply0;
};

void PrintTo(const RefusedEnvelopeCase& c, std::ostream* os) {
  *os << c.name;
}

class BdatRefusedEnvelope : public ::testing::TestWithParam<RefusedEnvelopeCase> {};

TEST_P(BdatRefusedEnvelope, ChunkIsDiscardedAndResultsStayRight) {
  const auto& tc = GetParam();
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example", "carol@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server(tc.replies);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, tc.o0);
  EXPECT_EQ(r->rcpts[0].reply, tc.reply0);
  EXPECT_EQ(r->rcpts[1].outcome, tc.o1);
  EXPECT_FALSE(r->possible_duplicate);
  ASSERT_EQ(h.c.state(), SmtpClient::State::Ready);
  auto env2 = makeEnv({"erin@b.example"});
  StringSource src2("n\r\n");
  h.c.start(job(env2, src2), h.now);
  EXPECT_EQ(h.take(),
            "RSET\r\nMAIL FROM:<alice@a.example>\r\nRCPT TO:<erin@b.example>\r\n"
            "BDAT 3 LAST\r\nn\r\n");
  h.server("250 Ok\r\n250 Ok\r\n250 Ok\r\n250 2.0.0 queued\r\n");
  r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
}

INSTANTIATE_TEST_SUITE_P(
    SmtpClient, BdatRefusedEnvelope,
    ::testing::Values(RefusedEnvelopeCase{"AllRecipientsRefused",
                                          "250 Ok\r\n550 5.1.1 no bob\r\n450 4.2.1 later carol\r\n"
                                          "554 5.5.1 Error: no valid recipients\r\n",
                                          Outcome::Failed, Outcome::Deferred, "550 5.1.1 no bob"},
                      RefusedEnvelopeCase{"MailRefused",
                                          "451 4.3.0 no mail now\r\n503 5.5.1 need MAIL\r\n"
                                          "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
                                          Outcome::Deferred, Outcome::Deferred,
                                          "451 4.3.0 no mail now"},
                      RefusedEnvelopeCase{"LastChunkRefused",
                                          "250 Ok\r\n250 Ok\r\n250 Ok\r\n552 5.3.4 too big\r\n",
                                          Outcome::Failed, Outcome::Failed, "552 5.3.4 too big"},
                      RefusedEnvelopeCase{"LastChunkDeferred",
                                          "250 Ok\r\n250 Ok\r\n550 5.1.1 no\r\n451 4.3.0 later\r\n",
                                          Outcome::Deferred, Outcome::Failed, "451 4.3.0 later"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(SmtpClientBdat, ChunkAcceptedWithoutRecipientEndsSession) {
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  h.take();
  h.server("250 Ok\r\n550 5.1.1 no\r\n250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);  // its own reply stays
}

// Cuts the engine's output into BDAT chunks; "" when it is not a sequence of whole chunks.
struct Chunks {
  std::vector<std::string> data;
  bool last = false;
};
Chunks parseChunks(std::string_view wire) {
  Chunks c;
  while (!wire.empty() && !c.last) {
    size_t eol = wire.find("\r\n");
    if (wire.substr(0, 5) != "BDAT " || eol == std::string_view::npos) return Chunks{};
    std::string line(wire.substr(5, eol - 5));
    size_t n = std::stoul(line);
    c.last = line.find(" LAST") != std::string::npos;
    wire.remove_prefix(eol + 2);
    if (wire.size() < n) return Chunks{};
    c.data.emplace_back(wire.substr(0, n));
    wire.remove_prefix(n);
  }
  if (!wire.empty()) return Chunks{};
  return c;
}

TEST(SmtpClientBdat, LargeMessageGoesInBoundedChunksWithTheSameBytes) {
  SmtpClient::Options o = Harness::opts();
  o.max_output = 64 * 1024;
  Harness h(o);
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  const uint64_t kSize = 3ull * 1024 * 1024;
  GeneratedSource src(kSize);
  h.c.start(job(env, src), h.now);
  std::string wire;
  while (h.c.wantsToWrite()) {
    auto out = h.c.output();
    ASSERT_LE(out.size(), o.max_output);
    size_t n = std::min<size_t>(out.size(), 5000);
    wire.append(out.data(), n);
    h.c.consumed(n, h.now);
  }
  std::string envelope = "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\n";
  ASSERT_EQ(wire.substr(0, envelope.size()), envelope);
  Chunks c = parseChunks(std::string_view(wire).substr(envelope.size()));
  ASSERT_TRUE(c.last);
  ASSERT_GT(c.data.size(), 10u);
  GeneratedSource again(kSize);
  SmtpBodyEncoder enc(false);
  std::string expected, all;
  for (;;) {
    auto piece = again.next(100000);
    ASSERT_TRUE(piece.ok());
    if (piece->empty()) break;
    enc.feed(*piece, expected);
  }
  enc.finish(expected);
  for (const auto& d : c.data) all += d;
  EXPECT_EQ(all, expected);
  std::string replies = "250 Ok\r\n250 Ok\r\n";
  for (size_t i = 0; i + 1 < c.data.size(); ++i) replies += "250 2.0.0 chunk\r\n";
  h.server(replies);
  EXPECT_FALSE(h.c.takeResult());
  h.server("250 2.0.0 queued\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r->rcpts[0].reply, "250 2.0.0 queued");
}

TEST(SmtpClientBdat, RefusedChunkStopsFurtherChunks) {
  SmtpClient::Options o = Harness::opts();
  o.max_output = 4096;
  Harness h(o);
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  GeneratedSource src(200000);
  h.c.start(job(env, src), h.now);
  auto first = h.c.output();  // the envelope and the first chunks, not the whole message
  std::string sent(first);
  h.c.consumed(first.size(), h.now);
  size_t chunks = 0;
  for (size_t p = sent.find("BDAT "); p != std::string::npos; p = sent.find("BDAT ", p + 1)) {
    ++chunks;
  }
  ASSERT_GE(chunks, 1u);
  ASSERT_EQ(sent.find(" LAST\r\n"), std::string::npos);
  h.server("250 Ok\r\n250 Ok\r\n452 4.3.1 out of storage\r\n");
  EXPECT_EQ(h.take(), "");  // no chunk after a refused one, though most of the message is left
  for (size_t i = 1; i < chunks; ++i) h.server("452 4.3.1 out of storage\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_EQ(r->rcpts[0].reply, "452 4.3.1 out of storage");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
}

TEST(SmtpClientBdat, RefusedRecipientsStopALongMessage) {
  SmtpClient::Options o = Harness::opts();
  o.max_output = 4096;
  Harness h(o);
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  GeneratedSource src(200000);
  h.c.start(job(env, src), h.now);
  auto first = h.c.output();
  std::string sent(first);
  h.c.consumed(first.size(), h.now);
  size_t chunks = 0;
  for (size_t p = sent.find("BDAT "); p != std::string::npos; p = sent.find("BDAT ", p + 1)) {
    ++chunks;
  }
  h.server("250 Ok\r\n550 5.1.1 no such user\r\n");
  EXPECT_EQ(h.take(), "");  // nobody to send the rest to
  for (size_t i = 0; i < chunks; ++i) h.server("554 5.5.1 Error: no valid recipients\r\n");
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Failed);
  EXPECT_EQ(r->rcpts[0].reply, "550 5.1.1 no such user");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
}

TEST(SmtpClientBdat, LossAfterTheLastChunkIsPossibleDuplicate) {
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  auto o = h.c.output();
  h.c.consumed(o.size() - 1, h.now);  // the last byte of the chunk has not left
  h.c.onInput("250 Ok\r\n250 Ok\r\n", h.now);
  auto d = h.c.deadline();
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, h.now + SmtpTimeouts{}.block);  // still sending
  h.c.consumed(1, h.now);
  d = h.c.deadline();
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, h.now + SmtpTimeouts{}.final_dot);
  h.c.onEof(h.now);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->possible_duplicate);
  EXPECT_EQ(r->rcpts[0].outcome, Outcome::Deferred);
  EXPECT_NE(r->rcpts[0].reply.find("may be sent more than once"), std::string::npos);
}

TEST(SmtpClientBdat, LossBeforeTheLastChunkLeftIsNoDuplicate) {
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  auto o = h.c.output();
  h.c.consumed(o.size() - 1, h.now);
  h.c.onEof(h.now);
  auto r = h.c.takeResult();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->possible_duplicate);
}

TEST(SmtpClientBdat, ReplyBeforeTheChunkLeftEndsSession) {
  Harness h;
  h.greet(kEhloChunking);
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  auto o = h.c.output();
  h.c.consumed(o.size() - 2, h.now);
  h.c.onInput("250 Ok\r\n250 Ok\r\n250 Ok\r\n", h.now);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Failed);
}

TEST(SmtpClientBdat, NotWithoutPipelining) {
  Harness h;
  h.greet("250-far.example\r\n250 CHUNKING\r\n");
  auto env = makeEnv({"bob@b.example"});
  StringSource src("m\r\n");
  h.c.start(job(env, src), h.now);
  EXPECT_EQ(h.take(), "MAIL FROM:<alice@a.example>\r\n");
  h.server("250 Ok\r\n");
  EXPECT_EQ(h.take(), "RCPT TO:<bob@b.example>\r\n");
  h.server("250 Ok\r\n");
  EXPECT_EQ(h.take(), "DATA\r\n");
}

TEST(SmtpClientOverlap, BdatTransactionsStreamWithoutARoundTripEach) {
  Harness h(overlapOpts());
  h.greet(kEhloChunking);
  auto env1 = makeEnv({"bob@b.example"});
  auto env2 = makeEnv({"carol@b.example"});
  auto env3 = makeEnv({"dave@b.example"});
  StringSource src1("one\r\n"), src2("two\r\n"), src3("three\r\n");
  h.c.start(job(env1, src1), h.now);
  EXPECT_EQ(h.take(),
            "MAIL FROM:<alice@a.example>\r\nRCPT TO:<bob@b.example>\r\nBDAT 5 LAST\r\none\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
  h.c.start(job(env2, src2), h.now);
  EXPECT_EQ(h.take(),
            "RSET\r\nMAIL FROM:<alice@a.example>\r\nRCPT TO:<carol@b.example>\r\n"
            "BDAT 5 LAST\r\ntwo\r\n");
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
  // One reply group answers both; a third follows without waiting for it.
  h.c.start(job(env3, src3), h.now);
  EXPECT_EQ(h.take(),
            "RSET\r\nMAIL FROM:<alice@a.example>\r\nRCPT TO:<dave@b.example>\r\n"
            "BDAT 7 LAST\r\nthree\r\n");
  h.server(
      "250 Ok\r\n250 Ok\r\n250 2.0.0 queued one\r\n250 Ok\r\n250 Ok\r\n550 5.1.1 no\r\n"
      "554 5.5.1 no valid recipients\r\n");
  auto r1 = h.c.takeResult();
  auto r2 = h.c.takeResult();
  ASSERT_TRUE(r1 && r2);
  EXPECT_EQ(r1->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(r1->rcpts[0].reply, "250 2.0.0 queued one");
  EXPECT_EQ(r2->rcpts[0].outcome, Outcome::Failed);
  EXPECT_EQ(r2->rcpts[0].reply, "550 5.1.1 no");
  EXPECT_FALSE(h.c.takeResult());
  h.server("250 Ok\r\n250 Ok\r\n250 Ok\r\n250 2.0.0 queued three\r\n");
  auto r3 = h.c.takeResult();
  ASSERT_TRUE(r3);
  EXPECT_EQ(r3->rcpts[0].outcome, Outcome::Delivered);
  EXPECT_EQ(h.c.state(), SmtpClient::State::Ready);
}

// --- reply helpers

TEST(SmtpReply, EnhancedStatusTrustedOnlyWhenClassMatches) {
  EXPECT_EQ(enhancedStatus(550, "5.1.1 no"), "5.1.1");
  EXPECT_EQ(enhancedStatus(550, "4.1.1 no"), "");
  EXPECT_EQ(enhancedStatus(250, "2.0.0"), "2.0.0");
  EXPECT_EQ(enhancedStatus(550, "5.1 no"), "");
  EXPECT_EQ(enhancedStatus(550, "5.1.1234 no"), "");
  EXPECT_EQ(dsnStatus("550 4.1.1 mismatch", "x"), "5.0.0");
  EXPECT_EQ(dsnStatus("451 4.3.0 later", "x"), "4.3.0");
  EXPECT_EQ(dsnStatus("lost connection", "4.4.2"), "4.4.2");
  EXPECT_EQ(replyCode("452 full"), 452);
  EXPECT_EQ(replyCode("45 x"), 0);
  EXPECT_FALSE(parseReplyLine("2500 x"));
  EXPECT_FALSE(parseReplyLine("150 x"));
  EXPECT_TRUE(parseReplyLine("250"));
  EXPECT_EQ(xtextDecode(xtextEncode("a+b=c d\x01")), "a+b=c d\x01");
}

}  // namespace
}  // namespace dynmx::tunneld
