// sandbox.hpp: the confinement dynmx-relaymap enters before it reads any input.
//
// Contract: the caller first closes every descriptor but 0-2 and the ones it serves on
// (closeOtherDescriptors; then it may open its syslog connection). enterSandbox() then (2) sets
// PR_SET_NO_NEW_PRIVS, (3) when running as root, drops to the configured unprivileged user (all
// of uid, gid and supplementary groups; a root start with no user is an error), then (4) denies all
// filesystem access: with Landlock when the kernel has it (a ruleset that handles every access
// right the kernel knows and allows none), else with an unprivileged user + mount namespace and a
// chroot into an empty read-only tmpfs, after which every capability is dropped; (5) installs a
// seccomp filter that refuses socket(2), socketpair(2), execve(2) and execveat(2), because
// Landlock does not cover connecting to named unix sockets. Descriptors already open keep
// working (accept, read, write); opening anything by path, or making a new socket, fails.
//
// Failure: an error in (2) or (3) is returned and the caller must not serve. When neither
// Landlock nor the namespace can be had, or the seccomp filter cannot be installed, the result is
// an error too, unless allow_unsandboxed: then it says so (the caller logs it, and the text
// contains "NO ") and the process serves with what it could get.
#pragma once

#include <string>
#include <vector>

#include "shared/result.hpp"

namespace dynmx::relay {

struct SandboxOptions {
  std::string user;                // drop to this user when started as root
  bool allow_unsandboxed = false;  // serve without filesystem confinement if none can be had
};

// What confines the process now, e.g. "landlock ABI 6" or "user namespace + chroot"; or an error.
Result<std::string> enterSandbox(const SandboxOptions& opts);

// The steps, on their own (enterSandbox uses them; tests apply each one in a child).
Status closeOtherDescriptors(const std::vector<int>& keep_fds);
Status dropPrivileges(const std::string& user);
int landlockAbi();                 // the kernel's Landlock ABI version, or 0 without Landlock
Status denyFilesystemLandlock();   // needs landlockAbi() >= 1
Status denyFilesystemNamespace();  // user + mount namespace, chroot to an empty tmpfs
Status denyNewSocketsAndExec();    // seccomp: socket, socketpair, execve, execveat -> EPERM

}  // namespace dynmx::relay
