// storage_limits.cpp: free space and per-client queue usage of the spool (see
// storage_limits.hpp).
//
// A scan lists incoming/, active/, deferred/ and hold/ (in the order a message moves through
// them, so that a move during the scan is seen in its new place more often than not) and reads
// the envelope of each queue id it does not know yet. A committed file's client and size never
// change except for journal lines, which are small, so a known id costs nothing but its
// directory entry.
#include "shared/storage_limits.hpp"

#include <sys/statvfs.h>

#include <cerrno>
#include <vector>

namespace dynmx {

Result<uint64_t> freeBytes(const std::string& dir) {
  struct statvfs sv {};
  if (::statvfs(dir.c_str(), &sv) != 0) return sysError(errno, "statvfs " + dir);
  return static_cast<uint64_t>(sv.f_bavail) * static_cast<uint64_t>(sv.f_frsize);
}

uint64_t minFreeThreshold(const SpoolConfig& spool) {
  if (spool.min_free) return *spool.min_free;
  return spool.max_message_size + spool.max_message_size / 2;
}

SpoolUsage::SpoolUsage(const Spool& spool, std::chrono::milliseconds max_age,
                       const TimeSource& time)
    : spool_(spool), max_age_(max_age), time_(time) {}

void SpoolUsage::refreshLocked() {
  SteadyClock::time_point now = time_.steady();
  if (scanned_ && max_age_.count() > 0 && now - *scanned_ < max_age_) return;
  for (auto& [id, e] : files_) e.seen = false;
  for (QueueState st :
       {QueueState::Incoming, QueueState::Active, QueueState::Deferred, QueueState::Hold}) {
    for (const std::string& id : spool_.list(st)) {
      auto it = files_.find(id);
      if (it != files_.end()) {
        it->second.seen = true;
        continue;
      }
      Result<SpoolMessage> m = spool_.load(st, id);
      if (!m) continue;  // moved on or removed since the listing, or corrupt: not counted
      files_[id] = Entry{m->env.client, m->good_length, true};
    }
  }
  std::erase_if(files_, [](const auto& kv) { return !kv.second.seen; });
  scanned_ = now;
}

ClientUsage SpoolUsage::of(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  refreshLocked();
  ClientUsage u;
  for (const auto& [id, e] : files_) {
    if (e.client != client) continue;
    ++u.messages;
    u.bytes += e.bytes;
  }
  return u;
}

std::map<std::string, ClientUsage> SpoolUsage::all() {
  std::lock_guard<std::mutex> lock(mu_);
  refreshLocked();
  std::map<std::string, ClientUsage> out;
  for (const auto& [id, e] : files_) {
    ClientUsage& u = out[e.client];
    ++u.messages;
    u.bytes += e.bytes;
  }
  return out;
}

void SpoolUsage::noteCommitted(const std::string& id, const std::string& client, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  files_[id] = Entry{client, bytes, true};
}

std::optional<StorageRefusal> checkSpace(const SpoolConfig& spool, const Result<uint64_t>& free,
                                         uint64_t size) {
  const char* text = "Insufficient system storage";
  uint64_t need = minFreeThreshold(spool);
  if (need == 0) return std::nullopt;  // spool.min_free = 0: no check
  if (!free) return StorageRefusal{"452", "4.3.1", text, free.error().message};
  uint64_t avail = free.value();
  if (avail >= size && avail - size >= need) return std::nullopt;
  std::string why = "spool " + spool.dir + " has " + std::to_string(avail) + " bytes free";
  if (size) why += ", message size " + std::to_string(size);
  why += ", spool.min_free needs " + std::to_string(need);
  if (!spool.min_free) why += " (unset: 1.5 x spool.max_message_size)";
  return StorageRefusal{"452", "4.3.1", text, why};
}

std::optional<StorageRefusal> checkClientQuota(const ClientConfig& client,
                                               const ClientUsage& usage) {
  std::string why;
  if (client.max_queue_messages && usage.messages >= client.max_queue_messages) {
    why = "client " + client.name + " has " + std::to_string(usage.messages) +
          " messages queued, max_queue_messages " + std::to_string(client.max_queue_messages);
  } else if (client.max_queue_bytes && usage.bytes >= client.max_queue_bytes) {
    why = "client " + client.name + " has " + std::to_string(usage.bytes) +
          " bytes queued, max_queue_bytes " + std::to_string(client.max_queue_bytes);
  } else {
    return std::nullopt;
  }
  return StorageRefusal{"452", "4.2.2",
                        "Mailbox full: too much mail queued for this domain, try again later", why};
}

}  // namespace dynmx
