// ssh_client.cpp: one client's persistent, host-key-verified SSH connection (libssh2,
// non-blocking) and the SMTP sessions it runs in exec channels.
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

#include <cerrno>
#include <cmath>
#include <cstring>
#include <deque>
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
constexpr auto kChannelCloseTimeout = std::chrono::seconds(30);
constexpr size_t kWriteChunk = 32768;
// Jobs open at once in one SMTP session: the one whose final dot waits for its reply, and the next.
constexpr size_t kMaxOpenJobs = 2;
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

struct SshClient::Chan {
  enum class St { Opening, Exec, Running, Closing } st = St::Opening;
  LIBSSH2_CHANNEL* ch = nullptr;
  std::unique_ptr<SmtpClient> smtp;
  // Jobs started in this session, oldest first; with SmtpClient::Options::overlap up to two (the
  // next one starts while the previous final dot's reply is pending). std::deque: a Job's
  // SmtpJob view points into it, and push_back/pop_front keep the others in place.
  std::deque<Job> jobs;
  uint32_t transactions = 0;
  SteadyClock::time_point idle_since{};
  SteadyClock::time_point close_deadline{};
  std::string stderr_buf;
  std::string wbuf;  // a copy of what libssh2 was last asked to write (retried until done)
  bool eof_seen = false;
  bool quit_by_us = false;  // we ended it (idle, cap, stopping): not a failure of the far end
};

SshClient::SshClient(ClientConfig client, const TunneldConfig& tunneld, JobSource& jobs,
                     Waker& waker)
    : cfg_(std::move(client)),
      tcfg_(tunneld),
      jobs_(jobs),
      waker_(waker),
      rng_(std::random_device{}()) {
  backoff_until_ = SteadyClock::now();  // first attempt at once
}

SshClient::~SshClient() {
  teardown(SteadyClock::now(), "shutdown");
}

int64_t SshClient::unixNow() const {
  return static_cast<int64_t>(time(nullptr));
}

void SshClient::reconfigure(const ClientConfig& c, const TunneldConfig& t, SteadyClock::time_point now) {
  bool reconnect = c.host != cfg_.host || c.port != cfg_.port || c.user != cfg_.user ||
                   c.host_key != cfg_.host_key || c.identity != cfg_.identity ||
                   t.identity != tcfg_.identity || t.known_hosts != tcfg_.known_hosts ||
                   t.remote_command != tcfg_.remote_command;
  cfg_ = c;
  tcfg_ = t;
  if (reconnect && state_ != State::Stopped) {
    logf(LogLevel::Info, "client=%s: configuration changed, reconnecting", cfg_.name.c_str());
    teardown(now, "configuration changed");
    failures_ = 0;
    state_ = State::Backoff;
    backoff_until_ = now;
  }
}

short SshClient::events() const {
  if (fd_ < 0) return 0;
  switch (state_) {
    case State::Connecting:
      return POLLOUT;
    case State::Handshake:
    case State::Auth:
    case State::OpenDrain: {
      short ev = POLLIN;
      if (want_write_ || owner_) ev |= POLLOUT;
      if (session_ && (libssh2_session_block_directions(session_) & LIBSSH2_SESSION_BLOCK_OUTBOUND))
        ev |= POLLOUT;
      return ev;
    }
    case State::Connected:
      // Only our own record of a half-sent packet asks for POLLOUT: libssh2's direction flags
      // can stay set after the fact, and a writable socket would then wake us in a loop.
      return static_cast<short>(POLLIN | ((want_write_ || owner_) ? POLLOUT : 0));
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
      if (!owner_) take(next_keepalive_);  // with a half-sent packet, POLLOUT wakes us first
      take(last_rx_ + 3 * tcfg_.keepalive);
      for (auto& c : chans_) {
        if (c->st == Chan::St::Closing) take(c->close_deadline);
        if (c->smtp) {
          if (auto sd = c->smtp->deadline()) take(*sd);
          if (c->smtp->state() == SmtpClient::State::Ready && c->jobs.empty())
            take(c->idle_since + tcfg_.idle_close);
        }
      }
      if (stopping_) take(stop_deadline_);
      if (session_backoff_until_ > now_hint_) take(session_backoff_until_);
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
  if (rc > 0 && abstract && *abstract) static_cast<SshClient*>(*abstract)->last_rx_ = SteadyClock::now();
  return rc;
}

int SshClient::lastErrno() const {
  return session_ ? libssh2_session_last_errno(session_) : 0;
}

std::string SshClient::sessionError() const {
  if (!session_) return "no session";
  char* msg = nullptr;
  int len = 0;
  int rc = libssh2_session_last_error(session_, &msg, &len, 0);
  return std::string(msg ? msg : "unknown error") + " (libssh2 error " + std::to_string(rc) + ")";
}

// EAGAIN: wait; when the wait is for a half-sent packet, this operation now owns the session's
// output until it completes. LIBSSH2_ERROR_BAD_USE while another operation owns the output means
// "not now" as well (libssh2 refuses a second packet while one is half sent).
bool SshClient::blocked(int rc, const void* op) {
  if (rc == LIBSSH2_ERROR_EAGAIN) {
    int dirs = libssh2_session_block_directions(session_);
    if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) {
      if (!owner_) owner_ = op;
      want_write_ = true;
    } else if (owner_ == op) {
      owner_ = nullptr;
    }
    return true;
  }
  if (rc == LIBSSH2_ERROR_BAD_USE && owner_ && owner_ != op) return true;
  return false;
}

void SshClient::released(const void* op) {
  if (owner_ == op) owner_ = nullptr;
}

void SshClient::fail(const std::string& why, SteadyClock::time_point now, bool count) {
  last_error_ = why;
  mismatch_state_.clear();  // the host-key branches set it again after calling fail()
  teardown(now, why);
  if (stopping_) {
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

void SshClient::closeChan(Chan& c, SteadyClock::time_point now, const std::string& reason) {
  while (!c.jobs.empty()) {
    jobs_.abandon(std::move(c.jobs.front()), reason, unixNow());
    c.jobs.pop_front();
  }
  if (c.st != Chan::St::Closing) {
    c.st = Chan::St::Closing;
    c.close_deadline = now + kChannelCloseTimeout;
  }
}

void SshClient::teardown(SteadyClock::time_point now, const std::string& reason) {
  for (auto& c : chans_) {
    while (!c->jobs.empty()) {
      jobs_.abandon(std::move(c->jobs.front()), reason, unixNow());
      c->jobs.pop_front();
    }
  }
  chans_.clear();  // libssh2 frees the channels with the session
  drain_ = nullptr;
  opening_ = false;
  owner_ = nullptr;
  want_write_ = false;
  if (session_) {
    // Say goodbye if the socket takes it at once; then make every further send fail fast so that
    // freeing the session cannot block.
    libssh2_session_disconnect(session_, "dynmx-tunneld closing");
    if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
    for (int i = 0; i < 100 && libssh2_session_free(session_) == LIBSSH2_ERROR_EAGAIN; ++i) {
    }
    session_ = nullptr;
  }
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  if (resolve_) {
    std::lock_guard<std::mutex> lk(resolve_->mu);
    resolve_->waker = nullptr;
  }
  resolve_.reset();
  if (connected_since_unix_ != 0 && now - connected_at_ >= kStableAfter) failures_ = 0;
  connected_since_unix_ = 0;
}

void SshClient::step(SteadyClock::time_point now, short revents) {
  now_hint_ = now;
  if (revents & POLLOUT) want_write_ = false;
  poked_ = false;
  for (int guard = 0; guard < 64; ++guard) {
    if (!stepOnce(now, revents)) return;
    revents = 0;
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
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_error_ = std::string("socket: ") + strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    relay_ = cfg_.host + "[" + ip + "]:" + std::to_string(cfg_.port);
    if (connect(fd, addr, static_cast<socklen_t>(sa.size())) != 0 && errno != EINPROGRESS) {
      int e = errno;
      close(fd);
      last_error_ = "connect to " + relay_ + ": " + strerror(e);
      logf(LogLevel::Info, "client=%s: %s", cfg_.name.c_str(), last_error_.c_str());
      continue;
    }
    fd_ = fd;
    state_ = State::Connecting;
    attempt_deadline_ = now + tcfg_.connect_timeout;
    return true;
  }
  return false;
}

bool SshClient::stepOnce(SteadyClock::time_point now, short revents) {
  (void)revents;
  switch (state_) {
    case State::Stopped:
      return false;

    case State::Backoff:
      if (stopping_) {
        state_ = State::Stopped;
        return false;
      }
      if (now < backoff_until_) return false;
      startAttempt(now);
      return true;

    case State::Resolving: {
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
    }
      if (!tryNextAddress(now)) {
        fail(addrs_.empty() ? "no address for " + cfg_.host : last_error_, now);
      }
      return true;

    case State::Connecting: {
      pollfd p{fd_, POLLOUT, 0};
      int r = poll(&p, 1, 0);
      if (r == 0) {
        if (now >= attempt_deadline_) {
          last_error_ = "connect to " + relay_ + ": timed out";
          close(fd_);
          fd_ = -1;
          if (!tryNextAddress(now)) fail(last_error_, now);
          return true;
        }
        return false;
      }
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last_error_ = "connect to " + relay_ + ": " + strerror(err);
        close(fd_);
        fd_ = -1;
        if (!tryNextAddress(now)) fail(last_error_, now);
        return true;
      }
      // Connected: set up the session.
      session_ = libssh2_session_init_ex(nullptr, nullptr, nullptr, this);
      if (!session_) {
        fail("libssh2_session_init failed", now);
        return true;
      }
      libssh2_session_set_blocking(session_, 0);
      // Every byte libssh2 reads from the socket moves the dead-peer deadline (a read done for
      // any purpose, at any time, counts; poll() alone would miss bytes read in passing).
      libssh2_session_callback_set(session_, LIBSSH2_CALLBACK_RECV,
                                   reinterpret_cast<void*>(&SshClient::recvHook));
      std::vector<std::string> warnings;
      verifier_ = HostKeyVerifier::forClient(cfg_, tcfg_.known_hosts, &warnings);
      if (warnings != last_kh_warnings_) {
        for (auto& w : warnings)
          logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), w.c_str());
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
      for (auto& p2 : prefs) {
        if (libssh2_session_method_pref(session_, p2.method, p2.prefs) != 0) {
          fail(
              std::string("cannot set algorithm preferences (") + p2.prefs + "): " + sessionError(),
              now);
          return true;
        }
      }
      libssh2_keepalive_config(session_, 1, static_cast<unsigned>(tcfg_.keepalive.count()));
      state_ = State::Handshake;
      last_rx_ = now;
      return true;
    }

    case State::Handshake: {
      int rc = libssh2_session_handshake(session_, fd_);
      if (rc == LIBSSH2_ERROR_EAGAIN) {
        blocked(rc, &state_);
        if (now >= attempt_deadline_) fail("SSH handshake with " + relay_ + ": timed out", now);
        return now >= attempt_deadline_;
      }
      if (rc != 0) {
        std::string why = "SSH handshake with " + relay_ + " failed: " + sessionError();
        auto types = verifier_->acceptedTypes();
        if (!types.empty() &&
            (rc == LIBSSH2_ERROR_KEX_FAILURE || rc == LIBSSH2_ERROR_METHOD_NONE)) {
          // We offered only the stored key's type(s): a server without such a key has another
          // key, which is a mismatch (the host-key negotiation is what failed).
          auto expected = verifier_->expectedFingerprints();
          presented_fp_ = "(no " + verifier_->methodPref() + " key offered)";
          expected_fp_ = expected.empty() ? "" : expected.front();
          why = "host key mismatch for " + relay_ +
                ": the server offers no host key of the stored type " + verifier_->methodPref() +
                " (expected " + expected_fp_ + "); not authenticating";
          if (warned_fp_ != presented_fp_) {
            logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), why.c_str());
            warned_fp_ = presented_fp_;
          }
          fail(why, now);
          mismatch_state_ = "host-key-mismatch";
          return true;
        }
        fail(why, now);
        return true;
      }
      owner_ = nullptr;
      auto method = [&](int m) {
        const char* s = libssh2_session_methods(session_, m);
        return std::string(s ? s : "?");
      };
      kex_ = method(LIBSSH2_METHOD_KEX);
      hostkey_ = method(LIBSSH2_METHOD_HOSTKEY);
      cipher_ = method(LIBSSH2_METHOD_CRYPT_CS);
      mac_ = method(LIBSSH2_METHOD_MAC_CS);
      size_t len = 0;
      int type = 0;
      const char* key = libssh2_session_hostkey(session_, &len, &type);
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
        std::string why = std::string(mismatch ? "host key mismatch" : "unknown host key") +
                          " for " + relay_ + ": presented " + chk.presented_type + " " +
                          chk.presented_fp +
                          (chk.expected_fp.empty() ? "" : ", expected " + chk.expected_fp) + " (" +
                          chk.detail + "); not authenticating";
        if (warned_fp_ != chk.presented_fp) {
          logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), why.c_str());
          warned_fp_ = chk.presented_fp;
        }
        auto saved = mismatch_state_;
        fail(why, now);
        mismatch_state_ = saved;
        presented_fp_ = chk.presented_fp;
        expected_fp_ = chk.expected_fp;
        return true;
      }
      if (!warned_fp_.empty()) {
        logf(LogLevel::Notice, "client=%s: host key of %s verifies again (%s)", cfg_.name.c_str(),
             relay_.c_str(), chk.presented_fp.c_str());
        warned_fp_.clear();
      }
      if (auto st = checkPrivateKeyFile(cfg_.identityFile(tcfg_)); !st) {
        logf(LogLevel::Error, "client=%s: %s", cfg_.name.c_str(), st.error().message.c_str());
        fail(st.error().message, now);
        return true;
      }
      state_ = State::Auth;
      return true;
    }

    case State::Auth: {
      const std::string& identity = cfg_.identityFile(tcfg_);
      int rc = libssh2_userauth_publickey_fromfile_ex(session_, cfg_.user.c_str(),
                                                      static_cast<unsigned>(cfg_.user.size()),
                                                      nullptr, identity.c_str(), nullptr);
      if (blocked(rc, &state_)) {
        if (now >= attempt_deadline_) {
          fail("authentication at " + relay_ + ": timed out", now);
          return true;
        }
        return false;
      }
      released(&state_);
      if (rc != 0) {
        fail("authentication as " + cfg_.user + " at " + relay_ + " with " + identity +
                 " refused: " + sessionError(),
             now);
        return true;
      }
      state_ = State::OpenDrain;
      return true;
    }

    case State::OpenDrain: {
      // An idle session channel with no command: reading it lets libssh2 process whatever the
      // server sends (keepalive replies, rekeying, disconnect) while no SMTP channel is open.
      LIBSSH2_CHANNEL* ch = libssh2_channel_open_session(session_);
      if (!ch) {
        int rc = lastErrno();
        if (blocked(rc, &state_)) {
          if (now >= attempt_deadline_) {
            fail("opening a channel at " + relay_ + ": timed out", now);
            return true;
          }
          return false;
        }
        fail("opening a channel at " + relay_ + " failed: " + sessionError(), now);
        return true;
      }
      released(&state_);
      drain_ = ch;
      state_ = State::Connected;
      connected_at_ = now;
      connected_since_unix_ = unixNow();
      last_rx_ = now;
      next_keepalive_ = now + tcfg_.keepalive;
      last_error_.clear();
      mismatch_state_.clear();
      logf(LogLevel::Info,
           "client=%s: connected to %s (user %s, kex %s, hostkey %s %s, cipher %s, mac %s)",
           cfg_.name.c_str(), relay_.c_str(), cfg_.user.c_str(), kex_.c_str(), hostkey_.c_str(),
           presented_fp_.c_str(), cipher_.c_str(), mac_.c_str());
      jobs_.clientUp(cfg_.name, unixNow());
      return true;
    }

    case State::Connected:
      return stepConnected(now);
  }
  return false;
}

bool SshClient::stepConnected(SteadyClock::time_point now) {
  bool progress = false;
  char buf[16384];
  // Drain the transport through the idle channel.
  for (;;) {
    ssize_t n = libssh2_channel_read(drain_, buf, sizeof buf);
    if (n > 0) continue;  // the forced command never runs here; nothing to read, but tolerate it
    if (n == 0 || libssh2_channel_eof(drain_)) {
      fail("connection to " + relay_ + " closed by the server", now);
      return true;
    }
    if (blocked(static_cast<int>(n), drain_)) break;
    fail("connection to " + relay_ + " broken: " + sessionError(), now);
    return true;
  }
  if (now - last_rx_ >= 3 * tcfg_.keepalive) {
    fail("connection to " + relay_ + " dead: nothing received for " +
             std::to_string(3 * tcfg_.keepalive.count()) + "s",
         now);
    return true;
  }
  bool sending = owner_ != nullptr || want_write_;
  for (auto& c : chans_)
    if (!c->wbuf.empty() || (c->smtp && c->smtp->wantsToWrite())) sending = true;
  if (now >= next_keepalive_ && sending) {
    // Data is on its way: that keeps the connection alive, and a keepalive now could be left
    // half-sent in a full socket buffer (libssh2 1.10 ignores that EAGAIN and then refuses every
    // other packet). Replies and window adjustments still move the dead-peer deadline.
    next_keepalive_ = now + tcfg_.keepalive;
  } else if (now >= next_keepalive_) {
    int next = 0;
    int rc = libssh2_keepalive_send(session_, &next);
    if (rc != 0 && !blocked(rc, &next_keepalive_)) {
      fail("keepalive to " + relay_ + " failed: " + sessionError(), now);
      return true;
    }
    next_keepalive_ = now + std::chrono::seconds(next > 0 ? next : tcfg_.keepalive.count());
  }

  // By index: a failure inside stepChan() tears the connection down and clears chans_.
  for (size_t i = 0; i < chans_.size(); ++i) {
    progress |= stepChan(*chans_[i], now);
    if (state_ != State::Connected) return true;
  }
  // A later channel's reads (or a write draining window adjustments) can pull an earlier
  // channel's data out of the socket into libssh2's queue after that channel's turn; poll()
  // would then never report it. Go round again for any channel with queued input (the same check
  // as at the end of stepChan(), for all channels once all have had their turn).
  if (!progress) {
    for (auto& c : chans_) {
      if (c->st == Chan::St::Running && c->ch &&
          (libssh2_poll_channel_read(c->ch, 0) || libssh2_poll_channel_read(c->ch, 1) ||
           (!c->eof_seen && libssh2_channel_eof(c->ch)))) {
        progress = true;
        break;
      }
    }
  }
  // Remove closed channels.
  for (auto it = chans_.begin(); it != chans_.end();) {
    if (!(*it)->ch && (*it)->st == Chan::St::Closing) {
      it = chans_.erase(it);
      progress = true;
    } else {
      ++it;
    }
  }
  if (stopping_) {
    if (chans_.empty() || now >= stop_deadline_) {
      if (!chans_.empty())
        logf(LogLevel::Warning, "client=%s: grace period over, abandoning %zu session(s)",
             cfg_.name.c_str(), chans_.size());
      teardown(now, "daemon stopping");
      state_ = State::Stopped;
      return false;
    }
    return progress;
  }
  // More channels when mail is due. Sessions that are ending (QUIT sent, or at their transaction
  // cap) do not count against `concurrency`, so their replacement starts at once; a session past
  // half its cap gets its replacement warmed up early (the far end's start-up then overlaps the
  // deliveries). Jobs themselves never run on more than `concurrency` sessions at a time.
  if (!opening_ && now >= session_backoff_until_ && jobs_.hasDue(cfg_.name, unixNow())) {
    uint32_t conc = std::max<uint32_t>(1, cfg_.concurrency);
    uint32_t cap = std::max<uint32_t>(1, tcfg_.max_transactions);
    size_t usable = 0, fresh = 0;
    bool idle = false;
    for (auto& c : chans_) {
      if (!usableChan(*c)) continue;
      ++usable;
      if (c->transactions < cap / 2 + 1 || cap == 1) ++fresh;
      if (c->jobs.empty() && (!c->smtp || c->smtp->state() != SmtpClient::State::Busy)) idle = true;
    }
    bool want = (usable < conc && !idle) || (usable == conc && fresh < conc && cap > 1);
    if (want) {
      auto c = std::make_unique<Chan>();
      c->idle_since = now;
      chans_.push_back(std::move(c));
      opening_ = true;
      progress = true;
    }
  }
  return progress;
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

bool SshClient::usableChan(const Chan& c) const {
  if (c.st == Chan::St::Closing) return false;
  if (c.transactions >= std::max<uint32_t>(1, tcfg_.max_transactions)) return false;
  if (!c.smtp) return true;
  auto st = c.smtp->state();
  return st == SmtpClient::State::Greeting || st == SmtpClient::State::Ready ||
         st == SmtpClient::State::Busy;
}

size_t SshClient::sessionsWithWork() const {
  size_t n = 0;
  for (auto& c : chans_)
    if (!c->jobs.empty() || (c->smtp && c->smtp->state() == SmtpClient::State::Busy)) ++n;
  return n;
}

bool SshClient::stepChan(Chan& c, SteadyClock::time_point now) {
  bool progress = false;
  switch (c.st) {
    case Chan::St::Opening: {
      LIBSSH2_CHANNEL* ch = libssh2_channel_open_session(session_);
      if (!ch) {
        int rc = lastErrno();
        if (blocked(rc, &c)) return false;
        opening_ = false;
        fail("opening a channel at " + relay_ + " failed: " + sessionError(), now);
        return true;
      }
      released(&c);
      opening_ = false;
      c.ch = ch;
      c.st = Chan::St::Exec;
      return true;
    }
    case Chan::St::Exec: {
      int rc = libssh2_channel_process_startup(c.ch, "exec", 4, tcfg_.remote_command.c_str(),
                                               static_cast<unsigned>(tcfg_.remote_command.size()));
      if (blocked(rc, &c)) return false;
      released(&c);
      if (rc != 0) {
        last_error_ =
            "exec of \"" + tcfg_.remote_command + "\" at " + relay_ + " refused: " + sessionError();
        logf(LogLevel::Warning, "client=%s: %s", cfg_.name.c_str(), last_error_.c_str());
        closeChan(c, now, last_error_);
        sessionFailed(now, last_error_);
        return true;
      }
      SmtpClient::Options o;
      o.overlap = true;
      o.helo_name = hostNameOr(tcfg_.hostname);
      c.smtp = std::make_unique<SmtpClient>(o, now);
      c.idle_since = now;
      c.st = Chan::St::Running;
      return true;
    }
    case Chan::St::Closing: {
      if (!c.ch) return false;
      int rc = libssh2_channel_close(c.ch);
      if (blocked(rc, &c)) {
        if (now >= c.close_deadline) {
          fail("closing a channel at " + relay_ + ": timed out", now);
          return true;
        }
        return false;
      }
      released(&c);
      rc = libssh2_channel_free(c.ch);
      if (blocked(rc, &c)) return false;
      released(&c);
      c.ch = nullptr;
      return true;
    }
    case Chan::St::Running:
      break;
  }

  SmtpClient& smtp = *c.smtp;
  char buf[16384];
  // Far end -> engine.
  for (;;) {
    ssize_t n = libssh2_channel_read(c.ch, buf, sizeof buf);
    if (n > 0) {
      smtp.onInput(std::string_view(buf, static_cast<size_t>(n)), now);
      progress = true;
      continue;
    }
    if (n == 0 || (n < 0 && libssh2_channel_eof(c.ch))) {
      if (!c.eof_seen && libssh2_channel_eof(c.ch)) {
        c.eof_seen = true;
        smtp.onEof(now);
        progress = true;
      }
      break;
    }
    if (blocked(static_cast<int>(n), &c)) break;
    fail("reading from " + relay_ + ": " + sessionError(), now);
    return true;
  }
  // Its stderr, logged line by line.
  for (;;) {
    ssize_t n = libssh2_channel_read_stderr(c.ch, buf, sizeof buf);
    if (n > 0) {
      c.stderr_buf.append(buf, static_cast<size_t>(n));
      size_t nl;
      while ((nl = c.stderr_buf.find('\n')) != std::string::npos) {
        std::string line = c.stderr_buf.substr(0, nl);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        logf(LogLevel::Warning, "client=%s: remote stderr: %s", cfg_.name.c_str(), line.c_str());
        c.stderr_buf.erase(0, nl + 1);
      }
      if (c.stderr_buf.size() > 4096) {
        logf(LogLevel::Warning, "client=%s: remote stderr: %s", cfg_.name.c_str(),
             c.stderr_buf.c_str());
        c.stderr_buf.clear();
      }
      progress = true;
      continue;
    }
    break;
  }
  for (auto& note : smtp.takeNotes())
    logf(LogLevel::Info, "client=%s: %s: %s", cfg_.name.c_str(), relay_.c_str(), note.c_str());

  if (auto d = smtp.deadline(); d && now >= *d) {
    smtp.onTimeout(now);
    progress = true;
  }
  while (auto r = smtp.takeResult()) {
    if (!c.jobs.empty()) {
      jobs_.finish(std::move(c.jobs.front()), *r, relay_, unixNow());
      c.jobs.pop_front();
    }
    ++c.transactions;
    session_failures_ = 0;
    c.idle_since = now;
    progress = true;
  }
  // The engine produces a body into its output when asked for it: ask now, so that a message
  // whose end is already there makes it Ready (overlap) before the next job is considered, and
  // that job's MAIL, RCPT and DATA go out with the final dot, in the same SSH packet.
  if (c.wbuf.empty()) (void)smtp.output();
  // Ready with an empty FIFO, or (overlap) Ready while the previous final dot's reply is pending.
  if (smtp.state() == SmtpClient::State::Ready && c.jobs.size() < kMaxOpenJobs) {
    if (stopping_ ||
        c.transactions + c.jobs.size() >= std::max<uint32_t>(1, tcfg_.max_transactions)) {
      smtp.quit(now);
      c.quit_by_us = true;
      progress = true;
    } else if (c.jobs.empty() && sessionsWithWork() >= std::max<uint32_t>(1, cfg_.concurrency)) {
      // A warm spare: waits until a working session ends.
    } else if (auto job = jobs_.nextJob(cfg_.name, unixNow())) {
      c.jobs.push_back(std::move(*job));
      smtp.start(smtpJobFor(c.jobs.back()), now);
      progress = true;
    } else if (c.jobs.empty() && now - c.idle_since >= tcfg_.idle_close) {
      smtp.quit(now);
      c.quit_by_us = true;
      progress = true;
    }
  }
  // Engine -> far end. A write that returned EAGAIN is repeated with the very same bytes.
  for (;;) {
    if (c.wbuf.empty()) {
      std::string_view out = smtp.output();
      if (out.empty()) break;
      c.wbuf.assign(out.substr(0, kWriteChunk));
    }
    ssize_t n = libssh2_channel_write(c.ch, c.wbuf.data(), c.wbuf.size());
    if (n > 0) {
      released(&c);
      auto st = smtp.state();
      if (st != SmtpClient::State::Closed && st != SmtpClient::State::Failed)
        smtp.consumed(static_cast<size_t>(n), now);
      c.wbuf.clear();
      progress = true;
      continue;
    }
    if (n == 0) break;  // the far end's window is full: wait for it to read
    if (blocked(static_cast<int>(n), &c)) break;
    fail("writing to " + relay_ + ": " + sessionError(), now);
    return true;
  }
  auto st = smtp.state();
  if ((st == SmtpClient::State::Closed || st == SmtpClient::State::Failed) && c.wbuf.empty()) {
    std::string why = st == SmtpClient::State::Failed ? smtp.failure() : "session ended";
    if (st == SmtpClient::State::Failed)
      logf(LogLevel::Info, "client=%s: SMTP session at %s ended: %s", cfg_.name.c_str(),
           relay_.c_str(), why.c_str());
    while (auto r = smtp.takeResult()) {
      if (c.jobs.empty()) break;
      jobs_.finish(std::move(c.jobs.front()), *r, relay_, unixNow());
      c.jobs.pop_front();
    }
    closeChan(c, now, why);
    // A far end that ends sessions before any transaction (a refused greeting, a command that
    // is not there) must not be hammered: new sessions wait, with the reconnect backoff.
    if (!c.quit_by_us && c.transactions == 0 && !stopping_)
      sessionFailed(now, "SMTP session at " + relay_ + " ended before any transaction: " + why);
    progress = true;
  }
  // Reads for one purpose (stderr, a write draining window adjustments) can pull this channel's
  // data out of the socket into libssh2's queue; poll() would then never report it. Go round again.
  if (!progress && c.st == Chan::St::Running && c.ch &&
      (libssh2_poll_channel_read(c.ch, 0) || libssh2_poll_channel_read(c.ch, 1) ||
       (!c.eof_seen && libssh2_channel_eof(c.ch))))
    progress = true;
  return progress;
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
  s.last_error = last_error_;
  s.connected_since = connected_since_unix_;
  s.failures = failures_;
  s.channels = chans_.size();
  for (auto& c : chans_) s.in_flight += c->jobs.size();
  return s;
}

}  // namespace dynmx::tunneld
