// recipient_check_test.cpp: the recipient lists at RCPT, through MessageSession as the libmilter
// glue calls it: an unlisted recipient of a listed client is refused with Postfix's 550 5.1.1
// "User unknown", a listed one (or one of a client without a list, or of no client) goes on, and
// an unreadable list tempfails (451 4.3.0) instead of refusing anybody. Verification: the answer
// dynmx-tunneld gives (here a stand-in on a Unix socket) maps to 250, 550 5.1.1 or verify_default
// (accept, or 450 4.1.1), also when the daemon is slow, absent or refuses.
#include "milter/recipient_check.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <thread>
#include <tuple>

#include "milter/session.hpp"
#include "shared/config.hpp"
#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::milter {
namespace {

class RecipientCheckTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(spool_.prepare().ok()); }

  std::shared_ptr<const Snapshot> snapshot(const std::string& alpha_extra,
                                           const std::string& sections = "") {
    std::string text = "[spool]\ndir = \"" + tmp_.path() + "/spool\"\n" + sections;
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

// A stand-in for dynmx-tunneld's admin socket: answers each connection with `reply` (or, when
// empty, reads and never answers), and keeps the requests it saw.
class FakeTunneld {
 public:
  FakeTunneld(std::string path, std::string reply) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
    thread_ = std::thread([this, reply] {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      char buf[512];
      ssize_t n = ::read(c, buf, sizeof buf);
      if (n > 0) request_.assign(buf, static_cast<size_t>(n));
      if (!reply.empty()) (void)!::write(c, reply.data(), reply.size());
      char wait;
      (void)!::read(c, &wait, 1);  // until the client closes
      ::close(c);
    });
  }
  ~FakeTunneld() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    ::unlink(path_.c_str());
  }
  const std::string& request() const { return request_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::thread thread_;
  std::string request_;
};

class VerifyAtRcptTest : public RecipientCheckTest {
 protected:
  std::shared_ptr<const Snapshot> verifying(const std::string& dflt) {
    return snapshot("verify_recipients = true\nverify_default = \"" + dflt +
                    "\"\nverify_timeout = \"1s\"\n");
  }
  RcptOutcome ask(const std::string& dflt, const std::string& answer, std::string* request) {
    auto snap = verifying(dflt);
    FakeTunneld fake(snap->config.tunneld.control_socket, answer);
    RcptOutcome out = rcpt(snap, "<Carol@alpha.example>");
    if (request) *request = fake.request();
    return out;
  }
  std::shared_ptr<const Snapshot> snapshot(const std::string& alpha_extra) {
    return RecipientCheckTest::snapshot(
        alpha_extra, "[tunneld]\ncontrol_socket = \"" + tmp_.path() + "/ctl.sock\"\n");
  }
};

TEST_F(VerifyAtRcptTest, TheAnswerOfTheClientsMtaDecides) {
  std::string request;
  RcptOutcome valid = ask("tempfail", "OK\nvalid probe 250 2.1.5 ok\n.\n", &request);
  EXPECT_EQ(request, "verify alpha Carol@alpha.example\n");
  EXPECT_EQ(valid.verdict, Verdict::Continue);
  RcptOutcome invalid = ask(
      "accept", "OK\ninvalid cache 550 5.1.1 <carol@alpha.example>... User unknown\n.\n", nullptr);
  EXPECT_EQ(invalid.verdict, Verdict::Reject);
  EXPECT_EQ(invalid.reply.code, "550");
  EXPECT_EQ(invalid.reply.xcode, "5.1.1");
  EXPECT_EQ(invalid.reply.text,
            "<Carol@alpha.example>: Recipient address rejected: undeliverable address: 550 5.1.1 "
            "<carol@alpha.example>... User unknown");
}

TEST_F(VerifyAtRcptTest, NoAnswerMeansTheDefault) {
  const std::string not_connected = "OK\nunknown none client alpha is not connected\n.\n";
  EXPECT_EQ(ask("accept", not_connected, nullptr).verdict, Verdict::Continue);
  RcptOutcome t = ask("tempfail", not_connected, nullptr);
  EXPECT_EQ(t.verdict, Verdict::Tempfail);
  EXPECT_EQ(t.reply.code, "450");
  EXPECT_EQ(t.reply.xcode, "4.1.1");
  EXPECT_EQ(t.reply.text,
            "<Carol@alpha.example>: Recipient address rejected: unverified address: client alpha "
            "is not connected");
  // A daemon that never answers: unknown after verify_timeout.
  RcptOutcome slow = ask("tempfail", "", nullptr);
  EXPECT_EQ(slow.verdict, Verdict::Tempfail);
  EXPECT_NE(slow.reply.text.find("unverified address: no answer from dynmx-tunneld in 1000 ms"),
            std::string::npos)
      << slow.reply.text;
  // No daemon at all.
  RcptOutcome none = rcpt(verifying("tempfail"), "<carol@alpha.example>");
  EXPECT_EQ(none.verdict, Verdict::Tempfail);
  EXPECT_NE(none.reply.text.find("connect " + tmp_.path() + "/ctl.sock"), std::string::npos)
      << none.reply.text;
  // A refusal from the daemon is no answer either.
  EXPECT_EQ(ask("accept", "ERR not permitted: verify\n.\n", nullptr).verdict, Verdict::Continue);
}

TEST(MilterReplyText, DoublesPercentAndReplacesWhatLibmilterCannotCarry) {
  EXPECT_EQ(milterReplyText("<a%b@x>: User unknown"), "<a%%b@x>: User unknown");
  EXPECT_EQ(milterReplyText("a\r\nb\x80"), "a??b?");
  EXPECT_EQ(milterReplyText(std::string(2000, 'x')).size(), 900u);
}

}  // namespace
}  // namespace dynmx::milter
