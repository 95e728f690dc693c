// control_protocol_test.cpp: the admin socket's protocol, without a socket: request lines parsed
// from a table (what is accepted, what is refused, the length limit) and replies that survive
// their framing (dot lines, empty lines, embedded newlines, errors).
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "tunneld/control/control.hpp"

using namespace dynmx::tunneld;

TEST(ControlRequest, ParserTable) {
  struct Case {
    const char* line;
    bool ok;
    ControlRequest::Command cmd;
    const char* arg;
  } cases[] = {
      {"status", true, ControlRequest::Command::Status, ""},
      {"status\r\n", true, ControlRequest::Command::Status, ""},
      {"  queue  ", true, ControlRequest::Command::Queue, ""},
      {"flush", true, ControlRequest::Command::Flush, ""},
      {"flush alpha", true, ControlRequest::Command::Flush, "alpha"},
      {"hold 0123456789abcdef", true, ControlRequest::Command::Hold, "0123456789abcdef"},
      {"release X1", true, ControlRequest::Command::Release, "X1"},
      {"reload", true, ControlRequest::Command::Reload, ""},
      {"leases", true, ControlRequest::Command::Leases, ""},
      {"revoke 203.0.113.7", true, ControlRequest::Command::Revoke, "203.0.113.7"},
      {"revoke 2001:DB8:0::1", true, ControlRequest::Command::Revoke, "2001:db8::1"},
      {"leases now", false, {}, ""},
      {"revoke", false, {}, ""},
      {"revoke home", false, {}, ""},
      {"revoke 203.0.113.7/32", false, {}, ""},
      {"revoke 203.0.113.7 198.51.100.1", false, {}, ""},
      // sendmail's form of an IPv6 address (as its logs show it) is taken too.
      {"revoke ipv6:2001:db8:0:0:0:0:0:1", true, ControlRequest::Command::Revoke, "2001:db8::1"},
      {"", false, {}, ""},
      {"status now", false, {}, ""},
      {"metrics", true, ControlRequest::Command::Metrics, ""},
      {"metrics alpha", false, {}, ""},
      {"hold", false, {}, ""},
      {"hold a b", false, {}, ""},
      {"flush a b", false, {}, ""},
      {"STATUS", false, {}, ""},
      {"shutdown", false, {}, ""},
      {"hold a\x01", false, {}, ""},
      {"status fields", true, ControlRequest::Command::Status, "fields"},
      {"status fields now", false, {}, ""},
      {"status FIELDS", false, {}, ""},
  };
  for (auto& c : cases) {
    auto r = parseControlRequest(c.line);
    EXPECT_EQ(r.ok(), c.ok) << c.line;
    if (r.ok() && c.ok) {
      EXPECT_EQ(r->command, c.cmd) << c.line;
      EXPECT_EQ(r->arg, c.arg) << c.line;
    }
  }
  EXPECT_FALSE(parseControlRequest(std::string(kMaxRequest + 1, 'a')).ok());
}

// checkin CLIENT ADDRESS: dynmx-checkin's request; the address is an address (inet_pton only).
TEST(ControlRequest, CheckinTable) {
  struct Case {
    const char* line;
    const char* client;   // nullptr: refused
    const char* address;  // canonical
  } cases[] = {
      {"checkin home 203.0.113.7", "home", "203.0.113.7"},
      {"checkin home 203.0.113.7\r\n", "home", "203.0.113.7"},
      {"checkin home 2001:DB8::7", "home", "2001:db8::7"},
      {"checkin home ::ffff:203.0.113.7", "home", "203.0.113.7"},
      {"checkin home", nullptr, nullptr},
      {"checkin", nullptr, nullptr},
      {"checkin home 203.0.113.7 extra", nullptr, nullptr},
      {"checkin home host.example.net", nullptr, nullptr},
      {"checkin home 203.0.113.7:25", nullptr, nullptr},
      {"checkin home 203.0.113.0/24", nullptr, nullptr},
      {"checkin home fe80::1%eth0", nullptr, nullptr},
      {"CHECKIN home 203.0.113.7", nullptr, nullptr},
  };
  for (auto& c : cases) {
    auto r = parseControlRequest(c.line);
    ASSERT_EQ(r.ok(), c.client != nullptr) << c.line;
    if (!c.client) continue;
    EXPECT_EQ(r->command, ControlRequest::Command::Checkin) << c.line;
    EXPECT_EQ(r->arg, c.client) << c.line;
    EXPECT_EQ(r->address.str(), c.address) << c.line;
  }
  auto bad = parseControlRequest("checkin home nonsense");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message, "checkin: expected an IPv4 or IPv6 address, got \"nonsense\"");
}

// delete and bounce: a queue id, or ALL and one client's name (never ALL alone: every message of
// every client is not one request away).
TEST(ControlRequest, DeleteAndBounceTable) {
  using C = ControlRequest::Command;
  struct Case {
    const char* line;
    bool ok;
    C cmd;
    const char* arg;
    const char* client;
  } cases[] = {
      {"delete 0197a3c5e4f20001", true, C::Delete, "0197a3c5e4f20001", ""},
      {"bounce 0197a3c5e4f20001\r\n", true, C::Bounce, "0197a3c5e4f20001", ""},
      {"delete ALL home", true, C::Delete, "ALL", "home"},
      {"bounce  ALL\thome ", true, C::Bounce, "ALL", "home"},
      {"delete", false, {}, "", ""},
      {"bounce", false, {}, "", ""},
      {"delete ALL", false, {}, "", ""},
      {"bounce ALL", false, {}, "", ""},
      {"delete all home", false, {}, "", ""},
      {"delete 0197a3c5e4f20001 home", false, {}, "", ""},
      {"delete ALL home office", false, {}, "", ""},
      {"DELETE 0197a3c5e4f20001", false, {}, "", ""},
      {"bounce a\x7f", false, {}, "", ""},
      {"hostkey home", true, C::Hostkey, "home", ""},
      {"hostkey", false, {}, "", ""},
      {"hostkey home office", false, {}, "", ""},
  };
  for (auto& c : cases) {
    auto r = parseControlRequest(c.line);
    ASSERT_EQ(r.ok(), c.ok) << c.line << (r.ok() ? "" : ": " + r.error().message);
    if (!c.ok) continue;
    EXPECT_EQ(r->command, c.cmd) << c.line;
    EXPECT_EQ(r->arg, c.arg) << c.line;
    EXPECT_EQ(r->client, c.client) << c.line;
  }
  EXPECT_EQ(parseControlRequest("delete ALL").error().message,
            "delete ALL: expected a client name (ALL means every message of one client)");
  EXPECT_EQ(parseControlRequest("bounce").error().message,
            "bounce: expected a queue id, or ALL and a client name");
  EXPECT_EQ(parseControlRequest("status now").error().message,
            "status: expected no argument or \"fields\", got \"now\"");
}

// `status fields` records: values with spaces, '%', control bytes and nothing at all survive.
TEST(ControlStatus, RecordsRoundTrip) {
  std::vector<StatusRecord> recs = {
      {"daemon", {{"state", "running"}, {"clients", "2"}, {"version", "0.9.0"}}},
      {"client",
       {{"name", "alpha"},
        {"address", "mx.alpha.test[192.0.2.7]:22"},
        {"last_error", "connect to 192.0.2.7:22: 100% gone\tfor\r\nnow"},
        {"kex", ""}}},
      {"notifications", {}},
  };
  for (auto& r : recs) {
    auto text = formatStatusRecord(r);
    EXPECT_EQ(text.find_first_of("\t\r\n"), std::string::npos) << text;
    auto back = parseStatusRecord(text);
    ASSERT_TRUE(back.ok()) << text << ": " << back.error().message;
    EXPECT_EQ(*back, r) << text;
  }
  EXPECT_EQ(formatStatusRecord(recs[1]),
            "client name=alpha address=mx.alpha.test[192.0.2.7]:22 "
            "last_error=connect%20to%20192.0.2.7:22:%20100%25%20gone%09for%0D%0Anow kex=");
  ASSERT_NE(recs[1].get("address"), nullptr);
  EXPECT_EQ(*recs[1].get("address"), "mx.alpha.test[192.0.2.7]:22");
  EXPECT_EQ(recs[1].get("nothing"), nullptr);
}

TEST(ControlStatus, ParserRefusesWhatIsNotARecord) {
  for (const char* bad : {"", " client", "client  name=a", "client name", "client =a",
                          "client na-me=a", "client name=a%2", "client name=a%zz", "cli-ent name=a",
                          "client name=a\x01", "client name=a "}) {
    EXPECT_FALSE(parseStatusRecord(bad).ok()) << bad;
  }
}

TEST(ControlReply, FramingRoundTrips) {
  ControlReply r;
  r.lines = {"client a: connected", ".hidden", "", ".", "x\ny"};
  auto text = formatControlReply(r);
  auto back = parseControlReply(text);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->ok);
  EXPECT_EQ(back->lines,
            (std::vector<std::string>{"client a: connected", ".hidden", "", ".", "x", "y"}));
  ControlReply e;
  e.ok = false;
  e.error = "no client named z";
  auto eb = parseControlReply(formatControlReply(e));
  ASSERT_TRUE(eb.ok());
  EXPECT_FALSE(eb->ok);
  EXPECT_EQ(eb->error, "no client named z");
  EXPECT_FALSE(parseControlReply("OK\nline\n").ok());
  EXPECT_FALSE(parseControlReply("HELLO\n.\n").ok());
}

TEST(ControlLeases, LinesRoundTrip) {
  std::vector<LeaseLine> lines = {
      {false, "203.0.113.7", "home", "tunnel", 1790000000, 1790000120},
      {false, "2001:db8::1", "office", "checkin", 1790000000, 1790001200},
      {true, "198.51.100.9", "", "", 0, 1790003600},
  };
  for (auto& l : lines) {
    auto text = formatLeaseLine(l);
    auto back = parseLeaseLine(text);
    ASSERT_TRUE(back.ok()) << text << ": " << back.error().message;
    EXPECT_EQ(*back, l) << text;
  }
  EXPECT_EQ(formatLeaseLine(lines[0]), "203.0.113.7 home tunnel 1790000000 1790000120");
  EXPECT_EQ(formatLeaseLine(lines[2]), "hold 198.51.100.9 1790003600");
}

TEST(ControlLeases, ParserRefusesWhatIsNotALeaseLine) {
  for (const char* bad :
       {"", "203.0.113.7 home tunnel 1790000000", "home 203.0.113.7 tunnel 1 2",
        "203.0.113.7 home tunnel x 2", "203.0.113.7 home tunnel 1 -2",
        "203.0.113.7  home tunnel 1 2", "hold 203.0.113.7", "hold home 5",
        "203.0.113.7 home tunnel 1 2 3", "203.0.113.7 home tunnel 1 99999999999999999999"}) {
    EXPECT_FALSE(parseLeaseLine(bad).ok()) << bad;
  }
}

TEST(ControlQueue, LinesRoundTrip) {
  std::vector<QueueLine> lines = {
      {"0197a3c5e4f20001",
       "deferred",
       "home",
       "alice@example.org",
       {"bob@home.test"},
       1432,
       1790000000,
       2},
      {"0197a3c5e4f20002",
       "active",
       "<bounce>",
       "",
       {"a@x.test", "b \"q\"@y.test"},
       7,
       1790000001,
       0},
      {"0197a3c5e4f20003", "hold", "office", "x@y", {}, 0, 1, 0},
  };
  for (auto& l : lines) {
    auto text = formatQueueLine(l);
    auto back = parseQueueLine(text);
    ASSERT_TRUE(back.ok()) << text << ": " << back.error().message;
    EXPECT_EQ(*back, l) << text;
  }
  EXPECT_EQ(formatQueueLine(lines[0]),
            "0197a3c5e4f20001 deferred client=home size=1432 arrival=1790000000 "
            "from=<alice@example.org> to=<bob@home.test> attempts=2");
}

TEST(ControlQueue, ParserRefusesWhatIsNotAQueueLine) {
  for (const char* bad : {"", "id", "id active", "id active client=a size=1 arrival=2",
                          "id active client=a size=x arrival=2 from=<> to=",
                          "id active client= size=1 arrival=2 from=<> to=",
                          "id active client=a size=1 arrival=-2 from=<> to=",
                          "id active client=a size=1 arrival=2 from=<> to=x",
                          "id active client=a size=1 arrival=2 from=<> to=<x",
                          "id active client=a size=1 arrival=2 from=<> to=<x> attempts=z",
                          "id active client=a size=1 arrival=2 from=<x to=<y>"}) {
    EXPECT_FALSE(parseQueueLine(bad).ok()) << bad;
  }
}
