// relaymap_server_test.cpp: the socketmap server in this process (its poll loop on a thread, a
// clock the test moves) for expiry, limits and bad input; then RelayMapProcess with the real
// dynmx-relaymap: fed leases, confined, killed and restarted, stopped.
#include "tunneld/relay/relaymap_server.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <future>
#include <gtest/gtest.h>
#include <memory>
#include <thread>
#include <vector>

#include "shared/sysexits.hpp"
#include "tests/harness/harness.hpp"
#include "tests/relay/relaymap_test_util.hpp"
#include "tunneld/relay/relaymap_process.hpp"

namespace dynmx::relay {
namespace {

using test::askOnce;
using test::MapClient;

// A clock the test moves while the server thread reads it.
class SharedTime final : public TimeSource {
 public:
  SteadyClock::time_point steady() const override {
    return SteadyClock::time_point{} + std::chrono::seconds(offset_.load());
  }
  int64_t unixSeconds() const override { return 1'700'000'000 + offset_.load(); }
  void advance(std::chrono::seconds s) { offset_ += s.count(); }

 private:
  std::atomic<int64_t> offset_{0};
};

class ServerTest : public ::testing::Test {
 protected:
  void start(RelayMapLimits limits = {}) {
    path_ = dir_ / "relay.sock";
    Result<UniqueFd> l = openRelaySocket(path_, 0600, "");
    ASSERT_TRUE(l) << l.error().message;
    listen_ = std::move(l.value());
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    feed_.reset(sv[0]);
    server_feed_.reset(sv[1]);
    result_ = std::async(std::launch::async, [this, limits] {
      return serveRelayMap(listen_.get(), server_feed_.get(), limits, time_);
    });
  }
  void feed(const std::string& text) {
    ASSERT_EQ(send(feed_.get(), text.data(), text.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(text.size()));
  }
  // Feeds a snapshot and waits until the server answers from it (the feed is read in its loop).
  void feedSnapshot(const std::vector<FeedLease>& leases, const std::string& probe,
                    const std::string& expect) {
    feed(formatSnapshot(leases));
    ASSERT_TRUE(dynmx::test::waitFor([&] { return askOnce(path_, "relay " + probe) == expect; }));
  }
  int finish() {
    feed_.reset();
    return result_.get();
  }
  void TearDown() override {
    if (result_.valid()) finish();
  }
  int64_t at(int64_t s) const { return time_.unixSeconds() + s; }

  dynmx::test::TempDir dir_{"dynmx-relaymap"};
  std::string path_;
  SharedTime time_;
  UniqueFd listen_;
  UniqueFd feed_;
  UniqueFd server_feed_;
  std::future<int> result_;
};

InetAddr ip(const char* s) {
  return *InetAddr::parse(s);
}

TEST_F(ServerTest, TempUntilTheFirstSnapshotThenAnswersFromIt) {
  start();
  EXPECT_EQ(askOnce(path_, "relay 192.0.2.7"), "TEMP lease table not loaded");
  EXPECT_EQ(askOnce(path_, "relay mail.example.org"), "NOTFOUND ");
  feedSnapshot({{ip("192.0.2.7"), "home", at(600)}, {ip("2001:db8::1"), "home", at(600)}},
               "192.0.2.7", "OK OK");
  EXPECT_EQ(askOnce(path_, "relay ipv6:2001:db8:0:0:0:0:0:1"), "OK OK");
  EXPECT_EQ(askOnce(path_, "relay 2001:db8::1"), "OK OK");
  EXPECT_EQ(askOnce(path_, "relay 192.0.2.8"), "NOTFOUND ");
  EXPECT_EQ(askOnce(path_, "access 192.0.2.7"), "PERM unknown map");
  EXPECT_EQ(finish(), kExitOk);
}

TEST_F(ServerTest, ExpiryIsJudgedByItsOwnClockWhateverTheDaemonSends) {
  start();
  feedSnapshot({{ip("192.0.2.7"), "home", at(60)}}, "192.0.2.7", "OK OK");
  // The daemon sends nothing more (it hangs): the lease still ends on time.
  time_.advance(std::chrono::seconds(59));
  EXPECT_EQ(askOnce(path_, "relay 192.0.2.7"), "OK OK");
  time_.advance(std::chrono::seconds(1));
  EXPECT_EQ(askOnce(path_, "relay 192.0.2.7"), "NOTFOUND ");
}

TEST_F(ServerTest, NewSnapshotReplacesTheOldOneWhole) {
  start();
  feedSnapshot({{ip("192.0.2.7"), "home", at(600)}}, "192.0.2.7", "OK OK");
  feedSnapshot({{ip("192.0.2.9"), "home", at(600)}}, "192.0.2.9", "OK OK");
  EXPECT_EQ(askOnce(path_, "relay 192.0.2.7"), "NOTFOUND ");
}

TEST_F(ServerTest, ManyConcurrentConnectionsKeptOpen) {
  start();
  feedSnapshot({{ip("192.0.2.7"), "home", at(600)}}, "192.0.2.7", "OK OK");
  std::vector<std::unique_ptr<MapClient>> clients;
  for (int i = 0; i < 60; ++i) {
    clients.push_back(std::make_unique<MapClient>(path_));
    ASSERT_TRUE(clients.back()->connected()) << clients.back()->error();
  }
  // Every connection asks several times, interleaved with the others (Postfix keeps them open).
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < clients.size(); ++i) {
      ASSERT_TRUE(clients[i]->sendRaw(i % 2 ? "15:relay 192.0.2.7," : "15:relay 192.0.2.8,"));
    }
    for (size_t i = 0; i < clients.size(); ++i) {
      EXPECT_EQ(clients[i]->readAnswer(), i % 2 ? "OK OK" : "NOTFOUND ") << i;
    }
  }
}

TEST_F(ServerTest, PipelinedRequestsAreAnsweredInOrder) {
  start();
  feedSnapshot({{ip("192.0.2.7"), "home", at(600)}}, "192.0.2.7", "OK OK");
  MapClient c(path_);
  ASSERT_TRUE(c.sendRaw("15:relay 192.0.2.7,15:relay 192.0.2.8,11:relay a.b.c,"));
  EXPECT_EQ(c.readAnswer(), "OK OK");
  EXPECT_EQ(c.readAnswer(), "NOTFOUND ");
  EXPECT_EQ(c.readAnswer(), "NOTFOUND ");
}

TEST_F(ServerTest, MalformedOrOverlongRequestIsAnsweredPermAndClosed) {
  start();
  feedSnapshot({{ip("192.0.2.7"), "home", at(600)}}, "192.0.2.7", "OK OK");
  for (const std::string& bad : std::vector<std::string>{
           "15:relay 192.0.2.7;", "x", "100000:", "513:" + std::string(513, 'a')}) {
    MapClient c(path_);
    ASSERT_TRUE(c.sendRaw(bad));
    EXPECT_EQ(c.readAnswer(), "PERM bad request") << bad;
    EXPECT_EQ(c.readAnswer(), "eof") << bad;
  }
  // A request before the bad one is answered normally.
  MapClient c(path_);
  ASSERT_TRUE(c.sendRaw("15:relay 192.0.2.7,zz"));
  EXPECT_EQ(c.readAnswer(), "OK OK");
  EXPECT_EQ(c.readAnswer(), "PERM bad request");
}

TEST_F(ServerTest, ConnectionsOverTheLimitAreClosedAtOnce) {
  RelayMapLimits limits;
  limits.max_connections = 2;
  start(limits);
  MapClient a(path_), b(path_);
  EXPECT_EQ(a.ask("relay h.example"), "NOTFOUND ");
  EXPECT_EQ(b.ask("relay h.example"), "NOTFOUND ");
  MapClient c(path_);
  EXPECT_EQ(c.readAnswer(), "eof") << "closed without a word, not left waiting in the backlog";
  // Room again once one leaves.
  a = MapClient(path_);  // the old `a` is closed by the move
  EXPECT_TRUE(
      dynmx::test::waitFor([&] { return askOnce(path_, "relay h.example") == "NOTFOUND "; }));
}

TEST_F(ServerTest, IdleConnectionsAreClosed) {
  RelayMapLimits limits;
  limits.idle_timeout = std::chrono::seconds(10);
  start(limits);
  MapClient idle(path_);
  EXPECT_EQ(idle.ask("relay h.example"), "NOTFOUND ");
  time_.advance(std::chrono::seconds(11));
  // Any event runs the loop, which then drops the idle connection.
  EXPECT_EQ(askOnce(path_, "relay h.example"), "NOTFOUND ");
  EXPECT_EQ(idle.readAnswer(), "eof");
}

TEST_F(ServerTest, FeedEndStopsTheServer) {
  start();
  feedSnapshot({}, "192.0.2.7", "NOTFOUND ");
  EXPECT_EQ(finish(), kExitOk);
}

TEST_F(ServerTest, MalformedFeedStopsTheServer) {
  start();
  feed("begin\nlease 192.0.2.7 home soon\n");
  EXPECT_EQ(result_.get(), kExitSoftware);
}

TEST_F(ServerTest, FeedEndingInsideASnapshotStopsTheServerAsAnError) {
  start();
  feed("begin\nlease 192.0.2.7 home 1800000000\n");
  EXPECT_EQ(finish(), kExitSoftware);
}

// ---------------------------------------------------------------------------------------------
// RelayMapProcess and the real dynmx-relaymap.

class ProcessTest : public ::testing::Test {
 protected:
  RelayMapProcessConfig config() {
    RelayMapProcessConfig c;
    c.program = dynmx::test::binDir() + "/dynmx-relaymap";
    c.socket_path = dir_ / "relay.sock";
    c.socket_mode = 0660;
    c.user = geteuid() == 0 ? "nobody" : "";
    c.log_to_stderr = true;
    c.restart_delay = std::chrono::milliseconds(100);
    return c;
  }
  std::unique_ptr<RelayMapProcess> open(RelayMapProcessConfig c) {
    auto p = RelayMapProcess::open(std::move(c), systemTime());
    if (!p) ADD_FAILURE() << p.error().message;
    return p ? std::move(p.value()) : nullptr;
  }
  static void flushAll(RelayMapProcess& p) {
    while (p.wantsWrite()) {
      Status s = p.flush();
      ASSERT_TRUE(s) << s.error().message;
      pollfd f{p.feedFd(), POLLOUT, 0};
      poll(&f, 1, 1000);
    }
  }
  bool answers(const std::string& key, const std::string& expect) {
    return dynmx::test::waitFor([&] { return askOnce(path(), "relay " + key) == expect; });
  }
  std::string path() const { return dir_ / "relay.sock"; }
  dynmx::test::TempDir dir_{"dynmx-relaymap-proc"};
};

std::vector<FeedLease> leases() {
  return {{ip("127.0.0.2"), "home", systemTime().unixSeconds() + 3600},
          {ip("::1"), "home", systemTime().unixSeconds() + 3600}};
}

TEST_F(ProcessTest, ServesTheLeasesItIsFed) {
  auto p = open(config());
  ASSERT_TRUE(p);
  struct stat st;
  ASSERT_EQ(lstat(path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  ASSERT_TRUE(p->start());
  p->setLeases(leases());
  flushAll(*p);
  EXPECT_TRUE(answers("127.0.0.2", "OK OK"));
  EXPECT_TRUE(answers("ipv6:0:0:0:0:0:0:0:1", "OK OK"));
  EXPECT_TRUE(answers("127.0.0.3", "NOTFOUND "));
}

TEST_F(ProcessTest, ChildIsConfined) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to see the dropped privileges";
  auto p = open(config());
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->start());
  p->setLeases(leases());
  flushAll(*p);
  ASSERT_TRUE(answers("127.0.0.2", "OK OK"));  // serving, so the sandbox is in place
  std::string status = dynmx::test::readFile("/proc/" + std::to_string(p->pid()) + "/status");
  struct passwd* pw = getpwnam("nobody");
  ASSERT_NE(pw, nullptr);
  std::string uid = std::to_string(pw->pw_uid);
  EXPECT_NE(status.find("\nUid:\t" + uid + "\t" + uid + "\t" + uid + "\t" + uid + "\n"),
            std::string::npos)
      << status;
  EXPECT_NE(status.find("\nNoNewPrivs:\t1\n"), std::string::npos);
  std::vector<std::string> fds = dynmx::test::listDir("/proc/" + std::to_string(p->pid()) + "/fd");
  // 0-2, the listening socket, the feed, and the connection being served at most.
  for (const std::string& fd : fds) EXPECT_LE(std::stoi(fd), 5) << fd;
}

TEST_F(ProcessTest, KilledChildFailsClosedAndIsRestartedWithTheLeases) {
  RelayMapProcessConfig c = config();
  c.restart_delay = std::chrono::hours(1);  // not yet restarted: look at the gap
  auto p = open(c);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->start());
  p->setLeases(leases());
  flushAll(*p);
  ASSERT_TRUE(answers("127.0.0.2", "OK OK"));
  pid_t first = p->pid();
  ASSERT_EQ(kill(first, SIGKILL), 0);
  ASSERT_TRUE(dynmx::test::waitFor([&] {
    p->check();
    return !p->running();
  }));
  // No server: the MTA's connect is refused at once (a lookup failure, never an OK).
  EXPECT_EQ(askOnce(path(), "relay 127.0.0.2"), "error: connect: Connection refused");
  ASSERT_TRUE(p->nextWakeup());
  EXPECT_GT(*p->nextWakeup(), SteadyClock::now() + std::chrono::minutes(50));
}

TEST_F(ProcessTest, RestartsADeadChildAfterItsDelay) {
  auto p = open(config());
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->start());
  p->setLeases(leases());
  flushAll(*p);
  ASSERT_TRUE(answers("127.0.0.2", "OK OK"));
  pid_t first = p->pid();
  ASSERT_EQ(kill(first, SIGKILL), 0);
  ASSERT_TRUE(dynmx::test::waitFor([&] {
    p->check();
    return p->running() && p->pid() != first;
  }));
  flushAll(*p);
  EXPECT_TRUE(answers("127.0.0.2", "OK OK")) << "the restarted child has the newest snapshot";
}

TEST_F(ProcessTest, StopEndsTheChildAndRemovesTheSocket) {
  auto p = open(config());
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->start());
  p->setLeases(leases());
  flushAll(*p);
  ASSERT_TRUE(answers("127.0.0.2", "OK OK"));
  pid_t pid = p->pid();
  p->stop();
  EXPECT_FALSE(p->running());
  EXPECT_NE(kill(pid, 0), 0) << "reaped";
  EXPECT_NE(access(path().c_str(), F_OK), 0);
  p->check();
  EXPECT_FALSE(p->running()) << "a stopped server is not restarted";
}

TEST_F(ProcessTest, SocketGetsItsModeAndGroup) {
  struct group* g = getgrnam("mail");
  if (!g || geteuid() != 0) GTEST_SKIP() << "needs root and a group named mail";
  gid_t mail = g->gr_gid;
  RelayMapProcessConfig c = config();
  c.socket_mode = 0620;
  c.socket_group = "mail";
  auto p = open(c);
  ASSERT_TRUE(p);
  struct stat st;
  ASSERT_EQ(lstat(path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0620u);
  EXPECT_EQ(st.st_gid, mail);
  p.reset();
  c.socket_group = "no-such-group-dynmx";
  auto bad = RelayMapProcess::open(c, systemTime());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message, "relay socket_group no-such-group-dynmx: no such group");
  EXPECT_NE(access(path().c_str(), F_OK), 0) << "no half-made socket left behind";
}

TEST_F(ProcessTest, SocketPathIsCheckedBeforeUse) {
  dynmx::test::writeFile(path(), "not a socket");
  auto r = RelayMapProcess::open(config(), systemTime());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("exists and is not a socket"), std::string::npos);
  unlink(path().c_str());
  {
    auto live = open(config());
    ASSERT_TRUE(live);
    ASSERT_TRUE(live->start());
    ASSERT_TRUE(answers("h.example", "NOTFOUND "));
    auto second = RelayMapProcess::open(config(), systemTime());
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().message.find("something is listening on it already"),
              std::string::npos);
  }
  // A stale socket (nobody listening) is replaced.
  Result<UniqueFd> stale = openRelaySocket(path(), 0600, "");
  ASSERT_TRUE(stale);
  stale.value().reset();
  auto fresh = open(config());
  ASSERT_TRUE(fresh);
  ASSERT_TRUE(fresh->start());
  EXPECT_TRUE(answers("h.example", "NOTFOUND "));
}

}  // namespace
}  // namespace dynmx::relay
