// ssh_client.cpp: the connection state machine of one client's persistent, host-key-verified
// SSH connection (libssh2, non-blocking): one function per state, then, once connected, the
// transport (drain channel, keepalive, dead-peer deadline) and how many SMTP sessions to run
// (the sessions themselves are channel_session.cpp).
//
// Failure behaviour: every network or protocol failure is a value: the connection is torn down,
// jobs in flight are abandoned (their recipients stay pending in the spool), and the next attempt
// waits for the backoff. A host key that does not verify stops the attempt before authentication.
// Nothing here blocks: name resolution runs on a short-lived helper thread that wakes the loop.
#include "tunneld/ssh/ssh_client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <thread>

#include "shared/host_name.hpp"
#include "shared/log.hpp"

namespace dynmx::tunneld {

const char* const kKexPref =
    "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,"
    "ecdh-sha2-nistp521,diffie-hellman-group16-sha512,diffie-hellman-group14-sha256";
const char* const kCipherPref = "aes256-ctr,aes192-ctr,aes128-ctr";
const char* const kMacPref = "hmac-sha2-512,hmac-sha2-256";

namespace {
constexpr auto kStableAfter = std::chrono::seconds(60);
// After a probe channel failed (refused open or exec, a broken session): the wait before the next.
constexpr auto kProbeRetry = std::chrono::seconds(30);
}  // namespace

std::chrono::milliseconds reconnectDelay(std::chrono::seconds min, std::chrono::seconds max,
                                         uint32_t failures, double u) {
  using std::chrono::milliseconds;
  if (max < min) max = min;
  if (u < 0) u = 0;
  if (u >= 1) u = 0.999999;
  milliseconds lo = min;
  milliseconds cap = lo;
  for (uint32_t i = 1; i < failures && cap < milliseconds(max); ++i) cap *= 2;
  if (cap > milliseconds(max)) cap = max;
  auto span = static_cast<double>((cap - lo).count());
  return lo + milliseconds(static_cast<int64_t>(std::floor(span * u)));
}

// Result of a name lookup, filled by the helper thread.
struct ResolveSlot {
  std::mutex mu;
  Waker* waker = nullptr;  // cleared (under mu) when the client gives up on the lookup
  bool done = false;
  int gai_error = 0;
  std::vector<std::pair<std::string, std::string>> addrs;
};

SshClient::SshClient(ClientConfig client, const TunneldConfig& tunneld, JobSource& jobs,
                     Waker& waker, const TimeSource& time, TunnelObserver* tunnels,
                     Metrics* metrics, ProbeSource* probes)
    : cfg_(std::move(client)),
      tcfg_(tunneld),
      jobs_(jobs),
      waker_(waker),
      time_(time),
      tunnels_(tunnels),
      counters_(metrics ? metrics->client(cfg_.name) : own_counters_),
      rng_(std::random_device{}()),
      probes_(probes) {
  backoff_until_ = time_.steady();  // first attempt at once
}

SshClient::~SshClient() {
  teardown(time_.steady(), "shutdown");
}

void SshClient::reconfigure(const ClientConfig& c, const TunneldConfig& t,
                            SteadyClock::time_point now) {
  bool reconnect = c.host != cfg_.host || c.port != cfg_.port || c.user != cfg_.user ||
                   c.host_key != cfg_.host_key || c.identityFiles(t) != cfg_.identityFiles(tcfg_) ||
                   t.known_hosts != tcfg_.known_hosts || t.remote_command != tcfg_.remote_command;
  cfg_ = c;
  tcfg_ = t;
  channel_limit_ = 0;  // the far end's sshd may have been changed too: learn it again
  if (reconnect && state_ != State::Stopped) {
    logf(LogLevel::Info, "client=%s: configuration changed, reconnecting", cfg_.name.c_str());
    teardown(now, "configuration changed");
    failures_ = 0;
    state_ = State::Backoff;
    backoff_until_ = now;
  }
}

short SshClient::events() const {
  if (!sock_) return 0;
  switch (state_) {
    case State::Connecting:
      return POLLOUT;
    case State::Handshake:
    case State::Auth:
    case State::OpenDrain: {
      short ev = POLLIN;
      if (session_.wantsWrite()) ev |= POLLOUT;
      if (session_ &&
          (libssh2_session_block_directions(session_.get()) & LIBSSH2_SESSION_BLOCK_OUTBOUND))
        ev |= POLLOUT;
      return ev;
    }
    case State::Connected:
      // Only our own record of a half-sent packet asks for POLLOUT: libssh2's direction flags
      // can stay set after the fact, and a writable socket would then wake us in a loop.
      return static_cast<short>(POLLIN | (session_.wantsWrite() ? POLLOUT : 0));
    default:
      return 0;
  }
}

std::optional<SteadyClock::time_point> SshClient::deadline() const {
  std::optional<SteadyClock::time_point> d;
  auto take = [&](SteadyClock::time_point t) {
    if (!d || t < *d) d = t;
  };
  if (poked_) take(SteadyClock::time_point::min());
  switch (state_) {
    case State::Backoff:
      take(backoff_until_);
      break;
    case State::Resolving:
      break;  // the resolver thread wakes us
    case State::Connecting:
    case State::Handshake:
    case State::Auth:
    case State::OpenDrain:
      take(attempt_deadline_);
      break;
    case State::Connected:
      // With a half-sent packet, POLLOUT wakes us first.
      if (!session_.outputHeld()) take(next_keepalive_);
      take(last_rx_ + 3 * tcfg_.keepalive);
      if (peer_confirmed_) take(next_touch_);  // the lease's renewal, once per keepalive
      for (auto& c : chans_)
        if (auto cd = c->deadline(tcfg_.idle_close)) take(*cd);
      if (probe_)
        if (auto pd = probe_->deadline(tcfg_.idle_close)) take(*pd);
      if (stopping_) take(stop_deadline_);
      if (session_backoff_until_ > now_hint_) take(session_backoff_until_);
      // An extra connection that never ran a session closes after idle_close (the daemon).
      if (extra_ && chans_.empty() && !had_channel_ && last_channel_ + tcfg_.idle_close > now_hint_)
        take(last_channel_ + tcfg_.idle_close);
      break;
    case State::Stopped:
      break;
  }
  return d;
}

void SshClient::retryNow(SteadyClock::time_point now) {
  if (state_ == State::Backoff) backoff_until_ = now;
  poked_ = true;
}

void SshClient::beginStop(SteadyClock::time_point now, std::chrono::seconds grace) {
  stopping_ = true;
  stop_deadline_ = now + grace;
  if (state_ != State::Connected) {
    teardown(now, "stopping");
    state_ = State::Stopped;
  }
}

ssize_t SshClient::recvHook(int sock, void* buf, size_t len, int flags, void** abstract) {
  ssize_t rc = ::recv(sock, buf, len, flags);
  if (rc < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  if (rc > 0 && abstract && *abstract) {
    auto* self = static_cast<SshClient*>(*abstract);
    self->last_rx_ = self->time_.steady();
    ++self->rx_reads_;
  }
  return rc;
}

void SshClient::fail(const std::string& why, SteadyClock::time_point now, bool count) {
  last_error_ = why;
  mismatch_state_.clear();  // the host-key branches set it again after calling fail()
  teardown(now, why);
  if (stopping_ || extra_) {
    // An extra connection is not retried: the daemon opens another when a backlog needs it.
    if (extra_ && !stopping_)
      logf(LogLevel::Info, "client=%s: extra connection: %s; closed", cfg_.name.c_str(),
           why.c_str());
    state_ = State::Stopped;
    return;
  }
  if (count) ++failures_;
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  auto delay =
      reconnectDelay(tcfg_.reconnect_min, tcfg_.reconnect_max, std::max(failures_, 1u), dist(rng_));
  backoff_until_ = now + delay;
  backoff_until_unix_ = unixNow() + std::chrono::duration_cast<std::chrono::seconds>(delay).count();
  state_ = State::Backoff;
  logf(LogLevel::Info, "client=%s: %s; next attempt in %.1fs", cfg_.name.c_str(), why.c_str(),
       static_cast<double>(delay.count()) / 1000.0);
}

void SshClient::teardown(SteadyClock::time_point now, const std::string& reason) {
  // Channels first: the session frees those still open when it goes.
  for (auto& c : chans_) c->abandon(jobs_, reason, unixNow());
  chans_.clear();
  if (probe_) probe_->abandon(*probes_, cfg_.name, reason);
  probe_.reset();
  if (shares_) shares_->forget(this);
  channel_went_ = open_after_close_ = refused_wait_ = false;
  drain_.leaveToSession();
  session_.close(&sock_);
  sock_.reset();
  if (resolve_) {
    std::lock_guard<std::mutex> lk(resolve_->mu);
    resolve_->waker = nullptr;
  }
  resolve_.reset();
  if (connected_since_unix_ != 0 && now - connected_at_ >= kStableAfter) failures_ = 0;
  connected_since_unix_ = 0;
  if (peer_confirmed_ && tunnels_ && peer_addr_) tunnels_->tunnelLost(cfg_.name, *peer_addr_);
  peer_seen_ = peer_confirmed_ = false;
  peer_addr_.reset();
}

void SshClient::step(SteadyClock::time_point now, short revents) {
  now_hint_ = now;
  if (revents & POLLOUT) session_.writable();
  poked_ = false;
  for (int guard = 0; guard < 64; ++guard) {
    if (!stepOnce(now)) return;
  }
  poked_ = true;  // still busy: come back after the loop served the others
}

void SshClient::startAttempt(SteadyClock::time_point now) {
  auto slot = std::make_shared<ResolveSlot>();
  resolve_ = slot;
  state_ = State::Resolving;
  attempt_deadline_ = now + tcfg_.connect_timeout;
  slot->waker = &waker_;
  std::string host = cfg_.host;
  std::string port = std::to_string(cfg_.port);
  // The slot outlives the client if need be; the waker is only called while the client still
  // wants the answer (teardown clears it under the slot's mutex).
  std::thread([slot, host, port] {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    std::vector<std::pair<std::string, std::string>> addrs;
    if (rc == 0) {
      for (addrinfo* a = res; a; a = a->ai_next) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (a->ai_family == AF_INET)
          inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof ip);
        else if (a->ai_family == AF_INET6)
          inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip,
                    sizeof ip);
        else
          continue;
        addrs.emplace_back(std::string(reinterpret_cast<char*>(a->ai_addr), a->ai_addrlen), ip);
      }
      freeaddrinfo(res);
    }
    {
      std::lock_guard<std::mutex> lk(slot->mu);
      slot->done = true;
      slot->gai_error = rc;
      slot->addrs = std::move(addrs);
      if (slot->waker) slot->waker->wake();
    }
  }).detach();
}

bool SshClient::tryNextAddress(SteadyClock::time_point now) {
  while (addr_index_ < addrs_.size()) {
    auto& [sa, ip] = addrs_[addr_index_++];
    const sockaddr* addr = reinterpret_cast<const sockaddr*>(sa.data());
    UniqueFd fd(socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      last_error_ = std::string("socket: ") + strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    relay_ = cfg_.host + "[" + ip + "]:" + std::to_string(cfg_.port);
    ++counters_.connection_attempts;
    if (connect(fd.get(), addr, static_cast<socklen_t>(sa.size())) != 0 && errno != EINPROGRESS) {
      last_error_ = "connect to " + relay_ + ": " + strerror(errno);
      logf(LogLevel::Info, "client=%s: %s", cfg_.name.c_str(), last_error_.c_str());
      continue;
    }
    sock_ = std::move(fd);
    state_ = State::Connecting;
    attempt_deadline_ = now + tcfg_.connect_timeout;
    return true;
  }
  return false;
}

bool SshClient::stepOnce(SteadyClock::time_point now) {
  switch (state_) {
    case State::Stopped:
      return false;
    case State::Backoff:
      return stepBackoff(now);
    case State::Resolving:
      return stepResolving(now);
    case State::Connecting:
      return stepConnecting(now);
    case State::Handshake:
      return stepHandshake(now);
    case State::Auth:
      return stepAuth(now);
    case State::OpenDrain:
      return stepOpenDrain(now);
    case State::Connected:
      return stepConnected(now);
  }
  return false;
}

bool SshClient::stepBackoff(SteadyClock::time_point now) {
  if (stopping_) {
    state_ = State::Stopped;
    return false;
  }
  if (now < backoff_until_) return false;
  startAttempt(now);
  return true;
}

bool SshClient::stepResolving(SteadyClock::time_point now) {
  int gai_error = 0;
  {
    std::lock_guard<std::mutex> lk(resolve_->mu);
    if (!resolve_->done) return false;
    gai_error = resolve_->gai_error;
    addrs_ = std::move(resolve_->addrs);
  }
  resolve_.reset();
  addr_index_ = 0;
  if (gai_error != 0) {
    fail("cannot resolve " + cfg_.host + ": " + gai_strerror(gai_error), now);
    return true;
  }
  if (!tryNextAddress(now)) fail(addrs_.empty() ? "no address for " + cfg_.host : last_error_, now);
  return true;
}

bool SshClient::stepConnecting(SteadyClock::time_point now) {
  pollfd p{sock_.get(), POLLOUT, 0};
  if (poll(&p, 1, 0) == 0) {
    if (now >= attempt_deadline_) return connectFailed("connect to " + relay_ + ": timed out", now);
    return false;
  }
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(sock_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return connectFailed("connect to " + relay_ + ": " + strerror(err), now);
  return startSession(now);
}

// This address did not connect: the next one, or the backoff.
bool SshClient::connectFailed(const std::string& why, SteadyClock::time_point now) {
  last_error_ = why;
  sock_.reset();
  if (!tryNextAddress(now)) fail(last_error_, now);
  return true;
}

// Connected: a session with our algorithm preferences (the host-key method restricted to the
// stored key's type), every socket read seen by recvHook.
bool SshClient::startSession(SteadyClock::time_point now) {
  session_ = SshSession::create(this);
  if (!session_) {
    fail("libssh2_session_init failed", now);
    return true;
  }
  // Every byte libssh2 reads from the socket moves the dead-peer deadline (a read done for
  // any purpose, at any time, counts; poll() alone would miss bytes read in passing).
  libssh2_session_callback_set(session_.get(), LIBSSH2_CALLBACK_RECV,
                               reinterpret_cast<void*>(&SshClient::recvHook));
  std::vector<std::string> warnings;
  verifier_ = HostKeyVerifier::forClient(cfg_, tcfg_.known_hosts, &warnings);
  if (warnings != last_kh_warnings_) {
    for (auto& w : warnings) logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), w.c_str());
    last_kh_warnings_ = warnings;
  }
  std::string hk = verifier_->methodPref();
  struct {
    int method;
    const char* prefs;
  } prefs[] = {{LIBSSH2_METHOD_KEX, kKexPref},         {LIBSSH2_METHOD_HOSTKEY, hk.c_str()},
               {LIBSSH2_METHOD_CRYPT_CS, kCipherPref}, {LIBSSH2_METHOD_CRYPT_SC, kCipherPref},
               {LIBSSH2_METHOD_MAC_CS, kMacPref},      {LIBSSH2_METHOD_MAC_SC, kMacPref},
               {LIBSSH2_METHOD_COMP_CS, "none"},       {LIBSSH2_METHOD_COMP_SC, "none"}};
  for (auto& p : prefs) {
    if (libssh2_session_method_pref(session_.get(), p.method, p.prefs) != 0) {
      fail(std::string("cannot set algorithm preferences (") + p.prefs +
               "): " + session_.lastError(),
           now);
      return true;
    }
  }
  libssh2_keepalive_config(session_.get(), 1, static_cast<unsigned>(tcfg_.keepalive.count()));
  state_ = State::Handshake;
  last_rx_ = now;
  return true;
}

bool SshClient::stepHandshake(SteadyClock::time_point now) {
  int rc = libssh2_session_handshake(session_.get(), sock_.get());
  if (rc == LIBSSH2_ERROR_EAGAIN) {
    session_.blocked(rc, &state_);
    if (now >= attempt_deadline_) {
      ++counters_.handshake_failures;
      fail("SSH handshake with " + relay_ + ": timed out", now);
    }
    return now >= attempt_deadline_;
  }
  if (rc != 0) return handshakeFailed(rc, now);
  session_.releaseAll();
  auto method = [&](int m) {
    const char* s = libssh2_session_methods(session_.get(), m);
    return std::string(s ? s : "?");
  };
  kex_ = method(LIBSSH2_METHOD_KEX);
  hostkey_ = method(LIBSSH2_METHOD_HOSTKEY);
  cipher_ = method(LIBSSH2_METHOD_CRYPT_CS);
  mac_ = method(LIBSSH2_METHOD_MAC_CS);
  return checkHostKey(now);
}

bool SshClient::handshakeFailed(int rc, SteadyClock::time_point now) {
  std::string why = "SSH handshake with " + relay_ + " failed: " + session_.lastError();
  auto types = verifier_->acceptedTypes();
  if (!types.empty() && (rc == LIBSSH2_ERROR_KEX_FAILURE || rc == LIBSSH2_ERROR_METHOD_NONE)) {
    // We offered only the stored key's type(s): a server without such a key has another
    // key, which is a mismatch (the host-key negotiation is what failed).
    auto expected = verifier_->expectedFingerprints();
    presented_fp_ = "(no " + verifier_->methodPref() + " key offered)";
    presented_type_.clear();
    presented_key_.clear();
    expected_fp_ = expected.empty() ? "" : expected.front();
    why = "host key mismatch for " + relay_ +
          ": the server offers no host key of the stored type " + verifier_->methodPref() +
          " (expected " + expected_fp_ + "); not authenticating";
    if (warned_fp_ != presented_fp_) {
      logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), why.c_str());
      warned_fp_ = presented_fp_;
    }
    reportMismatch();
    fail(why, now);
    mismatch_state_ = "host-key-mismatch";
    return true;
  }
  ++counters_.handshake_failures;
  fail(why, now);
  return true;
}

// The host key, before anything else: a key that does not verify means no authentication.
bool SshClient::checkHostKey(SteadyClock::time_point now) {
  size_t len = 0;
  int type = 0;
  const char* key = libssh2_session_hostkey(session_.get(), &len, &type);
  if (!key) {
    fail("no host key from " + relay_, now);
    return true;
  }
  HostKeyCheck chk = verifier_->verify(std::string_view(key, len));
  presented_fp_ = chk.presented_fp;
  expected_fp_ = chk.expected_fp;
  if (chk.verdict != HostKeyVerdict::Match) {
    bool mismatch = chk.verdict == HostKeyVerdict::Mismatch;
    mismatch_state_ = mismatch ? "host-key-mismatch" : "host-key-unknown";
    std::string why = std::string(mismatch ? "host key mismatch" : "unknown host key") + " for " +
                      relay_ + ": presented " + chk.presented_type + " " + chk.presented_fp +
                      (chk.expected_fp.empty() ? "" : ", expected " + chk.expected_fp) + " (" +
                      chk.detail + "); not authenticating";
    if (warned_fp_ != chk.presented_fp) {
      logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), why.c_str());
      warned_fp_ = chk.presented_fp;
    }
    if (mismatch) reportMismatch();
    std::string blob(key, len);  // libssh2's copy goes with the session, in fail()
    auto saved = mismatch_state_;
    fail(why, now);
    mismatch_state_ = saved;
    presented_type_ = chk.presented_type;
    presented_key_ = std::move(blob);
    presented_fp_ = chk.presented_fp;
    expected_fp_ = chk.expected_fp;
    return true;
  }
  if (!warned_fp_.empty()) {
    logf(LogLevel::Notice, "client=%s: host key of %s verifies again (%s)", cfg_.name.c_str(),
         relay_.c_str(), chk.presented_fp.c_str());
    warned_fp_.clear();
  }
  // Every identity key that is private (a key group or others can read is not used, and said
  // so), in the order they are tried: during a key rotation the new one first.
  auth_keys_.clear();
  auth_index_ = 0;
  auth_refusals_.clear();
  std::string problems;
  for (const std::string& key : cfg_.identityFiles(tcfg_)) {
    if (auto st = checkPrivateKeyFile(key); !st) {
      logf(LogLevel::Error, "client=%s: %s", cfg_.name.c_str(), st.error().message.c_str());
      problems += (problems.empty() ? "" : "; ") + st.error().message;
      continue;
    }
    auth_keys_.push_back(key);
  }
  if (auth_keys_.empty()) {
    fail(problems, now);
    return true;
  }
  state_ = State::Auth;
  return true;
}

// Public-key authentication with each identity key in turn, in the same session (sshd allows
// several attempts): the first one accepted is the login key (logged, and shown by status).
bool SshClient::stepAuth(SteadyClock::time_point now) {
  const std::string& id = auth_keys_[auth_index_];
  int rc = libssh2_userauth_publickey_fromfile_ex(session_.get(), cfg_.user.c_str(),
                                                  static_cast<unsigned>(cfg_.user.size()), nullptr,
                                                  id.c_str(), nullptr);
  if (session_.blocked(rc, &state_)) {
    if (now >= attempt_deadline_) {
      fail("authentication at " + relay_ + ": timed out", now);
      return true;
    }
    return false;
  }
  session_.released(&state_);
  if (rc != 0) {
    auth_refusals_ += (auth_refusals_.empty() ? "" : ", ") + id + ": " + session_.lastError();
    // A refusal that ended the session (a disconnect, or sshd's MaxAuthTries) leaves nothing to
    // try the next key on: it waits for the next connection.
    if (++auth_index_ < auth_keys_.size() && rc != LIBSSH2_ERROR_SOCKET_DISCONNECT &&
        rc != LIBSSH2_ERROR_SOCKET_SEND && rc != LIBSSH2_ERROR_SOCKET_RECV)
      return true;
    ++counters_.auth_failures;
    fail("authentication as " + cfg_.user + " at " + relay_ + " refused (" + auth_refusals_ + ")",
         now);
    return true;
  }
  login_key_ = id;
  state_ = State::OpenDrain;
  return true;
}

// An idle session channel with no command: reading it lets libssh2 process whatever the server
// sends (keepalive replies, rekeying, disconnect) while no SMTP channel is open.
bool SshClient::stepOpenDrain(SteadyClock::time_point now) {
  SshChannel ch = session_.openChannel();
  if (!ch) {
    if (session_.blocked(session_.lastErrno(), &state_)) {
      if (now >= attempt_deadline_) {
        fail("opening a channel at " + relay_ + ": timed out", now);
        return true;
      }
      return false;
    }
    fail("opening a channel at " + relay_ + " failed: " + session_.lastError(), now);
    return true;
  }
  session_.released(&state_);
  drain_ = std::move(ch);
  connected(now);
  return true;
}

void SshClient::connected(SteadyClock::time_point now) {
  state_ = State::Connected;
  connected_at_ = now;
  last_channel_ = now;
  had_channel_ = false;
  connected_since_unix_ = unixNow();
  last_rx_ = now;
  next_keepalive_ = now + tcfg_.keepalive;
  last_error_.clear();
  mismatch_state_.clear();
  logf(LogLevel::Info,
       "client=%s: %sconnected to %s (user %s, key %s, kex %s, hostkey %s %s, cipher %s, mac %s)",
       cfg_.name.c_str(), extra_ ? "extra connection " : "", relay_.c_str(), cfg_.user.c_str(),
       login_key_.c_str(), kex_.c_str(), hostkey_.c_str(), presented_fp_.c_str(), cipher_.c_str(),
       mac_.c_str());
  // The client's first connection makes its deferred mail due; an extra one only adds room.
  if (!extra_) jobs_.clientUp(cfg_.name, unixNow());
}

bool SshClient::stepConnected(SteadyClock::time_point now) {
  if (!drainTransport(now)) return true;
  if (now - last_rx_ >= 3 * tcfg_.keepalive) {
    fail("connection to " + relay_ + " dead: nothing received for " +
             std::to_string(3 * tcfg_.keepalive.count()) + "s",
         now);
    return true;
  }
  if (!keepAlive(now)) return true;
  reportTraffic(now);
  bool progress = false;
  uint64_t rx_before = rx_reads_;
  // By index: a failure inside stepChannel() tears the connection down and clears chans_.
  for (size_t i = 0; i < chans_.size(); ++i) {
    shed_ = shares_ ? shares_->excess(cfg_.name) : 0;
    progress |= stepChannel(*chans_[i], now);
    if (state_ != State::Connected) return true;
    reportShares(now);
  }
  progress |= stepProbe(now);
  if (state_ != State::Connected) return true;
  // A channel's reads (or a write draining window adjustments) can pull another channel's data
  // (or its EOF, or the probe channel's) out of the socket into libssh2's queue after that
  // channel's turn; poll() would then never report it. So while bytes came off the socket during
  // a round, go round again: the step ends after a round in which nothing arrived, once every
  // channel has read what libssh2 holds for it. (Not libssh2_poll_channel_read: a keepalive's
  // reply, SSH_MSG_REQUEST_FAILURE, stays at the head of libssh2's packet list, and from then on
  // that function returns an error, for every channel, which the daemon took for queued input
  // and spun on a 1 ms timer.)
  if (!progress && rx_reads_ != rx_before) progress = true;
  // One that held a session at the far end frees a slot there (a refused one never held one).
  if (std::any_of(chans_.begin(), chans_.end(),
                  [](auto& c) { return c->gone() && !c->refused(); })) {
    channel_went_ = true;
    refused_wait_ = false;
  }
  auto gone = std::remove_if(chans_.begin(), chans_.end(), [](auto& c) { return c->gone(); });
  if (gone != chans_.end()) {
    chans_.erase(gone, chans_.end());
    progress = true;
  }
  if (stopping_) {
    reportShares(now);
    return stepStopping(now, progress);
  }
  bool opened = openMoreChannels(now);
  reportShares(now);
  if (!chans_.empty()) {
    had_channel_ = true;
    last_channel_ = now;
  }
  return opened || progress;
}

// Reads the idle channel, which lets libssh2 process what the server sends. False when the
// connection failed (and is torn down).
bool SshClient::drainTransport(SteadyClock::time_point now) {
  char buf[16384];
  for (;;) {
    ssize_t n = drain_.read(buf, sizeof buf);
    if (n > 0) continue;  // the forced command never runs here; nothing to read, but tolerate it
    if (n == 0 || drain_.eof()) {
      fail("connection to " + relay_ + " closed by the server", now);
      return false;
    }
    if (session_.blocked(static_cast<int>(n), &drain_)) return true;
    fail("connection to " + relay_ + " broken: " + session_.lastError(), now);
    return false;
  }
}

// False when the keepalive failed (and the connection is torn down).
bool SshClient::keepAlive(SteadyClock::time_point now) {
  if (now < next_keepalive_) return true;
  bool sending = session_.wantsWrite() || (probe_ && probe_->sending()) ||
                 std::any_of(chans_.begin(), chans_.end(), [](auto& c) { return c->sending(); });
  if (sending) {
    // Data is on its way: that keeps the connection alive, and a keepalive now could be left
    // half-sent in a full socket buffer (libssh2 1.10 ignores that EAGAIN and then refuses every
    // other packet). Replies and window adjustments still move the dead-peer deadline.
    next_keepalive_ = now + tcfg_.keepalive;
    return true;
  }
  int next = 0;
  int rc = libssh2_keepalive_send(session_.get(), &next);
  if (rc != 0 && !session_.blocked(rc, &next_keepalive_)) {
    fail("keepalive to " + relay_ + " failed: " + session_.lastError(), now);
    return false;
  }
  next_keepalive_ = now + std::chrono::seconds(next > 0 ? next : tcfg_.keepalive.count());
  return true;
}

bool SshClient::stepChannel(ChannelSession& c, SteadyClock::time_point now) {
  ChannelContext ctx{session_, jobs_, time_, cfg_, tcfg_, relay_, stopping_, chans_, &shed_};
  ChannelStep r = c.step(ctx, now);
  counters_.sent_bytes += r.bytes_written;
  if (r.transaction_done) session_failures_ = 0;
  if (r.peer && wantsPeerLine()) peerLine(*r.peer, now);
  if (!r.connection_failure.empty()) {
    fail(r.connection_failure, now);
    return true;
  }
  if (!r.session_failure.empty()) sessionFailed(now, r.session_failure);
  if (!r.channel_refused.empty()) channelRefused(now, r.channel_refused);
  return r.progress;
}

// The probe channel: opened when a probe is due (not while stopping, not before probe_retry_at_
// after a failed one), stepped like the SMTP sessions, dropped once closed.
bool SshClient::stepProbe(SteadyClock::time_point now) {
  if (!probes_) return false;
  if (!probe_) {
    if (stopping_ || now < probe_retry_at_ || !probes_->hasProbe(cfg_.name)) return false;
    probe_ = std::make_unique<ProbeChannel>(now);
  }
  ProbeStep r = probe_->step({session_, *probes_, cfg_, tcfg_, relay_, stopping_}, now);
  if (!r.connection_failure.empty()) {
    fail(r.connection_failure, now);
    return true;
  }
  if (!r.failed.empty()) probe_retry_at_ = now + kProbeRetry;
  if (probe_->gone()) {
    probe_.reset();
    return true;
  }
  return r.progress;
}

// Stopping: no new sessions; disconnect once the sessions ended or the grace period is over.
bool SshClient::stepStopping(SteadyClock::time_point now, bool progress) {
  if (!chans_.empty() && now < stop_deadline_) return progress;
  if (!chans_.empty())
    logf(LogLevel::Warning, "client=%s: grace period over, abandoning %zu session(s)",
         cfg_.name.c_str(), chans_.size());
  teardown(now, "daemon stopping");
  state_ = State::Stopped;
  return false;
}

bool SshClient::opening() const {
  return std::any_of(chans_.begin(), chans_.end(),
                     [](auto& c) { return c->state() == ChannelSession::St::Opening; });
}

// More channels when mail is due. Sessions that are ending (QUIT sent, or at their transaction
// cap) do not count against `concurrency`, so their replacement starts at once; a session past
// half its cap gets its replacement warmed up early (the far end's start-up then overlaps the
// deliveries). Jobs themselves never run on more than `concurrency` sessions at a time.
// The channel is opened only while [tunneld] max_channels leaves the client room (shares_).
bool SshClient::openMoreChannels(SteadyClock::time_point now) {
  if (!wantsChannel(now)) return false;
  if (shares_) {
    reportShares(now);  // the demand includes the channel asked for
    if (!shares_->mayOpen(cfg_.name)) return false;
  }
  chans_.push_back(std::make_unique<ChannelSession>(now));
  if (wantsPeerLine() && chans_.size() == 1) return true;
  open_after_close_ = channel_went_;
  channel_went_ = false;
  return true;
}

bool SshClient::wantsChannel(SteadyClock::time_point now) const {
  if (opening() || now < session_backoff_until_) return false;
  // Every channel of ours holds a session at the far end until it is gone, ending ones too.
  if (refused_wait_ || (channel_limit_ > 0 && chans_.size() >= channel_limit_)) return false;
  // A relay client's lease needs the peer line of a session, mail or not: start one (it closes
  // after idle_close when nothing is due).
  if (wantsPeerLine() && chans_.empty()) return true;
  if (!jobs_.hasDue(cfg_.name, unixNow())) return false;
  uint32_t conc = std::max<uint32_t>(1, cfg_.concurrency);
  uint32_t cap = std::max<uint32_t>(1, tcfg_.max_transactions);
  size_t usable = 0, fresh = 0;
  bool idle = false;
  for (auto& c : chans_) {
    if (!c->usable(cap)) continue;
    ++usable;
    if (c->transactions() < cap / 2 + 1 || cap == 1) ++fresh;
    if (!c->working()) idle = true;
  }
  return (usable < conc && !idle) || (usable == conc && fresh < conc && cap > 1);
}

size_t SshClient::channelCeiling() const {
  size_t conc = std::max<uint32_t>(1, cfg_.concurrency);
  return channel_limit_ > 0 ? std::min(conc, channel_limit_) : conc;
}

bool SshClient::idle(SteadyClock::time_point now) const {
  if (state_ != State::Connected || !chans_.empty()) return false;
  return had_channel_ || now - last_channel_ >= tcfg_.idle_close;
}

bool SshClient::saturated() const {
  if (!connectedNow() || opening() || refused_wait_) return false;
  if (sessionsWithWork(chans_) < channelCeiling()) return false;
  return jobs_.hasDue(cfg_.name, unixNow());
}

void SshClient::reportShares(SteadyClock::time_point now) {
  if (!shares_) return;
  uint32_t cap = std::max<uint32_t>(1, tcfg_.max_transactions);
  size_t keeping = static_cast<size_t>(
      std::count_if(chans_.begin(), chans_.end(), [&](auto& c) { return c->usable(cap); }));
  shares_->report(this, cfg_.name, chans_.size(), keeping, !stopping_ && wantsChannel(now));
}

std::optional<InetAddr> SshClient::connectedAddr() const {
  if (addr_index_ == 0 || addr_index_ > addrs_.size()) return std::nullopt;
  const std::string& sa = addrs_[addr_index_ - 1].first;
  return InetAddr::fromSockaddr(reinterpret_cast<const sockaddr*>(sa.data()),
                                static_cast<socklen_t>(sa.size()));
}

void SshClient::peerLine(const PeerLine& line, SteadyClock::time_point now) {
  peer_seen_ = true;
  auto to = connectedAddr();
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  std::optional<InetAddr> local;
  if (getsockname(sock_.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0)
    local = InetAddr::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), len);
  if (!to || !local) {
    logf(LogLevel::Warning, "client=%s: %s: cannot tell the addresses of the connection: no lease",
         cfg_.name.c_str(), relay_.c_str());
    return;
  }
  peer_addr_ = to;
  peer_confirmed_ = line.kind == PeerLine::Kind::Peer;
  next_touch_ = now + tcfg_.keepalive;
  touched_rx_ = last_rx_;
  tunnels_->tunnelPeer(cfg_.name, *to, *local, line);
}

// Traffic renews the lease: reported at most once per keepalive interval, only when bytes came.
void SshClient::reportTraffic(SteadyClock::time_point now) {
  if (!peer_confirmed_ || !tunnels_ || !peer_addr_ || now < next_touch_) return;
  next_touch_ = now + tcfg_.keepalive;
  if (last_rx_ <= touched_rx_) return;
  touched_rx_ = last_rx_;
  tunnels_->tunnelTraffic(cfg_.name, *peer_addr_);
}

void SshClient::reportMismatch() {
  ++counters_.host_key_mismatches;
  if (!tunnels_) return;
  if (auto a = connectedAddr()) tunnels_->hostKeyMismatch(cfg_.name, *a);
}

// The far end refused a channel open: as many SMTP channels as are open now (the refused one
// aside) is its limit, unless a channel of ours had just gone (its slot may not be free yet at
// the far end). None at all (the idle channel took the only one) is a session failure.
void SshClient::channelRefused(SteadyClock::time_point now, const std::string& why) {
  // The refused one is gone already, like any that ended in this step.
  auto open = static_cast<size_t>(
      std::count_if(chans_.begin(), chans_.end(), [](auto& c) { return !c->gone(); }));
  if (open == 0) {
    // No channel of ours will go to clear refused_wait_: the session backoff paces the retry.
    sessionFailed(now, why + " (sshd MaxSessions must be at least 2: the idle channel holds one)");
    return;
  }
  refused_wait_ = true;
  if (open_after_close_) return;
  if (channel_limit_ == 0 || open < channel_limit_) {
    channel_limit_ = open;
    logf(LogLevel::Warning,
         "client=%s: %s; at most %zu SMTP sessions on this connection from now on (sshd "
         "MaxSessions %zu?)",
         cfg_.name.c_str(), why.c_str(), open, open + 1);
  }
}

void SshClient::sessionFailed(SteadyClock::time_point now, const std::string& why) {
  ++session_failures_;
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  auto delay =
      reconnectDelay(tcfg_.reconnect_min, tcfg_.reconnect_max, session_failures_, dist(rng_));
  session_backoff_until_ = now + delay;
  last_error_ = why;
  logf(LogLevel::Warning, "client=%s: %s; next SMTP session in %.1fs", cfg_.name.c_str(),
       why.c_str(), static_cast<double>(delay.count()) / 1000.0);
}

ClientStatus SshClient::status() const {
  ClientStatus s;
  s.name = cfg_.name;
  switch (state_) {
    case State::Backoff:
      s.state = "backoff";
      s.backoff_until = backoff_until_unix_;
      break;
    case State::Resolving:
    case State::Connecting:
      s.state = "connecting";
      break;
    case State::Handshake:
      s.state = "handshake";
      break;
    case State::Auth:
    case State::OpenDrain:
      s.state = "authenticating";
      break;
    case State::Connected:
      s.state = stopping_ ? "closing" : "connected";
      break;
    case State::Stopped:
      s.state = "stopped";
      break;
  }
  // A host-key problem stays the headline while we retry, until a key verifies again.
  if (!mismatch_state_.empty() && state_ != State::Connected && state_ != State::Stopped &&
      state_ != State::Auth && state_ != State::OpenDrain)
    s.state = mismatch_state_;
  s.address = relay_;
  s.kex = kex_;
  s.hostkey = hostkey_;
  s.cipher = cipher_;
  s.mac = mac_;
  s.presented_fp = presented_fp_;
  s.expected_fp = expected_fp_;
  if (s.state == "host-key-mismatch" || s.state == "host-key-unknown") {
    s.presented_type = presented_type_;
    s.presented_key = presented_key_;
  }
  s.last_error = last_error_;
  s.connected_since = connected_since_unix_;
  if (state_ == State::Connected) s.login_key = login_key_;
  s.failures = failures_;
  s.channels = chans_.size();
  for (auto& c : chans_) s.in_flight += c->inFlight();
  return s;
}

}  // namespace dynmx::tunneld
