// daemon_relay.cpp: dynmx-tunneld's relay leases: the lease table, the lease file, the
// dynmx-relaymap child and what the SSH clients report (man/dynmx-relay.7).
//
// Contract: when a client has relay = true at start, initRelay() (called by init(), before
// privileges are dropped) opens the relay socket, reads the lease file back (expired leases are
// dropped), starts dynmx-relaymap and feeds it the table. From then on every change of the table
// goes through leaseEvents()/leasesChanged(): its events are logged one line each, the lease file
// is saved when the table's generation moved, the relaymap gets the whole table again, and the
// expiry timer is set to the table's next deadline. Traffic renewals (touchTunnel) are fed to the
// relaymap but not saved: a lease read back from the file ends earlier, never later.
// Failure behaviour: a socket or program that cannot be opened or started stops the start-up with
// an error naming it; at run time a lease file that cannot be saved is logged (the table in memory
// stays right; the next change saves again), a relaymap that dies is logged and restarted by
// RelayMapProcess, and lookups fail closed at the MTA meanwhile.
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <filesystem>

#include "shared/log.hpp"
#include "tunneld/daemon.hpp"

#ifndef DYNMX_RELAYMAP_PATH
#define DYNMX_RELAYMAP_PATH "/usr/libexec/dynmx/dynmx-relaymap"
#endif

namespace dynmx::tunneld {

namespace {

// dynmx-relaymap next to the running dynmx-tunneld (a build tree, a relocated install), else the
// path it was installed to.
std::string relaymapProgram() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) {
    std::string self(buf, static_cast<size_t>(n));
    auto slash = self.rfind('/');
    if (slash != std::string::npos) {
      std::string beside = self.substr(0, slash) + "/dynmx-relaymap";
      if (access(beside.c_str(), X_OK) == 0) return beside;
    }
  }
  return DYNMX_RELAYMAP_PATH;
}

}  // namespace

Status Daemon::initRelay() {
  bool any = std::any_of(cfg_.clients.begin(), cfg_.clients.end(),
                         [](const ClientConfig& c) { return c.relay; });
  if (!any) return {};
  lease_clock_.emplace(time_);
  leases_ = std::make_unique<LeaseTable>(LeaseRules::fromConfig(cfg_));

  // The lease file's directory is made when missing (its parent must exist).
  std::string dir = std::filesystem::path(cfg_.relay.lease_file).parent_path().string();
  if (!dir.empty() && mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
    return sysError(errno, "relay.lease_file: directory " + dir);
  lease_store_ = std::make_unique<LeaseStore>(cfg_.relay.lease_file);
  auto loaded = lease_store_->load(leaseNow());
  if (!loaded) {
    logf(LogLevel::Warning, "relay: %s; starting with no leases", loaded.error().message.c_str());
  } else {
    if (!loaded->set_aside.empty())
      logf(LogLevel::Warning,
           "relay: damaged lease file %s set aside as %s; no lease taken from it",
           cfg_.relay.lease_file.c_str(), loaded->set_aside.c_str());
    logLeaseEvents(leases_->restore(loaded->snapshot.leases, loaded->snapshot.holds, leaseNow()));
    logf(LogLevel::Info, "relay: %zu lease(s) and %zu hold-down(s) read back from %s",
         leases_->list(leaseNow()).size(), leases_->holds(leaseNow()).size(),
         cfg_.relay.lease_file.c_str());
  }
  saved_generation_ = leases_->generation();

  relay::RelayMapProcessConfig rc;
  rc.program = relaymapProgram();
  rc.socket_path = cfg_.relay.socket;
  rc.socket_mode = cfg_.relay.socket_mode;
  rc.socket_group = cfg_.relay.socket_group;
  rc.user = cfg_.relay.user;
  rc.log_to_stderr = foreground_;
  auto proc = relay::RelayMapProcess::open(std::move(rc), time_);
  if (!proc) return Error{proc.error().code, "relay.socket: " + proc.error().message};
  relaymap_ = std::move(proc.value());
  leasesChanged();  // the snapshot the child gets at its start
  if (auto st = relaymap_->start(); !st) return st;
  syncRelaymap();
  return {};
}

void Daemon::leaseEvents(const std::vector<LeaseEvent>& events) {
  logLeaseEvents(events);
  leasesChanged();
}

void Daemon::leasesChanged() {
  if (!leases_) return;
  int64_t now = leaseNow();
  std::vector<Lease> live = leases_->list(now);
  if (leases_->generation() != saved_generation_) {
    LeaseSnapshot snap{live, leases_->holds(now)};
    if (auto st = lease_store_->save(snap); !st)
      logf(LogLevel::Error, "relay: lease file not saved: %s", st.error().message.c_str());
    else
      saved_generation_ = leases_->generation();
  }
  std::vector<relay::FeedLease> feed;
  feed.reserve(live.size());
  for (const Lease& l : live) feed.push_back({l.addr, l.client, l.expires});
  relaymap_->setLeases(feed);
  syncRelaymap();
  armLeaseTimer();
}

// The table's next deadline, as a steady-clock timer (lease time moves with the steady clock).
void Daemon::armLeaseTimer() {
  auto next = leases_->nextDeadline();
  if (next == lease_timer_at_ && (lease_timer_ || !next)) return;
  if (lease_timer_) loop_.cancelTimer(lease_timer_);
  lease_timer_ = 0;
  lease_timer_at_ = next;
  if (!next) return;
  int64_t wait = std::max<int64_t>(0, *next - leaseNow());
  lease_timer_ = loop_.addTimer(time_.steady() + std::chrono::seconds(wait), [this]() {
    lease_timer_ = 0;
    lease_timer_at_.reset();
    leaseEvents(leases_->expire(leaseNow()));
  });
}

// Writes what the feed takes, watches it for POLLOUT while more waits, and wakes RelayMapProcess
// when a restart is due.
void Daemon::syncRelaymap() {
  if (!relaymap_) return;
  if (auto st = relaymap_->flush(); !st)
    logf(LogLevel::Warning, "relay: %s", st.error().message.c_str());
  int fd = relaymap_->feedFd();
  bool want = relaymap_->wantsWrite() && fd >= 0;
  if (relaymap_fd_ >= 0 && (!want || relaymap_fd_ != fd)) {
    loop_.unwatch(relaymap_fd_);
    relaymap_fd_ = -1;
  }
  if (want && relaymap_fd_ < 0) {
    loop_.watch(fd, POLLOUT, [this](short) { syncRelaymap(); });
    relaymap_fd_ = fd;
  }
  if (relaymap_timer_) loop_.cancelTimer(relaymap_timer_);
  relaymap_timer_ = 0;
  if (auto w = relaymap_->nextWakeup()) {
    relaymap_timer_ = loop_.addTimer(*w, [this]() {
      relaymap_timer_ = 0;
      relaymap_->check();
      syncRelaymap();
    });
  }
}

void Daemon::stopRelay() {
  if (!relaymap_) return;
  if (relaymap_fd_ >= 0) loop_.unwatch(relaymap_fd_);
  relaymap_fd_ = -1;
  relaymap_->stop();
  relaymap_.reset();
}

void Daemon::reloadRelay() {
  bool any = std::any_of(cfg_.clients.begin(), cfg_.clients.end(),
                         [](const ClientConfig& c) { return c.relay; });
  if (!leases_) {
    if (any)
      logf(LogLevel::Warning,
           "reload: relay = true takes a restart when no client had it at start");
    return;
  }
  leaseEvents(leases_->reconfigure(LeaseRules::fromConfig(cfg_), leaseNow()));
}

// ---- TunnelObserver --------------------------------------------------------------------------

void Daemon::tunnelPeer(const std::string& client, const InetAddr& connected_to,
                        const InetAddr& local, const PeerLine& line) {
  if (!leases_) return;
  int64_t now = leaseNow();
  auto refusal = decideTunnelLease(line, connected_to, local, leases_->rules().mx_addresses);
  if (refusal) {
    leaseEvents(leases_->tunnelRefused(client, connected_to, *refusal, now));
    return;
  }
  leaseEvents(leases_->grantTunnel(client, connected_to, now).events);
}

void Daemon::tunnelTraffic(const std::string& client, const InetAddr& connected_to) {
  if (!leases_) return;
  if (leases_->touchTunnel(client, connected_to, leaseNow())) leasesChanged();
}

void Daemon::tunnelLost(const std::string& client, const InetAddr& connected_to) {
  if (!leases_) return;
  leaseEvents(leases_->tunnelLost(client, connected_to, leaseNow()));
}

void Daemon::hostKeyMismatch(const std::string& client, const InetAddr& addr) {
  if (!leases_) return;
  leaseEvents(leases_->hostKeyMismatch(client, addr, leaseNow()));
}

// ---- the admin socket ------------------------------------------------------------------------

std::vector<std::string> Daemon::leaseStatusLines(const std::string& client) {
  std::vector<std::string> lines;
  if (!leases_) return lines;
  for (const Lease& l : leases_->leasesOf(client, leaseNow()))
    lines.push_back(std::string("  lease: ") + l.addr.str() + " " + leaseSourceName(l.source) +
                    (l.connected ? " (connected)" : "") + ", granted " + isoUtcOrDash(l.granted) +
                    ", expires " + isoUtcOrDash(l.expires));
  return lines;
}

ControlReply Daemon::leasesReply() {
  ControlReply r;
  if (!leases_) return r;
  int64_t now = leaseNow();
  for (const Lease& l : leases_->list(now))
    r.lines.push_back(formatLeaseLine(
        {false, l.addr.str(), l.client, leaseSourceName(l.source), l.granted, l.expires}));
  for (const Hold& h : leases_->holds(now))
    r.lines.push_back(formatLeaseLine({true, h.addr.str(), "", "", 0, h.until}));
  return r;
}

ControlReply Daemon::revokeReply(const std::string& address) {
  ControlReply r;
  auto addr = InetAddr::parse(address);
  if (!leases_ || !addr) {
    r.ok = false;
    r.error = !leases_ ? "relay leases are off (no client had relay = true at start)"
                       : "not an address: " + address;
    return r;
  }
  RevokeResult res = leases_->revoke(*addr, leaseNow());
  logf(LogLevel::Notice, "lease: addr=%s held down until %s (dynmxctl revoke)", addr->str().c_str(),
       isoUtcOrDash(res.held_until).c_str());
  leaseEvents(res.events);
  r.lines.push_back(addr->str() + ": " + std::to_string(res.events.size()) +
                    " lease(s) revoked, held down until " + isoUtcOrDash(res.held_until));
  return r;
}

}  // namespace dynmx::tunneld
