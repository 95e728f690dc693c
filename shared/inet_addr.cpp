// inet_addr.cpp: see inet_addr.hpp. Parsing is inet_pton's; this file only strips the MTAs'
// decorations around it and canonicalises IPv4-mapped addresses.
#include "shared/inet_addr.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace dynmx {
namespace {

bool startsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != prefix[i]) return false;
  }
  return true;
}

bool isV4Mapped(const std::array<uint8_t, 16>& b) {
  static const uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(b.data(), kPrefix, 12) == 0;
}

InetAddr fromV6(const uint8_t* b16) {
  InetAddr a;
  std::array<uint8_t, 16> b{};
  std::memcpy(b.data(), b16, 16);
  if (isV4Mapped(b)) {
    a.family = AF_INET;
    std::memcpy(a.bytes.data(), b.data() + 12, 4);
  } else {
    a.family = AF_INET6;
    a.bytes = b;
  }
  return a;
}

}  // namespace

std::optional<InetAddr> InetAddr::parse(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
    text = text.substr(1, text.size() - 2);
  bool tagged = startsWithNoCase(text, "ipv6:");
  if (tagged) text.remove_prefix(5);
  if (text.empty() || text.size() > 64) return std::nullopt;
  std::string s(text);  // inet_pton needs a terminated string; also rejects embedded NULs below
  if (s.find('\0') != std::string::npos) return std::nullopt;
  InetAddr a;
  if (!tagged) {
    in_addr v4{};
    if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
      std::memcpy(a.bytes.data(), &v4, 4);
      return a;
    }
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) return fromV6(v6.s6_addr);
  return std::nullopt;
}

std::optional<InetAddr> InetAddr::fromSockaddr(const sockaddr* sa, socklen_t len) {
  if (sa == nullptr) return std::nullopt;
  if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    InetAddr a;
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
    return a;
  }
  if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6)))
    return fromV6(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr.s6_addr);
  return std::nullopt;
}

std::string InetAddr::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(family, bytes.data(), buf, sizeof buf) == nullptr) return "?";
  return buf;
}

bool InetAddr::isLoopback() const {
  if (isV4()) return bytes[0] == 127;
  static const std::array<uint8_t, 16> kOne = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return bytes == kOne;
}

bool InetAddr::isLinkLocal() const {
  if (isV4()) return bytes[0] == 169 && bytes[1] == 254;
  return bytes[0] == 0xfe && (bytes[1] & 0xc0) == 0x80;
}

bool InetAddr::isUnspecified() const { return bytes == std::array<uint8_t, 16>{}; }

bool InetAddr::inNetwork(const InetAddr& net, unsigned prefix_len) const {
  if (family != net.family) return false;
  unsigned max = isV4() ? 32 : 128;
  if (prefix_len > max) return false;
  unsigned full = prefix_len / 8, rest = prefix_len % 8;
  if (std::memcmp(bytes.data(), net.bytes.data(), full) != 0) return false;
  if (rest == 0) return true;
  auto mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (bytes[full] & mask) == (net.bytes[full] & mask);
}

std::optional<InetNetwork> InetNetwork::parse(std::string_view text) {
  auto slash = text.find('/');
  auto addr = InetAddr::parse(text.substr(0, slash));
  if (!addr) return std::nullopt;
  unsigned max = addr->isV4() ? 32 : 128;
  unsigned len = max;
  if (slash != std::string_view::npos) {
    std::string_view digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3) return std::nullopt;
    len = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return std::nullopt;
      len = len * 10 + static_cast<unsigned>(c - '0');
    }
    if (len > max) return std::nullopt;
  }
  return InetNetwork{*addr, len};
}

std::string InetNetwork::str() const { return addr.str() + "/" + std::to_string(prefix_len); }

}  // namespace dynmx
