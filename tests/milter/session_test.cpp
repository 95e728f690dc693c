// session_test.cpp: MessageSession, the milter's logic without libmilter.
//
// Parsers are checked from tables. The failure paths that no real part can produce on demand (a
// commit that fails after another client's commit succeeded, a disk that fills in the middle of
// the body) use a FsOps that fails one chosen call; everything else is the real spool on disk.
#include "milter/session.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "shared/config.hpp"
#include "shared/spool.hpp"
#include "tests/harness/fake_fs.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::milter {
namespace {

// ---------------------------------------------------------------------------------------------
// Parsers.

TEST(MailParams, ParsesTheKeywordsTheSpoolKeeps) {
  struct Case {
    std::vector<std::string_view> args;
    std::optional<uint64_t> size;
    std::string body, ret, envid;
    bool smtputf8;
  };
  const std::vector<Case> cases = {
      {{}, std::nullopt, "", "", "", false},
      {{"SIZE=1234"}, 1234, "", "", "", false},
      {{"size=77", "body=8bitmime"}, 77, "8BITMIME", "", "", false},
      {{"SIZE=12x"}, std::nullopt, "", "", "", false},
      {{"SIZE="}, std::nullopt, "", "", "", false},
      {{"RET=hdrs", "ENVID=QQ+2Bx"}, std::nullopt, "", "HDRS", "QQ+2Bx", false},
      {{"SMTPUTF8"}, std::nullopt, "", "", "", true},
      {{"AUTH=<>", "BODY=7BIT"}, std::nullopt, "7BIT", "", "", false},
      {{"SIZEX=5"}, std::nullopt, "", "", "", false},
  };
  for (const Case& c : cases) {
    MailParams p = parseMailParams(c.args);
    EXPECT_EQ(p.size, c.size);
    EXPECT_EQ(p.body, c.body);
    EXPECT_EQ(p.ret, c.ret);
    EXPECT_EQ(p.envid, c.envid);
    EXPECT_EQ(p.smtputf8, c.smtputf8);
  }
}

TEST(RcptParams, ParsesNotifyAndOrcpt) {
  RcptParams p = parseRcptParams({"notify=success,delay", "ORCPT=rfc822;A@B"});
  EXPECT_EQ(p.notify, "SUCCESS,DELAY");
  EXPECT_EQ(p.orcpt, "rfc822;A@B");
  RcptParams none = parseRcptParams({});
  EXPECT_EQ(none.notify, "");
  EXPECT_EQ(none.orcpt, "");
}

// ---------------------------------------------------------------------------------------------
// Sessions against a spool on disk.

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spool_ = std::make_unique<Spool>(dir_, fs_);
    ASSERT_TRUE(spool_->prepare().ok());
    snap_ = makeSnapshot("tempfail", "50M");
  }
  std::shared_ptr<const Snapshot> makeSnapshot(const std::string& on_error,
                                               const std::string& max) {
    std::string text = "[spool]\ndir = \"" + dir_ + "\"\nmax_message_size = \"" + max +
                       "\"\n[milter]\non_error = \"" + on_error + "\"\n";
    for (auto [name, dom] : {std::pair{"alpha", "alpha.example"}, {"beta", "beta.example"}}) {
      text += std::string("[[client]]\nname = \"") + name +
              "\"\nhost = \"127.0.0.1\"\nhost_key = "
              "\"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\ndomains = [\"" +
              dom + "\"]\n";
    }
    LoadResult r = parseConfig(text, dir_ + "/test.toml", ConfigRole::Milter);
    EXPECT_TRUE(r.config.has_value()) << (r.errors.empty() ? "" : r.errors[0].str());
    return std::make_shared<const Snapshot>(std::move(*r.config));
  }

  std::unique_ptr<MessageSession> twoClientMessage() {
    auto s = std::make_unique<MessageSession>(*spool_, snap_, Peer{"192.0.2.1", "mx.test"}, 1000);
    s->setQueueId("QTEST");
    s->mailFrom("<s@x.example>", {});
    EXPECT_EQ(s->rcpt("<a@alpha.example>", {}).verdict, Verdict::Continue);
    EXPECT_EQ(s->rcpt("<b@beta.example>", {}).verdict, Verdict::Continue);
    EXPECT_EQ(s->rcpt("<c@other.example>", {}).verdict, Verdict::Continue);
    s->header("Subject", "x", false);
    s->endOfHeaders();
    s->body("body\r\n");
    return s;
  }

  size_t files(QueueState st) { return spool_->list(st).size(); }

  test::FakeFs fs_;  // fails one chosen call (see the tests)
  test::TempDir tmp_{"dynmx-session"};
  std::string dir_ = tmp_.path();
  std::unique_ptr<Spool> spool_;
  std::shared_ptr<const Snapshot> snap_;
};

TEST_F(SessionTest, CommitsEveryClientThenNamesTheRecipientsToDelete) {
  auto s = twoClientMessage();
  EomOutcome out = s->endOfMessage();
  EXPECT_EQ(out.verdict, Verdict::Continue);
  EXPECT_EQ(out.delrcpt, (std::vector<std::string>{"<a@alpha.example>", "<b@beta.example>"}));
  EXPECT_EQ(files(QueueState::Incoming), 2u);
  EXPECT_EQ(files(QueueState::Tmp), 0u);
}

TEST_F(SessionTest, SecondCommitFailingWithdrawsTheFirstAndTempfails) {
  // Each commit renames once: the first succeeds, the second fails.
  fs_.failNth(test::FakeFs::Op::Rename, 1);
  auto s = twoClientMessage();
  EomOutcome out = s->endOfMessage();
  EXPECT_EQ(out.verdict, Verdict::Tempfail);
  EXPECT_EQ(out.reply.code, "451");
  EXPECT_EQ(out.reply.xcode, "4.3.0");
  EXPECT_TRUE(out.delrcpt.empty()) << "nothing may be deleted without a committed copy";
  EXPECT_EQ(files(QueueState::Incoming), 0u) << "the committed copy is withdrawn (no duplicate)";
  EXPECT_EQ(files(QueueState::Tmp), 0u);
}

TEST_F(SessionTest, SecondCommitFailingWithOnErrorAcceptDeletesOnlyTheCommitted) {
  snap_ = makeSnapshot("accept", "50M");
  fs_.failNth(test::FakeFs::Op::Rename, 1);
  auto s = twoClientMessage();
  EomOutcome out = s->endOfMessage();
  EXPECT_EQ(out.verdict, Verdict::Continue);
  ASSERT_EQ(out.delrcpt.size(), 1u);
  EXPECT_EQ(files(QueueState::Incoming), 1u);
  std::string id = spool_->list(QueueState::Incoming).front();
  auto m = spool_->load(QueueState::Incoming, id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(out.delrcpt[0], "<" + m->env.rcpts[0].address + ">");
}

TEST_F(SessionTest, DiskFullInTheBodyTempfailsAndRemovesEverything) {
  fs_.failWritesAfter(0);  // the first write that reaches the disk fails
  auto s = twoClientMessage();
  s->body(std::string(200000, 'x'));  // forces buffered data out to the disk
  EXPECT_EQ(files(QueueState::Tmp), 0u) << "temporary files removed as soon as writing fails";
  EomOutcome out = s->endOfMessage();
  EXPECT_EQ(out.verdict, Verdict::Tempfail);
  EXPECT_TRUE(out.delrcpt.empty());
  EXPECT_EQ(files(QueueState::Incoming), 0u);
}

TEST_F(SessionTest, NoClientRecipientMeansNoFile) {
  MessageSession s(*spool_, snap_, Peer{}, 1000);
  s.mailFrom("<s@x.example>", {});
  s.rcpt("<c@other.example>", {});
  EXPECT_FALSE(s.capturing());
  s.header("Subject", "x", false);
  s.body("b\r\n");
  EomOutcome out = s.endOfMessage();
  EXPECT_EQ(out.verdict, Verdict::Continue);
  EXPECT_TRUE(out.delrcpt.empty());
  EXPECT_EQ(files(QueueState::Tmp) + files(QueueState::Incoming), 0u);
}

TEST_F(SessionTest, LocalSubmissionWithoutSizeIsNeverRejectedAtRcpt) {
  snap_ = makeSnapshot("tempfail", "10");
  MessageSession s(*spool_, snap_, Peer{}, 1000);  // no client address: non_smtpd
  s.mailFrom("<s@x.example>", {});
  EXPECT_EQ(s.rcpt("<a@alpha.example>", {}).verdict, Verdict::Continue);
  s.body(std::string(100, 'x'));
  EomOutcome out = s.endOfMessage();
  EXPECT_EQ(out.verdict, Verdict::Reject);
  EXPECT_EQ(out.reply.code, "552");
  EXPECT_EQ(out.reply.xcode, "5.3.4");
}

TEST_F(SessionTest, LocalOriginIsRecorded) {
  MessageSession s(*spool_, snap_, Peer{}, 1000);
  s.mailFrom("<>", {});
  s.rcpt("<a@alpha.example>", {});
  s.body("x\r\n");
  EXPECT_EQ(s.endOfMessage().verdict, Verdict::Discard);
  auto m = spool_->load(QueueState::Incoming, spool_->list(QueueState::Incoming).front());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->env.origin, "local");
  EXPECT_EQ(m->env.sender, "");
  EXPECT_EQ(m->env.arrival, 1000);
}

TEST_F(SessionTest, HeaderValueWithLeadingSpaceIsWrittenAsGiven) {
  MessageSession s(*spool_, snap_, Peer{"192.0.2.1", "mx.test"}, 1000);
  s.mailFrom("<s@x.example>", {});
  s.rcpt("<a@alpha.example>", {});
  s.header("Subject", "  two spaces\n\tand a fold", true);
  s.header("X-Bare", "\r\nodd", true);
  s.body("x");
  EXPECT_EQ(s.endOfMessage().verdict, Verdict::Discard);
  auto m = spool_->load(QueueState::Incoming, spool_->list(QueueState::Incoming).front());
  ASSERT_TRUE(m.ok());
  auto r = spool_->openContent(*m);
  ASSERT_TRUE(r.ok());
  std::string content;
  for (;;) {
    auto c = r->next();
    ASSERT_TRUE(c.ok());
    if (c->empty()) break;
    content.append(c->data(), c->size());
  }
  size_t start = content.find("Subject:");
  ASSERT_NE(start, std::string::npos);
  EXPECT_EQ(content.substr(start),
            "Subject:  two spaces\r\n\tand a fold\r\nX-Bare:\r\nodd\r\n\r\nx\r\n");
}

}  // namespace
}  // namespace dynmx::milter
