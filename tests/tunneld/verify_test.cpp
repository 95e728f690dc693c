// verify_test.cpp: recipient verification's pure parts: the probe dialogue from scripted far
// ends (what is sent, what each reply means, that nothing but MAIL FROM:<>/RCPT/RSET is ever
// sent), the classification of RCPT replies, the verify answer line, and the cache: expiry,
// unknown never cached, and its file surviving a restart and refusing a damaged copy.
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "shared/verify_reply.hpp"
#include "tests/harness/harness.hpp"
#include "tunneld/control/access.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/verify/probe_engine.hpp"
#include "tunneld/verify/verify_cache.hpp"

namespace dynmx::tunneld {
namespace {

using namespace std::chrono_literals;

// Runs the engine against a scripted far end: each step feeds one reply text and returns what
// the engine sent in answer.
class Script {
 public:
  Script() : e_("mx.example", 30s, t0_) {}
  std::string feed(const std::string& bytes) {
    e_.onInput(bytes, t0_);
    std::string out(e_.output());
    e_.consumed(out.size());
    return out;
  }
  ProbeEngine& engine() { return e_; }
  SteadyClock::time_point t0_{};

 private:
  ProbeEngine e_;
};

TEST(ProbeEngine, AsksMailRcptRsetAndNothingElse) {
  Script s;
  EXPECT_EQ(s.feed("dynmx-peer 192.0.2.1 4000 192.0.2.2 22\r\n"), "") << "not a reply: skipped";
  EXPECT_EQ(s.feed("220 client.example ESMTP\r\n"), "EHLO mx.example\r\n");
  EXPECT_EQ(s.feed("250-client.example\r\n250 PIPELINING\r\n"), "");
  ASSERT_TRUE(s.engine().ready());
  s.engine().start("bob@client.example", s.t0_);
  std::string mail(s.engine().output());
  s.engine().consumed(mail.size());
  EXPECT_EQ(mail, "MAIL FROM:<>\r\n");
  EXPECT_EQ(s.feed("250 2.1.0 <>... Sender ok\r\n"), "RCPT TO:<bob@client.example>\r\n");
  EXPECT_EQ(s.feed("250 2.1.5 <bob@client.example>... Recipient ok\r\n"), "RSET\r\n");
  auto r = s.engine().takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, VerifyStatus::Valid);
  EXPECT_EQ(r->reply, "250 2.1.5 <bob@client.example>... Recipient ok");
  EXPECT_EQ(s.feed("250 2.0.0 Reset state\r\n"), "");
  EXPECT_TRUE(s.engine().ready());
  s.engine().quit(s.t0_);
  EXPECT_EQ(std::string(s.engine().output()), "QUIT\r\n");
}

TEST(ProbeEngine, EachRcptReplyMeansWhatPostfixMakesOfIt) {
  struct Case {
    const char* mail_reply;
    const char* rcpt_reply;  // nullptr: no RCPT is sent
    VerifyStatus status;
  };
  const Case cases[] = {
      {"250 ok\r\n", "250 ok\r\n", VerifyStatus::Valid},
      {"250 ok\r\n", "251 2.1.5 forwarded\r\n", VerifyStatus::Valid},
      {"250 ok\r\n", "550 5.1.1 <x>... User unknown\r\n", VerifyStatus::Invalid},
      {"250 ok\r\n", "551 5.1.6 moved\r\n", VerifyStatus::Invalid},
      {"250 ok\r\n", "553 5.1.3 bad address\r\n", VerifyStatus::Invalid},
      {"250 ok\r\n", "554 5.1.2 no such domain\r\n", VerifyStatus::Invalid},
      {"250 ok\r\n", "554 5.7.1 relaying denied\r\n", VerifyStatus::Unknown},
      {"250 ok\r\n", "450 4.2.0 mailbox busy\r\n", VerifyStatus::Unknown},
      {"250 ok\r\n", "451 4.3.0 try later\r\n", VerifyStatus::Unknown},
      {"451 4.3.0 not now\r\n", nullptr, VerifyStatus::Unknown},
      {"553 5.1.8 null sender refused\r\n", nullptr, VerifyStatus::Unknown},
  };
  for (const Case& c : cases) {
    Script s;
    s.feed("220 hi\r\n");
    s.feed("250 hi\r\n");
    s.engine().start("x@client.example", s.t0_);
    s.engine().consumed(s.engine().output().size());
    std::string sent = s.feed(c.mail_reply);
    if (c.rcpt_reply) {
      EXPECT_EQ(sent, "RCPT TO:<x@client.example>\r\n") << c.mail_reply;
      sent = s.feed(c.rcpt_reply);
    }
    EXPECT_EQ(sent, "RSET\r\n") << c.mail_reply;
    auto r = s.engine().takeResult();
    ASSERT_TRUE(r) << c.mail_reply;
    EXPECT_EQ(r->status, c.status) << (c.rcpt_reply ? c.rcpt_reply : c.mail_reply);
  }
}

TEST(ProbeEngine, HeloWhenEhloIsRefusedAndFailuresEndTheSession) {
  Script s;
  EXPECT_EQ(s.feed("220 old\r\n"), "EHLO mx.example\r\n");
  EXPECT_EQ(s.feed("502 no EHLO\r\n"), "HELO mx.example\r\n");
  EXPECT_EQ(s.feed("250 hello\r\n"), "");
  EXPECT_TRUE(s.engine().ready());

  Script refused;
  refused.feed("554 go away\r\n");
  EXPECT_EQ(refused.engine().state(), ProbeEngine::State::Failed);
  EXPECT_NE(refused.engine().failure().find("greeting refused: 554 go away"), std::string::npos);

  // A session lost mid-probe hands the probe out as unknown, naming why.
  Script lost;
  lost.feed("220 hi\r\n");
  lost.feed("250 hi\r\n");
  lost.engine().start("x@client.example", lost.t0_);
  lost.engine().onEof(lost.t0_);
  auto r = lost.engine().takeResult();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, VerifyStatus::Unknown);
  EXPECT_EQ(r->reply, "the far end closed the session");

  // A reply that is late: timed out, unknown.
  Script slow;
  slow.feed("220 hi\r\n");
  slow.feed("250 hi\r\n");
  slow.engine().start("x@client.example", slow.t0_);
  ASSERT_TRUE(slow.engine().deadline());
  slow.engine().onTimeout(*slow.engine().deadline());
  EXPECT_EQ(slow.engine().takeResult()->reply, "timed out waiting for a reply");
}

TEST(ProbeEngine, AnAddressThatCannotBeSentIsNotProbed) {
  for (const char* bad : {"a b@x", "a>@x", "a\r\nDATA@x", ""}) {
    Script s;
    s.feed("220 hi\r\n");
    s.feed("250 hi\r\n");
    s.engine().start(bad, s.t0_);
    EXPECT_EQ(std::string(s.engine().output()), "") << bad;
    auto r = s.engine().takeResult();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, VerifyStatus::Unknown);
  }
}

TEST(VerifyLine, FormatsAndParsesBack) {
  VerifyAnswer a{VerifyStatus::Invalid, "probe", "550 5.1.1 <x@y>... User unknown"};
  EXPECT_EQ(formatVerifyLine(a), "invalid probe 550 5.1.1 <x@y>... User unknown");
  auto back = parseVerifyLine(formatVerifyLine(a));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, a);
  auto empty = parseVerifyLine("unknown none ");
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->reply, "");
  for (const char* bad :
       {"", "valid", "valid cache", "maybe cache x", "valid later x", "valid cache \x01"}) {
    EXPECT_FALSE(parseVerifyLine(bad)) << bad;
  }
}

TEST(VerifyCache, KeepsAnswersUntilTheyExpireAndNeverUnknown) {
  VerifyCache c;
  c.put({"home", "Bob@Client.Example", VerifyStatus::Valid, 1000, "250 ok"});
  c.put({"home", "nobody@client.example", VerifyStatus::Invalid, 200, "550 no"});
  c.put({"home", "later@client.example", VerifyStatus::Unknown, 5000, "451 later"});
  EXPECT_EQ(c.size(), 2u);
  ASSERT_TRUE(c.find("home", "bob@client.example", 999));
  EXPECT_FALSE(c.find("home", "bob@client.example", 1000)) << "expired at its time";
  EXPECT_FALSE(c.find("other", "bob@client.example", 10)) << "per client";
  EXPECT_EQ(c.find("home", "NOBODY@client.example", 100)->status, VerifyStatus::Invalid);
  EXPECT_EQ(c.expire(500), 1u);
  EXPECT_EQ(c.size(), 1u);
}

TEST(VerifyCache, TheFileSurvivesARestartAndADamagedOneIsSetAside) {
  test::TempDir tmp("dynmx-verify-cache");
  std::string path = tmp / "verify.cache";
  VerifyCache c;
  c.put({"home", "bob@client.example", VerifyStatus::Valid, 1000, "250 2.1.5 ok"});
  c.put({"home", "nobody@client.example", VerifyStatus::Invalid, 200, "550 5.1.1 no"});
  VerifyCacheStore store(path);
  ASSERT_TRUE(store.save(c).ok());
  auto loaded = store.load(100);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->entries(), c.entries());
  auto later = store.load(500);
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->size(), 1u) << "expired entries are not read back";

  std::string text = test::readFile(path);
  text[text.find("bob")] = 'B';  // one byte changed: the CRC no longer matches
  test::writeFile(path, text, 0600);
  auto damaged = store.load(100);
  ASSERT_TRUE(damaged.ok());
  EXPECT_EQ(damaged->size(), 0u);
  EXPECT_EQ(test::listDir(tmp.path()), std::vector<std::string>{"verify.cache.bad-100"});
  auto missing = store.load(100);
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->size(), 0u);
}

TEST(VerifyCacheFile, RefusesTornAndMalformedFiles) {
  std::vector<VerifyEntry> e = {{"home", "bob@x.example", VerifyStatus::Valid, 10, "250 ok"}};
  std::string good = formatVerifyCacheFile(e);
  ASSERT_TRUE(parseVerifyCacheFile(good));
  EXPECT_FALSE(parseVerifyCacheFile(good.substr(0, good.size() - 1)));
  EXPECT_FALSE(parseVerifyCacheFile(good.substr(0, good.find("end"))));
  EXPECT_FALSE(parseVerifyCacheFile(""));
  EXPECT_FALSE(parseVerifyCacheFile("dynmx-verify 2\nend 0 00000000\n"));
}

// "verify CLIENT RECIPIENT" on the admin socket: two words; a question, but not for control_group
// (its answers tell which addresses exist): the class of root and the daemon's user.
TEST(ControlRequest, VerifyTable) {
  auto r = parseControlRequest("verify home Bob+x@Client.Example\r\n");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->command, ControlRequest::Command::Verify);
  EXPECT_EQ(r->arg, "home");
  EXPECT_EQ(r->rcpt, "Bob+x@Client.Example");
  EXPECT_EQ(commandClass(r->command), CommandClass::ChangesState);
  EXPECT_STREQ(commandName(r->command), "verify");
  for (const char* bad : {"verify", "verify home", "verify home a@b c", "verify home a\x01b"})
    EXPECT_FALSE(parseControlRequest(bad)) << bad;
}

}  // namespace
}  // namespace dynmx::tunneld
