// atomic_file.cpp: temp, write, fsync, close, rename, fsync(dir) (see atomic_file.hpp).
#include "shared/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "shared/fd.hpp"

namespace dynmx {

namespace {

Status writeTemp(const std::string& tmp, const std::string& bytes, FsOps& fs) {
  if (fs.unlink(tmp.c_str()) != 0 && errno != ENOENT) return sysError(errno, "remove stale " + tmp);
  int fd = fs.open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return sysError(errno, "create " + tmp);
  auto failed = [&](const char* what) {
    Error e = sysError(errno, std::string(what) + " " + tmp);
    fs.close(fd);
    fs.unlink(tmp.c_str());
    return e;
  };
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = fs.write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return failed("write");
    }
    off += static_cast<size_t>(n);
  }
  if (fs.fsync(fd) != 0) return failed("fsync");
  if (fs.close(fd) != 0) {
    Error e = sysError(errno, "close " + tmp);
    fs.unlink(tmp.c_str());
    return e;
  }
  return {};
}

Status syncDirectoryOf(const std::string& path, FsOps& fs) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = fs.open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return sysError(errno, "open directory " + dir);
  if (fs.fsync(fd) != 0) {
    int e = errno;
    fs.close(fd);
    return sysError(e, "fsync directory " + dir);
  }
  fs.close(fd);
  return {};
}

}  // namespace

Status writeFileAtomically(const std::string& path, const std::string& bytes, FsOps& fs) {
  const std::string tmp = path + ".tmp";
  if (auto st = writeTemp(tmp, bytes, fs); !st) return st;
  if (fs.rename(tmp.c_str(), path.c_str()) != 0) {
    Error e = sysError(errno, "rename " + tmp + " to " + path);
    fs.unlink(tmp.c_str());
    return e;
  }
  return syncDirectoryOf(path, fs);
}

Result<std::optional<std::string>> readSmallFile(const std::string& path, size_t max) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) return std::optional<std::string>();
    return sysError(errno, "open " + path);
  }
  std::string bytes;
  char buf[16384];
  while (bytes.size() <= max) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError(errno, "read " + path);
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  return std::optional<std::string>(std::move(bytes));
}

}  // namespace dynmx
