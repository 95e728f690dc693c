// harness.hpp: small helpers every integration test needs.
//
// TempDir makes a fresh directory (mode 0755) under /tmp or another parent and removes its tree on
// destruction (unless DYNMX_KEEP_TMP is set), after giving the owner back access to its top; it is
// the one temp-dir type of all the tests. freePort() asks the kernel for a free loopback port;
// Process spawns an argv (no shell) and, in its destructor, kills the process it started by its
// pid (SIGTERM, then SIGKILL after a grace period) and reaps it; waitFor() polls a predicate until
// a generous deadline. Failures to set up (cannot fork, cannot create a directory) throw
// std::runtime_error with the reason, so that the test fails naming the cause.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dynmx::test {

// Directory of the built programs (<build>/bin).
std::string binDir();

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "dynmx-test", const std::string& parent = "/tmp");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
uint16_t freePort();

struct SpawnOptions {
  std::string stdin_path;        // "" -> /dev/null
  std::string stdout_path;       // "" -> inherit
  std::string stderr_path;       // "" -> inherit
  std::vector<std::string> env;  // NAME=VALUE entries added to (or replacing) the environment
  bool new_process_group = true;
};

class Process {
 public:
  Process() = default;
  Process(std::vector<std::string> argv, SpawnOptions opts = {});
  ~Process();
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();  // reaps it when it has exited
  // Exit status as from waitpid (only after it ended), or nullopt.
  std::optional<int> status() const { return status_; }
  // Sends `sig` to the process (by pid).
  void signal(int sig);
  // Waits for the end, up to `deadline`; returns the wait status, nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds deadline = std::chrono::seconds(60));
  // SIGTERM, wait up to `grace`, SIGKILL; also kills descendants found in /proc.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(10));

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Pids of the descendants of `pid` (children, grandchildren...), from /proc.
std::vector<pid_t> descendants(pid_t pid);

// Runs argv to completion (no shell) and returns its exit status (-1 if it did not exit normally);
// stdout is captured into *out when given.
int runCommand(const std::vector<std::string>& argv, std::string* out = nullptr,
               const std::string& stdin_data = "");

bool waitFor(const std::function<bool()>& pred,
             std::chrono::milliseconds deadline = std::chrono::seconds(60),
             std::chrono::milliseconds step = std::chrono::milliseconds(20));

std::string readFile(const std::string& path);
void writeFile(const std::string& path, const std::string& data, mode_t mode = 0644);
std::vector<std::string> listDir(const std::string& path);  // names, sorted, without . and ..
// The value of a "Key:" line in /proc/PID/status in kB (VmRSS, VmHWM), or -1.
long procStatusKb(pid_t pid, const std::string& key);

}  // namespace dynmx::test
