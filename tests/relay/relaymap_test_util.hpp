// relaymap_test_util.hpp: a socketmap client for the relay tests: connect to a unix socket, send
// netstring requests, read netstring answers; errors come back as text ("error: ..."), so that a
// test can assert on a refused connection as well as on an answer.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "shared/fd.hpp"

namespace dynmx::relay::test {

class MapClient {
 public:
  explicit MapClient(const std::string& path) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    fd_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (connect(fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      error_ = std::string("error: connect: ") + std::strerror(errno);
      fd_.reset();
    }
  }
  bool connected() const { return static_cast<bool>(fd_); }
  const std::string& error() const { return error_; }
  int fd() const { return fd_.get(); }

  bool sendRaw(const std::string& bytes) {
    return fd_ && send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
                      static_cast<ssize_t>(bytes.size());
  }
  // One netstring answer, without its framing ("OK OK"), or "error: ..." / "eof".
  std::string readAnswer(int timeout_ms = 60000) {
    if (!fd_) return error_;
    for (;;) {
      size_t colon = buf_.find(':');
      if (colon != std::string::npos) {
        size_t len = std::stoul(buf_.substr(0, colon));
        if (buf_.size() >= colon + len + 2) {
          std::string a = buf_.substr(colon + 1, len);
          buf_.erase(0, colon + len + 2);
          return a;
        }
      }
      pollfd p{fd_.get(), POLLIN, 0};
      if (poll(&p, 1, timeout_ms) <= 0) return "error: no answer";
      char tmp[1024];
      ssize_t n = read(fd_.get(), tmp, sizeof tmp);
      if (n == 0) return "eof";
      if (n < 0) return std::string("error: read: ") + std::strerror(errno);
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  std::string ask(const std::string& payload) {
    if (!sendRaw(std::to_string(payload.size()) + ":" + payload + ",")) {
      return error_.empty() ? "error: send" : error_;
    }
    return readAnswer();
  }

 private:
  UniqueFd fd_;
  std::string buf_;
  std::string error_;
};

// One request on a fresh connection.
inline std::string askOnce(const std::string& path, const std::string& payload) {
  MapClient c(path);
  return c.ask(payload);
}

}  // namespace dynmx::relay::test
