// relaymap_bench: socketmap lookups per second and their latency, dynmx-relaymap against a
// minimal in-memory socketmap responder, under the same load in the same run.
//
// Usage: relaymap_bench [--relaymap PATH] [--connections 50] [--seconds 5] [--leases 1000]
//                       [--load-processes 0]
// Run by hand as root (like the integration tests), never by ctest; it prints figures only.
//  - dynmx-relaymap: started through RelayMapProcess (sandboxed as in production), fed a table of
//    --leases leases, asked over its unix socket;
//  - the baseline: a minimal responder forked from this program: one poll loop, a hash set of
//    addresses, no sandbox, no expiry check; what any socketmap server at least costs.
// The load: --connections client connections kept open (as Postfix keeps them), each with one
// lookup outstanding at a time, for --seconds per server; keys alternate between a leased address
// (OK) and a stranger (NOTFOUND), in sendmail's and Postfix's forms. --load-processes N adds N
// busy processes (one per core stands in for a daemon delivering mail) during both runs.
// Printed: lookups/s, p50 and p99 latency of each, and the ratios relaymap/baseline.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include "shared/clock.hpp"
#include "shared/fd.hpp"
#include "shared/inet_addr.hpp"
#include "tunneld/relay/relaymap_process.hpp"
#include "tunneld/relay/socketmap.hpp"

namespace {

using namespace dynmx;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string relaymap;
  int connections = 50;
  int seconds = 5;
  int leases = 1000;
  int load_processes = 0;
};

std::string leasedAddress(int i) {
  return "10." + std::to_string((i >> 16) & 255) + "." + std::to_string((i >> 8) & 255) + "." +
         std::to_string(i & 255);
}

std::string netstring(const std::string& s) { return std::to_string(s.size()) + ":" + s + ","; }

int connectUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::fprintf(stderr, "relaymap_bench: cannot connect to %s: %s\n", path.c_str(),
                 std::strerror(errno));
    std::exit(69);
  }
  return fd;
}

// The baseline: a minimal socketmap responder (one poll loop, a hash set), in a child process.
[[noreturn]] void serveMinimal(int listen_fd, const std::unordered_set<std::string>& leased) {
  std::vector<pollfd> fds{{listen_fd, POLLIN, 0}};
  std::vector<std::string> bufs(1);
  for (;;) {
    if (poll(fds.data(), fds.size(), -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      int c = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        fds.push_back({c, POLLIN, 0});
        bufs.emplace_back();
      }
    }
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds.erase(fds.begin() + static_cast<long>(i));
        bufs.erase(bufs.begin() + static_cast<long>(i));
        --i;
        continue;
      }
      std::string& in = bufs[i];
      in.append(buf, static_cast<size_t>(n));
      std::string out;
      for (;;) {
        size_t colon = in.find(':');
        if (colon == std::string::npos) break;
        size_t len = std::strtoul(in.c_str(), nullptr, 10);
        if (in.size() < colon + 1 + len + 1) break;
        std::string req = in.substr(colon + 1, len);
        in.erase(0, colon + 1 + len + 1);
        std::string key = req.substr(req.find(' ') + 1);
        auto a = InetAddr::parse(key);
        out += netstring(a && leased.count(a->str()) ? "OK OK" : "NOTFOUND ");
      }
      if (!out.empty() && write(fds[i].fd, out.data(), out.size()) < 0) continue;
    }
  }
}

struct Figures {
  double rate = 0;
  double p50_ms = 0, p99_ms = 0;
  long answers = 0, errors = 0;
};

// `connections` connections, one lookup outstanding on each, for `seconds`.
Figures drive(const std::string& path, const Options& o) {
  std::vector<UniqueFd> conns;
  std::vector<pollfd> fds;
  std::vector<Clock::time_point> sent(static_cast<size_t>(o.connections));
  std::vector<std::string> in(static_cast<size_t>(o.connections));
  for (int i = 0; i < o.connections; ++i) {
    conns.emplace_back(connectUnix(path));
    fds.push_back({conns.back().get(), POLLIN, 0});
  }
  std::vector<double> lat;
  lat.reserve(1 << 20);
  Figures f;
  long seq = 0;
  auto ask = [&](size_t i) {
    ++seq;
    std::string key = seq % 4 == 0   ? "ipv6:2001:db8:0:0:0:0:0:" + std::to_string(seq % 9 + 1)
                      : seq % 2 == 0 ? leasedAddress(static_cast<int>(seq % o.leases))
                                     : "192.0.2." + std::to_string(seq % 250 + 1);
    std::string req = netstring("relay " + key);
    sent[i] = Clock::now();
    if (write(fds[i].fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) ++f.errors;
  };
  for (size_t i = 0; i < fds.size(); ++i) ask(i);
  auto t0 = Clock::now(), end = t0 + std::chrono::seconds(o.seconds);
  while (Clock::now() < end) {
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[1024];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        std::fprintf(stderr, "relaymap_bench: the server closed a connection\n");
        std::exit(70);
      }
      in[i].append(buf, static_cast<size_t>(n));
      if (in[i].back() != ',') continue;  // one reply outstanding: it ends with ','
      auto now = Clock::now();
      lat.push_back(std::chrono::duration<double, std::milli>(now - sent[i]).count());
      if (in[i].find("OK") == std::string::npos && in[i].find("NOTFOUND") == std::string::npos)
        ++f.errors;
      ++f.answers;
      in[i].clear();
      ask(i);
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::sort(lat.begin(), lat.end());
  f.rate = static_cast<double>(f.answers) / secs;
  if (!lat.empty()) {
    f.p50_ms = lat[lat.size() / 2];
    f.p99_ms = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  }
  return f;
}

Options parse(int argc, char** argv) {
  Options o;
  char self[4096] = {};
  if (readlink("/proc/self/exe", self, sizeof self - 1) > 0) {
    std::string dir(self);
    o.relaymap = dir.substr(0, dir.rfind('/')) + "/dynmx-relaymap";
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--relaymap") o.relaymap = v;
    else if (a == "--connections") o.connections = std::atoi(v.c_str());
    else if (a == "--seconds") o.seconds = std::atoi(v.c_str());
    else if (a == "--leases") o.leases = std::atoi(v.c_str());
    else if (a == "--load-processes") o.load_processes = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "relaymap_bench: unknown option %s\n", a.c_str());
      std::exit(64);
    }
  }
  return o;
}

void print(const char* name, const Figures& f) {
  std::printf("%-26s %9.0f lookups/s  p50 %.3f ms  p99 %.3f ms  (%ld answers, %ld errors)\n", name,
              f.rate, f.p50_ms, f.p99_ms, f.answers, f.errors);
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  char tmpl[] = "/tmp/relaymap-bench.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  chmod(dir.c_str(), 0755);
  int64_t far = systemTime().unixSeconds() + 3600;
  std::vector<relay::FeedLease> feed;
  std::unordered_set<std::string> leased;
  for (int i = 0; i < o.leases; ++i) {
    auto a = *InetAddr::parse(leasedAddress(i));
    feed.push_back({a, "c" + std::to_string(i % 100), far});
    leased.insert(a.str());
  }
  std::vector<pid_t> children;
  for (int i = 0; i < o.load_processes; ++i) {
    pid_t p = fork();
    if (p == 0) {
      volatile unsigned long x = 0;
      for (;;) x = x + 1;
    }
    children.push_back(p);
  }

  // The baseline.
  auto base_sock = relay::openRelaySocket(dir + "/minimal.sock", 0600, "");
  if (!base_sock) {
    std::fprintf(stderr, "relaymap_bench: %s\n", base_sock.error().message.c_str());
    return 69;
  }
  pid_t minimal = fork();
  if (minimal == 0) serveMinimal(base_sock->get(), leased);
  children.push_back(minimal);
  base_sock->reset();

  // dynmx-relaymap, as the daemon runs it.
  relay::RelayMapProcessConfig cfg;
  cfg.program = o.relaymap;
  cfg.socket_path = dir + "/relay.sock";
  cfg.user = "nobody";
  auto proc = relay::RelayMapProcess::open(cfg, systemTime());
  if (!proc || !(*proc)->start().ok()) {
    std::fprintf(stderr, "relaymap_bench: cannot start %s\n", o.relaymap.c_str());
    return 69;
  }
  (*proc)->setLeases(feed);
  for (int i = 0; i < 100 && (*proc)->wantsWrite(); ++i) {
    (void)(*proc)->flush();
    usleep(10000);
  }
  usleep(200000);  // the snapshot applied at "end"

  std::printf("%d connections, one lookup outstanding each, %d s per server, %d leases, "
              "%d busy processes\n",
              o.connections, o.seconds, o.leases, o.load_processes);
  Figures b = drive(dir + "/minimal.sock", o);
  print("1. minimal responder:", b);
  Figures r = drive(cfg.socket_path, o);
  print("2. dynmx-relaymap:", r);
  std::printf("3. ratios: rate %.2f of the baseline (goal >= 0.5), p99 %.2fx the baseline "
              "(goal <= 2)\n",
              b.rate > 0 ? r.rate / b.rate : 0, b.p99_ms > 0 ? r.p99_ms / b.p99_ms : 0);

  (*proc)->stop();
  for (pid_t p : children) {
    kill(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
  std::string rm = dir + "/minimal.sock";
  unlink(rm.c_str());
  rmdir(dir.c_str());
  return 0;
}
