// metrics.hpp: the counters of dynmx-tunneld, kept where the events happen, read by the exposition.
//
// Contract: one Metrics registry per daemon; ClientCounters are created on first use and live as
// long as the registry (a client removed by a reload keeps its counters until the restart, as a
// Prometheus counter must never go back). The queue's results (results.cpp) count recipients
// delivered, deferred, bounced and expired and the time of the last delivery; each SshClient
// counts its connection attempts, handshake, host-key and authentication failures and the bytes
// it wrote to its SMTP channels. Every counter only grows. Everything runs on the daemon's one
// event-loop thread: no locking. A reference from client() stays valid for the registry's life.
// Failure behaviour: none; counting cannot fail.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace dynmx::tunneld {

struct ClientCounters {
  // ssh_client.cpp
  uint64_t connection_attempts = 0;  // TCP connects started (one per address tried)
  uint64_t handshake_failures = 0;   // SSH handshakes that failed or timed out (not host keys)
  uint64_t host_key_mismatches = 0;  // the far end presented another host key than the stored one
  uint64_t auth_failures = 0;        // logins refused (every identity key was refused)
  uint64_t sent_bytes = 0;           // bytes written into the SMTP channels (before SSH)
  // results.cpp, one per recipient
  uint64_t delivered = 0;     // accepted by the far end
  uint64_t deferred = 0;      // temporary failure, or the session broke: tried again later
  uint64_t bounced = 0;       // permanent refusal by the far end
  uint64_t expired = 0;       // still pending after queue_lifetime: failed without an attempt
  int64_t last_delivery = 0;  // unix seconds of the last recipient delivered; 0: none yet
};

class Metrics {
 public:
  ClientCounters& client(const std::string& name) { return clients_[name]; }
  const std::map<std::string, ClientCounters>& clients() const { return clients_; }

 private:
  std::map<std::string, ClientCounters> clients_;
};

}  // namespace dynmx::tunneld
