// atomic_file.hpp: replacing a small state file so that a crash leaves the old one or the new one.
//
// Contract: writeFileAtomically() writes PATH.tmp (a stale one is removed first) opened
// O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC mode 0600 -> write -> fsync -> checked close -> rename to
// PATH -> fsync of the directory, the sequence of the spool's commits. Every failure removes the
// temporary file and names the step and the file. readSmallFile() reads a file whole, up to `max`
// bytes (more is cut there, for the caller's parser to refuse).
#pragma once

#include <optional>
#include <string>

#include "shared/result.hpp"
#include "shared/spool.hpp"

namespace dynmx {

Status writeFileAtomically(const std::string& path, const std::string& bytes, FsOps& fs = realFs());
// nullopt (with no error) when the file does not exist.
Result<std::optional<std::string>> readSmallFile(const std::string& path, size_t max);

}  // namespace dynmx
