// socketmap_test.cpp: the socketmap protocol from tables: every address form sendmail and Postfix
// send, host names, unknown maps, and every kind of malformed or over-long request.
#include "tunneld/relay/socketmap.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace dynmx::relay {
namespace {

using S = SocketmapStatus;

// Leased: 192.0.2.7, 2001:db8::1 and (through the mapped form) nothing else.
std::optional<bool> table(const InetAddr& a) {
  return a == *InetAddr::parse("192.0.2.7") || a == *InetAddr::parse("2001:db8::1");
}

struct AnswerCase {
  const char* payload;
  S status;
  const char* text;
};

TEST(SocketmapAnswer, AnswersEveryAddressFormAndError) {
  const std::vector<AnswerCase> cases = {
      {"relay 192.0.2.7", S::Ok, "OK"},
      {"relay 192.0.2.8", S::NotFound, ""},
      // sendmail: tagged, uncompressed, lowercased by the map (and the tag in any case).
      {"relay ipv6:2001:db8:0:0:0:0:0:1", S::Ok, "OK"},
      {"relay IPv6:2001:db8:0:0:0:0:0:1", S::Ok, "OK"},
      {"relay ipv6:2001:db8:0:0:0:0:0:2", S::NotFound, ""},
      // Postfix: compressed.
      {"relay 2001:db8::1", S::Ok, "OK"},
      {"relay 2001:DB8::1", S::Ok, "OK"},
      {"relay 2001:db8::2", S::NotFound, ""},
      // An IPv4-mapped IPv6 address is the IPv4 host.
      {"relay ::ffff:192.0.2.7", S::Ok, "OK"},
      {"relay ipv6:0:0:0:0:0:ffff:c000:207", S::Ok, "OK"},
      {"relay [192.0.2.7]", S::Ok, "OK"},
      // Postfix asks for the host name first: not an address, never leased.
      {"relay mail.example.org", S::NotFound, ""},
      {"relay unknown", S::NotFound, ""},
      {"relay 192.0.2.7.example.org", S::NotFound, ""},
      {"relay 192.0.2.7 ", S::NotFound, ""},
      {"relay  192.0.2.7", S::NotFound, ""},
      {"relay 2001:db8::1%lo", S::NotFound, ""},
      {"relay 192.0.2.007", S::NotFound, ""},
      // Errors.
      {"relay ", S::Perm, "empty key"},
      {"relay", S::Perm, "malformed request"},
      {"", S::Perm, "malformed request"},
      {" 192.0.2.7", S::Perm, "malformed request"},
      {"access 192.0.2.7", S::Perm, "unknown map"},
      {"RELAY 192.0.2.7", S::Perm, "unknown map"},
      {"dynmx_relay 192.0.2.7", S::Perm, "unknown map"},
  };
  for (const AnswerCase& c : cases) {
    SocketmapAnswer a = answerRequest(c.payload, table);
    EXPECT_EQ(a.status, c.status) << c.payload;
    EXPECT_EQ(a.text, c.text) << c.payload;
  }
}

TEST(SocketmapAnswer, TableNotLoadedIsTempNeverOk) {
  auto unknown = [](const InetAddr&) -> std::optional<bool> { return std::nullopt; };
  SocketmapAnswer a = answerRequest("relay 192.0.2.7", unknown);
  EXPECT_EQ(a.status, S::Temp);
  // A host name needs no table.
  EXPECT_EQ(answerRequest("relay mail.example.org", unknown).status, S::NotFound);
}

// relayclient: dynmx-milter's question, answered with the client holding the lease.
TEST(SocketmapAnswer, RelayClientMapNamesTheLeaseHolder) {
  auto holder = [](const InetAddr& a) -> std::optional<std::string> {
    if (a == *InetAddr::parse("192.0.2.7")) return std::string("office");
    return std::string();
  };
  const std::vector<AnswerCase> cases = {
      {"relayclient 192.0.2.7", S::Ok, "office"},
      {"relayclient ipv6:0:0:0:0:0:ffff:c000:207", S::Ok, "office"},
      {"relayclient 192.0.2.8", S::NotFound, ""},
      {"relayclient mail.example.org", S::NotFound, ""},
      {"relayclient ", S::Perm, "empty key"},
      // The MTA's map still answers OK alone.
      {"relay 192.0.2.7", S::Ok, "OK"},
      {"relay 192.0.2.8", S::NotFound, ""},
      {"relayclients 192.0.2.7", S::Perm, "unknown map"},
  };
  for (const AnswerCase& c : cases) {
    SocketmapAnswer a = answerLeaseRequest(c.payload, holder);
    EXPECT_EQ(a.status, c.status) << c.payload;
    EXPECT_EQ(a.text, c.text) << c.payload;
  }
  auto unknown = [](const InetAddr&) -> std::optional<std::string> { return std::nullopt; };
  EXPECT_EQ(answerLeaseRequest("relayclient 192.0.2.7", unknown).status, S::Temp);
  // The relay-only entry point does not answer the milter's map.
  EXPECT_EQ(answerRequest("relayclient 192.0.2.7", table).status, S::Perm);
}

TEST(SocketmapAnswer, FormatsNetstrings) {
  EXPECT_EQ(formatAnswer({S::Ok, "OK"}), "5:OK OK,");
  EXPECT_EQ(formatAnswer({S::NotFound, ""}), "9:NOTFOUND ,");
  EXPECT_EQ(formatAnswer({S::Temp, "lease table not loaded"}), "27:TEMP lease table not loaded,");
  EXPECT_EQ(formatAnswer({S::Perm, "bad request"}), "16:PERM bad request,");
}

std::vector<std::string> readAll(SocketmapReader& r, SocketmapReader::State* last) {
  std::vector<std::string> out;
  std::string p;
  SocketmapReader::State st;
  while ((st = r.next(p)) == SocketmapReader::State::Request) out.push_back(p);
  *last = st;
  return out;
}

TEST(SocketmapReader, ReadsRequestsInAnySlicing) {
  const std::string stream = "15:relay 192.0.2.7,17:relay 2001:db8::1,0:,";
  for (size_t step = 1; step <= stream.size(); ++step) {
    SocketmapReader r;
    std::vector<std::string> got;
    SocketmapReader::State last = SocketmapReader::State::NeedMore;
    for (size_t i = 0; i < stream.size(); i += step) {
      r.feed(std::string_view(stream).substr(i, step));
      for (std::string& p : readAll(r, &last)) got.push_back(p);
      ASSERT_EQ(last, SocketmapReader::State::NeedMore) << "step " << step;
    }
    EXPECT_EQ(got, (std::vector<std::string>{"relay 192.0.2.7", "relay 2001:db8::1", ""}))
        << "step " << step;
  }
}

TEST(SocketmapReader, MalformedOrOverlongRequestsFailForGood) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"x:relay a,", "malformed netstring length"},
      {":relay a,", "malformed netstring length"},
      {"-1:a,", "malformed netstring length"},
      {" 5:relay,", "malformed netstring length"},
      {"05:relay,", "netstring length with a leading zero"},
      {"5:relay;", "netstring not terminated by ','"},
      {"3:relay,", "netstring not terminated by ','"},
      {"513:", "request longer than 512 bytes"},
      // The length alone gives it away: no need to wait for the bytes.
      {"99999999999999999999", "request longer than 512 bytes"},
      {"1000", "request longer than 512 bytes"},
  };
  for (const auto& [in, why] : cases) {
    SocketmapReader r;
    r.feed(in);
    SocketmapReader::State last;
    std::vector<std::string> got = readAll(r, &last);
    EXPECT_TRUE(got.empty()) << in;
    EXPECT_EQ(last, SocketmapReader::State::Error) << in;
    EXPECT_EQ(r.error(), why) << in;
    // Final: nothing more is read, even a good request.
    r.feed("15:relay 192.0.2.7,");
    std::string p;
    EXPECT_EQ(r.next(p), SocketmapReader::State::Error) << in;
  }
}

TEST(SocketmapReader, LongestAllowedRequestPasses) {
  std::string key(kMaxRequest - 6, 'a');
  std::string payload = "relay " + key;
  SocketmapReader r;
  r.feed(std::to_string(payload.size()) + ":" + payload + ",");
  std::string p;
  ASSERT_EQ(r.next(p), SocketmapReader::State::Request);
  EXPECT_EQ(p, payload);
  EXPECT_EQ(answerRequest(p, table).status, S::NotFound);
}

TEST(SocketmapReader, RequestAfterAnErrorIsNotRead) {
  SocketmapReader r;
  r.feed("15:relay 192.0.2.7,x15:relay 192.0.2.7,");
  std::string p;
  EXPECT_EQ(r.next(p), SocketmapReader::State::Request);
  EXPECT_EQ(r.next(p), SocketmapReader::State::Error);
  EXPECT_EQ(r.next(p), SocketmapReader::State::Error);
}

}  // namespace
}  // namespace dynmx::relay
