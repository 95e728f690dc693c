// peer_line_reader_test.cpp: the first line of an SMTP session's stdout, from a table of streams,
// each fed whole and in every split into two slices and byte by byte: a dynmx-peer line is taken
// off (and never reaches the SMTP engine); a greeting, an overlong line or a look-alike goes to the
// engine whole; nothing is held back once it is clear that no peer line is coming.
#include "tunneld/ssh/peer_line_reader.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

using namespace dynmx::tunneld;

namespace {

struct Split {
  std::string engine;
  std::optional<PeerLine> line;
};

Split run(const std::vector<std::string>& slices, bool eof) {
  PeerLineReader r;
  Split s;
  for (auto& b : slices) s.engine += r.feed(b);
  if (eof) s.engine += r.finish();
  s.line = r.line();
  return s;
}

const std::string kGreeting = "220 client.example ESMTP\r\n250 ok\r\n";
const std::string kPeer = "dynmx-peer 198.51.100.1 40000 203.0.113.7 22\n";

}  // namespace

TEST(PeerLineReader, TableInEverySlicing) {
  struct Case {
    std::string stream;
    PeerLine::Kind kind;
    std::string engine;
  } cases[] = {
      {kPeer + kGreeting, PeerLine::Kind::Peer, kGreeting},
      {"dynmx-peer 198.51.100.1 40000 203.0.113.7 22\r\n" + kGreeting, PeerLine::Kind::Peer,
       kGreeting},
      {kGreeting, PeerLine::Kind::NotPeerLine, kGreeting},
      {"dynmx-peer nonsense\n" + kGreeting, PeerLine::Kind::Malformed, kGreeting},
      // Whatever starts with "dynmx-peer" is taken for a (malformed) peer line: never a reply.
      {"dynmx-peerX 1 2 3 4\n" + kGreeting, PeerLine::Kind::Malformed, kGreeting},
      {"dynmx-peer " + std::string(kMaxPeerLine, '1') + "\n" + kGreeting, PeerLine::Kind::Malformed,
       "dynmx-peer " + std::string(kMaxPeerLine, '1') + "\n" + kGreeting},
      {"d\n" + kGreeting, PeerLine::Kind::NotPeerLine, "d\n" + kGreeting},
  };
  for (auto& c : cases) {
    auto check = [&](const std::vector<std::string>& slices, const std::string& how) {
      Split s = run(slices, false);
      ASSERT_TRUE(s.line.has_value()) << how << ": " << c.stream;
      EXPECT_EQ(s.line->kind, c.kind) << how << ": " << c.stream;
      EXPECT_EQ(s.engine, c.engine) << how << ": " << c.stream;
    };
    check({c.stream}, "whole");
    for (size_t i = 1; i < c.stream.size(); ++i)
      check({c.stream.substr(0, i), c.stream.substr(i)}, "split at " + std::to_string(i));
    std::vector<std::string> bytes;
    for (char ch : c.stream) bytes.emplace_back(1, ch);
    check(bytes, "byte by byte");
  }
}

TEST(PeerLineReader, PeerLineCarriesWhatTheClientSaw) {
  Split s = run({kPeer}, false);
  ASSERT_TRUE(s.line && s.line->kind == PeerLine::Kind::Peer);
  EXPECT_EQ(s.line->conn.client_addr.str(), "198.51.100.1");
  EXPECT_EQ(s.line->conn.server_addr.str(), "203.0.113.7");
  EXPECT_EQ(s.engine, "");
}

TEST(PeerLineReader, GreetingIsNotHeldBackByItsFirstByte) {
  PeerLineReader r;
  EXPECT_EQ(r.feed("2"), "2");  // cannot start "dynmx-peer": the engine's at once
  EXPECT_TRUE(r.decided());
  EXPECT_EQ(r.feed("20 x\r\n"), "20 x\r\n");
}

TEST(PeerLineReader, EndBeforeALineEndHandsBackWhatWasHeld) {
  Split s = run({"dynmx-pe"}, true);
  ASSERT_TRUE(s.line.has_value());
  EXPECT_EQ(s.line->kind, PeerLine::Kind::NotPeerLine);
  EXPECT_EQ(s.engine, "dynmx-pe");
  PeerLineReader r;
  EXPECT_EQ(r.feed("dynmx-peer 198.51.100.1"), "");
  EXPECT_FALSE(r.decided());
  EXPECT_EQ(r.finish(), "dynmx-peer 198.51.100.1");
}
