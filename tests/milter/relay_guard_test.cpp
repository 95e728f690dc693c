// relay_guard_test.cpp: the relay_senders policy from tables (which senders a client's leased
// address may relay for, which {rcpt_mailer} values mean local delivery), and the socketmap reply
// parser dynmx-milter reads dynmx-relaymap's answers with. The whole path through a real sendmail
// and dynmx-relaymap is tests/relay/relay_senders_test.cpp.
#include "milter/relay_guard.hpp"

#include <gtest/gtest.h>

#include "shared/socketmap_client.hpp"

namespace dynmx::milter {
namespace {

TEST(RelaySenders, OwnDomainsListedAddressesAndDomainsOnly) {
  std::vector<ClientConfig> clients(2);
  clients[0].name = "home";
  clients[0].domains = {"home.example", ".lan.home.example"};
  clients[0].relay_senders = std::vector<std::string>{"boss@partner.example", "@corp.example"};
  clients[1].name = "other";
  clients[1].domains = {"other.example"};
  Router router(clients);
  struct Case {
    const char* sender;
    bool allowed;
  } cases[] = {
      {"alice@home.example", true},
      {"Alice@HOME.example", true},
      {"pc@x.lan.home.example", true},
      {"boss@partner.example", true},
      {"BOSS@partner.example", true},
      {"other@partner.example", false},
      {"anyone@corp.example", true},
      {"anyone@sub.corp.example", false},
      {"bob@other.example", false},
      {"spammer@evil.example", false},
      {"", true},  // the null sender (a DSN)
      {"nodomain", false},
  };
  for (const Case& c : cases)
    EXPECT_EQ(relaySenderAllowed(clients[0], router, 0, c.sender), c.allowed) << c.sender;
  // relay_senders = true: the client's domains only.
  clients[0].relay_senders = std::vector<std::string>{};
  EXPECT_TRUE(relaySenderAllowed(clients[0], router, 0, "alice@home.example"));
  EXPECT_FALSE(relaySenderAllowed(clients[0], router, 0, "boss@partner.example"));
}

TEST(RelaySenders, LocalMailers) {
  for (const char* m :
       {"local", "LOCAL", "prog", "*file*", "*include*", "virtual", "discard", "error"})
    EXPECT_TRUE(localMailer(m)) << m;
  for (const char* m : {"", "esmtp", "smtp", "relay", "loc", "locals"})
    EXPECT_FALSE(localMailer(m)) << m;
}

TEST(SocketmapReply, ParsesAnswersAndRefusesTheRest) {
  auto ok = parseSocketmapReply("9:OK office,");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok->status, "OK");
  EXPECT_EQ(ok->value, "office");
  auto nf = parseSocketmapReply("9:NOTFOUND ,");
  ASSERT_TRUE(nf.ok());
  EXPECT_EQ(nf->status, "NOTFOUND");
  EXPECT_EQ(nf->value, "");
  auto temp = parseSocketmapReply("27:TEMP lease table not loaded,");
  ASSERT_TRUE(temp.ok());
  EXPECT_EQ(temp->status, "TEMP");
  for (const char* bad :
       {"", "9:OK office", "10:OK office,", "x:OK,", "5:MAYBE,", ":,", "9:OK office,,"})
    EXPECT_FALSE(parseSocketmapReply(bad).ok()) << bad;
}

}  // namespace
}  // namespace dynmx::milter
