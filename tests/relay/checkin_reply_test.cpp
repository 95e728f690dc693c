// checkin_reply_test.cpp: the check-in on the admin socket (relay/checkin.hpp): the daemon's
// reply built from a LeaseTable grant or refusal, and dynmx-checkin's line and exit code for
// every reply, for a daemon that cannot be reached, and for replies it does not understand.
#include <cerrno>
#include <gtest/gtest.h>

#include "shared/sysexits.hpp"
#include "tunneld/relay/checkin.hpp"

using namespace dynmx;
using namespace dynmx::tunneld;

namespace {

InetAddr addr(const char* s) {
  return *InetAddr::parse(s);
}

LeaseRules rules() {
  LeaseRules r;
  r.lease_lifetime = std::chrono::seconds(1200);
  r.clients["home"] = LeaseRules::Client{true, {}};
  r.clients["office"] = LeaseRules::Client{false, {}};
  r.clients["branch"] = LeaseRules::Client{true, {*InetNetwork::parse("198.51.100.0/24")}};
  return r;
}

constexpr int64_t kNow = 1795000000;  // 2026-11-18T11:06:40Z

}  // namespace

TEST(CheckinReply, FromTheLeaseTable) {
  struct Case {
    const char* client;
    const char* address;
    bool ok;
    const char* text;  // the body line, or the error
  } cases[] = {
      {"home", "203.0.113.7", true,
       "lease client=home addr=203.0.113.7 source=checkin expires=2026-11-18T11:26:40Z"},
      {"nobody", "203.0.113.7", false,
       "refused unknown-client: no client of that name is configured"},
      {"office", "203.0.113.7", false, "refused relay-off: relay is off for this client"},
      {"branch", "203.0.113.7", false, "refused outside-networks: address outside relay_networks"},
  };
  for (const auto& c : cases) {
    LeaseTable t(rules());
    ControlReply r = checkinReply(t.checkIn(c.client, addr(c.address), kNow));
    EXPECT_EQ(r.ok, c.ok) << c.client;
    EXPECT_EQ(c.ok ? (r.lines.empty() ? "" : r.lines[0]) : r.error, c.text) << c.client;
  }
  LeaseTable t(rules());
  t.revoke(addr("203.0.113.7"), kNow);
  ControlReply held = checkinReply(t.checkIn("home", addr("203.0.113.7"), kNow + 1));
  EXPECT_FALSE(held.ok);
  EXPECT_TRUE(held.error.starts_with("refused held-down: ")) << held.error;
}

TEST(CheckinReply, KindNamesRoundTrip) {
  for (RefusalKind k : {RefusalKind::UnknownClient, RefusalKind::RelayOff,
                        RefusalKind::OutsideNetworks, RefusalKind::HeldDown, RefusalKind::NotThisMx,
                        RefusalKind::NoConfirmation, RefusalKind::BadAddress})
    EXPECT_EQ(refusalKindFromName(refusalKindName(k)), k) << refusalKindName(k);
  EXPECT_FALSE(refusalKindFromName("refused").has_value());
}

TEST(CheckinReply, OutcomeTable) {
  auto ok = [](std::vector<std::string> lines) {
    ControlReply r;
    r.lines = std::move(lines);
    return Result<ControlReply>(r);
  };
  auto err = [](std::string e) {
    ControlReply r;
    r.ok = false;
    r.error = std::move(e);
    return Result<ControlReply>(r);
  };
  const std::string who = "dynmx-checkin: client home from 203.0.113.7: ";
  struct Case {
    Result<ControlReply> reply;
    int code;
    std::string message;
  } cases[] = {
      {ok({"lease client=home addr=203.0.113.7 source=checkin expires=2026-11-18T11:26:40Z"}),
       kExitOk, who + "relay lease until 2026-11-18T11:26:40Z"},
      {err("refused unknown-client: no client of that name is configured"), kExitNoUser,
       who + "refused (unknown-client: no client of that name is configured)"},
      {err("refused relay-off: relay is off for this client"), kExitNoPerm,
       who + "refused (relay-off: relay is off for this client)"},
      {err("refused held-down: held down"), kExitNoPerm, who + "refused (held-down: held down)"},
      {err("not permitted: checkin is for the check-in account"), kExitNoPerm,
       who + "dynmx-tunneld says not permitted: checkin is for the check-in account (is this "
             "account relay.checkin_user?)"},
      {Result<ControlReply>(Error{ECONNREFUSED, "connect to /run/x.sock: Connection refused"}),
       kExitTempFail,
       who + "dynmx-tunneld cannot be reached (connect to /run/x.sock: Connection refused); try "
             "again later"},
      {Result<ControlReply>(Error{ENOENT, "connect to /run/x.sock: No such file or directory"}),
       kExitTempFail,
       who + "dynmx-tunneld cannot be reached (connect to /run/x.sock: No such file or directory); "
             "try again later"},
      {Result<ControlReply>(Error{EACCES, "connect to /run/x.sock: Permission denied"}),
       kExitNoPerm,
       who + "connect to /run/x.sock: Permission denied (tunneld.control_mode and control_group "
             "must let this account in)"},
      // What it does not understand is never a lease.
      {ok({}), kExitTempFail, who + "unexpected reply from dynmx-tunneld on /run/x.sock"},
      {ok({"status fine"}), kExitTempFail,
       who + "unexpected reply from dynmx-tunneld on /run/x.sock"},
      {err("refused sideways: ?"), kExitTempFail, who + "dynmx-tunneld: refused sideways: ?"},
      {err("unknown command \"checkin\""), kExitTempFail,
       who + "dynmx-tunneld: unknown command \"checkin\""},
  };
  for (const auto& c : cases) {
    CheckinOutcome o = checkinOutcome("home", addr("203.0.113.7"), "/run/x.sock", c.reply);
    EXPECT_EQ(o.exit_code, c.code) << c.message;
    EXPECT_EQ(o.message, c.message);
  }
}
