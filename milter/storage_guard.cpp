// storage_guard.cpp: dynmx-milter's storage checks (see storage_guard.hpp).
#include "milter/storage_guard.hpp"

namespace dynmx::milter {

std::optional<StorageRefusal> StorageGuard::atMail(const Config& cfg, uint64_t declared_size) {
  return checkSpace(cfg.spool, freeBytes(spool_.dir()), declared_size);
}

std::optional<StorageRefusal> StorageGuard::atRcpt(const Config& cfg, const ClientConfig& client,
                                                   uint64_t declared_size) {
  if (auto r = checkSpace(cfg.spool, freeBytes(spool_.dir()), declared_size)) return r;
  if (!client.max_queue_messages && !client.max_queue_bytes) return std::nullopt;
  return checkClientQuota(client, usage_.of(client.name));
}

std::optional<StorageRefusal> StorageGuard::atEom(const Config& cfg) {
  return checkSpace(cfg.spool, freeBytes(spool_.dir()), 0);
}

void StorageGuard::committed(const std::string& id, const std::string& client, uint64_t bytes) {
  usage_.noteCommitted(id, client, bytes);
}

}  // namespace dynmx::milter
