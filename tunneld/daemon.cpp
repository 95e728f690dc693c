// daemon.cpp: dynmx-tunneld's event loop wiring, signals, reload, admin socket, command line.
//
// Failure behaviour: start-up failures (config, spool, control socket, privileges) end the
// program with a sysexits code and a message naming the cause; at run time nothing stops the
// daemon but a signal: network and delivery failures are the SSH clients' and the queue's to
// handle, a bad reload keeps the running configuration.
#include "tunneld/daemon.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <optional>

#include "shared/date.hpp"
#include "shared/log.hpp"
#include "shared/privileges.hpp"
#include "shared/storage_limits.hpp"
#include "shared/sysexits.hpp"
#include "shared/version.hpp"
#include "tunneld/relay/checkin.hpp"

namespace dynmx::tunneld {

namespace {

// The soft limit of open files up to the hard one (systemd starts services at 1024 soft, 524288
// hard): each channel in flight holds open spool files, up to 32 with CHUNKING, so 64 channels
// can need more than 1024. Nothing here uses select(), so descriptors above FD_SETSIZE are fine.
// Logs what it did, and a warning when even the hard limit is short of what max_channels may use.
void raiseOpenFileLimit(uint32_t max_channels) {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t before = lim.rlim_cur;
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
      logf(LogLevel::Warning, "open files: cannot raise the limit from %llu to %llu: %s",
           static_cast<unsigned long long>(before), static_cast<unsigned long long>(lim.rlim_max),
           std::strerror(errno));
      lim.rlim_cur = before;
    } else {
      logf(LogLevel::Info, "open files: limit raised from %llu to %llu (the hard limit)",
           static_cast<unsigned long long>(before), static_cast<unsigned long long>(lim.rlim_cur));
    }
  }
  uint64_t want = uint64_t{max_channels} * 32 + 256;
  if (max_channels != 0 && lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want)
    logf(LogLevel::Warning,
         "open files: limit %llu is below what max_channels %u may need (%llu: 32 spool files "
         "per channel with CHUNKING, and 256 more); raise it (systemd LimitNOFILE=) or lower "
         "max_channels",
         static_cast<unsigned long long>(lim.rlim_cur), max_channels,
         static_cast<unsigned long long>(want));
}

}  // namespace

Daemon::Daemon(Config cfg, const TimeSource& time)
    : cfg_(std::move(cfg)), time_(time), spool_(cfg_.spool.dir) {}

Daemon::~Daemon() {
  clients_.clear();
  retiring_.clear();
  extras_.clear();
  stopRelay();
  // The hand-off thread wakes us through wake_fd_: it ends before that is closed.
  jobs_.reset();
  queue_.reset();
  handoffs_.reset();
  conns_.clear();  // each closes its descriptor
  if (control_fd_ && control_owned_) unlink(cfg_.tunneld.control_socket.c_str());
  // The descriptors themselves are closed by their owners, after the threads above ended.
}

Status Daemon::blockSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGCHLD);  // dynmx-relaymap's end, read from the signalfd
  if (sigprocmask(SIG_BLOCK, &set, nullptr) != 0) return sysError(errno, "sigprocmask");
  signal(SIGPIPE, SIG_IGN);
  return {};
}

void Daemon::wake() {
  uint64_t one = 1;
  ssize_t n = write(wake_fd_.get(), &one, sizeof one);
  (void)n;
}

Status Daemon::init() {
  if (auto st = blockSignals(); !st) return st;
  raiseOpenFileLimit(cfg_.tunneld.max_channels);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGCHLD);
  signal_fd_.reset(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signal_fd_) return sysError(errno, "signalfd");
  wake_fd_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd_) return sysError(errno, "eventfd");

  for (const auto& c : cfg_.clients) {
    for (const std::string& key : c.identityFiles(cfg_.tunneld))
      if (auto st = checkPrivateKeyFile(key); !st) return st;
  }
  if (auto st = spool_.prepare(); !st) return st;
  bounces_ =
      std::make_unique<SendmailBounceSender>(cfg_.tunneld.sendmail, std::chrono::seconds(120));
  handoffs_ = std::make_unique<ThreadHandoffRunner>([this] { wake(); });
  queue_ = std::make_unique<QueueManager>(spool_, cfg_, *bounces_, kRemovalSync, handoffs_.get(),
                                          &metrics_);
  start_time_ = time_.unixSeconds();
  jobs_ = std::make_unique<QueueJobSource>(*queue_);

  inotify_fd_.reset(inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!inotify_fd_) return sysError(errno, "inotify_init1");
  std::string incoming = spool_.stateDir(QueueState::Incoming);
  if (inotify_add_watch(inotify_fd_.get(), incoming.c_str(), IN_MOVED_TO | IN_CLOSE_WRITE) < 0)
    return sysError(errno, "inotify_add_watch " + incoming);

  auto access = accessRules(cfg_);
  if (!access) return access.error();
  access_ = *access;
  auto fd = openControlSocket(cfg_.tunneld.control_socket, cfg_.tunneld.control_mode,
                              cfg_.tunneld.control_group);
  if (!fd) return fd.error();
  control_fd_ = std::move(*fd);
  control_owned_ = true;
  if (auto st = initRelay(); !st) return st;
  if (cfg_.tunneld.metrics_listen) {
    metrics_http_ = std::make_unique<MetricsHttpServer>(
        loop_, [this](ExpositionFormat f) { return renderMetrics(metricsSnapshot(), f); });
    if (auto st = metrics_http_->open(*cfg_.tunneld.metrics_listen); !st) return st;
    logf(LogLevel::Info, "metrics: serving GET /metrics on %s",
         cfg_.tunneld.metrics_listen->str().c_str());
  }
  verifier_ = std::make_unique<Verifier>(cfg_.spool.dir + "/verify.cache", time_);
  verifier_->load();
  verifier_->configure(cfg_.clients);
  shares_.setCap(cfg_.tunneld.max_channels);

  loop_.watch(signal_fd_.get(), POLLIN, [this](short) { onSignal(); });
  loop_.watch(wake_fd_.get(), POLLIN, [this](short) {
    uint64_t v;
    while (read(wake_fd_.get(), &v, sizeof v) > 0) {
    }
    queue_->collectHandoffs(time_.unixSeconds());
    for (auto& [n, e] : clients_) service(e);
    for (auto& e : extras_) service(e);  // a name lookup of an extra connection came back
  });
  loop_.watch(inotify_fd_.get(), POLLIN, [this](short) { onInotify(); });
  loop_.watch(control_fd_.get(), POLLIN, [this](short) { onControlAccept(); });
  // The clients start connecting first: their SSH handshakes go on while the spool is read.
  applyClients();
  RecoveryReport rep = queue_->start(time_.unixSeconds(), kScanSlice);
  last_scan_ = time_.unixSeconds();
  scan_more_ = true;
  logf(LogLevel::Info,
       "starting: %zu client(s), spool %s (recovery: %zu tmp removed, %zu requeued, %zu corrupt)",
       cfg_.clients.size(), cfg_.spool.dir.c_str(), rep.tmp_removed, rep.active_requeued,
       rep.corrupt);
  return {};
}

void Daemon::applyClients() {
  auto now = time_.steady();
  // Removed clients finish (or abandon) their work, then go.
  for (auto it = clients_.begin(); it != clients_.end();) {
    if (!cfg_.findClient(it->first)) {
      logf(LogLevel::Info, "client=%s: removed from the configuration; closing", it->first.c_str());
      it->second.client->beginStop(now, kShutdownGrace);
      shares_.forget(&it->second);  // its demand for another connection
      retiring_.push_back(std::move(it->second));
      it = clients_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& c : cfg_.clients) {
    auto it = clients_.find(c.name);
    if (it == clients_.end()) {
      ClientEntry e;
      e.client = std::make_unique<SshClient>(c, cfg_.tunneld, *jobs_, *this, systemTime(),
                                             leases_ ? static_cast<TunnelObserver*>(this) : nullptr,
                                             &metrics_, verifier_.get());
      e.client->setShares(&shares_);
      auto [pos, ok] = clients_.emplace(c.name, std::move(e));
      (void)ok;
      service(pos->second);
    } else {
      it->second.client->reconfigure(c, cfg_.tunneld, now);
      service(it->second);
    }
  }
  for (auto& e : retiring_) service(e);
}

template <class F>
void Daemon::forEachClient(F&& f) {
  for (auto& [name, e] : clients_) f(e);
  for (auto& e : retiring_) f(e);
  for (auto& e : extras_) f(e);
}

Daemon::ClientEntry* Daemon::entryOf(const SshClient* c) {
  ClientEntry* found = nullptr;
  forEachClient([&](ClientEntry& e) {
    if (!found && e.client.get() == c) found = &e;
  });
  return found;
}

void Daemon::service(ClientEntry& e, short revents) {
  e.client->step(time_.steady(), revents);
  sync(e);
  serviceShares();
}

void Daemon::sync(ClientEntry& e) {
  SshClient* c = e.client.get();
  int fd = c->fd();
  if (e.watched_fd != fd) {
    if (e.watched_fd >= 0) loop_.unwatch(e.watched_fd);
    e.watched_fd = -1;
  }
  if (fd >= 0) {
    short ev = c->events();
    if (e.watched_fd != fd) {
      loop_.watch(fd, ev, [this, c](short rev) {
        if (ClientEntry* ce = entryOf(c)) service(*ce, rev);
      });
      e.watched_fd = fd;
    } else {
      loop_.setEvents(fd, ev);
    }
  }
  auto d = c->deadline();
  auto now = time_.steady();
  if (d && *d <= now) d = now + std::chrono::milliseconds(1);
  if (d != e.timer_when) {
    if (e.timer_id) loop_.cancelTimer(e.timer_id);
    e.timer_id = 0;
    e.timer_when = d;
    if (d) {
      e.timer_id = loop_.addTimer(*d, [this, c]() {
        ClientEntry* ce = entryOf(c);
        if (!ce) return;
        ce->timer_id = 0;
        ce->timer_when.reset();
        service(*ce);
      });
    }
  }
}

void Daemon::pokeDue() {
  if (stopping_) return;
  int64_t now = time_.unixSeconds();
  for (auto& [name, e] : clients_) {
    if (queue_->hasDue(name, now)) {
      e.client->poke();
      service(e);
    }
  }
  for (auto& e : extras_) {
    if (queue_->hasDue(e.client->name(), now)) {
      e.client->poke();
      service(e);
    }
  }
}

void Daemon::onInotify() {
  alignas(inotify_event) char buf[8192];
  while (read(inotify_fd_.get(), buf, sizeof buf) > 0) {
  }
  int64_t now = time_.unixSeconds();
  scan_more_ = queue_->scanIncoming(now, kScanSlice);
  last_scan_ = now;
  pokeDue();
}

void Daemon::onSignal() {
  signalfd_siginfo si;
  while (read(signal_fd_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    if (si.ssi_signo == SIGHUP) {
      logf(LogLevel::Info, "SIGHUP: reloading %s", cfg_.path.c_str());
      (void)reload();
    } else if (si.ssi_signo == SIGCHLD) {
      if (relaymap_) {
        relaymap_->check();
        syncRelaymap();
      }
    } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
      if (stopping_) {
        logf(LogLevel::Warning, "second %s: abandoning every session now",
             si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        stopClients(std::chrono::seconds(0));
      } else {
        beginShutdown();
      }
    }
  }
}

void Daemon::beginShutdown() {
  stopping_ = true;
  logf(LogLevel::Info, "stopping: no new transactions; waiting up to %llds for those in flight",
       static_cast<long long>(kShutdownGrace.count()));
  stopClients(kShutdownGrace);
}

void Daemon::stopClients(std::chrono::seconds grace) {
  auto now = time_.steady();
  forEachClient([&](ClientEntry& e) { e.client->beginStop(now, grace); });
  forEachClient([&](ClientEntry& e) { service(e); });
}

Status Daemon::reload() {
  LoadResult lr = loadConfig(cfg_.path, ConfigRole::Tunneld);
  if (!lr.config) {
    std::string all;
    for (auto& e : lr.errors) {
      logf(LogLevel::Error, "reload: %s", e.str().c_str());
      if (!all.empty()) all += "; ";
      all += e.str();
    }
    logf(LogLevel::Error, "reload: %s has errors; keeping the running configuration",
         cfg_.path.c_str());
    return Error{0, "configuration has errors, keeping the running one: " + all};
  }
  // What needs a restart is kept as it runs (planReload); everything else is applied.
  ReloadPlan plan = planReload(cfg_, std::move(*lr.config), ConfigRole::Tunneld);
  auto access = accessRules(plan.config);
  if (!access) {
    logf(LogLevel::Error, "reload: %s; keeping the running configuration",
         access.error().message.c_str());
    return Error{0, access.error().message + "; keeping the running configuration"};
  }
  access_ = *access;
  cfg_ = std::move(plan.config);
  queue_->reconfigure(cfg_);
  reloadRelay();
  if (verifier_) verifier_->configure(cfg_.clients);
  // Extra connections reopen when a backlog needs them, with the new settings.
  closeExtraConnections("configuration reloaded");
  shares_.setCap(cfg_.tunneld.max_channels);
  applyClients();
  logf(LogLevel::Info, "reload: %zu client(s) configured", cfg_.clients.size());
  logf(LogLevel::Info, "reload: taken: %s",
       plan.taken.empty() ? "no change" : joinKeys(plan.taken).c_str());
  reload_note_.clear();
  if (!plan.waiting.empty()) {
    logf(LogLevel::Warning, "reload: changed, kept as running until a restart: %s",
         joinKeys(plan.waiting).c_str());
    reload_note_ = "changed keys that need a restart to apply: " + joinKeys(plan.waiting);
  }
  return {};
}

void Daemon::onControlAccept() {
  while (true) {
    int fd = accept4(control_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    auto conn = std::make_unique<ControlConn>();
    conn->fd.reset(fd);
    if (auto peer = peerCredentials(fd))
      conn->peer = *peer;
    else
      logf(LogLevel::Warning, "control: %s; the peer may do nothing", peer.error().message.c_str());
    conn->timer = loop_.addTimer(time_.steady() + std::chrono::seconds(10), [this, fd]() {
      auto it = conns_.find(fd);
      if (it != conns_.end()) it->second->timer = 0;
      closeControl(fd);
    });
    conns_[fd] = std::move(conn);
    loop_.watch(fd, POLLIN, [this, fd](short rev) { onControlIo(fd, rev); });
  }
}

void Daemon::closeControl(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (it->second->timer) loop_.cancelTimer(it->second->timer);
  loop_.unwatch(fd);
  conns_.erase(it);  // closes fd
}

void Daemon::onControlIo(int fd, short revents) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  ControlConn& c = *it->second;
  if (!c.replied && (revents & (POLLIN | POLLHUP | POLLERR))) {
    char buf[1024];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) c.in.append(buf, static_cast<size_t>(n));
    size_t nl = c.in.find('\n');
    ControlReply reply;
    if (nl == std::string::npos && c.in.size() <= kMaxRequest && n != 0) return;  // wait for more
    if (nl == std::string::npos && c.in.size() <= kMaxRequest && c.in.empty()) {
      closeControl(fd);
      return;
    }
    auto req = parseControlRequest(nl == std::string::npos ? std::string_view(c.in)
                                                           : std::string_view(c.in).substr(0, nl));
    if (!req) {
      reply.ok = false;
      reply.error = req.error().message;
    } else if (auto denied = controlAccess(accessNow(), c.peer, req->command)) {
      logf(LogLevel::Notice, "control: uid %ld: %s", static_cast<long>(c.peer.uid),
           denied->c_str());
      reply.ok = false;
      reply.error = *denied;
    } else if (req->command == ControlRequest::Command::Verify) {
      return startVerify(fd, *req);  // answered later (verifyAnswered)
    } else {
      reply = handleRequest(*req, c.peer);
    }
    c.out = formatControlReply(reply);
    c.replied = true;
    loop_.setEvents(fd, POLLOUT);
  }
  if (c.replied) {
    while (c.sent < c.out.size()) {
      ssize_t n = send(fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) return;
        break;
      }
      c.sent += static_cast<size_t>(n);
    }
    closeControl(fd);
  }
}

namespace {

// "spool: DIR, N bytes free, new client mail refused below M (spool.min_free)".
std::string spoolSpaceLine(const SpoolConfig& spool) {
  std::string l = "spool: " + spool.dir + ", ";
  Result<uint64_t> free = freeBytes(spool.dir);
  l += free ? std::to_string(free.value()) + " bytes free" : "free space unknown (" +
                                                                  free.error().message + ")";
  uint64_t need = minFreeThreshold(spool);
  l += need ? ", new client mail refused below " + std::to_string(need) + " (spool.min_free)"
            : ", no free space check (spool.min_free = 0)";
  return l;
}

// "  queue usage: N messages of max M, B bytes of max Q"; for a limit of 0, "N messages (no
// limit)".
std::string queueUsageLine(const ClientConfig& c, const ClientQueueStatus& q) {
  auto limit = [](uint64_t v) { return v ? " of max " + std::to_string(v) : " (no limit)"; };
  uint64_t messages = q.active + q.deferred + q.hold + q.in_flight;
  return "  queue usage: " + std::to_string(messages) + " messages" + limit(c.max_queue_messages) +
         ", " + std::to_string(q.bytes) + " bytes" + limit(c.max_queue_bytes);
}

}  // namespace

std::vector<std::string> Daemon::statusLines() {
  std::vector<std::string> lines;
  std::map<std::string, ClientQueueStatus> qs;
  for (auto& s : queue_->status()) qs[s.client] = s;
  lines.push_back(std::string("dynmx-tunneld: ") + (stopping_ ? "stopping" : "running") + ", " +
                  std::to_string(clients_.size()) + " client(s), channels " +
                  std::to_string(shares_.open()) +
                  (shares_.cap() ? " of max_channels " + std::to_string(shares_.cap()) : ""));
  lines.push_back(spoolSpaceLine(cfg_.spool));
  for (auto& [name, e] : clients_) {
    ClientStatus s = e.client->status();
    addConnectionStatus(name, s);
    std::string l = "client " + name + ": " + s.state;
    if (s.state == "connected")
      l += " to " + s.address + " since " + isoUtcOrDash(s.connected_since);
    else if (!s.address.empty())
      l += " (" + s.address + ")";
    if (s.backoff_until) l += ", next attempt " + isoUtcOrDash(s.backoff_until);
    lines.push_back(l);
    if (!s.kex.empty())
      lines.push_back("  ssh: kex " + s.kex + ", hostkey " + s.hostkey + ", cipher " + s.cipher +
                      ", mac " + s.mac);
    if (s.state == "host-key-mismatch" || s.state == "host-key-unknown")
      lines.push_back("  host key: presented " + s.presented_fp + ", expected " +
                      (s.expected_fp.empty() ? std::string("(none known)") : s.expected_fp));
    else if (!s.presented_fp.empty())
      lines.push_back("  host key: " + s.presented_fp);
    if (!s.login_key.empty()) lines.push_back("  login key: " + s.login_key);
    auto q = qs[name];
    lines.push_back("  queue: active " + std::to_string(q.active) + ", deferred " +
                    std::to_string(q.deferred) + ", hold " + std::to_string(q.hold) +
                    ", in flight " + std::to_string(q.in_flight) + ", channels " +
                    std::to_string(s.channels) + ", connections " + std::to_string(s.connections) +
                    (q.oldest_arrival ? ", oldest " + isoUtcOrDash(q.oldest_arrival) : ""));
    if (const ClientConfig* cc = cfg_.findClient(name)) lines.push_back(queueUsageLine(*cc, q));
    if (!s.last_error.empty()) lines.push_back("  last error: " + s.last_error);
    for (auto& l : leaseStatusLines(name)) lines.push_back(std::move(l));
    qs.erase(name);
  }
  for (auto& [name, q] : qs) {
    if (name.empty()) continue;
    if (q.notifications) {
      if (q.active + q.deferred + q.hold)
        lines.push_back("notifications waiting for the local sendmail: " +
                        std::to_string(q.active + q.deferred));
      continue;
    }
    lines.push_back("client " + name + ": not configured; queue: active " +
                    std::to_string(q.active) + ", deferred " + std::to_string(q.deferred) +
                    ", hold " + std::to_string(q.hold));
  }
  return lines;
}

MetricsSnapshot Daemon::metricsSnapshot() {
  MetricsSnapshot m;
  m.version = kVersion;
  m.start_time = start_time_;
  for (auto& [name, counters] : metrics_.clients()) m.clients[name].counters = counters;
  for (auto& [name, e] : clients_) {
    ClientSnapshot& c = m.clients[name];
    ClientStatus st = e.client->status();
    c.configured = true;
    c.connected = st.state == "connected";
    c.login_key = st.login_key;
  }
  for (const ClientQueueStatus& q : queue_->status()) {
    if (q.notifications) {
      m.notifications_active += q.active;
      m.notifications_deferred += q.deferred;
      m.notifications_hold += q.hold;
      m.notifications_in_flight += q.in_flight;
      continue;
    }
    ClientSnapshot& c = m.clients[q.client];
    c.active = q.active;
    c.deferred = q.deferred;
    c.hold = q.hold;
    c.in_flight = q.in_flight;
  }
  m.incoming = spool_.list(QueueState::Incoming).size();
  m.corrupt = spool_.list(QueueState::Corrupt).size();
  return m;
}

// One record per client (configured, or only found in the spool), the notifications and the
// daemon; the fields are dynmxctl(8)'s (status --json), times in unix seconds, 0 for none.
std::vector<std::string> Daemon::statusRecords() {
  std::vector<std::string> out;
  std::map<std::string, ClientQueueStatus> qs;
  for (auto& s : queue_->status()) qs[s.client] = s;
  auto n = [](auto v) { return std::to_string(v); };
  out.push_back(formatStatusRecord({"daemon",
                                    {{"state", stopping_ ? "stopping" : "running"},
                                     {"clients", n(clients_.size())},
                                     {"version", kVersion}}}));
  {
    Result<uint64_t> free = freeBytes(cfg_.spool.dir);
    out.push_back(formatStatusRecord({"spool",
                                      {{"dir", cfg_.spool.dir},
                                       {"free_bytes", free ? n(free.value()) : std::string()},
                                       {"min_free", n(minFreeThreshold(cfg_.spool))}}}));
  }
  auto queueFields = [&](StatusRecord& rec, const ClientQueueStatus& q) {
    rec.fields.insert(rec.fields.end(), {{"active", n(q.active)},
                                         {"deferred", n(q.deferred)},
                                         {"hold", n(q.hold)},
                                         {"in_flight", n(q.in_flight)},
                                         {"bytes", n(q.bytes)},
                                         {"oldest_arrival", n(q.oldest_arrival)}});
  };
  size_t notifications = 0;
  for (auto& [name, e] : clients_) {
    ClientStatus s = e.client->status();
    StatusRecord rec{"client",
                     {{"name", name},
                      {"configured", "1"},
                      {"state", s.state},
                      {"address", s.address},
                      {"connected_since", n(s.state == "connected" ? s.connected_since : 0)},
                      {"next_attempt", n(s.backoff_until)},
                      {"failures", n(s.failures)},
                      {"channels", n(s.channels)},
                      {"kex", s.kex},
                      {"hostkey", s.hostkey},
                      {"cipher", s.cipher},
                      {"mac", s.mac},
                      {"login_key", s.login_key},
                      {"presented_fp", s.presented_fp},
                      {"expected_fp", s.expected_fp},
                      {"last_error", s.last_error}}};
    if (const ClientConfig* cc = cfg_.findClient(name))
      rec.fields.insert(rec.fields.end(), {{"max_queue_messages", n(cc->max_queue_messages)},
                                           {"max_queue_bytes", n(cc->max_queue_bytes)}});
    queueFields(rec, qs[name]);
    qs.erase(name);
    out.push_back(formatStatusRecord(rec));
  }
  for (auto& [name, q] : qs) {
    if (name.empty()) continue;
    if (q.notifications) {
      notifications += q.active + q.deferred + q.hold + q.in_flight;
      continue;
    }
    StatusRecord rec{"client", {{"name", name}, {"configured", "0"}, {"state", "not-configured"}}};
    queueFields(rec, q);
    out.push_back(formatStatusRecord(rec));
  }
  out.push_back(formatStatusRecord({"notifications", {{"waiting", n(notifications)}}}));
  return out;
}

// dynmxctl delete/bounce: of one message, or ALL of one client's.
ControlReply Daemon::disposeReply(const ControlRequest& req, const ControlPeer& peer) {
  ControlReply r;
  Disposal d = req.command == ControlRequest::Command::Delete ? Disposal::Delete : Disposal::Bounce;
  int64_t now = time_.unixSeconds();
  std::string who = peerName(peer);
  auto rep = req.client.empty() ? queue_->dispose(d, req.arg, who, now)
                                : queue_->disposeAll(d, req.client, who, now);
  if (!rep) {
    r.ok = false;
    r.error = rep.error().message;
    return r;
  }
  r.lines = std::move(rep->lines);
  if (rep->failed) {
    r.ok = false;
    r.error = std::to_string(rep->failed) + " message(s) could not be " +
              (d == Disposal::Delete ? "deleted" : "returned to sender");
  }
  return r;
}

// The key a client presented that did not verify (dynmxctl trust); refused while there is none.
ControlReply Daemon::hostkeyReply(const std::string& client) {
  ControlReply r;
  r.ok = false;
  auto it = clients_.find(client);
  if (it == clients_.end()) {
    r.error = "no client named " + client;
    return r;
  }
  ClientStatus s = it->second.client->status();
  if (s.state != "host-key-mismatch" && s.state != "host-key-unknown") {
    r.error = "client " + client + " is " + s.state + ": no host key in question";
    return r;
  }
  if (s.presented_key.empty()) {
    r.error = "client " + client + ": " + s.state + ", but no whole key was presented (" +
              s.presented_fp + "); see its last error: " + s.last_error;
    return r;
  }
  r.ok = true;
  r.lines.push_back(formatStatusRecord({"hostkey",
                                        {{"client", client},
                                         {"state", s.state},
                                         {"type", s.presented_type},
                                         {"key", base64Encode(s.presented_key)},
                                         {"fingerprint", s.presented_fp},
                                         {"expected", s.expected_fp},
                                         {"address", s.address}}}));
  return r;
}

// `flush [CLIENT]`: deferred mail due now, and a connection attempt now (one client or all).
ControlReply Daemon::flushReply(const std::string& client, int64_t now) {
  ControlReply r;
  if (!client.empty() && !clients_.count(client)) {
    r.ok = false;
    r.error = "no client named " + client;
    return r;
  }
  scan_more_ = queue_->scanIncoming(now);
  queue_->flush(client, now);
  auto t = time_.steady();
  for (auto& [name, e] : clients_) {
    if (!client.empty() && name != client) continue;
    e.client->retryNow(t);
    service(e);
  }
  r.lines.push_back("flushed " + (client.empty() ? std::string("every client") : client));
  return r;
}

// `metrics`: the OpenMetrics text, one body line per line.
ControlReply Daemon::metricsReply() {
  ControlReply r;
  std::string text = renderMetrics(metricsSnapshot(), ExpositionFormat::OpenMetrics);
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    r.lines.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  return r;
}

ControlReply Daemon::handleRequest(const ControlRequest& req, const ControlPeer& peer) {
  ControlReply r;
  int64_t now = time_.unixSeconds();
  switch (req.command) {
    case ControlRequest::Command::Status:
      r.lines = req.arg == "fields" ? statusRecords() : statusLines();
      break;
    case ControlRequest::Command::Queue:
      r.lines = queue_->listQueue();
      break;
    case ControlRequest::Command::Flush:
      r = flushReply(req.arg, now);
      break;
    case ControlRequest::Command::Hold: {
      auto st = queue_->hold(req.arg);
      if (!st) {
        r.ok = false;
        r.error = st.error().message;
      } else {
        r.lines.push_back(req.arg + ": held");
      }
      break;
    }
    case ControlRequest::Command::Release: {
      auto st = queue_->release(req.arg, now);
      if (!st) {
        r.ok = false;
        r.error = st.error().message;
      } else {
        r.lines.push_back(req.arg + ": released");
        pokeDue();
      }
      break;
    }
    case ControlRequest::Command::Leases:
      r = leasesReply();
      break;
    case ControlRequest::Command::Revoke:
      r = revokeReply(req.arg);
      break;
    case ControlRequest::Command::Reload: {
      auto st = reload();
      if (!st) {
        r.ok = false;
        r.error = st.error().message;
      } else {
        r.lines.push_back("reloaded " + cfg_.path);
        if (!reload_note_.empty()) r.lines.push_back(reload_note_);
      }
      break;
    }
    case ControlRequest::Command::Checkin:
      r = checkin(req);
      break;
    case ControlRequest::Command::Metrics:
      r = metricsReply();
      break;
    case ControlRequest::Command::Delete:
    case ControlRequest::Command::Bounce:
      r = disposeReply(req, peer);
      break;
    case ControlRequest::Command::Hostkey:
      r = hostkeyReply(req.arg);
      break;
    case ControlRequest::Command::Verify:  // answered later, by startVerify()
      r.ok = false;
      r.error = "verify: not answered here";
      break;
  }
  return r;
}

// ---- the admin socket's access rules and the check-in ----

Result<ControlAccessRules> Daemon::accessRules(const Config& cfg) {
  ControlAccessRules a;
  a.control_group_name = cfg.tunneld.control_group;
  if (!a.control_group_name.empty()) {
    const group* g = getgrnam(a.control_group_name.c_str());
    if (!g) return Error{0, "tunneld.control_group " + a.control_group_name + ": no such group"};
    a.control_gid = g->gr_gid;
  }
  const std::string& name = cfg.relay.checkin_user;
  if (name.empty()) return a;
  const passwd* pw = getpwnam(name.c_str());
  if (!pw) return Error{0, "relay.checkin_user " + name + ": no such user"};
  uid_t uid = pw->pw_uid;
  std::optional<uid_t> daemon_uid;
  if (!cfg.tunneld.user.empty()) {
    if (const passwd* d = getpwnam(cfg.tunneld.user.c_str())) daemon_uid = d->pw_uid;
  } else {
    daemon_uid = geteuid();
  }
  // The check-in account may do nothing but check in: it must not be an account that may do more.
  if (uid == 0 || uid == daemon_uid)
    return Error{0, "relay.checkin_user " + name + " is " +
                        (uid == 0 ? std::string("root") : "the daemon's own user") +
                        "; expected a dedicated account that may do nothing but check in"};
  a.checkin_uid = uid;
  a.checkin_user = name;
  return a;
}

ControlAccessRules Daemon::accessNow() const {
  ControlAccessRules a = access_;
  a.daemon_uid = geteuid();  // after start-up, tunneld.user
  if (a.control_group_name.empty()) a.control_gid = getegid();
  return a;
}

ControlReply Daemon::checkin(const ControlRequest& req) {
  GrantResult g;
  if (leases_) {
    int64_t now = leaseNow();
    leaseEvents(leases_->expire(now));
    g = leases_->checkIn(req.arg, req.address, now);
    leaseEvents(g.events);  // logged, saved and fed to dynmx-relaymap
  } else {
    // No client may relay: the rules alone give the refusal (unknown client or relay off).
    LeaseTable none(LeaseRules::fromConfig(cfg_));
    g = none.checkIn(req.arg, req.address, LeaseClock(time_).now());
    logLeaseEvents(g.events);
  }
  if (g.lease) checkinHint(req.arg);
  return checkinReply(g);
}

void Daemon::checkinHint(const std::string& client) {
  auto it = clients_.find(client);
  if (it == clients_.end() || stopping_) return;
  auto t = time_.steady();
  auto last = checkin_hints_.find(client);
  if (last != checkin_hints_.end() && t - last->second < kCheckinHintInterval) return;
  checkin_hints_[client] = t;
  ClientStatus st = it->second.client->status();
  if (st.state == "connected") return;
  logf(LogLevel::Info, "client %s checked in: connecting now instead of waiting (was %s)",
       client.c_str(), st.state.c_str());
  it->second.client->retryNow(t);
  service(it->second);
}


int Daemon::run() {
  while (true) {
    int64_t now = time_.unixSeconds();
    if (!stopping_) {
      if (now != wake_checked_at_) {
        wake_checked_at_ = now;
        next_wake_ = queue_->nextWakeup();
      }
      if (next_wake_ != 0 && next_wake_ <= now) {
        queue_->tick(now);
        pokeDue();
        next_wake_ = queue_->nextWakeup();
      }
      if (scan_more_ || now - last_scan_ >= kIncomingRescan.count()) {
        scan_more_ = queue_->scanIncoming(now, kScanSlice);
        last_scan_ = now;
        pokeDue();
      }
      scaleConnections();
    } else {
      bool all = true;
      forEachClient([&](ClientEntry& e) { all = all && e.client->stopped(); });
      if (all) break;
    }
    // Retired clients that are done can go.
    for (auto it = retiring_.begin(); it != retiring_.end();) {
      if (it->client->stopped()) {
        if (it->watched_fd >= 0) loop_.unwatch(it->watched_fd);
        if (it->timer_id) loop_.cancelTimer(it->timer_id);
        it = retiring_.erase(it);
      } else {
        ++it;
      }
    }
    // Idle (nothing queued, nothing moving): sleep until an event or the incoming/ rescan.
    // Otherwise look at the queue's timers again within a second: deliveries finishing meanwhile
    // may have scheduled retries that the cached next_wake_ does not know about.
    // Clients are woken by their socket, their timers and pokes (the wake-up that libssh2's own
    // input queue would need is SshClient's business: it goes round while input is queued).
    std::chrono::milliseconds max_wait = kIncomingRescan;
    bool busy = stopping_ || next_wake_ != 0;
    if (busy) max_wait = std::chrono::seconds(1);
    if (scan_more_ && !stopping_) max_wait = std::chrono::milliseconds(0);
    if (!stopping_ && next_wake_ > now)
      max_wait = std::min<std::chrono::milliseconds>(max_wait,
                                                     std::chrono::seconds(next_wake_ - now));
    loop_.runOnce(max_wait);
  }
  // A hand-off under way is not waited for: its sendmail is killed, the notification stays
  // spooled and goes out after the restart.
  bounces_->cancel();
  queue_->flushRemovals();
  stopRelay();
  logf(LogLevel::Info, "stopped");
  return kExitOk;
}

// ---- command line ------------------------------------------------------------------------

namespace {

void usage(FILE* f) {
  fprintf(f, "usage: dynmx-tunneld [-c FILE] [-f|--foreground] [--check-config] [--version]\n");
}

Status writePidFile(const std::string& path) {
  if (path.empty()) return {};
  std::string tmp = path + ".tmp";
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd) return sysError(errno, "pid_file " + tmp);
  std::string s = std::to_string(getpid()) + "\n";
  bool ok = write(fd.get(), s.data(), s.size()) == static_cast<ssize_t>(s.size());
  ok = fd.closeChecked() == 0 && ok;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) return sysError(errno, "pid_file " + path);
  return {};
}

// After the switch to tunneld.user the pid file (written as root) can be removed only if its
// directory lets that user; if not, it is left and said so (start-stop-daemon and the init
// scripts take a pid file whose process is gone for stale).
void removePidFile(const std::string& path) {
  if (path.empty()) return;
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    Error e = sysError(errno, "unlink " + path);
    logf(LogLevel::Warning, "pid file left behind: %s (give its directory to tunneld.user)",
         e.message.c_str());
  }
}

struct Options {
  std::string path = kDefaultConfigPath;
  bool foreground = false;
  bool check = false;
};

// Fills `o` from argv; returns an exit status when the program is done (help, usage error).
std::optional<int> parseOptions(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c" && i + 1 < argc)
      o.path = argv[++i];
    else if (a.rfind("-c", 0) == 0 && a.size() > 2)
      o.path = a.substr(2);
    else if (a == "-f" || a == "--foreground")
      o.foreground = true;
    else if (a == "--check-config")
      o.check = true;
    else if (a == "-h" || a == "--help") {
      usage(stdout);
      return kExitOk;
    } else if (a == "--version") {
      printVersion("dynmx-tunneld");
      return kExitOk;
    } else {
      usage(stderr);
      return kExitUsage;
    }
  }
  return std::nullopt;
}

// Without -f the program forks, and the parent exits only once the child is ready (or with its
// error), so that init scripts see start-up failures. The child reports one status byte, then
// (on failure) why, through a pipe; in the foreground there is no pipe and report() only returns.
class ReadyPipe {
 public:
  ReadyPipe() = default;
  ReadyPipe(const ReadyPipe&) = delete;
  ReadyPipe& operator=(const ReadyPipe&) = delete;
  ~ReadyPipe() = default;

  // Forks. Returns the exit status for the parent (the child's report) or for a failure; nullopt
  // in the child, which goes on detached from the terminal.
  std::optional<int> fork() {
    int ready[2] = {-1, -1};
    if (pipe2(ready, O_CLOEXEC) != 0) {
      perror("dynmx-tunneld: pipe");
      return kExitOsErr;
    }
    pid_t pid = ::fork();
    if (pid < 0) {
      perror("dynmx-tunneld: fork");
      return kExitOsErr;
    }
    UniqueFd rd(ready[0]), wr(ready[1]);
    if (pid > 0) {
      wr.reset();
      return parentWait(rd.get());
    }
    rd.reset();
    fd_ = std::move(wr);
    setsid();
    if (chdir("/") != 0) {
    }
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    return std::nullopt;
  }

  int report(int code, const std::string& why = "") {
    if (fd_) {
      std::string m(1, static_cast<char>(code));
      m += why;
      ssize_t n = write(fd_.get(), m.data(), m.size());
      (void)n;
      fd_.reset();
    }
    return code;
  }

 private:
  static int parentWait(int fd) {
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) msg.append(buf, static_cast<size_t>(n));
    if (msg.empty()) return kExitOsErr;
    int code = static_cast<unsigned char>(msg[0]);
    if (code != kExitOk) fprintf(stderr, "dynmx-tunneld: cannot start: %s\n", msg.c_str() + 1);
    return code;
  }

  UniqueFd fd_;  // the write end, in the child
};

// Starts the daemon (init, pid file, privileges), tells the parent, serves until stopped. The
// pid file is removed only once this daemon wrote it (not when another one's was found).
int serve(const Config& cfg, bool foreground, ReadyPipe& ready) {
  int code;
  {
    Daemon d(cfg, systemTime());
    d.setForeground(foreground);
    if (auto st = d.init(); !st) {
      logf(LogLevel::Critical, "cannot start: %s", st.error().message.c_str());
      if (foreground)
        fprintf(stderr, "dynmx-tunneld: cannot start: %s\n", st.error().message.c_str());
      return ready.report(kExitOsErr, st.error().message);
    }
    if (auto st = writePidFile(cfg.tunneld.pid_file); !st) {
      logf(LogLevel::Critical, "cannot start: %s", st.error().message.c_str());
      return ready.report(kExitCantCreat, st.error().message);
    }
    if (auto failed = dropPrivileges(cfg.tunneld.user, "tunneld.user")) {
      logf(LogLevel::Critical, "cannot start: %s", failed->message.c_str());
      removePidFile(cfg.tunneld.pid_file);
      return ready.report(kExitNoPerm, failed->message);
    }
    ready.report(kExitOk);
    code = d.run();
  }
  removePidFile(cfg.tunneld.pid_file);
  return code;
}

}  // namespace

int tunneldMain(int argc, char** argv) {
  Options o;
  if (auto done = parseOptions(argc, argv, o)) return *done;
  if (o.check) return checkConfigCommand(o.path, ConfigRole::Tunneld, stdout, stderr);

  LoadResult lr = loadConfig(o.path, ConfigRole::Tunneld);
  if (!lr.config) {
    for (auto& e : lr.errors) fprintf(stderr, "dynmx-tunneld: %s\n", e.str().c_str());
    return kExitConfig;
  }
  Config cfg = std::move(*lr.config);
  cfg.path = o.path;

  ReadyPipe ready;
  if (!o.foreground) {
    if (auto parent_exit = ready.fork()) return *parent_exit;
  }
  logInit("dynmx-tunneld", o.foreground);
  libssh2_init(0);  // before any thread exists: libssh2_init is not thread-safe
  int code = serve(cfg, o.foreground, ready);
  libssh2_exit();
  return code;
}

}  // namespace dynmx::tunneld
