// storage_limits.hpp: how much room the spool may take: the free space its file system keeps
// (spool.min_free) and each client's share of the queue (max_queue_messages, max_queue_bytes).
//
// Contract: the writers (dynmx-milter, dynmx-enqueue) ask before they take new mail for a client;
// checkStorage() answers nullopt (go on) or the refusal: 452 4.3.1 when the file system is short of
// space, 452 4.2.2 when the client is over its own limit. Nothing here refuses mail by itself and
// nothing here touches a spool file: SpoolUsage only lists the state directories and reads the
// envelopes of files it has not seen before.
//
// Accuracy: a client's usage is what the spool holds (incoming/, active/, deferred/, hold/; not
// tmp/ nor corrupt/). Messages still being received are not counted, so several messages received
// at once may each pass a limit they reach together: a limit can be passed by the number of
// messages in progress for that client (and, with a cache, what other writers added since the
// last scan); a refusal is always a tempfail, so nothing is lost for it. A file moving between two
// states while a scan lists them may be missed for that one scan.
//
// Failure behaviour: when statvfs on the spool fails, the space check fails closed (452 4.3.1,
// the reason logged by the caller); a file that cannot be read during a scan is skipped (it is
// corrupt or gone, and not the writers' business).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "shared/result.hpp"
#include "shared/spool.hpp"

namespace dynmx {

// Bytes available to unprivileged writers on the file system holding `dir` (statvfs: f_bavail *
// f_frsize). Errors name the directory.
Result<uint64_t> freeBytes(const std::string& dir);

// The free space below which new mail is refused: spool.min_free when set (0: never refused),
// else 1.5 x spool.max_message_size (Postfix's floor: room for one message of the largest size,
// and a margin).
uint64_t minFreeThreshold(const SpoolConfig& spool);

struct ClientUsage {
  uint64_t messages = 0;
  uint64_t bytes = 0;  // file sizes, envelope and journal included
};

// A client's usage of the spool, from the state directories, cached between scans.
class SpoolUsage {
 public:
  // A scan is reused for `max_age` (0: every call scans).
  SpoolUsage(const Spool& spool, std::chrono::milliseconds max_age,
             const TimeSource& time = systemTime());

  ClientUsage of(const std::string& client);
  std::map<std::string, ClientUsage> all();
  // A file this process has just committed: counted at once, before the next scan sees it.
  void noteCommitted(const std::string& id, const std::string& client, uint64_t bytes);

 private:
  struct Entry {
    std::string client;
    uint64_t bytes = 0;
    bool seen = false;
  };
  void refreshLocked();

  const Spool& spool_;
  std::chrono::milliseconds max_age_;
  const TimeSource& time_;
  std::mutex mu_;
  std::map<std::string, Entry> files_;  // queue id -> owner and size (both fixed once committed)
  std::optional<SteadyClock::time_point> scanned_;
};

// A refusal: the SMTP reply and one line for the log.
struct StorageRefusal {
  std::string code;   // "452"
  std::string xcode;  // "4.3.1" or "4.2.2"
  std::string text;   // for the SMTP reply
  std::string why;    // for the log: numbers and the key that decided
};

// Whether the spool may take a message of `size` bytes (0 when unknown) now: refused when the
// free space minus `size` is below minFreeThreshold. `free` is freeBytes(spool.dir); a statvfs
// failure refuses (fail closed) unless the check is off.
std::optional<StorageRefusal> checkSpace(const SpoolConfig& spool, const Result<uint64_t>& free,
                                         uint64_t size);
// Whether `client` is over its own limits with `usage`.
std::optional<StorageRefusal> checkClientQuota(const ClientConfig& client,
                                               const ClientUsage& usage);

}  // namespace dynmx
