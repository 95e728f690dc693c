// daemon.hpp: dynmx-tunneld's wiring of spool, queue manager, SSH clients, admin socket, signals.
//
// Contract: init() prepares everything that can fail at start-up (spool recovery, control socket,
// inotify on incoming/, signalfd) and returns an Error naming what failed; run() serves until
// SIGTERM/SIGINT and returns the exit status. On SIGTERM no new transactions start, transactions in
// flight may finish for kShutdownGrace, then whatever is still open is abandoned (its recipients
// stay pending in the spool: nothing is marked delivered that was not), sessions QUIT, connections
// close, exit 0. SIGHUP (or "reload" on the admin socket) reloads the configuration: a bad file
// keeps the running one (the reason is logged); otherwise the log names the keys taken and those
// that wait for a restart (planReload keeps them as running).
// Relay leases (man/dynmx-relay.7), when a client has relay = true at start: init() opens the
// relay socket and starts dynmx-relaymap (before privileges are dropped, so that it can switch to
// [relay] user), reads the lease file back, and the daemon owns the LeaseTable from then on: the
// SSH clients report peer lines, traffic, losses and host-key mismatches (TunnelObserver), every
// change is logged, saved to the lease file and fed to the relaymap; a timer ends leases at their
// time; SIGCHLD (and a timer for restarts) lets RelayMapProcess reap and restart its child; the
// child is stopped by its pid when the daemon exits.
// Mail committed to incoming/ while its client is connected starts at once (inotify IN_MOVED_TO).
// A client whose backlog fills its connection gets extra connections, up to max_connections, each
// an SshClient verified on its own; [tunneld] max_channels caps the SMTP channels of all of them,
// shared fairly (daemon_connections.cpp, ssh/channel_shares.hpp).
// The admin socket answers each request only when the peer's credentials allow it (access.hpp);
// "checkin CLIENT ADDRESS" (dynmx-checkin) grants a check-in lease and, at most once per
// kCheckinHintInterval per client, makes that client's connection try again at once.
// Metrics: the queue and the SSH clients count into one Metrics registry; `metrics` on the admin
// socket and, with [tunneld] metrics_listen, GET /metrics over HTTP (MetricsHttpServer, opened by
// init() before privileges are dropped) render the same snapshot of it (metricsSnapshot()).
// "verify CLIENT RECIPIENT" (dynmx-milter; daemon_verify.cpp) is answered when the Verifier
// (tunneld/verify/verifier.hpp) has an answer: at once from its cache, or after a probe over the
// client's connection, or "unknown" at the client's verify_timeout. The cache lives in
// SPOOL/verify.cache and survives restarts.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "shared/fd.hpp"
#include "shared/result.hpp"
#include "shared/spool.hpp"
#include "tunneld/control/access.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/event_loop.hpp"
#include "tunneld/metrics/exposition.hpp"
#include "tunneld/metrics/http_server.hpp"
#include "tunneld/metrics/metrics.hpp"
#include "tunneld/queue/bounce.hpp"
#include "tunneld/queue/handoff.hpp"
#include "tunneld/queue/queue_manager.hpp"
#include "tunneld/relay/lease_store.hpp"
#include "tunneld/relay/lease_table.hpp"
#include "tunneld/relay/relaymap_process.hpp"
#include "tunneld/ssh/ssh_client.hpp"
#include "tunneld/verify/verifier.hpp"

namespace dynmx::tunneld {

inline constexpr std::chrono::seconds kShutdownGrace{30};
inline constexpr std::chrono::seconds kIncomingRescan{30};
// incoming/ is taken into the queue at most this many files per turn of the loop, so that a big
// backlog (a restart after an outage) does not hold up connecting and delivering.
inline constexpr size_t kScanSlice = 256;
// A check-in says the client is back: its connection is retried at once, at most this often.
inline constexpr std::chrono::seconds kCheckinHintInterval{60};
// When max_channels does not split evenly among the clients with mail, the channels left over go
// to the next clients in turn this often (each turn costs a session ended and one started).
inline constexpr std::chrono::seconds kShareRotation{10};

class Daemon : public Waker, public TunnelObserver {
 public:
  // `time` is where every reading of "now" comes from (dynmx::systemTime() in production).
  explicit Daemon(Config cfg, const TimeSource& time = systemTime());
  ~Daemon() override;

  // The daemon runs in the foreground (logs on stderr): so does dynmx-relaymap.
  void setForeground(bool on) { foreground_ = on; }
  Status init();
  // Blocks SIGTERM/SIGINT/SIGHUP into a signalfd; call before any thread starts.
  static Status blockSignals();
  int run();
  void wake() override;

  // The text of a control reply, for the admin socket (and tests); `peer` is who asked (named in
  // the log lines of delete and bounce).
  ControlReply handleRequest(const ControlRequest& req, const ControlPeer& peer = {});
  Status reload();

  // TunnelObserver: what the SSH clients saw, for the relay leases.
  void tunnelPeer(const std::string& client, const InetAddr& connected_to, const InetAddr& local,
                  const PeerLine& line) override;
  void tunnelTraffic(const std::string& client, const InetAddr& connected_to) override;
  void tunnelLost(const std::string& client, const InetAddr& connected_to) override;
  void hostKeyMismatch(const std::string& client, const InetAddr& addr) override;

 private:
  struct ClientEntry {
    std::unique_ptr<SshClient> client;
    int watched_fd = -1;
    uint64_t timer_id = 0;
    std::optional<SteadyClock::time_point> timer_when;
    bool closing = false;  // an extra connection we close (idle, reload): not a failure
  };
  // One admin connection (also seen by daemon_verify.cpp, whose answers come later).
  struct ControlConn {
    UniqueFd fd;
    ControlPeer peer;  // who connected (SO_PEERCRED); nobody when that could not be read
    std::string in, out;
    size_t sent = 0;
    bool replied = false;
    uint64_t timer = 0;
  };

  // Visits every client: the configured ones, then those retiring after a reload.
  template <class F>
  void forEachClient(F&& f);
  ClientEntry* entryOf(const SshClient* c);  // nullptr once the client is gone
  void stopClients(std::chrono::seconds grace);
  void service(ClientEntry& e, short revents = 0);
  void sync(ClientEntry& e);
  void pokeDue();
  void applyClients();
  void onSignal();
  void onInotify();
  void onControlAccept();
  void onControlIo(int fd, short revents);
  void closeControl(int fd);
  void beginShutdown();
  std::vector<std::string> statusLines();
  MetricsSnapshot metricsSnapshot();
  ControlReply flushReply(const std::string& client, int64_t now);
  ControlReply metricsReply();               // `metrics`
  std::vector<std::string> statusRecords();  // `status fields` (StatusRecord lines)
  ControlReply disposeReply(const ControlRequest& req, const ControlPeer& peer);
  ControlReply hostkeyReply(const std::string& client);
  // Several connections per client and the channel cap (daemon_connections.cpp).
  void scaleConnections();
  void serviceShares();  // steps every connection when the channel shares changed
  void openExtraConnection(const ClientConfig& c, const SshClient& first);
  void closeExtraConnections(const std::string& why, const std::string& client = "");
  void reapExtraConnections();
  void addConnectionStatus(const std::string& client, ClientStatus& s);
  // Relay leases (daemon_relay.cpp).
  Status initRelay();
  void leaseEvents(const std::vector<LeaseEvent>& events);
  void leasesChanged();
  void armLeaseTimer();
  void syncRelaymap();
  void stopRelay();
  int64_t leaseNow() const { return lease_clock_->now(); }
  void reloadRelay();
  std::vector<std::string> leaseStatusLines(const std::string& client);
  ControlReply leasesReply();
  ControlReply revokeReply(const std::string& address);

  Config cfg_;
  const TimeSource& time_;
  Spool spool_;
  Metrics metrics_;  // before the queue and the clients that count into it
  int64_t start_time_ = 0;
  std::unique_ptr<SendmailBounceSender> bounces_;
  // Between bounces_ (its thread sends with it) and queue_ (which starts hand-offs on it).
  std::unique_ptr<ThreadHandoffRunner> handoffs_;
  std::unique_ptr<QueueManager> queue_;
  std::unique_ptr<QueueJobSource> jobs_;
  EventLoop loop_;
  std::map<std::string, ClientEntry> clients_;
  std::vector<ClientEntry> retiring_;  // removed by a reload, finishing their work
  // Extra connections of clients whose backlog fills their first one ([[client]]
  // max_connections), and the shares of [tunneld] max_channels among every connection.
  std::vector<ClientEntry> extras_;
  ChannelShares shares_;
  bool sharing_ = false;                            // serviceShares() is stepping the connections
  SteadyClock::time_point next_rotation_{};         // of the channels an even split leaves over
  std::map<std::string, uint32_t> extra_failures_;  // in a row, per client
  std::map<std::string, SteadyClock::time_point> extra_backoff_until_;  // per client
  std::map<int, std::unique_ptr<ControlConn>> conns_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;  // when metrics_listen is set
  UniqueFd signal_fd_;
  UniqueFd inotify_fd_;
  UniqueFd wake_fd_;
  UniqueFd control_fd_;
  bool stopping_ = false;
  bool control_owned_ = false;
  int64_t last_scan_ = 0;
  bool scan_more_ = false;   // incoming/ has more for the next turn (QueueManager::scanIncoming)
  std::string reload_note_;  // what the last reload could not apply
  // QueueManager::nextWakeup() walks every message: asked at most once per second.
  int64_t wake_checked_at_ = -1;
  int64_t next_wake_ = 0;
  bool foreground_ = false;

  // Relay leases: all null/zero when no client had relay = true at start.
  std::optional<LeaseClock> lease_clock_;
  std::unique_ptr<LeaseTable> leases_;
  std::unique_ptr<LeaseStore> lease_store_;
  std::unique_ptr<relay::RelayMapProcess> relaymap_;
  uint64_t saved_generation_ = 0;
  uint64_t lease_timer_ = 0;
  std::optional<int64_t> lease_timer_at_;
  uint64_t relaymap_timer_ = 0;
  int relaymap_fd_ = -1;  // the feed descriptor being watched

  // The admin socket's access rules and the check-in.
  // control_group's gid and the check-in account's uid, resolved at start and on reload.
  static Result<ControlAccessRules> accessRules(const Config& cfg);
  ControlAccessRules accessNow() const;  // access_ with the daemon's current uid (and gid)
  ControlReply checkin(const ControlRequest& req);
  void checkinHint(const std::string& client);
  ControlAccessRules access_;
  std::map<std::string, SteadyClock::time_point> checkin_hints_;  // last retry hint per client

  // Recipient verification (daemon_verify.cpp).
  void startVerify(int fd, const ControlRequest& req);
  void verifyAnswered(int fd, uint64_t serial, const VerifyAnswer& answer);
  void armVerifyTimer();
  std::unique_ptr<Verifier> verifier_;
  uint64_t verify_timer_ = 0;
  std::map<int, uint64_t> verify_waiting_;  // admin connection -> the request it waits for
  uint64_t verify_serial_ = 0;
};

// dynmx-tunneld's command line and life: parses argv, loads the config, daemonizes (unless -f),
// runs. Returns the exit status. Kept here (not in main.cpp) so that tests can run it in-process.
int tunneldMain(int argc, char** argv);

}  // namespace dynmx::tunneld
