// fake_fs.hpp: the one FsOps of the tests: the real file system underneath, every call counted,
// the calls that decide what a crash leaves behind traced, and failures armed on demand.
//
// Contract:
// - Calls go to the real system calls unless an armed failure picks them; a failing call sets
//   errno and returns -1. A failing close() still closes the descriptor (as Linux does, and as a
//   dying process would), so that no test leaks descriptors or locks.
// - Failures, each armed independently (arming one again replaces it):
//   failAtCall(n, Fail)      call number n (0-based, counting calls of every kind) fails, later
//                            calls work;
//   failAtCall(n, Crash)     call n and every later call fail, as if the process had died there;
//   failAtCall(n, TornWrite) as Crash, and each write()/pwrite() it fails first writes half its
//                            bytes (a torn write);
//   failNth(op, n)           the n-th call (0-based) of one kind fails;
//   failWritesAfter(bytes)   a write() that would take the bytes written through it past `bytes`
//                            fails (ENOSPC by default; pwrite() is not counted);
//   failOpensFor(s)          opening for writing a path that contains s fails with EIO;
//   failUnlinksFor(s)        unlinking a path that contains s fails with EIO;
//   failDirSyncsOf(name)     fsync of a directory whose last path component is name fails (EIO).
//   An empty string disarms the last three.
// - Records: calls() counts every call; triggered() says whether an armed failure fired;
//   dirSyncs(name) counts fsyncs of directories by last path component and unlinks() counts unlink
//   calls (failed ones included, both); trace() lists fsync, rename and unlink calls in order, as
//   "fsync dir NAME" / "fsync file", "rename FROMDIR TODIR", "unlink DIR" (directories by their
//   last path component).
// Thread-safe: the SpoolRemover unlinks and fsyncs from a thread of its own.
#pragma once

#include <sys/types.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "shared/spool.hpp"

namespace dynmx::test {

class FakeFs final : public FsOps {
 public:
  enum class Fault { Fail, Crash, TornWrite };
  enum class Op { Open, Write, Pwrite, Fsync, Close, Rename, Unlink, Ftruncate, Mkdir };

  int open(const char* path, int flags, mode_t mode) override;
  ssize_t write(int fd, const void* buf, size_t len) override;
  ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) override;
  int fsync(int fd) override;
  int close(int fd) override;
  int rename(const char* from, const char* to) override;
  int unlink(const char* path) override;
  int ftruncate(int fd, off_t len) override;
  int mkdir(const char* path, mode_t mode) override;

  void failAtCall(int n, Fault fault = Fault::Fail, int err = EIO);
  void failNth(Op op, int n, int err = EIO);
  void failWritesAfter(size_t bytes, int err = ENOSPC);
  void failOpensFor(const std::string& path_part);
  void failUnlinksFor(const std::string& path_part);
  void failDirSyncsOf(const std::string& dir_name);

  int calls() const;
  bool triggered() const;
  int dirSyncs(const std::string& dir_name) const;
  int unlinks() const;
  std::vector<std::string> trace() const;
  void clearTrace();
  void clearCounts();  // dirSyncs() and unlinks() back to zero

 private:
  static constexpr size_t kOps = static_cast<size_t>(Op::Mkdir) + 1;
  struct Verdict {
    int err = 0;  // 0: the call goes through
    bool torn = false;
  };
  struct NthRule {
    int n = -1;
    int err = EIO;
  };
  // Counts the call and decides whether it fails; `rule_err` is the verdict of the path, byte or
  // directory rule that applies to this call (0: none). Called with mu_ held.
  Verdict decide(Op op, int rule_err);

  mutable std::mutex mu_;
  int calls_ = 0;
  bool triggered_ = false;
  int fault_at_ = -1;
  Fault fault_ = Fault::Fail;
  int fault_err_ = EIO;
  std::array<int, kOps> op_calls_{};
  std::array<NthRule, kOps> nth_{};
  std::optional<size_t> write_budget_;
  int budget_err_ = ENOSPC;
  size_t written_ = 0;
  std::string fail_open_, fail_unlink_, fail_dir_sync_;
  std::map<int, std::string> dirs_;  // open directory descriptors -> last path component
  std::map<std::string, int> dir_syncs_;
  int unlinks_ = 0;
  std::vector<std::string> trace_;
};

}  // namespace dynmx::test
