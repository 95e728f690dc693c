// verifier.hpp: dynmx-tunneld's side of recipient verification: the "verify CLIENT RECIPIENT"
// requests of the admin socket, the probes they cause, and the cache (verify_cache.hpp).
//
// Contract: request() answers at once when it can: from the cache (an earlier answer still
// fresh), or "unknown" when the client does not verify (verify_recipients = false, or no such
// client) or is not connected. Otherwise the address joins the client's probe queue (one probe per
// address however many ask) and the answer comes when the probe ends (probeDone(), called by the
// client's SSH connection, which takes the addresses with nextProbe()), or as "unknown: timed out"
// at the request's deadline (expire()). A probe's valid or invalid answer is cached for the
// client's verify_positive_ttl or verify_negative_ttl, and the cache file rewritten
// (crash-safe); an unknown answer is never cached. A probe that outlives its requests still
// fills the cache. Every reply callback is called exactly once, on the event loop's thread.
// Failure behaviour: a cache file that cannot be written is logged (the answers stay in memory);
// one that cannot be read at start is logged and the cache starts empty.
#pragma once

#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "shared/verify_reply.hpp"
#include "tunneld/verify/probe_engine.hpp"
#include "tunneld/verify/verify_cache.hpp"

namespace dynmx::tunneld {

// What a client's SSH connection asks of the verifier (the probes are the connection's work).
class ProbeSource {
 public:
  virtual ~ProbeSource() = default;
  virtual bool hasProbe(const std::string& client) const = 0;
  // The next address to probe for `client` (marked as under way), or nullopt.
  virtual std::optional<std::string> nextProbe(const std::string& client) = 0;
  virtual void probeDone(const std::string& client, const ProbeResult& result) = 0;
};

class Verifier : public ProbeSource {
 public:
  using Reply = std::function<void(const VerifyAnswer&)>;

  Verifier(std::string cache_path, const TimeSource& time);
  // Reads the cache file back (entries still fresh); logs what it could not read.
  void load();
  void configure(const std::vector<ClientConfig>& clients);

  void request(const std::string& client, const std::string& address, bool connected,
               SteadyClock::time_point deadline, Reply reply);
  // Answers every request whose deadline has come: unknown, timed out.
  void expire(SteadyClock::time_point now);
  std::optional<SteadyClock::time_point> nextDeadline() const;

  bool hasProbe(const std::string& client) const override;
  std::optional<std::string> nextProbe(const std::string& client) override;
  void probeDone(const std::string& client, const ProbeResult& result) override;

  size_t cached() const { return cache_.size(); }

 private:
  struct Waiter {
    SteadyClock::time_point deadline;
    Reply reply;
  };
  struct Pending {
    std::string client, address;  // address lower-cased
    bool started = false;
    std::vector<Waiter> waiters;
  };
  void save();

  VerifyCacheStore store_;
  const TimeSource& time_;
  VerifyCache cache_;
  std::map<std::string, ClientConfig> clients_;  // those with verify_recipients = true
  std::list<Pending> pending_;
};

}  // namespace dynmx::tunneld
