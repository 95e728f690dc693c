// stale_socket_test.cpp: clearStaleSocket() against real Unix sockets in a temp directory: a stale
// socket is removed, a live one is refused and kept, anything else at the path is never touched.
#include "shared/stale_socket.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "shared/fd.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

// A socket bound at `path`; listening when `listen_too`, else left as a crash leaves it.
UniqueFd boundSocket(const std::string& path, bool listen_too) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0) << path;
  if (listen_too) {
    EXPECT_EQ(listen(fd.get(), 1), 0);
  }
  return fd;
}

bool exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

TEST(ClearStaleSocket, NothingAtThePathIsFine) {
  test::TempDir dir;
  EXPECT_TRUE(clearStaleSocket(dir / "s.sock", "socket", "dynmx-test").ok());
}

TEST(ClearStaleSocket, RemovesASocketNobodyListensOn) {
  test::TempDir dir;
  std::string path = dir / "s.sock";
  boundSocket(path, false).reset();  // closed: connect is refused
  ASSERT_TRUE(exists(path));
  Status st = clearStaleSocket(path, "socket " + path, "dynmx-test");
  EXPECT_TRUE(st.ok()) << st.error().message;
  EXPECT_FALSE(exists(path));
}

TEST(ClearStaleSocket, RefusesALiveSocketAndKeepsIt) {
  test::TempDir dir;
  std::string path = dir / "s.sock";
  UniqueFd live = boundSocket(path, true);
  Status st = clearStaleSocket(path, "control_socket " + path, "dynmx-test");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().message, "control_socket " + path +
                                    ": in use: another dynmx-test is listening on it; not starting");
  EXPECT_TRUE(exists(path));
}

TEST(ClearStaleSocket, NeverRemovesWhatIsNotASocket) {
  test::TempDir dir;
  std::string path = dir / "s.sock";
  std::ofstream(path) << "precious\n";
  Status st = clearStaleSocket(path, "socket " + path, "dynmx-test");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("is not a socket"), std::string::npos) << st.error().message;
  EXPECT_TRUE(exists(path));
}

}  // namespace
}  // namespace dynmx
