// socketmap_client.cpp: one socketmap question over a Unix socket (see socketmap_client.hpp).
#include "shared/socketmap_client.hpp"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "shared/fd.hpp"

namespace dynmx {

Result<SocketmapReply> parseSocketmapReply(std::string_view ns) {
  size_t colon = ns.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon > 7)
    return Error{EPROTO, "malformed socketmap reply length"};
  size_t len = 0;
  for (size_t i = 0; i < colon; ++i) {
    if (ns[i] < '0' || ns[i] > '9') return Error{EPROTO, "malformed socketmap reply length"};
    len = len * 10 + static_cast<size_t>(ns[i] - '0');
  }
  if (ns.size() != colon + 1 + len + 1 || ns.back() != ',')
    return Error{EPROTO, "socketmap reply is not one netstring"};
  std::string_view payload = ns.substr(colon + 1, len);
  size_t sp = payload.find(' ');
  SocketmapReply r;
  r.status = std::string(payload.substr(0, sp));
  if (sp != std::string_view::npos) r.value = std::string(payload.substr(sp + 1));
  for (const char* known : {"OK", "NOTFOUND", "TEMP", "TIMEOUT", "PERM"})
    if (r.status == known) return r;
  return Error{EPROTO, "unknown socketmap status \"" + r.status + "\""};
}

Result<SocketmapReply> socketmapQuery(const std::string& socket_path, std::string_view map,
                                      std::string_view key, std::chrono::milliseconds timeout) {
  const std::string what = "socketmap " + socket_path;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof sa.sun_path)
    return Error{ENAMETOOLONG, what + ": path too long"};
  std::memcpy(sa.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return sysError(errno, what + ": socket");
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    return sysError(errno, what + ": connect");
  std::string payload = std::string(map) + " " + std::string(key);
  std::string req = std::to_string(payload.size()) + ":" + payload + ",";
  for (size_t off = 0; off < req.size();) {
    ssize_t n = ::send(fd.get(), req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError(errno, what + ": send");
    off += static_cast<size_t>(n);
  }
  std::string in;
  char buf[4096];
  for (;;) {
    // Whole once the length is known and that many bytes and the comma are in.
    size_t colon = in.find(':');
    if (colon != std::string::npos) {
      size_t len = std::strtoul(in.c_str(), nullptr, 10);
      if (len > kMaxSocketmapReply) return Error{EPROTO, what + ": reply too long"};
      if (in.size() >= colon + len + 2) break;
    } else if (in.size() > 8) {
      return Error{EPROTO, what + ": malformed reply"};
    }
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return Error{ETIMEDOUT,
                   what + ": no answer within " + std::to_string(timeout.count()) + " ms"};
    if (n < 0) return sysError(errno, what + ": recv");
    if (n == 0) return Error{EPROTO, what + ": connection closed before a whole answer"};
    in.append(buf, static_cast<size_t>(n));
  }
  Result<SocketmapReply> r = parseSocketmapReply(in);
  if (!r) return Error{r.error().code, what + ": " + r.error().message};
  return r;
}

}  // namespace dynmx
