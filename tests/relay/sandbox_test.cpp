// sandbox_test.cpp: the sandbox of dynmx-relaymap, applied for real in a forked child that then
// tries to open a file this test created; the child reports through a pipe. A control child
// without the sandbox opens the same file, so that a test cannot pass because the file was
// unreadable anyway.
#include "tunneld/relay/sandbox.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <gtest/gtest.h>
#include <string>

#include "shared/fd.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::relay {
namespace {

// Runs `body` in a forked child and returns what it wrote to the pipe ("" when it wrote nothing);
// the body gets the pipe's descriptor, for a test that closes descriptors.
std::string inChild(const std::function<std::string(int report_fd)>& body) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    close(p[0]);
    std::string r = body(p[1]);
    ssize_t n = write(p[1], r.data(), r.size());
    _exit(n == static_cast<ssize_t>(r.size()) ? 0 : 1);
  }
  close(p[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return out;
}

std::string tryOpen(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    close(fd);
    return "opened";
  }
  return std::string("denied: ") + std::strerror(errno);
}

std::string tryCreate(const std::string& path) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    close(fd);
    return "created";
  }
  return std::string("denied: ") + std::strerror(errno);
}

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = dir_ / "secret";
    test::writeFile(file_, "key material\n", 0644);
    chmod(dir_.path().c_str(), 0755);
  }
  test::TempDir dir_{"dynmx-sandbox"};
  std::string file_;
};

TEST_F(SandboxTest, ControlChildCanOpenTheFile) {
  EXPECT_EQ(inChild([&](int) { return tryOpen(file_); }), "opened");
  EXPECT_EQ(inChild([&](int) {
              Status s = dropPrivileges("nobody");
              return s ? tryOpen(file_) : "setup: " + s.error().message;
            }),
            "opened");
}

TEST_F(SandboxTest, LandlockDeniesEveryPathButKeepsOpenDescriptors) {
  if (landlockAbi() < 1) GTEST_SKIP() << "no Landlock in this kernel";
  std::string r = inChild([&](int) {
    int before = open(file_.c_str(), O_RDONLY | O_CLOEXEC);
    Status s = denyFilesystemLandlock();
    if (!s) return "setup: " + s.error().message;
    char c = 0;
    std::string kept = read(before, &c, 1) == 1 && c == 'k' ? "kept" : "lost";
    return tryOpen(file_) + "|" + tryCreate(dir_ / "new") + "|" + tryOpen("/etc/passwd") + "|" +
           kept;
  });
  EXPECT_EQ(r,
            "denied: Permission denied|denied: Permission denied|denied: Permission "
            "denied|kept");
  EXPECT_NE(access((dir_ / "new").c_str(), F_OK), 0);
}

// A listening TCP socket on loopback, for connect attempts.
int tcpListener(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(fd, 4) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    throw std::runtime_error("tcp listener");
  }
  *port = ntohs(sa.sin_port);
  return fd;
}

std::string tryConnect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("no socket: ") + std::strerror(errno);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(port);
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int e = errno;
  close(fd);
  return rc == 0 ? "connected" : std::string("denied: ") + std::strerror(e);
}

TEST_F(SandboxTest, LandlockDeniesTcpConnectWhereTheKernelCan) {
  if (landlockAbi() < 4) GTEST_SKIP() << "Landlock ABI " << landlockAbi() << " has no TCP rules";
  uint16_t port = 0;
  UniqueFd l(tcpListener(&port));
  EXPECT_EQ(inChild([&](int) { return tryConnect(port); }), "connected");
  EXPECT_EQ(inChild([&](int) {
              Status s = denyFilesystemLandlock();
              return s ? tryConnect(port) : "setup: " + s.error().message;
            }),
            "denied: Permission denied");
}

TEST_F(SandboxTest, SeccompRefusesNewSocketsAndExecButKeepsOpenOnes) {
  std::string r = inChild([&](int) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return std::string("setup");
    Status s = denyNewSocketsAndExec();
    if (!s) return "setup: " + s.error().message;
    std::string out;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    out += fd < 0 ? std::string("socket: ") + std::strerror(errno) : "socket made";
    int pair[2];
    out += socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0 ? "|socketpair refused" : "|pair made";
    char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
    execv("/bin/true", argv);
    out += std::string("|exec: ") + std::strerror(errno);
    char c = 0;
    bool kept = write(sv[0], "x", 1) == 1 && read(sv[1], &c, 1) == 1 && c == 'x';
    return out + (kept ? "|kept" : "|lost");
  });
  EXPECT_EQ(r,
            "socket: Operation not permitted|socketpair refused|exec: Operation not "
            "permitted|kept");
}

TEST_F(SandboxTest, NamespaceChrootDeniesEveryPath) {
  std::string r = inChild([&](int) {
    if (Status s = dropPrivileges("nobody"); !s) return "setup: " + s.error().message;
    Status s = denyFilesystemNamespace();
    if (!s) return "setup: " + s.error().message;
    return tryOpen(file_) + "|" + tryOpen("/etc/passwd") + "|" + tryCreate("/x") + "|" +
           tryOpen("/");
  });
  if (r.rfind("setup: unshare", 0) == 0) GTEST_SKIP() << "no unprivileged user namespaces: " << r;
  EXPECT_EQ(r,
            "denied: No such file or directory|denied: No such file or directory|denied: "
            "Read-only file system|opened");
}

TEST_F(SandboxTest, EnterSandboxDropsRootSetsNoNewPrivsAndDeniesFiles) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to test dropping it";
  struct passwd* pw = getpwnam("nobody");
  ASSERT_NE(pw, nullptr);
  uid_t nobody = pw->pw_uid;
  std::string r = inChild([&](int) {
    Result<std::string> how = enterSandbox({.user = "nobody"});
    if (!how) return "setup: " + how.error().message;
    std::string ids =
        getuid() == nobody && geteuid() == nobody && setuid(0) != 0 ? "nobody" : "root";
    std::string nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 ? "nnp" : "no-nnp";
    return *how + "|" + ids + "|" + nnp + "|" + tryOpen(file_);
  });
  std::string method = landlockAbi() >= 1 ? "landlock ABI " + std::to_string(landlockAbi())
                                          : "user namespace + chroot";
  EXPECT_EQ(r.rfind(method, 0), 0u) << r;
  EXPECT_NE(r.find("; seccomp: no new sockets, no exec|"), std::string::npos) << r;
  EXPECT_NE(r.find("|nobody|nnp|denied: "), std::string::npos) << r;
}

TEST_F(SandboxTest, RootWithoutAUserIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  std::string r = inChild([&](int) {
    Result<std::string> how = enterSandbox({});
    return how ? "served as " + *how : how.error().message;
  });
  EXPECT_EQ(r, "started as root, and no unprivileged user to drop to");
  r = inChild([&](int) {
    Result<std::string> how = enterSandbox({.user = "root"});
    return how ? "served as " + *how : how.error().message;
  });
  EXPECT_EQ(r, "user root: is root; need an unprivileged user");
}

TEST_F(SandboxTest, ClosesEveryOtherDescriptor) {
  std::string r = inChild([&](int report) {
    int a = open("/dev/null", O_RDONLY);  // not CLOEXEC: inherited descriptors look like this
    int b = open("/dev/null", O_RDONLY);
    int c = open("/dev/null", O_RDONLY);
    int high = dup2(a, 200);
    if (Status s = closeOtherDescriptors({b, report}); !s) return "setup: " + s.error().message;
    auto alive = [](int fd) { return fcntl(fd, F_GETFD) >= 0 ? "open" : "closed"; };
    return std::string(alive(0)) + alive(2) + "|" + alive(a) + alive(b) + alive(c) + alive(high);
  });
  EXPECT_EQ(r, "openopen|closedopenclosedclosed");
}

}  // namespace
}  // namespace dynmx::relay
