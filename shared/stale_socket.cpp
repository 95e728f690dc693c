// stale_socket.cpp: the stale-socket probe of every dynmx daemon (see stale_socket.hpp).
//
// A connect(2) is the only reliable test of "somebody listens": the file outlives its process.
// ENOENT from connect means the path went away meanwhile, which is as good as removed.
#include "shared/stale_socket.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "shared/fd.hpp"
#include "shared/log.hpp"

namespace dynmx {

Status clearStaleSocket(const std::string& path, const std::string& label,
                        const std::string& listener) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return sysError(errno, label + ": lstat");
  }
  if (!S_ISSOCK(st.st_mode))
    return Error{0, label + ": exists and is not a socket; refusing to remove it"};
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return Error{0, label + ": path too long"};
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!probe) return sysError(errno, label + ": socket(AF_UNIX)");
  int rc = connect(probe.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  int err = errno;
  probe.reset();
  if (rc == 0)
    return Error{0, label + ": in use: another " + listener + " is listening on it; not starting"};
  if (err == ENOENT) return {};
  if (err != ECONNREFUSED)
    return sysError(err, label + ": cannot tell whether it is stale: connect");
  if (unlink(path.c_str()) != 0 && errno != ENOENT)
    return sysError(errno, label + ": removing the stale socket");
  logf(LogLevel::Notice, "removed stale socket %s (nobody was listening)", path.c_str());
  return {};
}

}  // namespace dynmx
