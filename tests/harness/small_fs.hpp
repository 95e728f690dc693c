// small_fs.hpp: a small tmpfs for the tests of what dynmx does when its disk fills up.
//
// SmallFs mounts a tmpfs of the given size on a new directory (root only: tests skip otherwise)
// and unmounts it lazily (MNT_DETACH) in its destructor, so that processes still holding files
// there do not keep it mounted; declare it after the TempDir that holds it. fillLeaving() writes
// a filler file so that about `leave` bytes stay free (to within a page). Setup failures throw.
#pragma once

#include <sys/mount.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "shared/storage_limits.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::test {

class SmallFs {
 public:
  SmallFs(const std::string& mnt, const std::string& size) : mnt_(mnt) {
    if (::mkdir(mnt.c_str(), 0755) != 0)
      throw std::runtime_error("mkdir " + mnt + ": " + std::strerror(errno));
    std::string opts = "size=" + size + ",mode=0755";
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, opts.c_str()) != 0)
      throw std::runtime_error("mount tmpfs on " + mnt + ": " + std::strerror(errno));
  }
  ~SmallFs() { ::umount2(mnt_.c_str(), MNT_DETACH); }
  SmallFs(const SmallFs&) = delete;
  SmallFs& operator=(const SmallFs&) = delete;

  const std::string& path() const { return mnt_; }
  uint64_t freeNow() const {
    auto free = freeBytes(mnt_);
    if (!free) throw std::runtime_error(free.error().message);
    return free.value();
  }
  void fillLeaving(const std::string& file, uint64_t leave) const {
    uint64_t free = freeNow();
    if (free > leave) writeFile(file, std::string(free - leave, 'F'), 0600);
  }

 private:
  std::string mnt_;
};

}  // namespace dynmx::test
