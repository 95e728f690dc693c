// peer_check.cpp: the dynmx-peer line, SSH_CONNECTION, and the tunnel and check-in decisions
// (see peer_check.hpp).
#include "tunneld/relay/peer_check.hpp"

#include <algorithm>
#include <array>

namespace dynmx::tunneld {
namespace {

constexpr std::string_view kPeerTag = "dynmx-peer";
constexpr size_t kMaxClientName = 64;

std::optional<uint16_t> parsePort(std::string_view s) {
  if (s.empty() || s.size() > 5 || s[0] == '0') return std::nullopt;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

// Up to `n` fields separated by single spaces; nullopt when there are not exactly n or one is
// empty.
template <size_t N>
std::optional<std::array<std::string_view, N>> fields(std::string_view s) {
  std::array<std::string_view, N> out;
  for (size_t i = 0; i < N; ++i) {
    size_t sp = i + 1 < N ? s.find(' ') : std::string_view::npos;
    if (i + 1 < N && sp == std::string_view::npos) return std::nullopt;
    out[i] = s.substr(0, sp);
    if (out[i].empty()) return std::nullopt;
    if (sp != std::string_view::npos) s.remove_prefix(sp + 1);
  }
  if (out[N - 1].find(' ') != std::string_view::npos) return std::nullopt;
  return out;
}

bool isClientName(std::string_view s) {
  if (s.empty() || s.size() > kMaxClientName || s[0] == '.') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

}  // namespace

std::optional<SshConnection> parseSshConnection(std::string_view text) {
  if (text.size() > kMaxPeerLine) return std::nullopt;
  auto f = fields<4>(text);
  if (!f) return std::nullopt;
  auto ca = InetAddr::parse((*f)[0]);
  auto cp = parsePort((*f)[1]);
  auto sa = InetAddr::parse((*f)[2]);
  auto sp = parsePort((*f)[3]);
  if (!ca || !cp || !sa || !sp) return std::nullopt;
  // sendmail's "IPv6:" tag and brackets are MTA forms; sshd never writes them.
  for (auto a : {(*f)[0], (*f)[2]})
    if (a.front() == '[' || a.front() == 'I' || a.front() == 'i') return std::nullopt;
  return SshConnection{*ca, *cp, *sa, *sp};
}

PeerLine parsePeerLine(std::string_view line) {
  PeerLine r;
  if (!line.starts_with(kPeerTag)) return r;
  r.kind = PeerLine::Kind::Malformed;
  if (line.ends_with("\n")) line.remove_suffix(1);
  if (line.ends_with("\r")) line.remove_suffix(1);
  if (line.size() > kMaxPeerLine || line.size() <= kPeerTag.size() + 1 ||
      line[kPeerTag.size()] != ' ')
    return r;
  auto conn = parseSshConnection(line.substr(kPeerTag.size() + 1));
  if (!conn) return r;
  r.kind = PeerLine::Kind::Peer;
  r.conn = *conn;
  return r;
}

std::optional<Refusal> decideTunnelLease(const PeerLine& line, const InetAddr& connected_to,
                                         const InetAddr& local_addr,
                                         std::span<const InetAddr> mx_addresses) {
  auto isMx = [&](const InetAddr& a) {
    return a == local_addr ||
           std::find(mx_addresses.begin(), mx_addresses.end(), a) != mx_addresses.end();
  };
  switch (line.kind) {
    case PeerLine::Kind::NotPeerLine:
      return Refusal{RefusalKind::NoConfirmation,
                     "the client sent no dynmx-peer line; see dynmx-relay(7)"};
    case PeerLine::Kind::Malformed:
      return Refusal{RefusalKind::NoConfirmation, "malformed dynmx-peer line"};
    case PeerLine::Kind::Peer:
      break;
  }
  const InetAddr& seen = line.conn.client_addr;
  if (!isMx(seen)) return Refusal{RefusalKind::NotThisMx, "peer " + seen.str() + " is not this MX"};
  if (isMx(connected_to))
    return Refusal{RefusalKind::BadAddress, "this MX's own address (a tunnel through this host)"};
  return std::nullopt;
}

int checkinExitCode(RefusalKind kind) {
  return kind == RefusalKind::UnknownClient ? kExitNoUser : kExitNoPerm;
}

CheckinDecision decideCheckin(std::string_view client, const char* ssh_connection,
                              const LeaseRules& rules) {
  CheckinDecision d;
  auto usage = [&](std::string msg) {
    d.exit_code = kExitUsage;
    d.message = std::move(msg);
    return d;
  };
  if (!isClientName(client))
    return usage(
        "dynmx-checkin: expected a client name (letters, digits, '.', '_', '-') as the "
        "argument in the authorized_keys command");
  if (ssh_connection == nullptr)
    return usage(
        "dynmx-checkin: SSH_CONNECTION is not set; run me as the forced command of a key "
        "in authorized_keys");
  auto conn = parseSshConnection(ssh_connection);
  if (!conn) return usage("dynmx-checkin: cannot read SSH_CONNECTION as sshd sets it");
  d.addr = conn->client_addr;
  const InetAddr& a = d.addr;
  auto refuse = [&](Refusal why) {
    d.exit_code = checkinExitCode(why.kind);
    d.message = "dynmx-checkin: client " + std::string(client) + " from " + a.str() +
                ": refused (" + why.reason + ")";
    d.refusal = std::move(why);
    return d;
  };
  auto allowed = rules.mayLease(client, a);
  if (allowed && allowed->kind != RefusalKind::OutsideNetworks) return refuse(*allowed);
  std::string bad;
  if (a.isLoopback())
    bad = "loopback address";
  else if (a.isLinkLocal())
    bad = "link-local address";
  else if (a.isUnspecified())
    bad = "unspecified address";
  else if (a == conn->server_addr || rules.isMxAddress(a))
    bad = "this MX's own address";
  if (!bad.empty()) return refuse(Refusal{RefusalKind::BadAddress, bad});
  if (allowed) return refuse(*allowed);
  d.message = "dynmx-checkin: client " + std::string(client) + " from " + a.str();
  return d;
}

}  // namespace dynmx::tunneld
