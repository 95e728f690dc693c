// fd.hpp: UniqueFd, the owner of a file descriptor.
//
// Contract: a UniqueFd closes its descriptor once, when it is destroyed or reset; it moves, never
// copies, and never converts implicitly back to an int (get() is explicit). release() hands the
// descriptor to a caller who takes over closing it. close() errors are not reported: a caller for
// whom they matter (a file being committed) calls closeChecked() and handles the error itself.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <utility>

namespace dynmx {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Closes now and returns close()'s result (0, or -1 with errno saved for the caller).
  int closeChecked() {
    int rc = fd_ >= 0 ? ::close(fd_) : 0;
    fd_ = -1;
    return rc;
  }

 private:
  int fd_ = -1;
};

}  // namespace dynmx
