// privileges.cpp: initgroups/setgid/setuid and the regain check (see privileges.hpp).
//
// The order matters: groups first (setgid and initgroups need root), the user last. After a
// switch away from root, setuid(0) must fail; if it succeeds the switch did not stick (a
// saved set-user-id left behind) and the daemon must not run.
#include "shared/privileges.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>

#include "shared/result.hpp"

namespace dynmx {

std::optional<PrivilegeError> dropPrivileges(const std::string& user, const std::string& key) {
  if (user.empty()) return std::nullopt;
  struct passwd* pw = getpwnam(user.c_str());
  if (!pw) return PrivilegeError{true, key + ": no user named " + user};
  if (geteuid() == pw->pw_uid) return std::nullopt;
  auto failed = [&](const std::string& what) {
    int err = errno;
    return PrivilegeError{false, key + " " + user + ": " + what + ": " + errnoText(err)};
  };
  if (initgroups(pw->pw_name, pw->pw_gid) != 0) return failed("initgroups");
  if (setgid(pw->pw_gid) != 0) return failed("setgid(" + std::to_string(pw->pw_gid) + ")");
  if (setuid(pw->pw_uid) != 0) return failed("setuid(" + std::to_string(pw->pw_uid) + ")");
  if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0))
    return PrivilegeError{false, key + " " + user +
                                     ": privileges could not be dropped (root "
                                     "can be regained)"};
  return std::nullopt;
}

}  // namespace dynmx
