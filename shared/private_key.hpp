// private_key.hpp: the one check that an SSH private key file is private.
//
// Contract: privateKeyProblem(path) stats the file and says what is wrong with it as a private
// key: it cannot be stat'ed, it is not a regular file, or group or others have any access to it
// (mode & 077). The configuration loader and the SSH client word the problem for their readers;
// checkPrivateKeyFile() is the SSH client's wording, as a Status.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "shared/result.hpp"

namespace dynmx {

struct PrivateKeyProblem {
  enum class Kind { CannotStat, NotRegular, NotPrivate } kind;
  int err = 0;      // errno, for CannotStat
  mode_t mode = 0;  // permission bits (& 07777), for NotPrivate
};

std::optional<PrivateKeyProblem> privateKeyProblem(const std::string& path);

// "0644": a mode as chmod takes it, for messages.
std::string octalMode(mode_t mode);

// An identity file must be a regular file not readable, writable or executable by group/others.
Status checkPrivateKeyFile(const std::string& path);

}  // namespace dynmx
