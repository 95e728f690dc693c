// verify_client.cpp: one "verify" request on dynmx-tunneld's admin socket, bounded in time.
#include "milter/verify_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "shared/fd.hpp"
#include "shared/result.hpp"

namespace dynmx::milter {

namespace {

using Clock = std::chrono::steady_clock;

VerifyAnswer unknown(std::string why) {
  return {VerifyStatus::Unknown, "none", std::move(why)};
}

int msLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// Waits for `events` on fd until the deadline; false on timeout or error.
bool waitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int ms = msLeft(deadline);
    if (ms == 0) return false;
    int rc = ::poll(&p, 1, ms);
    if (rc < 0 && errno == EINTR) continue;
    return rc > 0;
  }
}

// The answer from the whole reply text: "OK\n<line>\n.\n" or "ERR why\n.\n".
VerifyAnswer fromReply(const std::string& text, const std::string& socket_path) {
  size_t nl = text.find('\n');
  std::string status = text.substr(0, nl);
  if (!status.empty() && status.back() == '\r') status.pop_back();
  if (status.rfind("ERR", 0) == 0) return unknown("dynmx-tunneld (" + socket_path + "): " + status);
  if (status != "OK" || nl == std::string::npos)
    return unknown("dynmx-tunneld (" + socket_path + "): unexpected reply");
  size_t nl2 = text.find('\n', nl + 1);
  auto a = parseVerifyLine(std::string_view(text).substr(nl + 1, nl2 - nl - 1));
  if (!a) return unknown("dynmx-tunneld (" + socket_path + "): " + a.error().message);
  return *a;
}

}  // namespace

VerifyAnswer askTunneld(const std::string& socket_path, const std::string& client,
                        const std::string& address, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof sa.sun_path) return unknown("socket path too long");
  std::memcpy(sa.sun_path, socket_path.c_str(), socket_path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return unknown(sysError(errno, "socket").message);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN)
      return unknown(sysError(errno, "connect " + socket_path).message);
    if (!waitFor(fd.get(), POLLOUT, deadline))
      return unknown("connect " + socket_path + ": timed out");
  }
  std::string req = "verify " + client + " " + address + "\n";
  for (size_t off = 0; off < req.size();) {
    ssize_t n = ::send(fd.get(), req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!waitFor(fd.get(), POLLOUT, deadline))
        return unknown("send to " + socket_path + ": timed out");
    } else {
      return unknown(sysError(errno, "send to " + socket_path).message);
    }
  }
  std::string text;
  char buf[2048];
  while (text.find("\n.\n") == std::string::npos && text.size() < 8192) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n > 0) {
      text.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EINTR) {
      if (!waitFor(fd.get(), POLLIN, deadline))
        return unknown("no answer from dynmx-tunneld in " + std::to_string(timeout.count()) +
                       " ms");
    } else {
      return unknown(sysError(errno, "recv from " + socket_path).message);
    }
  }
  return fromReply(text, socket_path);
}

}  // namespace dynmx::milter
