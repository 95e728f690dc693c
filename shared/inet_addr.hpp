// inet_addr.hpp: an IPv4 or IPv6 address as a value, parsed with inet_pton only.
//
// Contract: parse() accepts exactly what inet_pton(AF_INET) or inet_pton(AF_INET6) accepts, plus
// the forms the MTAs send: sendmail's "IPv6:" / "ipv6:" tag (case-insensitive) and the
// bracketed "[addr]" forms. An IPv4-mapped IPv6 address (::ffff:192.0.2.1) is the IPv4 address,
// so that one host has one key whichever socket family it came in on. Anything else (a host
// name, a zone index "%eth0", a port, trailing bytes) is not an address: nullopt, never a guess.
// str() is the canonical text (inet_ntop: dotted quad, compressed lowercase IPv6).
#pragma once

#include <sys/socket.h>

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dynmx {

struct InetAddr {
  int family = AF_INET;  // AF_INET or AF_INET6
  // Network byte order; an IPv4 address uses the first 4 bytes, the rest are zero.
  std::array<uint8_t, 16> bytes{};

  static std::optional<InetAddr> parse(std::string_view text);
  // From a socket address (sockaddr_in / sockaddr_in6); nullopt for other families.
  static std::optional<InetAddr> fromSockaddr(const sockaddr* sa, socklen_t len);
  std::string str() const;
  bool isV4() const { return family == AF_INET; }
  bool isLoopback() const;   // 127.0.0.0/8, ::1
  bool isLinkLocal() const;  // 169.254.0.0/16, fe80::/10
  bool isUnspecified() const;  // 0.0.0.0, ::
  // True when the first `prefix_len` bits equal those of `net` (same family only).
  bool inNetwork(const InetAddr& net, unsigned prefix_len) const;

  auto operator<=>(const InetAddr&) const = default;
};

// A network in CIDR form, "192.0.2.0/24" or "2001:db8::/32" (a bare address is /32 or /128).
struct InetNetwork {
  InetAddr addr;
  unsigned prefix_len = 0;
  static std::optional<InetNetwork> parse(std::string_view text);
  bool contains(const InetAddr& a) const { return a.inNetwork(addr, prefix_len); }
  bool operator==(const InetNetwork&) const = default;
  std::string str() const;
};

}  // namespace dynmx
