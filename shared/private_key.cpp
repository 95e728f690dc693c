// private_key.cpp: see private_key.hpp.
#include "shared/private_key.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>

namespace dynmx {

std::optional<PrivateKeyProblem> privateKeyProblem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return PrivateKeyProblem{PrivateKeyProblem::Kind::CannotStat, errno, 0};
  if (!S_ISREG(st.st_mode)) return PrivateKeyProblem{PrivateKeyProblem::Kind::NotRegular, 0, 0};
  if (st.st_mode & 077)
    return PrivateKeyProblem{PrivateKeyProblem::Kind::NotPrivate, 0,
                             static_cast<mode_t>(st.st_mode & 07777)};
  return std::nullopt;
}

std::string octalMode(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode));
  return buf;
}

Status checkPrivateKeyFile(const std::string& path) {
  auto p = privateKeyProblem(path);
  if (!p) return {};
  switch (p->kind) {
    case PrivateKeyProblem::Kind::CannotStat:
      return sysError(p->err, "identity " + path);
    case PrivateKeyProblem::Kind::NotRegular:
      return Error{0, "identity " + path + ": not a regular file"};
    case PrivateKeyProblem::Kind::NotPrivate:
      break;
  }
  return Error{0, "identity " + path + ": mode " + octalMode(p->mode) +
                      " is readable by group or others; refusing to use it (chmod 600 " + path +
                      ")"};
}

}  // namespace dynmx
