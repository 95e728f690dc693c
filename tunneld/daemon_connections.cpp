// daemon_connections.cpp: how many SSH connections each client runs, and the channel cap.
//
// A client has one connection (its SshClient in clients_), always. While a backlog fills every
// channel that connection may run (concurrency, or the far end's sshd MaxSessions when lower),
// one more connection opens, up to [[client]] max_connections: each is an SshClient of its own,
// host-key verified and authenticated on its own before it carries mail, and pulls jobs from the
// same queue. An extra connection closes once it has no SMTP session left (its sessions QUIT
// after idle_close), so an idle client holds one connection. [tunneld] max_channels caps the SMTP
// channels of every connection together; ChannelShares shares it out fairly among the clients
// that have mail (channel_shares.hpp).
// Failure behaviour: an extra connection that fails (a host key that does not verify, a refused
// login, a lost link) is not retried on its own: its jobs are abandoned (their recipients stay
// pending, as for any lost connection), it is logged, and the next extra connection of that
// client waits the reconnect backoff (reconnect_min doubling up to reconnect_max). The client's
// first connection and its mail are not affected.
#include <algorithm>
#include <random>

#include "shared/log.hpp"
#include "tunneld/daemon.hpp"

namespace dynmx::tunneld {

void Daemon::openExtraConnection(const ClientConfig& c, const SshClient& first) {
  ClientEntry e;
  // The observer hears of host-key mismatches only: an extra connection reads no peer line. It
  // counts into the client's metrics; recipient probes stay on the first connection (no source).
  e.client = std::make_unique<SshClient>(c, cfg_.tunneld, *jobs_, *this, systemTime(),
                                         leases_ ? static_cast<TunnelObserver*>(this) : nullptr,
                                         &metrics_, nullptr);
  e.client->setShares(&shares_);
  e.client->setExtra();
  e.client->setChannelLimit(first.channelLimit());
  logf(LogLevel::Info, "client=%s: backlog fills its connection(s): opening one more",
       c.name.c_str());
  extras_.push_back(std::move(e));
  service(extras_.back());
}

void Daemon::closeExtraConnections(const std::string& why, const std::string& client) {
  auto now = time_.steady();
  for (auto& e : extras_) {
    if (e.closing || (!client.empty() && e.client->name() != client)) continue;
    logf(LogLevel::Info, "client=%s: closing an extra connection: %s", e.client->name().c_str(),
         why.c_str());
    e.closing = true;
    e.client->beginStop(now, kShutdownGrace);
  }
  for (auto& e : extras_) service(e);
}

// Extra connections that are done go; one that ended on its own (it failed) delays the next.
void Daemon::reapExtraConnections() {
  auto now = time_.steady();
  for (auto it = extras_.begin(); it != extras_.end();) {
    if (!it->client->stopped()) {
      ++it;
      continue;
    }
    std::string name = it->client->name();
    if (!it->closing) {
      uint32_t n = ++extra_failures_[name];
      std::uniform_real_distribution<double> dist(0.0, 1.0);
      std::mt19937_64 rng(std::random_device{}());
      extra_backoff_until_[name] = now + reconnectDelay(cfg_.tunneld.reconnect_min,
                                                        cfg_.tunneld.reconnect_max, n, dist(rng));
    }
    if (it->watched_fd >= 0) loop_.unwatch(it->watched_fd);
    if (it->timer_id) loop_.cancelTimer(it->timer_id);
    it = extras_.erase(it);
  }
}

// Once per turn of the loop: opens an extra connection for a client whose connections are all
// saturated, closes extra connections that stayed idle for idle_close.
void Daemon::scaleConnections() {
  if (stopping_) return;
  reapExtraConnections();
  shares_.setCap(cfg_.tunneld.max_channels);
  auto now = time_.steady();
  if (now >= next_rotation_) {
    shares_.rotate();
    next_rotation_ = now + kShareRotation;
  }
  for (auto& e : extras_) {
    if (e.closing || !e.client->idle(now)) continue;
    e.closing = true;
    extra_failures_.erase(e.client->name());  // it worked
    logf(LogLevel::Info, "client=%s: extra connection idle; closing", e.client->name().c_str());
    e.client->beginStop(now, kShutdownGrace);
    service(e);
  }
  for (auto& [name, primary] : clients_) {
    const ClientConfig* c = cfg_.findClient(name);
    size_t conns = 1, saturated = primary.client->saturated() ? 1 : 0, setting_up = 0;
    for (auto& e : extras_) {
      if (e.closing || e.client->name() != name) continue;
      ++conns;
      if (!e.client->connectedNow())
        ++setting_up;
      else if (e.client->saturated())
        ++saturated;
    }
    auto until = extra_backoff_until_.find(name);
    bool waiting = until != extra_backoff_until_.end() && now < until->second;
    bool full = c && primary.client->connectedNow() && !waiting &&
                wantAnotherConnection(conns, saturated, setting_up, c->max_connections, true);
    // The channel a new connection would open is the client's demand too (reported under the
    // client's own entry): the cap grants it, or makes others give one back.
    shares_.report(&primary, name, 0, 0, full);
    if (full && shares_.mayOpen(name)) openExtraConnection(*c, *primary.client);
  }
  serviceShares();
}

// A channel freed while a client waits for one, or a client began to wait: every connection is
// stepped at once (to open, or to give a channel back), not at its next event.
void Daemon::serviceShares() {
  if (sharing_) return;
  sharing_ = true;
  // Stepping may change the shares again (a channel given back): a few rounds, then the loop's.
  for (int round = 0; round < 4 && shares_.takeWake(); ++round) {
    for (auto& [name, e] : clients_) service(e);
    for (auto& e : retiring_) service(e);
    for (auto& e : extras_) service(e);
  }
  sharing_ = false;
}

// The client's status with every connection: channels and jobs of the extra ones added.
void Daemon::addConnectionStatus(const std::string& client, ClientStatus& s) {
  s.connections = s.state == "connected" ? 1 : 0;
  for (auto& e : extras_) {
    if (e.client->name() != client) continue;
    ClientStatus x = e.client->status();
    if (x.state == "connected") ++s.connections;
    s.channels += x.channels;
    s.in_flight += x.in_flight;
  }
}

}  // namespace dynmx::tunneld
