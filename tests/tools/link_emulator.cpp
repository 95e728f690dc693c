// dynmx-linkemu: a userspace link emulator for tests and benchmarks (tc netem is not available on
// the machines dynmx is developed and tested on). A TCP proxy on loopback that puts a slow, distant
// link between a client and a server:
//
// Usage: dynmx-linkemu --target HOST:PORT [--listen ADDR] [--delay-ms N] [--rate-kbit N]
//                      [--queue-ms N] [--control PATH] [--source ADDR]
//        dynmx-linkemu --control PATH --command reset|blackhole|stop|resume|stats
//   --target HOST:PORT  where each accepted connection is forwarded (numeric address)
//   --listen ADDR       local address to listen on (default 127.0.0.1), port chosen by the kernel;
//                       "listening PORT" is printed on stdout once the socket is ready
//   --delay-ms N        one-way delay in each direction (RTT = 2N), default 0
//   --rate-kbit N       rate of each direction in kbit/s, shared by every connection (the link is
//                       one line), default 0 = unlimited
//   --queue-ms N        the bottleneck's buffer, in ms of link time: a direction stops reading
//                       from its senders while more than this is queued (default 100)
//   --control PATH      a unix socket taking one command per connection, answered "ok" (or
//                       "stats ..."): reset (every connection closed with RST), blackhole (bytes
//                       vanish in both directions, no FIN, no RST: a dead path), stop (nothing moves,
//                       bytes wait), resume (back to normal after blackhole or stop), stats
//   --source ADDR       bind the outgoing side to this local address (a forwarder whose far end
//                       sees ADDR, not the original client)
//   --command CMD       client mode: send CMD to the emulator at --control PATH, print the answer
//
// Model: each direction is a line of `rate`: bytes read at time t leave at max(t, line free) plus
// their serialization time and arrive `delay` later, in order, in segments of at most kSegment
// bytes. It models no TCP slow start, no loss and no retransmission: figures measured through it
// are optimistic (a real path of the same RTT and rate is slower to ramp up). Say so where they
// are printed. Exits 0 on SIGTERM/SIGINT, 64 on bad usage, 71 when a socket cannot be set up.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Micros = std::chrono::microseconds;
constexpr size_t kSegment = 4096;
constexpr size_t kMaxPerConnection = 4 << 20;  // bytes queued in one direction of one connection

volatile sig_atomic_t g_stop = 0;
void onSignal(int) { g_stop = 1; }

struct Options {
  std::string target_host;
  uint16_t target_port = 0;
  std::string listen = "127.0.0.1";
  std::string source;  // empty: the kernel picks the outgoing address
  Micros delay{0};
  uint64_t rate_bps = 0;  // bits per second; 0 = unlimited
  Micros queue_limit{100000};
  std::string control;
  std::string command;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "dynmx-linkemu: %s\n", why);
  std::exit(64);
}

[[noreturn]] void fatal(const std::string& what) {
  std::fprintf(stderr, "dynmx-linkemu: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(71);
}

Options parseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--target") {
      std::string v = value();
      auto colon = v.rfind(':');
      if (colon == std::string::npos) usage("--target wants HOST:PORT");
      o.target_host = v.substr(0, colon);
      if (o.target_host.size() > 2 && o.target_host.front() == '[')
        o.target_host = o.target_host.substr(1, o.target_host.size() - 2);
      o.target_port = static_cast<uint16_t>(std::atoi(v.c_str() + colon + 1));
    } else if (a == "--listen") {
      o.listen = value();
    } else if (a == "--source") {
      o.source = value();
    } else if (a == "--delay-ms") {
      o.delay = Micros(std::atoll(value().c_str()) * 1000);
    } else if (a == "--rate-kbit") {
      o.rate_bps = std::strtoull(value().c_str(), nullptr, 10) * 1000;
    } else if (a == "--queue-ms") {
      o.queue_limit = Micros(std::atoll(value().c_str()) * 1000);
    } else if (a == "--control") {
      o.control = value();
    } else if (a == "--command") {
      o.command = value();
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.command.empty() && (o.target_host.empty() || o.target_port == 0))
    usage("--target HOST:PORT is required");
  if (!o.command.empty() && o.control.empty()) usage("--command needs --control PATH");
  return o;
}


// One socket address from a numeric host and a port.
socklen_t makeAddr(const std::string& host, uint16_t port, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    return sizeof *v4;
  }
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    return sizeof *v6;
  }
  usage(("not a numeric address: " + host).c_str());
}

// One direction of the link: shared by every connection.
struct Line {
  uint64_t rate_bps = 0;
  Micros delay{0};
  Clock::time_point free_at{};
  // When `n` bytes read now arrive at the far side.
  Clock::time_point schedule(size_t n, Clock::time_point now) {
    Clock::time_point start = std::max(now, free_at);
    Micros ser{rate_bps ? static_cast<int64_t>(n * 8 * 1000000ULL / rate_bps) : 0};
    free_at = start + ser;
    return free_at + delay;
  }
  Micros backlog(Clock::time_point now) const {
    return free_at > now ? std::chrono::duration_cast<Micros>(free_at - now) : Micros{0};
  }
};

struct Segment {
  Clock::time_point at;
  std::string data;
};

// Bytes on their way from one socket to the other.
struct Flow {
  int from = -1, to = -1;
  std::deque<Segment> wire;  // in flight, in arrival order
  std::string out;           // arrived, not yet written to `to`
  size_t queued = 0;
  bool eof = false;       // `from` said EOF: pass it on once everything before it arrived
  bool shut = false;      // EOF passed on
};

struct Conn {
  int a = -1, b = -1;  // accepted side, target side
  bool connected = false;
  Flow up, down;       // a->b, b->a
  bool dead = false;
};

struct Emulator {
  Options opt;
  Line up_line, down_line;
  int listen_fd = -1, control_fd = -1;
  std::list<Conn> conns;
  enum class Mode { Normal, Blackhole, Stopped } mode = Mode::Normal;
  uint64_t bytes_up = 0, bytes_down = 0, resets = 0;

  void closeConn(Conn& c, bool rst) {
    for (int fd : {c.a, c.b}) {
      if (fd < 0) continue;
      if (rst) {
        linger l{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      }
      close(fd);
    }
    c.a = c.b = -1;
    c.dead = true;
  }

  void accept() {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    sockaddr_storage ss;
    socklen_t len = makeAddr(opt.target_host, opt.target_port, ss);
    int t = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t < 0) {
      close(fd);
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (!opt.source.empty()) {
      sockaddr_storage src;
      socklen_t slen = makeAddr(opt.source, 0, src);
      if (bind(t, reinterpret_cast<sockaddr*>(&src), slen) != 0) {
        close(fd);
        close(t);
        return;
      }
    }
    if (::connect(t, reinterpret_cast<sockaddr*>(&ss), len) != 0 && errno != EINPROGRESS) {
      close(fd);
      close(t);
      return;
    }
    Conn& c = conns.emplace_back();
    c.a = fd;
    c.b = t;
    c.up.from = fd;
    c.up.to = t;
    c.down.from = t;
    c.down.to = fd;
  }

  // Reads what `f.from` has, if the line has room, and puts it on the wire.
  void readFlow(Conn& c, Flow& f, Line& line, uint64_t& counter, Clock::time_point now) {
    char buf[65536];
    while (canRead(f, line, now)) {
      ssize_t n = ::read(f.from, buf, sizeof buf);
      if (n == 0) {
        f.eof = true;
        return;
      }
      if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) closeConn(c, true);
        return;
      }
      if (mode == Mode::Blackhole) continue;  // gone
      counter += static_cast<uint64_t>(n);
      for (ssize_t off = 0; off < n; off += kSegment) {
        size_t len = std::min<size_t>(kSegment, static_cast<size_t>(n - off));
        f.wire.push_back({line.schedule(len, now), std::string(buf + off, len)});
        f.queued += len;
      }
    }
  }

  // Moves arrived segments to `out` and writes what the receiver takes.
  void deliverFlow(Conn& c, Flow& f, Clock::time_point now) {
    while (!f.wire.empty() && f.wire.front().at <= now) {
      f.out += f.wire.front().data;
      f.wire.pop_front();
    }
    while (!f.out.empty()) {
      ssize_t n = ::write(f.to, f.out.data(), f.out.size());
      if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) closeConn(c, true);
        return;
      }
      f.queued -= static_cast<size_t>(n);
      f.out.erase(0, static_cast<size_t>(n));
    }
    // A dead path passes no FIN either.
    if (f.eof && !f.shut && f.wire.empty() && f.out.empty() && mode != Mode::Blackhole) {
      shutdown(f.to, SHUT_WR);
      f.shut = true;
    }
  }

  std::string command(const std::string& cmd) {
    if (cmd == "reset") {
      for (Conn& c : conns) closeConn(c, true);
      ++resets;
      mode = Mode::Normal;
    } else if (cmd == "blackhole") {
      mode = Mode::Blackhole;
      for (Conn& c : conns) {
        for (Flow* f : {&c.up, &c.down}) {
          f->wire.clear();
          f->out.clear();
          f->queued = 0;
        }
      }
    } else if (cmd == "stop") {
      mode = Mode::Stopped;
    } else if (cmd == "resume") {
      mode = Mode::Normal;
    } else if (cmd == "stats") {
      return "stats connections=" + std::to_string(conns.size()) + " bytes_up=" +
             std::to_string(bytes_up) + " bytes_down=" + std::to_string(bytes_down) +
             " resets=" + std::to_string(resets) + "\n";
    } else {
      return "error unknown command\n";
    }
    return "ok\n";
  }

  void onControl() {
    int fd = ::accept4(control_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[128];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    std::string cmd = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!cmd.empty() && (cmd.back() == '\n' || cmd.back() == '\r')) cmd.pop_back();
    std::string reply = command(cmd);
    (void)!::write(fd, reply.data(), reply.size());
    close(fd);
  }

  Clock::time_point nextArrival() const {
    Clock::time_point next = Clock::time_point::max();
    for (const Conn& c : conns)
      for (const Flow* f : {&c.up, &c.down})
        if (!f->wire.empty()) next = std::min(next, f->wire.front().at);
    return next;
  }

  bool canRead(const Flow& f, const Line& line, Clock::time_point now) const {
    if (mode == Mode::Stopped || f.eof) return false;
    if (mode == Mode::Blackhole) return true;  // read and drop
    return !(line.rate_bps && line.backlog(now) > opt.queue_limit) && f.queued <= kMaxPerConnection;
  }

  short events(const Flow& rd, const Line& line, const Flow& wr, Clock::time_point now) const {
    short e = 0;
    if (canRead(rd, line, now)) e |= POLLIN;
    if (mode != Mode::Stopped && !wr.out.empty()) e |= POLLOUT;
    return e;
  }

  // How long poll may sleep: until the next segment arrives or a full line has room again.
  int pollTimeout(Clock::time_point now) const {
    Clock::time_point next = mode == Mode::Stopped ? Clock::time_point::max() : nextArrival();
    for (const Line* l : {&up_line, &down_line})
      if (l->rate_bps && l->backlog(now) > opt.queue_limit)
        next = std::min(next, l->free_at - opt.queue_limit);
    if (next == Clock::time_point::max()) return 200;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1;
    return static_cast<int>(std::clamp<int64_t>(ms, 0, 200));
  }

  void pollOnce() {
    std::vector<pollfd> pfds{{listen_fd, POLLIN, 0}};
    if (control_fd >= 0) pfds.push_back({control_fd, POLLIN, 0});
    const size_t first_conn = pfds.size();
    std::vector<Conn*> owners(pfds.size(), nullptr);
    Clock::time_point now = Clock::now();
    for (Conn& c : conns) {
      if (!c.connected) {
        pfds.push_back({c.b, POLLOUT, 0});
        owners.push_back(&c);
        continue;
      }
      pfds.push_back({c.a, events(c.up, up_line, c.down, now), 0});
      owners.push_back(&c);
      pfds.push_back({c.b, events(c.down, down_line, c.up, now), 0});
      owners.push_back(&c);
    }
    if (::poll(pfds.data(), pfds.size(), pollTimeout(now)) < 0 && errno != EINTR) fatal("poll");
    now = Clock::now();
    if (pfds[0].revents & POLLIN) accept();
    if (control_fd >= 0 && (pfds[1].revents & POLLIN)) onControl();
    for (size_t i = first_conn; i < pfds.size(); ++i) {
      Conn* c = owners[i];
      if (c->dead || c->connected || !pfds[i].revents) continue;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c->b, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) closeConn(*c, true);
      else c->connected = true;
    }
    for (Conn& c : conns) {
      if (c.dead || !c.connected || mode == Mode::Stopped) continue;
      if (canRead(c.up, up_line, now)) readFlow(c, c.up, up_line, bytes_up, now);
      if (!c.dead && canRead(c.down, down_line, now))
        readFlow(c, c.down, down_line, bytes_down, now);
      if (!c.dead) deliverFlow(c, c.up, now);
      if (!c.dead) deliverFlow(c, c.down, now);
      if (!c.dead && c.up.shut && c.down.shut) closeConn(c, false);
    }
    conns.remove_if([](const Conn& c) { return c.dead; });
  }

  void setUp() {
    up_line.rate_bps = down_line.rate_bps = opt.rate_bps;
    up_line.delay = down_line.delay = opt.delay;
    sockaddr_storage ss;
    socklen_t len = makeAddr(opt.listen, 0, ss);
    listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) fatal("socket");
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) fatal("bind " + opt.listen);
    if (listen(listen_fd, 128) != 0) fatal("listen");
    if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) fatal("getsockname");
    uint16_t port = ss.ss_family == AF_INET
                        ? ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port)
                        : ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    if (!opt.control.empty()) {
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      if (opt.control.size() >= sizeof un.sun_path) usage("--control path too long");
      std::strcpy(un.sun_path, opt.control.c_str());
      ::unlink(opt.control.c_str());
      control_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (control_fd < 0 || bind(control_fd, reinterpret_cast<sockaddr*>(&un), sizeof un) != 0 ||
          listen(control_fd, 8) != 0)
        fatal("control socket " + opt.control);
    }
    std::printf("listening %u\n", port);
    std::fflush(stdout);
  }
};

int clientMode(const Options& o) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (o.control.size() >= sizeof un.sun_path) usage("--control path too long");
  std::strcpy(un.sun_path, o.control.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&un), sizeof un) != 0)
    fatal("control socket " + o.control);
  std::string line = o.command + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) fatal("write");
  char buf[512];
  ssize_t n = ::read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) fatal("no answer from " + o.control);
  std::fwrite(buf, 1, static_cast<size_t>(n), stdout);
  return std::strncmp(buf, "error", 5) == 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = parseArgs(argc, argv);
  if (!opt.command.empty()) return clientMode(opt);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = onSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  Emulator emu;
  emu.opt = opt;
  emu.setUp();
  while (!g_stop) emu.pollOnce();
  for (Conn& c : emu.conns) emu.closeConn(c, false);
  if (!opt.control.empty()) ::unlink(opt.control.c_str());
  return 0;
}
