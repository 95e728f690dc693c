// relaymap_server.cpp: the poll loop of dynmx-relaymap (see relaymap_server.hpp).
//
// Single-threaded and non-blocking: every MTA connection is a reader, an output buffer and a
// deadline; the feed is a FeedParser whose snapshots replace the table whole. Lookups are a map
// search, so one loop keeps up with many MTA processes. Answers are written at once and only
// buffered when the socket is full; a peer that lets more than kMaxOutput pile up is cut off.
#include "tunneld/relay/relaymap_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <list>
#include <vector>

#include "shared/fd.hpp"
#include "shared/log.hpp"
#include "shared/result.hpp"
#include "shared/sysexits.hpp"

namespace dynmx::relay {
namespace {

constexpr size_t kReadChunk = 4096;
constexpr size_t kMaxOutput = 64 * 1024;

struct Conn {
  UniqueFd fd;
  SocketmapReader reader;
  std::string out;
  SteadyClock::time_point deadline;
  bool closing = false;  // answer what is buffered, then close
  bool dead = false;
};

class Server {
 public:
  Server(int listen_fd, int feed_fd, const RelayMapLimits& limits, const TimeSource& time)
      : listen_fd_(listen_fd),
        feed_fd_(feed_fd),
        limits_(limits),
        time_(time),
        feed_(limits.max_leases) {}
  int run();

 private:
  void acceptAll();
  int readFeed();  // -1: go on; else the exit code
  void readConn(Conn& c);
  void answerAll(Conn& c);
  void flush(Conn& c);
  int pollTimeoutMs() const;

  int listen_fd_;
  int feed_fd_;
  RelayMapLimits limits_;
  const TimeSource& time_;
  FeedParser feed_;
  std::optional<LeaseSnapshot> table_;
  std::list<Conn> conns_;
};

void Server::acceptAll() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        logf(LogLevel::Warning, "relaymap: accept: %s", errnoText(errno).c_str());
      }
      return;
    }
    if (conns_.size() >= limits_.max_connections) {
      close(fd);
      logf(LogLevel::Warning, "relaymap: connection refused: limit of %zu connections reached",
           limits_.max_connections);
      continue;
    }
    Conn& c = conns_.emplace_back();
    c.fd.reset(fd);
    c.reader = SocketmapReader(limits_.max_request);
    c.deadline = time_.steady() + limits_.idle_timeout;
  }
}

int Server::readFeed() {
  char buf[kReadChunk];
  for (;;) {
    ssize_t n = read(feed_fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    if (n < 0) {
      logf(LogLevel::Error, "relaymap: reading the lease feed: %s; stopping",
           errnoText(errno).c_str());
      return kExitOsErr;
    }
    if (n == 0) {
      if (feed_.inSnapshot()) {
        logf(LogLevel::Error, "relaymap: lease feed ended inside a snapshot; stopping");
        return kExitSoftware;
      }
      logf(LogLevel::Info, "relaymap: lease feed closed by dynmx-tunneld; stopping");
      return kExitOk;
    }
    if (!feed_.feed(std::string_view(buf, static_cast<size_t>(n)))) {
      logf(LogLevel::Error, "relaymap: malformed lease feed: %s; stopping", feed_.error().c_str());
      return kExitSoftware;
    }
    if (auto s = feed_.takeSnapshot()) {
      table_ = std::move(s);
      logf(LogLevel::Debug, "relaymap: lease table loaded, %zu leases", table_->leases.size());
    }
  }
}

void Server::answerAll(Conn& c) {
  std::string payload;
  for (;;) {
    SocketmapReader::State st = c.reader.next(payload);
    if (st == SocketmapReader::State::NeedMore) return;
    if (st == SocketmapReader::State::Error) {
      logf(LogLevel::Warning, "relaymap: bad request from an MTA: %s; closing the connection",
           c.reader.error().c_str());
      c.out += formatAnswer({SocketmapStatus::Perm, "bad request"});
      c.closing = true;
      return;
    }
    LeaseHolderLookup holder = [&](const InetAddr& a) -> std::optional<std::string> {
      if (!table_) return std::nullopt;
      return table_->holder(a, time_.unixSeconds());
    };
    c.out += formatAnswer(answerLeaseRequest(payload, holder));
  }
}

void Server::readConn(Conn& c) {
  char buf[kReadChunk];
  for (;;) {
    ssize_t n = read(c.fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {  // EOF or a reset: the MTA is done with us
      c.dead = true;
      return;
    }
    c.deadline = time_.steady() + limits_.idle_timeout;
    c.reader.feed(std::string_view(buf, static_cast<size_t>(n)));
    answerAll(c);
    if (c.closing) break;
  }
  flush(c);
}

void Server::flush(Conn& c) {
  while (!c.out.empty()) {
    ssize_t n = send(c.fd.get(), c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      c.dead = true;
      return;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
  if (c.out.size() > kMaxOutput) {
    logf(LogLevel::Warning, "relaymap: an MTA connection does not read its answers; closing it");
    c.dead = true;
  }
  if (c.out.empty() && c.closing) c.dead = true;
}

int Server::pollTimeoutMs() const {
  if (conns_.empty()) return -1;
  SteadyClock::time_point first = conns_.front().deadline;
  for (const Conn& c : conns_) first = std::min(first, c.deadline);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(first - time_.steady()).count();
  return ms < 0 ? 0 : static_cast<int>(std::min<long long>(ms + 1, 60'000));
}

int Server::run() {
  for (int fd : {listen_fd_, feed_fd_}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::vector<pollfd> pfds;
  std::vector<Conn*> polled;
  for (;;) {
    pfds.assign({{feed_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}});
    polled.clear();
    for (Conn& c : conns_) {
      pfds.push_back({c.fd.get(), static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
      polled.push_back(&c);
    }
    if (poll(pfds.data(), pfds.size(), pollTimeoutMs()) < 0) {
      if (errno == EINTR) continue;
      logf(LogLevel::Error, "relaymap: poll: %s; stopping", errnoText(errno).c_str());
      return kExitOsErr;
    }
    if (pfds[0].revents != 0) {
      if (int rc = readFeed(); rc >= 0) return rc;
    }
    for (size_t i = 0; i < polled.size(); ++i) {
      short re = pfds[i + 2].revents;
      if (re & (POLLERR | POLLNVAL))
        polled[i]->dead = true;
      else if (re & POLLOUT)
        flush(*polled[i]);
      else if (re & (POLLIN | POLLHUP))
        readConn(*polled[i]);
    }
    if (pfds[1].revents != 0) acceptAll();
    SteadyClock::time_point now = time_.steady();
    conns_.remove_if([&](const Conn& c) { return c.dead || now >= c.deadline; });
  }
}

}  // namespace

int serveRelayMap(int listen_fd, int feed_fd, const RelayMapLimits& limits,
                  const TimeSource& time) {
  Server s(listen_fd, feed_fd, limits, time);
  return s.run();
}

}  // namespace dynmx::relay
