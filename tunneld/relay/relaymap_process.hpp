// relaymap_process.hpp: dynmx-relaymap as the daemon sees it: the socket, the child process, the
// lease feed, restarts.
//
// Contract: open() creates the MTA-facing unix socket (mode and group as configured; a stale
// socket left by a crash is replaced, a live one or a non-socket is refused), so that a bad path
// shows at startup. start() spawns the program with fork+exec, argv only, giving it the
// listening socket as fd 3 (and closing the daemon's copy: when the child dies, the socket dies
// with it and the MTA's connect is refused at once; a restart makes a fresh socket) and one end of
// a fresh socketpair (the feed) as fd 4; it sends the newest snapshot at once. setLeases() queues a
// full snapshot (the newest replaces any not yet begun); the feed descriptor is non-blocking, and
// flush() writes what it takes: the daemon calls it when feedFd() is writable while wantsWrite().
// check() reaps the child if it ended (one log line: how) and restarts it when its restart time has
// come: the delay starts at restart_delay and doubles, up to max_restart_delay, while the child
// keeps dying within a minute of its start. stop() closes the feed (the child exits by itself),
// sends SIGTERM to the child's pid, SIGKILL after the grace period, reaps it and removes the
// socket.
//
// Failure: open() and start() return errors naming the socket or program; a dead child is not an
// error to the caller (it is logged and restarted), and while it is down lookups fail at the MTA
// (sendmail with -T<TMPF>: 4xx to would-be relays), never granting relay.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "shared/fd.hpp"
#include "shared/result.hpp"
#include "tunneld/relay/relay_feed.hpp"

namespace dynmx::relay {

struct RelayMapProcessConfig {
  std::string program;  // path of dynmx-relaymap
  std::string socket_path;
  mode_t socket_mode = 0660;
  std::string socket_group;  // empty: the daemon's group
  std::string user;          // the child drops to this user when started as root
  bool allow_unsandboxed = false;
  bool log_to_stderr = false;  // the daemon runs in the foreground
  std::chrono::milliseconds restart_delay{1000};
  std::chrono::milliseconds max_restart_delay{60000};
};

// Creates, binds and listens on a unix stream socket at `path` with `mode` and `group`, replacing
// a stale socket (nobody listening) and refusing anything else at that path.
Result<UniqueFd> openRelaySocket(const std::string& path, mode_t mode, const std::string& group);

class RelayMapProcess {
 public:
  static Result<std::unique_ptr<RelayMapProcess>> open(RelayMapProcessConfig cfg,
                                                       const TimeSource& time);
  ~RelayMapProcess();
  RelayMapProcess(const RelayMapProcess&) = delete;
  RelayMapProcess& operator=(const RelayMapProcess&) = delete;

  Status start();
  void setLeases(const std::vector<FeedLease>& leases);
  Status flush();
  int feedFd() const { return feed_.get(); }
  bool wantsWrite() const { return feed_ && !out_.empty(); }
  void check();
  // When check() has something to do without a SIGCHLD (a restart that is due), if anything.
  std::optional<SteadyClock::time_point> nextWakeup() const { return restart_at_; }
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(5));
  const std::string& socketPath() const { return cfg_.socket_path; }

 private:
  RelayMapProcess(RelayMapProcessConfig cfg, const TimeSource& time, UniqueFd listen)
      : cfg_(std::move(cfg)), time_(time), listen_(std::move(listen)), delay_(cfg_.restart_delay) {}
  void childEnded(int status);

  RelayMapProcessConfig cfg_;
  const TimeSource& time_;
  UniqueFd listen_;
  UniqueFd feed_;
  pid_t pid_ = -1;
  SteadyClock::time_point started_{};
  std::optional<SteadyClock::time_point> restart_at_;
  std::chrono::milliseconds delay_;
  std::string latest_;  // the newest full snapshot (sent again to a restarted child)
  std::string out_;     // what is left to write of the snapshot in flight
  bool newer_ = false;  // latest_ is newer than what is in flight
  bool stopped_ = false;
  bool socket_made_ = true;  // open() made it; stop() removes it
};

}  // namespace dynmx::relay
