// verify_cache.hpp: what probes found out about recipients, kept like Postfix's
// address_verify_map: a valid address for verify_positive_ttl, an invalid one for
// verify_negative_ttl, per client; and the file that keeps it across restarts.
//
// Contract: VerifyCache is a plain table of (client, address) -> entry with its expiry (unix
// seconds); addresses are compared lower-cased. find() never returns an expired entry. Only
// answers of the far end are kept (valid, invalid): "unknown" is never cached, so the next RCPT
// asks again.
// File (VerifyCacheStore; written with writeFileAtomically, so a crash leaves the old or the new):
//   dynmx-verify 1
//   entry CLIENT ADDRESS valid|invalid EXPIRES REPLY   (REPLY: the rest of the line, printable)
//   end RECORDS CRC                                     (CRC-32C of every byte before "end")
// A file that is torn or damaged in any way is not believed at all: load() renames it aside to
// PATH.bad-UNIXTIME, logs it, and starts empty (the addresses are probed again). parse is fuzzed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shared/result.hpp"
#include "shared/spool.hpp"
#include "shared/verify_reply.hpp"

namespace dynmx::tunneld {

inline constexpr size_t kMaxVerifyCacheFile = size_t{16} * 1024 * 1024;

struct VerifyEntry {
  std::string client;
  std::string address;  // lower case
  VerifyStatus status = VerifyStatus::Valid;
  int64_t expires = 0;
  std::string reply;
  bool operator==(const VerifyEntry&) const = default;
};

class VerifyCache {
 public:
  std::optional<VerifyEntry> find(const std::string& client, std::string_view address,
                                  int64_t now) const;
  void put(VerifyEntry e);  // unknown answers are ignored
  // Drops the expired entries (and those of clients no longer in `clients` when given).
  size_t expire(int64_t now);
  void forgetClientsExcept(const std::vector<std::string>& clients);
  std::vector<VerifyEntry> entries() const;
  size_t size() const { return map_.size(); }

 private:
  std::map<std::pair<std::string, std::string>, VerifyEntry> map_;
};

std::string formatVerifyCacheFile(const std::vector<VerifyEntry>& entries);
Result<std::vector<VerifyEntry>> parseVerifyCacheFile(std::string_view bytes);

class VerifyCacheStore {
 public:
  explicit VerifyCacheStore(std::string path, FsOps& fs = realFs())
      : path_(std::move(path)), fs_(fs) {}
  const std::string& path() const { return path_; }
  Status save(const VerifyCache& cache);
  // The entries still fresh at `now`. A missing file is an empty cache; a damaged one is set aside
  // (logged) and is an empty cache too; an Error only when the file cannot be read.
  Result<VerifyCache> load(int64_t now);

 private:
  std::string path_;
  FsOps& fs_;
};

}  // namespace dynmx::tunneld
