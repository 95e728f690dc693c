// recording_fs.hpp: an FsOps for the delivery-core tests: the real file system, with failures
// armed by path and counts of what the spool did.
//
// - failOpensFor(s): opening for writing a path that contains s fails with EIO (a journal append
//   under active/, a new spool file under tmp/); "" disarms.
// - failUnlinksFor(s): unlinking a path that contains s fails with EIO; "" disarms.
// - failDirSyncsOf(name): fsync of the spool directory `name` ("active") fails with EIO.
// - dirSyncs(name): fsyncs of the spool directory whose last path component is name ("active").
// - unlinks(): unlink calls, failed ones included.
// Thread-safe: the queue manager's SpoolRemover unlinks and fsyncs from a thread of its own.
#pragma once

#include <fcntl.h>

#include <cerrno>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "shared/spool.hpp"

namespace dynmx::tunneld::test {

class RecordingFs : public FsOps {
 public:
  int open(const char* path, int flags, mode_t mode) override {
    std::lock_guard<std::mutex> lk(mu_);
    if ((flags & (O_WRONLY | O_RDWR)) && armed(fail_open_, path)) {
      errno = EIO;
      return -1;
    }
    int fd = realFs().open(path, flags, mode);
    if (fd >= 0 && (flags & O_DIRECTORY))
      dirs_[fd] = std::filesystem::path(path).filename().string();
    return fd;
  }
  ssize_t write(int fd, const void* b, size_t n) override { return realFs().write(fd, b, n); }
  ssize_t pwrite(int fd, const void* b, size_t n, off_t o) override {
    return realFs().pwrite(fd, b, n, o);
  }
  int fsync(int fd) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (auto it = dirs_.find(fd); it != dirs_.end()) {
      ++dir_syncs_[it->second];
      if (!fail_dir_sync_.empty() && it->second == fail_dir_sync_) {
        errno = EIO;
        return -1;
      }
    }
    return realFs().fsync(fd);
  }
  int close(int fd) override {
    std::lock_guard<std::mutex> lk(mu_);
    dirs_.erase(fd);
    return realFs().close(fd);
  }
  int rename(const char* a, const char* b) override { return realFs().rename(a, b); }
  int unlink(const char* p) override {
    std::lock_guard<std::mutex> lk(mu_);
    ++unlinks_;
    if (armed(fail_unlink_, p)) {
      errno = EIO;
      return -1;
    }
    return realFs().unlink(p);
  }
  int ftruncate(int fd, off_t l) override { return realFs().ftruncate(fd, l); }
  int mkdir(const char* p, mode_t m) override { return realFs().mkdir(p, m); }

  void failOpensFor(const std::string& s) {
    std::lock_guard<std::mutex> lk(mu_);
    fail_open_ = s;
  }
  void failUnlinksFor(const std::string& s) {
    std::lock_guard<std::mutex> lk(mu_);
    fail_unlink_ = s;
  }
  void failDirSyncsOf(const std::string& dir) {
    std::lock_guard<std::mutex> lk(mu_);
    fail_dir_sync_ = dir;
  }
  int dirSyncs(const std::string& dir) {
    std::lock_guard<std::mutex> lk(mu_);
    return dir_syncs_[dir];
  }
  int unlinks() {
    std::lock_guard<std::mutex> lk(mu_);
    return unlinks_;
  }
  void clearCounts() {
    std::lock_guard<std::mutex> lk(mu_);
    dir_syncs_.clear();
    unlinks_ = 0;
  }

 private:
  static bool armed(const std::string& substr, const char* path) {
    return !substr.empty() && std::string_view(path).find(substr) != std::string_view::npos;
  }

  std::mutex mu_;
  std::map<int, std::string> dirs_;
  std::map<std::string, int> dir_syncs_;
  int unlinks_ = 0;
  std::string fail_open_, fail_unlink_, fail_dir_sync_;
};

}  // namespace dynmx::tunneld::test
