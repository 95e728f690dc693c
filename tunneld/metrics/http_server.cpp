// http_server.cpp: the metrics endpoint on the event loop (see http_server.hpp).
#include "tunneld/metrics/http_server.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "shared/log.hpp"
#include "tunneld/metrics/http_request.hpp"

namespace dynmx::tunneld {

MetricsHttpServer::~MetricsHttpServer() {
  for (auto& [fd, c] : conns_) {
    if (c->timer) loop_.cancelTimer(c->timer);
    loop_.unwatch(fd);
  }
  if (listen_fd_) loop_.unwatch(listen_fd_.get());
}

Status MetricsHttpServer::open(const ListenAddress& where) {
  sockaddr_storage ss{};
  socklen_t len;
  if (where.addr.isV4()) {
    auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(where.port);
    std::memcpy(&sa->sin_addr, where.addr.bytes.data(), 4);
    len = sizeof *sa;
  } else {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(where.port);
    std::memcpy(&sa->sin6_addr, where.addr.bytes.data(), 16);
    len = sizeof *sa;
  }
  std::string what = "tunneld.metrics_listen " + where.str();
  UniqueFd fd(socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return sysError(errno, what + ": socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss.ss_family == AF_INET6) setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)
    return sysError(errno, what + ": bind");
  if (listen(fd.get(), 16) != 0) return sysError(errno, what + ": listen");
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &blen) == 0)
    port_ = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  listen_fd_ = std::move(fd);
  loop_.watch(listen_fd_.get(), POLLIN, [this](short) { onAccept(); });
  return {};
}

void MetricsHttpServer::onAccept() {
  while (true) {
    int fd = accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        auto now = SteadyClock::now();
        if (now - last_accept_warning_ >= std::chrono::minutes(1)) {
          logf(LogLevel::Warning, "metrics: accept: %s", std::strerror(errno));
          last_accept_warning_ = now;
        }
      }
      return;
    }
    if (conns_.size() >= kMaxHttpConnections) {
      ::close(fd);  // too many scrapers at once: this one tries again later
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->fd.reset(fd);
    c->timer = loop_.addTimer(SteadyClock::now() + kHttpTimeout, [this, fd]() {
      auto it = conns_.find(fd);
      if (it != conns_.end()) it->second->timer = 0;
      close(fd);
    });
    conns_[fd] = std::move(c);
    loop_.watch(fd, POLLIN, [this, fd](short rev) { onIo(fd, rev); });
  }
}

void MetricsHttpServer::close(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (it->second->timer) loop_.cancelTimer(it->second->timer);
  loop_.unwatch(fd);
  conns_.erase(it);  // closes fd
}

void MetricsHttpServer::reply(Conn& c) {
  HttpRequest req = parseHttpRequest(c.in);
  if (req.state == HttpRequest::State::Incomplete) return;
  c.replying = true;
  const char* text = "text/plain; charset=utf-8";
  if (req.state == HttpRequest::State::Bad) {
    c.out = httpResponse(req.status, text, "bad request\n");
  } else {
    switch (routeMetricsRequest(req)) {
      case MetricsRoute::Metrics: {
        ExpositionFormat f = negotiateFormat(req.accept);
        c.out = httpResponse(200, contentType(f), render_(f), req.method == "HEAD");
        break;
      }
      case MetricsRoute::NotFound:
        c.out = httpResponse(404, text, "not found; the metrics are at /metrics\n",
                             req.method == "HEAD");
        break;
      case MetricsRoute::MethodNotAllowed:
        c.out = httpResponse(405, text, "method not allowed\n", false, "Allow: GET, HEAD\r\n");
        break;
    }
  }
  loop_.setEvents(c.fd.get(), POLLOUT);
}

void MetricsHttpServer::onIo(int fd, short revents) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (!c.replying) {
    char buf[2048];
    ssize_t n = 1;  // stays 1 when the head is already full
    while (c.in.size() < kMaxHttpRequest &&
           (n = read(fd, buf, std::min(sizeof buf, kMaxHttpRequest - c.in.size()))) > 0)
      c.in.append(buf, static_cast<size_t>(n));
    bool eof = n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
    reply(c);
    if (!c.replying) {
      if (eof || (revents & (POLLHUP | POLLERR))) close(fd);
      return;
    }
  }
  while (c.sent < c.out.size()) {
    ssize_t n = send(fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      break;
    }
    c.sent += static_cast<size_t>(n);
  }
  // Done (or the peer went): half-close first, so that the scraper reads the whole reply.
  shutdown(fd, SHUT_WR);
  close(fd);
}

}  // namespace dynmx::tunneld
