// http_server.hpp: the metrics endpoint, a minimal HTTP/1.1 server on the daemon's event loop.
//
// Contract: open() binds and listens on [tunneld] metrics_listen (non-blocking, at start-up,
// before privileges are dropped); from then on the event loop drives it. One request per
// connection: the head is read (at most kMaxHttpRequest bytes, parseHttpRequest), answered
// (GET/HEAD /metrics: the text of the `render` callback in the negotiated format; 404, 405 with
// "Allow: GET, HEAD", 400, 431, 505 otherwise) and the connection closed. It cannot hurt delivery:
// at most kMaxHttpConnections connections at once (more are closed at accept), each ends after
// kHttpTimeout whatever its state, every read and write is non-blocking, and the reply is built
// in one call on the loop's thread (the same snapshot `dynmxctl metrics` prints).
// Failure behaviour: open() returns an Error naming the address (the daemon does not start); at
// run time a connection that fails is closed and forgotten, accept errors (EMFILE) are logged at
// most once a minute and the listener goes on.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "shared/config.hpp"
#include "shared/fd.hpp"
#include "shared/result.hpp"
#include "tunneld/event_loop.hpp"
#include "tunneld/metrics/exposition.hpp"

namespace dynmx::tunneld {

inline constexpr size_t kMaxHttpConnections = 8;
inline constexpr std::chrono::seconds kHttpTimeout{10};

class MetricsHttpServer {
 public:
  using Render = std::function<std::string(ExpositionFormat)>;
  MetricsHttpServer(EventLoop& loop, Render render) : loop_(loop), render_(std::move(render)) {}
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  Status open(const ListenAddress& where);
  uint16_t port() const { return port_; }  // the port bound (metrics_listen's own)

 private:
  struct Conn {
    UniqueFd fd;
    std::string in, out;
    size_t sent = 0;
    bool replying = false;
    uint64_t timer = 0;
  };
  void onAccept();
  void onIo(int fd, short revents);
  void reply(Conn& c);
  void close(int fd);

  EventLoop& loop_;
  Render render_;
  UniqueFd listen_fd_;
  uint16_t port_ = 0;
  std::map<int, std::unique_ptr<Conn>> conns_;
  SteadyClock::time_point last_accept_warning_{};
};

}  // namespace dynmx::tunneld
