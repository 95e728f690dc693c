// storage_guard.hpp: dynmx-milter's side of the storage limits (shared/storage_limits.hpp): the
// questions a MessageSession asks before it takes mail for a client, with the process's cache of
// the clients' queue usage.
//
// Contract: one StorageGuard per process, shared by every connection (thread-safe). atMail() is
// asked only when the sender declared SIZE=; atRcpt() for each recipient that routes to a client;
// atEom() once the copies are written, before the first commit. Each answers nullopt (go on) or a
// 452 refusal and logs nothing: the session logs with its queue id. committed() counts a file at
// once, so that this process's own mail counts against a limit before the next scan.
//
// Usage is rescanned at most every kUsageMaxAge: mail the other writers (dynmx-enqueue) add, and
// deliveries by dynmx-tunneld, are seen within that time.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "shared/config.hpp"
#include "shared/spool.hpp"
#include "shared/storage_limits.hpp"

namespace dynmx::milter {

inline constexpr std::chrono::milliseconds kUsageMaxAge{2000};

class StorageGuard {
 public:
  explicit StorageGuard(const Spool& spool) : spool_(spool), usage_(spool, kUsageMaxAge) {}

  std::optional<StorageRefusal> atMail(const Config& cfg, uint64_t declared_size);
  std::optional<StorageRefusal> atRcpt(const Config& cfg, const ClientConfig& client,
                                       uint64_t declared_size);
  std::optional<StorageRefusal> atEom(const Config& cfg);
  void committed(const std::string& id, const std::string& client, uint64_t bytes);

 private:
  const Spool& spool_;
  SpoolUsage usage_;
};

}  // namespace dynmx::milter
