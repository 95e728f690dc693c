// ssh_client.hpp: one client's persistent SSH connection and the SMTP sessions run over it.
//
// Contract: an SshClient is a non-blocking state machine driven by the daemon's event loop: it
// exposes the socket to watch (fd(), events()) and the time it next needs attention (deadline()),
// and step() advances it as far as it can without blocking. States:
//   backoff -> resolving (helper thread) -> connecting (non-blocking connect, connect_timeout)
//   -> handshake (pinned cipher/MAC/kex, host-key method restricted to the stored key's type)
//   -> host-key check (before authentication) -> authenticating (identity file, private mode)
//   -> connected (keepalive; dead after 3 keepalives without a byte received)
// A failure anywhere closes the connection and waits reconnectDelay() (capped exponential backoff,
// full jitter, reset only after the connection stayed up kStableAfter). A host key that does not
// match, or an unknown host, means no authentication and no delivery; the state names both
// fingerprints, and a warning is logged once per change of the presented key.
// While connected and the queue has mail for the client, up to `concurrency` exec channels each
// run an SmtpClient fed from the channel (stderr read apart and logged). Results go back to the
// JobSource (finish/abandon); a transaction that cannot end cleanly is abandoned, never counted as
// delivered. libssh2 is driven per its non-blocking rules: after EAGAIN the same call is repeated
// with the same arguments; a send that is half-done blocks other senders of the session until done.
#pragma once

#include <netdb.h>

#include <chrono>
#include <cstdint>
#include <libssh2.h>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "shared/config.hpp"
#include "shared/private_key.hpp"
#include "shared/result.hpp"
#include "tunneld/delivery/delivery.hpp"
#include "tunneld/smtp/smtp_client.hpp"
#include "tunneld/ssh/host_keys.hpp"

namespace dynmx::tunneld {

// Pure policy: the wait before reconnect attempt number `failures` (1 for the first failure):
// a uniform draw `u` in [0,1) over [min, min(max, min * 2^(failures-1))] ("full jitter" above the
// floor reconnect_min, capped at reconnect_max).
std::chrono::milliseconds reconnectDelay(std::chrono::seconds min, std::chrono::seconds max,
                                         uint32_t failures, double u);

// The strong algorithms we allow, in preference order (libssh2 1.10 names).
extern const char* const kKexPref;
extern const char* const kCipherPref;
extern const char* const kMacPref;

// checkPrivateKeyFile (an identity file must be private) is in shared/private_key.hpp.

// Wakes the event loop from the resolver thread (an eventfd the loop polls).
class Waker {
 public:
  virtual ~Waker() = default;
  virtual void wake() = 0;
};

struct ClientStatus {
  std::string name;
  std::string state;          // backoff|resolving|connecting|handshake|authenticating|connected|
                              // host-key-mismatch|host-key-unknown|closing|stopped
  int64_t backoff_until = 0;  // unix time, for backoff states
  std::string address;        // "HOST[IP]:PORT" of the current/last connection
  std::string kex, hostkey, cipher, mac;
  std::string presented_fp, expected_fp;
  std::string last_error;
  int64_t connected_since = 0;
  uint32_t failures = 0;
  size_t channels = 0;
  size_t in_flight = 0;
};

struct ResolveSlot;

class SshClient {
 public:

  SshClient(ClientConfig client, const TunneldConfig& tunneld, JobSource& jobs, Waker& waker);
  ~SshClient();
  SshClient(const SshClient&) = delete;
  SshClient& operator=(const SshClient&) = delete;

  const std::string& name() const { return cfg_.name; }
  const ClientConfig& config() const { return cfg_; }
  // Applies changed settings; a change of address, port, user, key or identity reconnects.
  void reconfigure(const ClientConfig& client, const TunneldConfig& tunneld, SteadyClock::time_point now);

  int fd() const { return fd_; }
  short events() const;
  std::optional<SteadyClock::time_point> deadline() const;
  // Advances the state machine. `revents` are the poll results for fd() (0 on a timer or poke).
  void step(SteadyClock::time_point now, short revents = 0);
  // Mail may be due: start deliveries when connected (the daemon calls step() afterwards).
  void poke() { poked_ = true; }
  // Reconnect now, skipping the backoff (dynmxctl flush).
  void retryNow(SteadyClock::time_point now);

  // Graceful stop: no new transactions; in-flight ones may finish until `grace`, then abandoned;
  // QUIT, disconnect. stopped() when done.
  void beginStop(SteadyClock::time_point now, std::chrono::seconds grace);
  bool stopped() const { return state_ == State::Stopped; }

  ClientStatus status() const;

 private:
  enum class State {
    Backoff,
    Resolving,
    Connecting,
    Handshake,
    Auth,
    OpenDrain,
    Connected,
    Stopped
  };
  struct Chan;
  struct OpOwner;

  bool stepOnce(SteadyClock::time_point now, short revents);
  void startAttempt(SteadyClock::time_point now);
  bool tryNextAddress(SteadyClock::time_point now);
  bool stepConnected(SteadyClock::time_point now);
  bool stepChan(Chan& c, SteadyClock::time_point now);
  bool usableChan(const Chan& c) const;
  void sessionFailed(SteadyClock::time_point now, const std::string& why);
  size_t sessionsWithWork() const;
  void fail(const std::string& why, SteadyClock::time_point now, bool count = true);
  void teardown(SteadyClock::time_point now, const std::string& reason);
  void closeChan(Chan& c, SteadyClock::time_point now, const std::string& reason);
  int lastErrno() const;
  // libssh2's socket reads go through here (LIBSSH2_CALLBACK_RECV); *abstract is the client.
  static ssize_t recvHook(int sock, void* buf, size_t len, int flags, void** abstract);
  std::string sessionError() const;
  bool blocked(int rc, const void* op);
  void released(const void* op);
  int64_t unixNow() const;

  ClientConfig cfg_;
  TunneldConfig tcfg_;
  JobSource& jobs_;
  Waker& waker_;
  State state_ = State::Backoff;
  bool stopping_ = false;
  SteadyClock::time_point stop_deadline_{};
  SteadyClock::time_point backoff_until_{};
  SteadyClock::time_point attempt_deadline_{};
  SteadyClock::time_point connected_at_{};
  SteadyClock::time_point last_rx_{};
  SteadyClock::time_point next_keepalive_{};
  bool poked_ = false;
  uint32_t failures_ = 0;
  std::mt19937_64 rng_;

  std::shared_ptr<ResolveSlot> resolve_;
  std::vector<std::pair<std::string, std::string>> addrs_;  // (sockaddr bytes, printable IP)
  size_t addr_index_ = 0;
  int fd_ = -1;
  LIBSSH2_SESSION* session_ = nullptr;
  LIBSSH2_CHANNEL* drain_ = nullptr;
  std::optional<HostKeyVerifier> verifier_;
  const void* owner_ = nullptr;  // the operation whose half-sent packet blocks other senders
  bool want_write_ = false;
  std::vector<std::unique_ptr<Chan>> chans_;
  bool opening_ = false;  // one channel open at a time (libssh2 keeps its state per session)
  uint32_t session_failures_ = 0;  // SMTP sessions in a row that ended before any transaction
  SteadyClock::time_point session_backoff_until_{};
  SteadyClock::time_point now_hint_{};  // time of the last step, for deadline()

  // Status.
  std::string relay_;
  std::string kex_, hostkey_, cipher_, mac_;
  std::string presented_fp_, expected_fp_, mismatch_state_;
  std::string warned_fp_;  // presented key we already warned about
  std::string last_error_;
  std::vector<std::string> last_kh_warnings_;
  int64_t backoff_until_unix_ = 0;
  int64_t connected_since_unix_ = 0;
};

}  // namespace dynmx::tunneld
