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
      {"", false, {}, ""},
      {"status now", false, {}, ""},
      {"hold", false, {}, ""},
      {"hold a b", false, {}, ""},
      {"flush a b", false, {}, ""},
      {"STATUS", false, {}, ""},
      {"shutdown", false, {}, ""},
      {"hold a\x01", false, {}, ""},
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
