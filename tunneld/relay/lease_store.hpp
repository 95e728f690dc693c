// lease_store.hpp: the lease file, so that relay leases and hold-downs survive a restart of
// dynmx-tunneld.
//
// Contract: save() replaces the file as the spool commits a message (shared/atomic_file): PATH.tmp
// (removed first if a crash left one) opened O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC mode 0600 ->
// write -> fsync -> checked close -> rename to PATH -> fsync of the directory. A crash or an error at any step leaves
// the previous file or the new one, whole; a failed save() removes its temporary file and says
// which step failed on which file. load() reads the file back and drops what has expired.
// Format (one record a line, fields separated by one space; documented in man/dynmx-relay.7):
//   dynmx-leases 1
//   lease CLIENT ADDRESS tunnel|checkin GRANTED EXPIRES      (unix seconds)
//   hold ADDRESS UNTIL
//   end RECORDS CRC                                          (CRC-32C of every byte before "end",
//                                                             8 lowercase hex digits)
// The file ends right after the end line. A file that is torn (no end line, a record count or CRC
// that does not match) or damaged in any way is never half-believed: load() grants nothing from
// it, renames it aside to PATH.bad-UNIXTIME, logs that, and starts with no leases (fail closed: a
// client gets its lease back with its next connection or check-in).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shared/result.hpp"
#include "shared/spool.hpp"
#include "tunneld/relay/lease.hpp"

namespace dynmx::tunneld {

inline constexpr size_t kMaxLeaseFile = size_t{16} * 1024 * 1024;

struct LeaseSnapshot {
  std::vector<Lease> leases;  // `connected` is not stored (read back as false)
  std::vector<Hold> holds;
  bool operator==(const LeaseSnapshot&) const = default;
};

// The bytes save() writes.
std::string formatLeaseFile(const LeaseSnapshot& s);
// The reader of the file; fuzzed. An Error says what is wrong (and on which line).
Result<LeaseSnapshot> parseLeaseFile(std::string_view bytes);

class LeaseStore {
 public:
  explicit LeaseStore(std::string path, FsOps& fs = realFs());
  const std::string& path() const { return path_; }

  Status save(const LeaseSnapshot& s);

  struct Loaded {
    LeaseSnapshot snapshot;  // only leases and holds still live at `now`
    std::string set_aside;   // where a damaged file was moved, "" when there was none
  };
  // A missing file is an empty snapshot. An Error only when the file exists but cannot be read
  // (its permissions, an I/O error): the caller starts with no leases and says so.
  Result<Loaded> load(int64_t now);

 private:
  std::string path_;
  FsOps& fs_;
};

}  // namespace dynmx::tunneld
