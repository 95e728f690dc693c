// peer_line_fuzz.cpp: the first line on the channel comes from the client, and SSH_CONNECTION
// reaches dynmx-checkin from sshd; neither parser may crash, and what they accept must be exactly
// what sshd writes (it formats back to the same addresses and ports).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tunneld/relay/peer_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dynmx::tunneld;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  PeerLine p = parsePeerLine(in);
  if (p.kind == PeerLine::Kind::Peer) {
    if (in.size() > kMaxPeerLine + 2) __builtin_trap();
    const auto& c = p.conn;
    std::string again = "dynmx-peer " + c.client_addr.str() + " " + std::to_string(c.client_port) +
                        " " + c.server_addr.str() + " " + std::to_string(c.server_port);
    PeerLine q = parsePeerLine(again);
    if (q.kind != PeerLine::Kind::Peer || q.conn.client_addr != c.client_addr ||
        q.conn.server_addr != c.server_addr || q.conn.client_port != c.client_port ||
        q.conn.server_port != c.server_port || c.client_port == 0 || c.server_port == 0)
      __builtin_trap();
  }
  static const dynmx::InetAddr local = *dynmx::InetAddr::parse("192.0.2.25");
  static const LeaseRules rules = [] {
    LeaseRules r;
    r.mx_addresses = {*dynmx::InetAddr::parse("198.51.100.25")};
    r.clients["home"] = LeaseRules::Client{true, {}};
    return r;
  }();
  static const dynmx::InetAddr client = *dynmx::InetAddr::parse("203.0.113.7");
  auto refusal = decideTunnelLease(p, client, local, rules.mx_addresses);
  if (!refusal && p.kind != PeerLine::Kind::Peer) __builtin_trap();

  std::string env(in);  // as a C string: up to the first NUL, as getenv would give it
  CheckinDecision d = decideCheckin("home", env.c_str(), rules);
  // Accepted: never loopback, link-local, unspecified, one of the MX's addresses, or the address
  // the client connected to (SSH_CONNECTION's server address: the MX's own, whatever it is).
  // (Not `local`: that is the tunnel's side, which a check-in does not see.)
  if (d.exit_code == dynmx::kExitOk) {
    auto conn = parseSshConnection(env.c_str());
    if (!conn || d.addr.isLoopback() || d.addr.isLinkLocal() || d.addr.isUnspecified() ||
        d.addr == conn->server_addr || rules.isMxAddress(d.addr))
      __builtin_trap();
  }
  return 0;
}
