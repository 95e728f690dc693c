// peer_check.hpp: the two decisions on where a lease may come from, as pure functions.
//
// 1. The tunnel: the client's forced command starts with `echo dynmx-peer $SSH_CONNECTION`, so the
//    first line on the channel is "dynmx-peer CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT" as the
//    client's sshd saw the connection; its first address is THIS MX as the client saw it. A tunnel
//    lease for the address dynmx-tunneld connected to is granted only when that address is the
//    local address of our own TCP connection or one of [relay] mx_addresses (an MX behind NAT). A
//    forwarder in front of the client (a stranger holding the client's old address) shows up as
//    another peer: refused, "peer 198.51.100.9 is not this MX". A first line that is not a
//    dynmx-peer line is the SMTP greeting of a client without the echo: mail flows, no lease.
// 2. The check-in: dynmx-checkin, the forced command of a second key of the client on this host,
//    takes the address only from SSH_CONNECTION (the TCP peer of this host's sshd; the client's
//    word is never asked), and refuses loopback, link-local and unspecified addresses and this
//    MX's own (mx_addresses and the SERVER_IP field: a proxy in front of sshd would otherwise lease
//    itself), a client that is unknown, has relay = false, or is outside its relay_networks. The
//    decision carries the sysexits code dynmx-checkin exits with.
// Parsing: fields separated by single spaces exactly as sshd writes them, addresses with
// InetAddr::parse (inet_pton), ports 1..65535 in decimal; a line of at most kMaxPeerLine bytes.
// Anything else is Malformed, never a guess.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "shared/inet_addr.hpp"
#include "shared/sysexits.hpp"
#include "tunneld/relay/lease.hpp"

namespace dynmx::tunneld {

inline constexpr size_t kMaxPeerLine = 200;  // "dynmx-peer" + two IPv6 addresses and ports: ~110

// SSH_CONNECTION as sshd sets it: "CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT".
struct SshConnection {
  InetAddr client_addr;
  uint16_t client_port = 0;
  InetAddr server_addr;
  uint16_t server_port = 0;
};
std::optional<SshConnection> parseSshConnection(std::string_view text);

struct PeerLine {
  enum class Kind {
    NotPeerLine,  // does not start with "dynmx-peer": the client sent no confirmation
    Malformed,    // starts with "dynmx-peer" but is not a well-formed one
    Peer,
  };
  Kind kind = Kind::NotPeerLine;
  SshConnection conn;  // Peer: conn.client_addr is this MX as the client saw it
};
// One line as read from the channel, with or without its "\n" or "\r\n".
PeerLine parsePeerLine(std::string_view line);

// nullopt: grant a tunnel lease for `connected_to`, the address we connected to (getpeername).
// `local_addr` is the local address of that TCP connection (getsockname). A connection to this
// host itself (a client reached through a port forwarded to this host, `ssh -R`) is refused: the
// address is this MX's, not the client's.
std::optional<Refusal> decideTunnelLease(const PeerLine& line, const InetAddr& connected_to,
                                         const InetAddr& local_addr,
                                         std::span<const InetAddr> mx_addresses);

struct CheckinDecision {
  int exit_code = kExitOk;  // kExitOk: hand the check-in to dynmx-tunneld
  InetAddr addr;            // the client's address (when SSH_CONNECTION could be read)
  std::optional<Refusal> refusal;
  std::string message;  // for the client's cron log, on one line
};
// `client`: the name from the forced command line; `ssh_connection`: the environment variable
// (nullptr when unset).
CheckinDecision decideCheckin(std::string_view client, const char* ssh_connection,
                              const LeaseRules& rules);
// The exit code of dynmx-checkin for a refusal (also one from the daemon's lease table):
// UnknownClient -> EX_NOUSER (67), BadAddress and the rest -> EX_NOPERM (77).
int checkinExitCode(RefusalKind kind);
// dynmx-checkin when dynmx-tunneld cannot be reached: EX_TEMPFAIL (75).
inline constexpr int kCheckinDaemonDown = kExitTempFail;

}  // namespace dynmx::tunneld
