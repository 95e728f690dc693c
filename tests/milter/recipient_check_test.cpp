// recipient_check_test.cpp: the recipient lists at RCPT, through MessageSession as the libmilter
// glue calls it: an unlisted recipient of a listed client is refused with Postfix's 550 5.1.1
// "User unknown", a listed one (or one of a client without a list, or of no client) goes on, and
// an unreadable list tempfails (451 4.3.0) instead of refusing anybody.
#include "milter/recipient_check.hpp"

#include <gtest/gtest.h>
#include <memory>
#include <string>

#include "milter/session.hpp"
#include "shared/config.hpp"
#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::milter {
namespace {

class RecipientCheckTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(spool_.prepare().ok()); }

  std::shared_ptr<const Snapshot> snapshot(const std::string& alpha_extra) {
    std::string text = "[spool]\ndir = \"" + tmp_.path() + "/spool\"\n";
    for (auto [name, dom, extra] : {std::tuple{"alpha", "alpha.example", alpha_extra},
                                    std::tuple{"beta", "beta.example", std::string()}}) {
      text += std::string("[[client]]\nname = \"") + name +
              "\"\nhost = \"127.0.0.1\"\nhost_key = "
              "\"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\ndomains = [\"" +
              dom + "\"]\n" + extra;
    }
    LoadResult r = parseConfig(text, tmp_.path() + "/dynmx.toml", ConfigRole::Milter);
    EXPECT_TRUE(r.config.has_value()) << (r.errors.empty() ? "" : r.errors[0].str());
    return std::make_shared<const Snapshot>(std::move(*r.config));
  }

  RcptOutcome rcpt(const std::shared_ptr<const Snapshot>& snap, const std::string& to) {
    MessageSession s(spool_, snap, Peer{"192.0.2.1", "mx.test"}, 1000);
    s.setQueueId("QTEST");
    s.mailFrom("<s@x.example>", {});
    return s.rcpt(to, {});
  }

  test::TempDir tmp_{"dynmx-rcptcheck"};
  Spool spool_{tmp_.path() + "/spool"};
};

TEST_F(RecipientCheckTest, UnlistedRecipientIsRefusedWithPostfixWording) {
  auto snap = snapshot("recipients = [\"bob@alpha.example\"]\n");
  RcptOutcome out = rcpt(snap, "<NoSuchUser@Alpha.Example>");
  EXPECT_EQ(out.verdict, Verdict::Reject);
  EXPECT_EQ(out.reply.code, "550");
  EXPECT_EQ(out.reply.xcode, "5.1.1");
  EXPECT_EQ(out.reply.text, "<NoSuchUser@Alpha.Example>: Recipient address rejected: User unknown");
  EXPECT_EQ(rcpt(snap, "<bob@alpha.example>").verdict, Verdict::Continue);
  EXPECT_EQ(rcpt(snap, "<BOB+news@ALPHA.example>").verdict, Verdict::Continue);
  EXPECT_EQ(rcpt(snap, "<anyone@beta.example>").verdict, Verdict::Continue) << "beta: no list";
  EXPECT_EQ(rcpt(snap, "<anyone@elsewhere.example>").verdict, Verdict::Continue)
      << "not a client's: the MTA's business";
}

TEST_F(RecipientCheckTest, NoListAcceptsEveryAddressAsBefore) {
  auto snap = snapshot("");
  EXPECT_EQ(rcpt(snap, "<nosuchuser@alpha.example>").verdict, Verdict::Continue);
}

TEST_F(RecipientCheckTest, FileEntriesCountAndAChangedFileIsReadAtTheNextRcpt) {
  std::string file = tmp_.path() + "/alpha.recipients";
  test::writeFile(file, "# alpha's users\ncarol@alpha.example\n");
  auto snap = snapshot("recipients = [\"bob@alpha.example\"]\nrecipient_file = \"" + file + "\"\n");
  EXPECT_EQ(rcpt(snap, "<bob@alpha.example>").verdict, Verdict::Continue);
  EXPECT_EQ(rcpt(snap, "<carol@alpha.example>").verdict, Verdict::Continue);
  EXPECT_EQ(rcpt(snap, "<dave@alpha.example>").verdict, Verdict::Reject);
  test::writeFile(file + ".new", "carol@alpha.example\ndave@alpha.example\n");
  ASSERT_EQ(::rename((file + ".new").c_str(), file.c_str()), 0);
  EXPECT_EQ(rcpt(snap, "<dave@alpha.example>").verdict, Verdict::Continue)
      << "the same snapshot sees the new file";
}

TEST_F(RecipientCheckTest, UnreadableListTempfailsInsteadOfRefusing) {
  std::string file = tmp_.path() + "/alpha.recipients";
  test::writeFile(file, "carol@alpha.example\n");
  auto snap = snapshot("recipient_file = \"" + file + "\"\n");  // checked at load: it exists
  ASSERT_EQ(::unlink(file.c_str()), 0);                         // gone before the first RCPT
  RcptOutcome out = rcpt(snap, "<carol@alpha.example>");
  EXPECT_EQ(out.verdict, Verdict::Tempfail);
  EXPECT_EQ(out.reply.code, "451");
  EXPECT_EQ(out.reply.xcode, "4.3.0");
  EXPECT_EQ(out.reply.text, "<carol@alpha.example>: Temporary lookup failure");
}

TEST(MilterReplyText, DoublesPercentAndReplacesWhatLibmilterCannotCarry) {
  EXPECT_EQ(milterReplyText("<a%b@x>: User unknown"), "<a%%b@x>: User unknown");
  EXPECT_EQ(milterReplyText("a\r\nb\x80"), "a??b?");
  EXPECT_EQ(milterReplyText(std::string(2000, 'x')).size(), 900u);
}

}  // namespace
}  // namespace dynmx::milter
