// peer_check_test.cpp: the dynmx-peer line, SSH_CONNECTION, and the tunnel and check-in
// decisions, from tables of input and the one answer each must give.
#include "tunneld/relay/peer_check.hpp"

#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace dynmx::tunneld {
namespace {

InetAddr addr(const char* text) {
  return *InetAddr::parse(text);
}

TEST(ParsePeerLine, ReadsWhatSshdPutsInSshConnection) {
  struct Case {
    const char* line;
    const char* mx;  // client_addr: this MX as the client saw it
    uint16_t mx_port;
    const char* client;
    uint16_t client_port;
  } cases[] = {
      {"dynmx-peer 192.0.2.25 51234 203.0.113.7 22", "192.0.2.25", 51234, "203.0.113.7", 22},
      {"dynmx-peer 192.0.2.25 51234 203.0.113.7 22\n", "192.0.2.25", 51234, "203.0.113.7", 22},
      {"dynmx-peer 192.0.2.25 51234 203.0.113.7 22\r\n", "192.0.2.25", 51234, "203.0.113.7", 22},
      {"dynmx-peer 2001:db8::25 1 2001:db8::7 65535", "2001:db8::25", 1, "2001:db8::7", 65535},
      {"dynmx-peer ::ffff:192.0.2.25 40000 ::ffff:10.0.0.2 2222", "192.0.2.25", 40000, "10.0.0.2",
       2222},
      {"dynmx-peer 127.0.0.1 40000 127.0.0.2 22", "127.0.0.1", 40000, "127.0.0.2", 22},
  };
  for (const auto& c : cases) {
    PeerLine p = parsePeerLine(c.line);
    ASSERT_EQ(p.kind, PeerLine::Kind::Peer) << c.line;
    EXPECT_EQ(p.conn.client_addr, addr(c.mx)) << c.line;
    EXPECT_EQ(p.conn.client_port, c.mx_port) << c.line;
    EXPECT_EQ(p.conn.server_addr, addr(c.client)) << c.line;
    EXPECT_EQ(p.conn.server_port, c.client_port) << c.line;
  }
}

TEST(ParsePeerLine, TheSmtpGreetingIsNotAPeerLine) {
  for (const char* line : {"220 home.example ESMTP Sendmail 8.17.1; Mon, 30 Nov 2026\r\n", "",
                           "\r\n", "DYNMX-PEER 192.0.2.25 1 192.0.2.7 22", " dynmx-peer x"}) {
    EXPECT_EQ(parsePeerLine(line).kind, PeerLine::Kind::NotPeerLine) << line;
  }
}

TEST(ParsePeerLine, AnythingButTheExactFormIsMalformed) {
  const std::string long_tail(kMaxPeerLine, '1');
  for (const std::string& line : std::vector<std::string>{
           "dynmx-peer",
           "dynmx-peer ",
           "dynmx-peer\n",
           "dynmx-peerx 192.0.2.25 1 192.0.2.7 22",
           "dynmx-peer 192.0.2.25 1 192.0.2.7",           // three fields
           "dynmx-peer 192.0.2.25 1 192.0.2.7 22 extra",  // five
           "dynmx-peer 192.0.2.25  1 192.0.2.7 22",       // two spaces
           "dynmx-peer 192.0.2.25 1 192.0.2.7 22 ",       // trailing space
           "dynmx-peer\t192.0.2.25 1 192.0.2.7 22",
           "dynmx-peer 192.0.2.256 1 192.0.2.7 22",
           "dynmx-peer home.example 1 192.0.2.7 22",  // names are not addresses
           "dynmx-peer 192.0.2.25 0 192.0.2.7 22",    // port 0
           "dynmx-peer 192.0.2.25 65536 192.0.2.7 22",
           "dynmx-peer 192.0.2.25 022 192.0.2.7 22",  // leading zero
           "dynmx-peer 192.0.2.25 +22 192.0.2.7 22",
           "dynmx-peer 192.0.2.25 22 192.0.2.7 -1",
           "dynmx-peer [192.0.2.25] 22 192.0.2.7 22",  // MTA forms: sshd never writes them
           "dynmx-peer IPv6:2001:db8::25 22 192.0.2.7 22",
           "dynmx-peer fe80::1%eth0 22 192.0.2.7 22",  // zone index
           "dynmx-peer 192.0.2.25 22 192.0.2.7 22\n\n",
           std::string("dynmx-peer 192.0.2.25 22 192.0.2.7 22\0", 38),
           "dynmx-peer 192.0.2.25 22 192.0.2.7 " + long_tail,
       }) {
    EXPECT_EQ(parsePeerLine(line).kind, PeerLine::Kind::Malformed) << line;
  }
}

// A client reached through a port forwarded to this host (ssh -R): the address dynmx-tunneld
// connected to is this host's own, and leasing it would open relaying to this host's loopback.
TEST(DecideTunnelLease, RefusesATunnelThroughThisHost) {
  const std::vector<InetAddr> nat = {addr("198.51.100.25")};
  struct Case {
    const char* connected_to;
    const char* local;
    const char* line;
    std::optional<RefusalKind> refusal;
  } cases[] = {
      {"127.0.0.1", "127.0.0.1", "dynmx-peer 127.0.0.1 40000 127.0.0.1 22",
       RefusalKind::BadAddress},
      {"198.51.100.25", "192.0.2.25", "dynmx-peer 192.0.2.25 40000 10.0.0.2 22",
       RefusalKind::BadAddress},
      // The integration tests' layout: the client on its own loopback address.
      {"127.0.0.2", "127.0.0.1", "dynmx-peer 127.0.0.1 40000 127.0.0.2 22", std::nullopt},
      // A forwarder stays a forwarder whatever the address.
      {"127.0.0.1", "127.0.0.1", "dynmx-peer 127.0.0.3 40000 127.0.0.2 22", RefusalKind::NotThisMx},
  };
  for (const auto& c : cases) {
    auto r = decideTunnelLease(parsePeerLine(c.line), addr(c.connected_to), addr(c.local), nat);
    ASSERT_EQ(r.has_value(), c.refusal.has_value()) << c.line;
    if (r) {
      EXPECT_EQ(r->kind, *c.refusal) << c.line;
    }
  }
  auto r = decideTunnelLease(parsePeerLine("dynmx-peer 127.0.0.1 1 127.0.0.1 22"),
                             addr("127.0.0.1"), addr("127.0.0.1"), nat);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, "this MX's own address (a tunnel through this host)");
}

TEST(DecideTunnelLease, GrantsOnlyWhenTheClientSawThisMx) {
  const InetAddr local = addr("192.0.2.25");
  const std::vector<InetAddr> nat = {addr("198.51.100.25"), addr("2001:db8::25")};
  struct Case {
    const char* line;
    std::vector<InetAddr> mx_addresses;
    std::optional<RefusalKind> refusal;
    const char* reason;
  } cases[] = {
      {"dynmx-peer 192.0.2.25 40000 203.0.113.7 22", {}, std::nullopt, ""},
      {"dynmx-peer ::ffff:192.0.2.25 40000 203.0.113.7 22", {}, std::nullopt, ""},
      // Behind NAT the client sees the public address: granted only when it is configured.
      {"dynmx-peer 198.51.100.25 40000 203.0.113.7 22", nat, std::nullopt, ""},
      {"dynmx-peer 2001:db8::25 40000 2001:db8::7 22", nat, std::nullopt, ""},
      {"dynmx-peer 198.51.100.25 40000 203.0.113.7 22",
       {},
       RefusalKind::NotThisMx,
       "peer 198.51.100.25 is not this MX"},
      // A forwarder on the client's old address: the client saw the forwarder.
      {"dynmx-peer 198.51.100.9 40000 203.0.113.7 22", nat, RefusalKind::NotThisMx,
       "peer 198.51.100.9 is not this MX"},
      {"220 home.example ESMTP", nat, RefusalKind::NoConfirmation,
       "the client sent no dynmx-peer line; see dynmx-relay(7)"},
      {"dynmx-peer 192.0.2.25", nat, RefusalKind::NoConfirmation, "malformed dynmx-peer line"},
  };
  const InetAddr client = addr("203.0.113.7");
  for (const auto& c : cases) {
    auto r = decideTunnelLease(parsePeerLine(c.line), client, local, c.mx_addresses);
    ASSERT_EQ(r.has_value(), c.refusal.has_value()) << c.line;
    if (!r) continue;
    EXPECT_EQ(r->kind, *c.refusal) << c.line;
    EXPECT_EQ(r->reason, c.reason) << c.line;
  }
}

LeaseRules checkinRules() {
  LeaseRules r;
  r.mx_addresses = {addr("198.51.100.25")};
  r.clients["home"] = LeaseRules::Client{true, {}};
  r.clients["office"] = LeaseRules::Client{true, {*InetNetwork::parse("192.0.2.0/24")}};
  r.clients["quiet"] = LeaseRules::Client{false, {}};
  return r;
}

TEST(DecideCheckin, TakesTheAddressFromSshConnectionAndRefusesWhatMustNotBeLeased) {
  struct Case {
    const char* client;
    const char* ssh_connection;  // nullptr: unset
    int exit_code;
    const char* addr;     // expected address, "" when none could be read
    const char* message;  // the whole message
  } cases[] = {
      {"home", "203.0.113.7 40000 192.0.2.25 22", kExitOk, "203.0.113.7",
       "dynmx-checkin: client home from 203.0.113.7"},
      {"home", "2001:db8:1::7 40000 2001:db8::25 22", kExitOk, "2001:db8:1::7",
       "dynmx-checkin: client home from 2001:db8:1::7"},
      {"office", "192.0.2.77 40000 192.0.2.25 22", kExitOk, "192.0.2.77",
       "dynmx-checkin: client office from 192.0.2.77"},
      {"office", "203.0.113.7 40000 192.0.2.25 22", EX_NOPERM, "203.0.113.7",
       "dynmx-checkin: client office from 203.0.113.7: refused (address outside "
       "relay_networks)"},
      {"quiet", "203.0.113.7 40000 192.0.2.25 22", EX_NOPERM, "203.0.113.7",
       "dynmx-checkin: client quiet from 203.0.113.7: refused (relay is off for this client)"},
      {"nobody", "203.0.113.7 40000 192.0.2.25 22", EX_NOUSER, "203.0.113.7",
       "dynmx-checkin: client nobody from 203.0.113.7: refused (no client of that name is "
       "configured)"},
      {"home", "127.0.0.1 40000 127.0.0.1 22", EX_NOPERM, "127.0.0.1",
       "dynmx-checkin: client home from 127.0.0.1: refused (loopback address)"},
      {"home", "::1 40000 ::1 22", EX_NOPERM, "::1",
       "dynmx-checkin: client home from ::1: refused (loopback address)"},
      {"home", "::ffff:127.0.0.2 40000 192.0.2.25 22", EX_NOPERM, "127.0.0.2",
       "dynmx-checkin: client home from 127.0.0.2: refused (loopback address)"},
      {"home", "169.254.1.1 40000 192.0.2.25 22", EX_NOPERM, "169.254.1.1",
       "dynmx-checkin: client home from 169.254.1.1: refused (link-local address)"},
      {"home", "fe80::1 40000 fe80::2 22", EX_NOPERM, "fe80::1",
       "dynmx-checkin: client home from fe80::1: refused (link-local address)"},
      {"home", "0.0.0.0 40000 192.0.2.25 22", EX_NOPERM, "0.0.0.0",
       "dynmx-checkin: client home from 0.0.0.0: refused (unspecified address)"},
      // A proxy in front of sshd: the TCP peer is this host.
      {"home", "192.0.2.25 40000 192.0.2.25 22", EX_NOPERM, "192.0.2.25",
       "dynmx-checkin: client home from 192.0.2.25: refused (this MX's own address)"},
      {"home", "198.51.100.25 40000 192.0.2.25 22", EX_NOPERM, "198.51.100.25",
       "dynmx-checkin: client home from 198.51.100.25: refused (this MX's own address)"},
      {"home", nullptr, EX_USAGE, "",
       "dynmx-checkin: SSH_CONNECTION is not set; run me as the forced command of a key in "
       "authorized_keys"},
      {"home", "203.0.113.7 40000 192.0.2.25", EX_USAGE, "",
       "dynmx-checkin: cannot read SSH_CONNECTION as sshd sets it"},
      {"home", "", EX_USAGE, "", "dynmx-checkin: cannot read SSH_CONNECTION as sshd sets it"},
      {"", "203.0.113.7 40000 192.0.2.25 22", EX_USAGE, "",
       "dynmx-checkin: expected a client name (letters, digits, '.', '_', '-') as the argument "
       "in the authorized_keys command"},
      {"home\nx", "203.0.113.7 40000 192.0.2.25 22", EX_USAGE, "",
       "dynmx-checkin: expected a client name (letters, digits, '.', '_', '-') as the argument "
       "in the authorized_keys command"},
  };
  const LeaseRules rules = checkinRules();
  for (const auto& c : cases) {
    std::string label = std::string(c.client) + " / " + (c.ssh_connection ? c.ssh_connection : "-");
    CheckinDecision d = decideCheckin(c.client, c.ssh_connection, rules);
    EXPECT_EQ(d.exit_code, c.exit_code) << label;
    EXPECT_EQ(d.message, c.message) << label;
    EXPECT_EQ(d.refusal.has_value(), c.exit_code != kExitOk && c.exit_code != EX_USAGE) << label;
    if (*c.addr) {
      EXPECT_EQ(d.addr, addr(c.addr)) << label;
    }
  }
}

TEST(CheckinExitCode, UnknownClientIsNoUserAndEveryOtherRefusalNoPerm) {
  EXPECT_EQ(checkinExitCode(RefusalKind::UnknownClient), 67);
  for (auto k : {RefusalKind::RelayOff, RefusalKind::OutsideNetworks, RefusalKind::HeldDown,
                 RefusalKind::BadAddress})
    EXPECT_EQ(checkinExitCode(k), 77);
  EXPECT_EQ(kCheckinDaemonDown, 75);
}

}  // namespace
}  // namespace dynmx::tunneld
