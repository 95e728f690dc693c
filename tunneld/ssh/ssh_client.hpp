// ssh_client.hpp: one SSH connection to a client and the SMTP sessions run over it. A client has
// one such connection always, and extra ones while a backlog fills it (setExtra(); the daemon
// decides when, daemon_connections.cpp).
//
// Contract: an SshClient is a non-blocking state machine driven by the daemon's event loop: it
// exposes the socket to watch (fd(), events()) and the time it next needs attention (deadline()),
// and step() advances it as far as it can without blocking. States:
//   backoff -> resolving (helper thread) -> connecting (non-blocking connect, connect_timeout)
//   -> handshake (pinned cipher/MAC/kex, host-key method restricted to the stored key's type)
//   -> host-key check (before authentication) -> authenticating (each identity key in turn, the
//      new one first during a key rotation; a key that group or others can read is not used)
//   -> connected (keepalive; dead after 3 keepalives without a byte received)
// A failure anywhere closes the connection and waits reconnectDelay() (capped exponential backoff,
// full jitter, reset only after the connection stayed up kStableAfter). A host key that does not
// match, or an unknown host, means no authentication and no delivery; the state names both
// fingerprints, and a warning is logged once per change of the presented key.
// While connected and the queue has mail for the client, it decides how many exec channels run
// (up to `concurrency` working, plus warm spares); each is a ChannelSession (channel_session.hpp)
// running an SmtpClient. A channel open the far end refuses (sshd MaxSessions) fails no mail: it
// teaches the client how many SMTP channels that far end allows (logged once per new limit, kept
// across reconnects, forgotten on reconfigure), and no more are opened from then on. Results go
// back to the JobSource (finish/abandon); a transaction that cannot end cleanly is abandoned, never
// counted as delivered. With a ChannelShares (setShares: [tunneld] max_channels), a channel opens
// only while the cap leaves the client room, and a client above its fair share ends that many
// sessions once their transactions are done. libssh2 is driven per its non-blocking rules (the
// output gate of SshSession, session.hpp); the handles are owned by SshSession and SshChannel, the
// socket by a UniqueFd. For a client with relay = true it also opens one SMTP session at once after
// connecting, to read the client's dynmx-peer line, and reports that line, the traffic, the loss
// of a confirmed connection and host-key mismatches to its TunnelObserver (the daemon, which owns
// the relay leases). "Now" comes from step()'s caller and from the TimeSource given to the
// constructor (unix time of results and status), never from the system.
// With a ProbeSource (recipient verification, tunneld/verify/), a connected client also keeps
// one ProbeChannel (probe_channel.hpp) for the addresses the source has for it: opened when the
// first probe is due, QUIT after idle_close; after a failed one, the next opens kProbeRetry later.
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

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "shared/fd.hpp"
#include "shared/inet_addr.hpp"
#include "shared/private_key.hpp"
#include "shared/result.hpp"
#include "tunneld/delivery/delivery.hpp"
#include "tunneld/metrics/metrics.hpp"
#include "tunneld/relay/peer_check.hpp"
#include "tunneld/ssh/channel.hpp"
#include "tunneld/ssh/channel_session.hpp"
#include "tunneld/ssh/channel_shares.hpp"
#include "tunneld/ssh/host_keys.hpp"
#include "tunneld/ssh/probe_channel.hpp"
#include "tunneld/ssh/session.hpp"

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

// What a client's connection tells the relay leases (man/dynmx-relay.7). The daemon implements it
// and owns the lease table; the SSH room only reports what it saw. Called from step() (and from
// teardown), on the event loop's thread. `connected_to` is the address we connected to.
class TunnelObserver {
 public:
  virtual ~TunnelObserver() = default;
  // The first line of the first SMTP session of a verified connection (a relay client's only):
  // a dynmx-peer line or not. `local` is our own address of that TCP connection (getsockname).
  virtual void tunnelPeer(const std::string& client, const InetAddr& connected_to,
                          const InetAddr& local, const PeerLine& line) = 0;
  // Bytes arrived on that connection since the last report (at most once per keepalive interval).
  virtual void tunnelTraffic(const std::string& client, const InetAddr& connected_to) = 0;
  // The connection that reported a dynmx-peer line is gone.
  virtual void tunnelLost(const std::string& client, const InetAddr& connected_to) = 0;
  // Something at `addr` presented another host key than the client's (any client).
  virtual void hostKeyMismatch(const std::string& client, const InetAddr& addr) = 0;
};

struct ClientStatus {
  std::string name;
  std::string state;          // backoff|resolving|connecting|handshake|authenticating|connected|
                              // host-key-mismatch|host-key-unknown|closing|stopped
  int64_t backoff_until = 0;  // unix time, for backoff states
  std::string address;        // "HOST[IP]:PORT" of the current/last connection
  std::string kex, hostkey, cipher, mac;
  std::string presented_fp, expected_fp;
  // The whole key presented when it did not verify (type and raw blob; "" when none was), for
  // dynmxctl trust, which checks it against the fingerprint the administrator types.
  std::string presented_type, presented_key;
  std::string last_error;
  int64_t connected_since = 0;
  std::string login_key;  // the identity file the connection logged in with (while connected)
  uint32_t failures = 0;
  size_t channels = 0;
  size_t in_flight = 0;
  size_t connections = 0;  // SSH connections of the client (the daemon fills it in)
};

struct ResolveSlot;

class SshClient {
 public:
  // `time` gives unix time for results and status (and the steady time of bytes received); it
  // must outlive the client. The daemon passes dynmx::systemTime().
  // `tunnels` (may be null: no relay leases) hears of peer lines, traffic, losses and host-key
  // mismatches; it must outlive the client. `metrics` (may be null: counters of its own) is where
  // the connection attempts, handshake, host-key and authentication failures and the bytes sent
  // are counted, under the client's name; it must outlive the client.
  SshClient(ClientConfig client, const TunneldConfig& tunneld, JobSource& jobs, Waker& waker,
            const TimeSource& time, TunnelObserver* tunnels = nullptr, Metrics* metrics = nullptr,
            ProbeSource* probes = nullptr);
  ~SshClient();
  SshClient(const SshClient&) = delete;
  SshClient& operator=(const SshClient&) = delete;

  const std::string& name() const { return cfg_.name; }
  const ClientConfig& config() const { return cfg_; }
  // Applies changed settings; a change of address, port, user, key or identity reconnects.
  void reconfigure(const ClientConfig& client, const TunneldConfig& tunneld,
                   SteadyClock::time_point now);

  int fd() const { return sock_.get(); }
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
  bool connected() const { return state_ == State::Connected && !stopping_; }

  ClientStatus status() const;

  // Several connections per client ([[client]] max_connections) and the channel cap
  // ([tunneld] max_channels). `shares` (may be null: no cap) hears this connection's channels
  // after every change and decides whether it may open one more; it must outlive the client.
  void setShares(ChannelShares* shares) { shares_ = shares; }
  // An extra connection, opened while a backlog fills the client's first one: it reads no peer
  // line (its TunnelObserver hears only of host-key mismatches), does not make deferred mail due
  // when it comes up, and after a failure (a host key that
  // does not verify, a lost connection) it stops instead of trying again: the daemon decides.
  void setExtra() { extra_ = true; }
  bool extra() const { return extra_; }
  // The SMTP channels the far end allows per connection, as learned (0: not known). An extra
  // connection starts with its first connection's (the same sshd): it need not be refused again.
  size_t channelLimit() const { return channel_limit_; }
  void setChannelLimit(size_t n) { channel_limit_ = n; }
  bool connectedNow() const { return state_ == State::Connected && !stopping_; }
  // Connected, and every channel it may run works while mail is still due: more would need
  // another connection.
  bool saturated() const;
  // Connected with no SMTP session: its sessions ended (they QUIT after idle_close), or it never
  // had one for idle_close since it came up (the backlog was gone by then).
  bool idle(SteadyClock::time_point now) const;

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

  // One step of the connection, one function per state; each returns true when it made progress
  // (the caller steps again).
  bool stepOnce(SteadyClock::time_point now);
  bool stepBackoff(SteadyClock::time_point now);
  bool stepResolving(SteadyClock::time_point now);
  bool stepConnecting(SteadyClock::time_point now);
  bool stepHandshake(SteadyClock::time_point now);
  bool stepAuth(SteadyClock::time_point now);
  bool stepOpenDrain(SteadyClock::time_point now);
  bool stepConnected(SteadyClock::time_point now);
  // Helpers of the states above.
  void startAttempt(SteadyClock::time_point now);
  bool tryNextAddress(SteadyClock::time_point now);
  bool connectFailed(const std::string& why, SteadyClock::time_point now);
  bool startSession(SteadyClock::time_point now);
  bool handshakeFailed(int rc, SteadyClock::time_point now);
  bool checkHostKey(SteadyClock::time_point now);
  void connected(SteadyClock::time_point now);
  bool drainTransport(SteadyClock::time_point now);
  bool keepAlive(SteadyClock::time_point now);
  bool stepChannel(ChannelSession& c, SteadyClock::time_point now);
  bool stepStopping(SteadyClock::time_point now, bool progress);
  bool openMoreChannels(SteadyClock::time_point now);
  bool stepProbe(SteadyClock::time_point now);  // the probe channel (recipient verification)
  bool wantsChannel(SteadyClock::time_point now) const;
  size_t channelCeiling() const;  // concurrency, or the far end's learned limit when lower
  void reportShares(SteadyClock::time_point now);
  bool opening() const;

  void sessionFailed(SteadyClock::time_point now, const std::string& why);
  void channelRefused(SteadyClock::time_point now, const std::string& why);
  void fail(const std::string& why, SteadyClock::time_point now, bool count = true);
  void teardown(SteadyClock::time_point now, const std::string& reason);
  // libssh2's socket reads go through here (LIBSSH2_CALLBACK_RECV); *abstract is the client.
  static ssize_t recvHook(int sock, void* buf, size_t len, int flags, void** abstract);
  int64_t unixNow() const { return time_.unixSeconds(); }
  // Relay leases: the peer line of this connection, traffic, the loss of a confirmed one.
  bool wantsPeerLine() const { return tunnels_ && cfg_.relay && !peer_seen_ && !extra_; }
  void peerLine(const PeerLine& line, SteadyClock::time_point now);
  void reportTraffic(SteadyClock::time_point now);
  void reportMismatch();
  std::optional<InetAddr> connectedAddr() const;

  ClientConfig cfg_;
  TunneldConfig tcfg_;
  JobSource& jobs_;
  Waker& waker_;
  const TimeSource& time_;
  TunnelObserver* tunnels_;
  ClientCounters own_counters_;  // when no Metrics was given
  ClientCounters& counters_;
  ChannelShares* shares_ = nullptr;
  bool extra_ = false;
  size_t shed_ = 0;               // sessions that must still give their channel back (shed)
  bool had_channel_ = false;      // this connection ran an SMTP session
  SteadyClock::time_point last_channel_{};  // when it last had one (or came up)
  State state_ = State::Backoff;
  bool stopping_ = false;
  SteadyClock::time_point stop_deadline_{};
  SteadyClock::time_point backoff_until_{};
  SteadyClock::time_point attempt_deadline_{};
  SteadyClock::time_point connected_at_{};
  SteadyClock::time_point last_rx_{};
  uint64_t rx_reads_ = 0;  // recv() calls that returned bytes (stepConnected's fixed point)
  SteadyClock::time_point next_keepalive_{};
  bool poked_ = false;
  uint32_t failures_ = 0;
  std::mt19937_64 rng_;

  std::shared_ptr<ResolveSlot> resolve_;
  std::vector<std::pair<std::string, std::string>> addrs_;  // (sockaddr bytes, printable IP)
  size_t addr_index_ = 0;
  // Declared in teardown order, reversed: channels go before their session, the session before
  // its socket.
  UniqueFd sock_;
  SshSession session_;
  SshChannel drain_;  // idle channel read to let libssh2 process what the server sends
  std::optional<HostKeyVerifier> verifier_;
  ChannelSessions chans_;          // SMTP sessions; at most one of them Opening at a time
  uint32_t session_failures_ = 0;  // SMTP sessions in a row that ended before any transaction
  size_t channel_limit_ = 0;       // SMTP channels the far end allows (learned; 0: not known)
  // sshd frees a closed session's slot a moment after our side sees the channel gone: an open
  // right after a channel went may be refused for that alone. Such a refusal teaches nothing, and
  // after any refusal no channel opens until one of ours has gone.
  bool channel_went_ = false;      // a channel went since the last open attempt
  bool open_after_close_ = false;  // the open now under way followed a channel that went
  bool refused_wait_ = false;      // a refusal: wait for a channel to go
  SteadyClock::time_point session_backoff_until_{};
  SteadyClock::time_point now_hint_{};  // time of the last step, for deadline()

  // Status.
  std::string relay_;
  std::string kex_, hostkey_, cipher_, mac_;
  std::string presented_fp_, expected_fp_, mismatch_state_;
  std::string presented_type_, presented_key_;  // a key that did not verify (ClientStatus)
  std::string warned_fp_;  // presented key we already warned about
  std::string last_error_;
  std::vector<std::string> last_kh_warnings_;
  // Authentication: the identity keys to try on this connection, the next one, the refusals so
  // far, and the key of the last successful login (key rotation: status and log name it).
  std::vector<std::string> auth_keys_;
  size_t auth_index_ = 0;
  std::string auth_refusals_;
  std::string login_key_;
  int64_t backoff_until_unix_ = 0;
  int64_t connected_since_unix_ = 0;

  // Recipient verification (probes_ may be null).
  ProbeSource* probes_;
  std::unique_ptr<ProbeChannel> probe_;
  SteadyClock::time_point probe_retry_at_{};

  // Relay leases (tunnels_).
  bool peer_seen_ = false;       // this connection's first session reported its first line
  bool peer_confirmed_ = false;  // ... and it was a dynmx-peer line: report traffic and the loss
  std::optional<InetAddr> peer_addr_;
  SteadyClock::time_point next_touch_{};
  SteadyClock::time_point touched_rx_{};
};

}  // namespace dynmx::tunneld
