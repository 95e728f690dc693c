// privileges_test.cpp: dropPrivileges() in a forked child (the switch cannot be undone, so the
// test process itself never drops): the user changes, root cannot be regained, an unknown user
// is a configuration error. Needs root for the switch itself.
#include "shared/privileges.hpp"

#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

namespace dynmx {
namespace {

TEST(DropPrivileges, SwitchesForGoodInAChild) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  struct passwd* pw = getpwnam("nobody");
  ASSERT_NE(pw, nullptr);
  uid_t uid = pw->pw_uid;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto failed = dropPrivileges("nobody", "test.user");
    // Exit codes name the first thing that went wrong, for the parent's assertion.
    if (failed) _exit(1);
    if (getuid() != uid || geteuid() != uid) _exit(2);
    if (setuid(0) == 0) _exit(3);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(DropPrivileges, EmptyUserIsNoSwitchAndUnknownUserIsAConfigError) {
  EXPECT_FALSE(dropPrivileges("", "test.user").has_value());
  auto failed = dropPrivileges("no-such-user-dynmx", "test.user");
  ASSERT_TRUE(failed.has_value());
  EXPECT_TRUE(failed->unknown_user);
  EXPECT_EQ(failed->message, "test.user: no user named no-such-user-dynmx");
}

}  // namespace
}  // namespace dynmx
