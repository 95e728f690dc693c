// sandbox.cpp: no new privileges, no stray descriptors, no root, no filesystem (see sandbox.hpp).
//
// Landlock first: it needs no privilege and confines the process whatever the mount table looks
// like. The namespace fallback is OpenSMTPD's and sshd's chroot to an empty directory, done without
// root through a user namespace; it then drops the capabilities the new namespace gave, so that
// the chroot cannot be undone from inside.
#include "tunneld/relay/sandbox.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <string>

#include "shared/fd.hpp"

namespace dynmx::relay {
namespace {

// Every filesystem access right per Landlock ABI version (the kernel rejects rights it does not
// know, so the set handled is the one of the running kernel's ABI).
uint64_t landlockFsRights(int abi) {
  uint64_t r = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1;  // ABI 1: bits 0..12
  if (abi >= 2) r |= 1ULL << 13;                        // REFER
  if (abi >= 3) r |= 1ULL << 14;                        // TRUNCATE
  if (abi >= 5) r |= 1ULL << 15;                        // IOCTL_DEV
  return r;
}

Status writeProcFile(const char* path, const std::string& text) {
  UniqueFd fd(open(path, O_WRONLY | O_CLOEXEC));
  if (!fd) return sysError(errno, std::string("open ") + path);
  if (write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return sysError(errno, std::string("write ") + path);
  }
  return {};
}

Status dropAllCapabilities() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capset, &hdr, data) != 0) return sysError(errno, "capset (drop all)");
  return {};
}

}  // namespace

Status closeOtherDescriptors(const std::vector<int>& keep_fds) {
  std::vector<int> keep = {0, 1, 2};
  keep.insert(keep.end(), keep_fds.begin(), keep_fds.end());
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  unsigned first = 0;
  for (int k : keep) {
    if (k < 0) continue;
    if (static_cast<unsigned>(k) > first &&
        syscall(SYS_close_range, first, static_cast<unsigned>(k) - 1, 0) != 0) {
      return sysError(errno, "close_range");
    }
    first = static_cast<unsigned>(k) + 1;
  }
  if (syscall(SYS_close_range, first, ~0U, 0) != 0) return sysError(errno, "close_range");
  return {};
}

Status dropPrivileges(const std::string& user) {
  if (getuid() != 0 && geteuid() != 0) return {};
  if (user.empty()) return Error{0, "started as root, and no unprivileged user to drop to"};
  errno = 0;
  struct passwd* pw = getpwnam(user.c_str());
  if (!pw) return Error{errno, "user " + user + ": no such user"};
  if (pw->pw_uid == 0) return Error{0, "user " + user + ": is root; need an unprivileged user"};
  gid_t gid = pw->pw_gid;
  uid_t uid = pw->pw_uid;
  if (setgroups(1, &gid) != 0) return sysError(errno, "setgroups for " + user);
  if (setresgid(gid, gid, gid) != 0) return sysError(errno, "setresgid for " + user);
  if (setresuid(uid, uid, uid) != 0) return sysError(errno, "setresuid for " + user);
  if (setuid(0) == 0 || geteuid() == 0)
    return Error{0, "could regain root after dropping to " + user};
  return {};
}

int landlockAbi() {
  long abi = syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  return abi < 0 ? 0 : static_cast<int>(abi);
}

Status denyFilesystemLandlock() {
  int abi = landlockAbi();
  if (abi < 1) return Error{ENOSYS, "Landlock is not available in this kernel"};
  landlock_ruleset_attr attr{};
  attr.handled_access_fs = landlockFsRights(abi);
  UniqueFd rs(static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0)));
  if (!rs) return sysError(errno, "landlock_create_ruleset");
  // No rule added: nothing on any path is allowed.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return sysError(errno, "PR_SET_NO_NEW_PRIVS");
  if (syscall(SYS_landlock_restrict_self, rs.get(), 0) != 0) {
    return sysError(errno, "landlock_restrict_self");
  }
  return {};
}

Status denyFilesystemNamespace() {
  uid_t uid = geteuid();
  gid_t gid = getegid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
    return sysError(errno, "unshare user+mount namespace");
  // After a drop from root the process is not dumpable, which makes /proc/self root's: allow the
  // id maps to be written, then make it undumpable again.
  if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) return sysError(errno, "PR_SET_DUMPABLE");
  if (Status s = writeProcFile("/proc/self/setgroups", "deny"); !s) return s;
  if (Status s = writeProcFile("/proc/self/uid_map",
                               std::to_string(uid) + " " + std::to_string(uid) + " 1");
      !s) {
    return s;
  }
  if (Status s = writeProcFile("/proc/self/gid_map",
                               std::to_string(gid) + " " + std::to_string(gid) + " 1");
      !s) {
    return s;
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return sysError(errno, "PR_SET_DUMPABLE");
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return sysError(errno, "mount --make-rprivate /");
  }
  // An empty, read-only, tiny tmpfs over /tmp in this namespace only, and the root moved into it.
  if (mount("dynmx-empty", "/tmp", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "size=4k,nr_inodes=1,mode=0555") != 0) {
    return sysError(errno, "mount empty tmpfs");
  }
  if (chdir("/tmp") != 0) return sysError(errno, "chdir to the empty tmpfs");
  if (chroot(".") != 0) return sysError(errno, "chroot to the empty tmpfs");
  if (chdir("/") != 0) return sysError(errno, "chdir /");
  return dropAllCapabilities();
}

Result<std::string> enterSandbox(const SandboxOptions& opts) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return sysError(errno, "PR_SET_NO_NEW_PRIVS");
  if (Status s = dropPrivileges(opts.user); !s) return s.error();
  Status ll = denyFilesystemLandlock();
  if (ll) return "landlock ABI " + std::to_string(landlockAbi());
  Status ns = denyFilesystemNamespace();
  if (ns)
    return std::string("user namespace + chroot to an empty tmpfs (") + ll.error().message + ")";
  std::string why = ll.error().message + "; " + ns.error().message;
  if (opts.allow_unsandboxed) return "NO filesystem sandbox (allowed by the administrator): " + why;
  return Error{0, "no filesystem sandbox can be had (" + why + ")"};
}

}  // namespace dynmx::relay
