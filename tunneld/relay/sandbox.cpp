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
#include <cstddef>
#include <cstdint>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
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

// The kernel's landlock_ruleset_attr as of ABI 6. The installed header may be older; the kernel
// takes a larger or smaller struct as long as the bytes it does not know are zero.
struct RulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;  // ABI 4: TCP bind (bit 0) and connect (bit 1)
  uint64_t scoped;              // ABI 6: abstract unix sockets (bit 0), signals (bit 1)
};

size_t rulesetAttrSize(int abi) {
  if (abi >= 6) return sizeof(RulesetAttr);
  if (abi >= 4) return offsetof(RulesetAttr, scoped);
  return offsetof(RulesetAttr, handled_access_net);
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
  RulesetAttr attr{};
  attr.handled_access_fs = landlockFsRights(abi);
  if (abi >= 4) attr.handled_access_net = 0x3;  // no TCP bind or connect either
  if (abi >= 6) attr.scoped = 0x3;  // no abstract unix sockets or signals outside the sandbox
  UniqueFd rs(
      static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, rulesetAttrSize(abi), 0)));
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

Status denyNewSocketsAndExec() {
#if defined(__x86_64__)
  constexpr uint32_t kArch = AUDIT_ARCH_X86_64;
  constexpr uint32_t kX32Bit = 0x40000000;  // x32 system call numbers: refused alike
#elif defined(__aarch64__)
  constexpr uint32_t kArch = AUDIT_ARCH_AARCH64;
  constexpr uint32_t kX32Bit = 0;
#else
  return Error{ENOSYS, "seccomp filter: this architecture is not supported"};
#endif
  constexpr uint32_t kDeny = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
  // Unknown architecture: kill. x32 numbers: deny. socket, socketpair, execve, execveat: EPERM.
  sock_filter prog[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, kX32Bit, 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socketpair, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execve, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execveat, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, kDeny),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog fprog{static_cast<unsigned short>(sizeof prog / sizeof prog[0]), prog};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return sysError(errno, "PR_SET_NO_NEW_PRIVS");
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
    return sysError(errno, "seccomp filter");
  }
  return {};
}

Result<std::string> enterSandbox(const SandboxOptions& opts) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return sysError(errno, "PR_SET_NO_NEW_PRIVS");
  if (Status s = dropPrivileges(opts.user); !s) return s.error();
  std::string how;
  Status ll = denyFilesystemLandlock();
  if (ll) {
    how = "landlock ABI " + std::to_string(landlockAbi());
  } else if (Status ns = denyFilesystemNamespace(); ns) {
    how = "user namespace + chroot to an empty tmpfs (" + ll.error().message + ")";
  } else {
    std::string why = ll.error().message + "; " + ns.error().message;
    if (!opts.allow_unsandboxed) {
      return Error{0, "no filesystem sandbox can be had (" + why + ")"};
    }
    how = "NO filesystem sandbox (allowed by the administrator): " + why;
  }
  // Landlock leaves named unix sockets reachable: take away making any new socket (and exec).
  if (Status sc = denyNewSocketsAndExec(); !sc) {
    if (!opts.allow_unsandboxed) return Error{0, sc.error().message};
    return how + "; NO seccomp filter (allowed by the administrator): " + sc.error().message;
  }
  return how + "; seccomp: no new sockets, no exec";
}

}  // namespace dynmx::relay
