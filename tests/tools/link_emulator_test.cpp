// Tests of dynmx-linkemu: bytes pass intact both ways, never faster than the delay, and each fault
// (reset, blackhole, stop/resume) does to a connection what a real path's fault would.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <gtest/gtest.h>
#include <random>
#include <string>
#include <thread>

#include "tests/harness/harness.hpp"

namespace dynmx::test {
namespace {

using namespace std::chrono_literals;

// An echo server on 127.0.0.1: every byte it reads goes back.
class EchoServer {
 public:
  EchoServer() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&sa), len) != 0 || listen(fd_, 8) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0)
      throw std::runtime_error("echo server: cannot listen");
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~EchoServer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  uint16_t port() const { return port_; }

 private:
  void run() {
    while (!stop_) {
      int c = accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::thread([c] {
        char buf[65536];
        for (;;) {
          ssize_t n = read(c, buf, sizeof buf);
          if (n <= 0) break;
          if (write(c, buf, static_cast<size_t>(n)) != n) break;
        }
        close(c);
      }).detach();
    }
  }
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class LinkEmulatorTest : public ::testing::Test {
 protected:
  void start(int delay_ms, int rate_kbit = 0) {
    std::string out = dir_ / "out";
    SpawnOptions so;
    so.stdout_path = out;
    emu_ = Process({binDir() + "/dynmx-linkemu", "--target",
                    "127.0.0.1:" + std::to_string(echo_.port()), "--delay-ms",
                    std::to_string(delay_ms), "--rate-kbit", std::to_string(rate_kbit),
                    "--control", control()},
                   so);
    ASSERT_TRUE(waitFor([&] { return readFile(out).find('\n') != std::string::npos; }));
    port_ = static_cast<uint16_t>(std::stoi(readFile(out).substr(10)));
  }
  std::string control() const { return dir_ / "control"; }
  std::string command(const std::string& cmd) {
    std::string out;
    runCommand({binDir() + "/dynmx-linkemu", "--control", control(), "--command", cmd}, &out);
    return out;
  }
  int connectToEmulator() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(port_);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
      throw std::runtime_error("cannot connect to the emulator");
    return fd;
  }
  // Reads exactly n bytes (or less at EOF/error, with errno kept in *err).
  static std::string readN(int fd, size_t n, int* err = nullptr) {
    std::string got;
    char buf[65536];
    while (got.size() < n) {
      ssize_t r = read(fd, buf, std::min(sizeof buf, n - got.size()));
      if (r <= 0) {
        if (err) *err = r < 0 ? errno : 0;
        break;
      }
      got.append(buf, static_cast<size_t>(r));
    }
    return got;
  }
  static bool readable(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
  }

  TempDir dir_{"dynmx-linkemu"};
  EchoServer echo_;
  Process emu_;
  uint16_t port_ = 0;
};

TEST_F(LinkEmulatorTest, BytesPassIntactBothWays) {
  start(5, 50000);
  int fd = connectToEmulator();
  std::string data(1 << 20, '\0');
  std::mt19937 rng(7);
  for (char& c : data) c = static_cast<char>(rng());
  std::thread writer([&] { ASSERT_EQ(write(fd, data.data(), data.size()), (ssize_t)data.size()); });
  std::string back = readN(fd, data.size());
  writer.join();
  EXPECT_TRUE(back == data) << "echo differs (" << back.size() << " bytes back)";
  EXPECT_NE(command("stats").find("bytes_up=1048576"), std::string::npos) << command("stats");
  close(fd);
}

TEST_F(LinkEmulatorTest, ARoundTripIsNeverShorterThanTwiceTheDelay) {
  start(40);
  int fd = connectToEmulator();
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(write(fd, "x", 1), 1);
  EXPECT_EQ(readN(fd, 1), "x");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 80ms);  // a lower bound: the model's own
  close(fd);
}

TEST_F(LinkEmulatorTest, ResetGivesTheClientAConnectionReset) {
  start(1);
  int fd = connectToEmulator();
  ASSERT_EQ(write(fd, "x", 1), 1);
  ASSERT_EQ(readN(fd, 1), "x");
  EXPECT_EQ(command("reset"), "ok\n");
  int err = 0;
  EXPECT_EQ(readN(fd, 1, &err), "");
  EXPECT_EQ(err, ECONNRESET);
  close(fd);
}

TEST_F(LinkEmulatorTest, BlackholeDropsBytesWithoutFinOrResetUntilResumed) {
  start(1);
  int fd = connectToEmulator();
  EXPECT_EQ(command("blackhole"), "ok\n");
  ASSERT_EQ(write(fd, "lost", 4), 4);
  EXPECT_FALSE(readable(fd, 300)) << "a blackholed path delivered bytes, a FIN or a reset";
  EXPECT_EQ(command("resume"), "ok\n");
  ASSERT_EQ(write(fd, "kept", 4), 4);
  EXPECT_EQ(readN(fd, 4), "kept");  // "lost" is gone for good
  close(fd);
}

TEST_F(LinkEmulatorTest, StopHoldsBytesAndResumeDeliversThemInOrder) {
  start(1);
  int fd = connectToEmulator();
  EXPECT_EQ(command("stop"), "ok\n");
  ASSERT_EQ(write(fd, "held", 4), 4);
  EXPECT_FALSE(readable(fd, 300)) << "bytes moved while the link was stopped";
  EXPECT_EQ(command("resume"), "ok\n");
  EXPECT_EQ(readN(fd, 4), "held");
  close(fd);
}

TEST_F(LinkEmulatorTest, UnknownCommandIsAnError) {
  start(0);
  EXPECT_EQ(command("explode"), "error unknown command\n");
}

}  // namespace
}  // namespace dynmx::test
