// probe_channel.cpp: a probe session in an exec channel: open, exec, pump, close (see the header).
#include "tunneld/ssh/probe_channel.hpp"

#include "shared/host_name.hpp"
#include "shared/log.hpp"

namespace dynmx::tunneld {

namespace {
constexpr auto kCloseTimeout = std::chrono::seconds(30);
// A probe's replies: the far end answers RCPT from its tables; RFC 5321's 5 minutes would outlast
// every request, which wait at most verify_timeout.
constexpr auto kReplyTimeout = std::chrono::seconds(60);
}  // namespace

std::optional<SteadyClock::time_point> ProbeChannel::deadline(
    std::chrono::seconds idle_close) const {
  if (st_ == St::Closing) return close_deadline_;
  if (!engine_) return std::nullopt;
  auto d = engine_->deadline();
  if (engine_->ready() && !probing_) {
    auto idle = idle_since_ + idle_close;
    if (!d || idle < *d) d = idle;
  }
  return d;
}

void ProbeChannel::abandon(ProbeSource& probes, const std::string& client,
                           const std::string& reason) {
  if (probing_) probes.probeDone(client, {*probing_, VerifyStatus::Unknown, reason});
  probing_.reset();
  ch_.leaveToSession();
  st_ = St::Closing;
}

void ProbeChannel::close(const ProbeContext& ctx, SteadyClock::time_point now,
                         const std::string& why) {
  if (probing_) ctx.probes.probeDone(ctx.client.name, {*probing_, VerifyStatus::Unknown, why});
  probing_.reset();
  if (st_ != St::Closing) {
    st_ = St::Closing;
    close_deadline_ = now + kCloseTimeout;
  }
}

ProbeStep ProbeChannel::step(const ProbeContext& ctx, SteadyClock::time_point now) {
  switch (st_) {
    case St::Opening:
      return stepOpening(ctx, now);
    case St::Exec:
      return stepExec(ctx, now);
    case St::Closing:
      return stepClosing(ctx, now);
    case St::Running:
      break;
  }
  return stepRunning(ctx, now);
}

ProbeStep ProbeChannel::stepOpening(const ProbeContext& ctx, SteadyClock::time_point now) {
  ProbeStep out;
  SshChannel ch = ctx.ssh.openChannel();
  if (!ch) {
    int err = ctx.ssh.lastErrno();
    if (ctx.ssh.blocked(err, this)) return out;
    out.progress = true;
    if (err == LIBSSH2_ERROR_CHANNEL_FAILURE) {
      ctx.ssh.released(this);
      out.failed = "opening a probe channel at " + ctx.relay + " refused: " + ctx.ssh.lastError();
      close(ctx, now, out.failed);
      return out;
    }
    out.connection_failure =
        "opening a probe channel at " + ctx.relay + " failed: " + ctx.ssh.lastError();
    return out;
  }
  ctx.ssh.released(this);
  ch_ = std::move(ch);
  st_ = St::Exec;
  out.progress = true;
  return out;
}

ProbeStep ProbeChannel::stepExec(const ProbeContext& ctx, SteadyClock::time_point now) {
  ProbeStep out;
  int rc = ch_.exec(ctx.tunneld.remote_command);
  if (ctx.ssh.blocked(rc, this)) return out;
  ctx.ssh.released(this);
  out.progress = true;
  if (rc != 0) {
    out.failed = "exec of \"" + ctx.tunneld.remote_command + "\" for probes at " + ctx.relay +
                 " refused: " + ctx.ssh.lastError();
    close(ctx, now, out.failed);
    return out;
  }
  engine_ = std::make_unique<ProbeEngine>(hostNameOr(ctx.tunneld.hostname), kReplyTimeout, now);
  idle_since_ = now;
  st_ = St::Running;
  return out;
}

ProbeStep ProbeChannel::stepClosing(const ProbeContext& ctx, SteadyClock::time_point now) {
  ProbeStep out;
  if (!ch_) return out;
  if (ch_.close(ctx.ssh, this)) {
    out.progress = true;
  } else if (now >= close_deadline_) {
    out.progress = true;
    out.connection_failure = "closing the probe channel at " + ctx.relay + ": timed out";
  }
  return out;
}

bool ProbeChannel::readInput(const ProbeContext& ctx, SteadyClock::time_point now, ProbeStep& out) {
  char buf[8192];
  while (ctx.ssh.get() && ch_.readStderr(buf, sizeof buf) > 0) out.progress = true;  // not used
  for (;;) {
    ssize_t n = ch_.read(buf, sizeof buf);
    if (n > 0) {
      engine_->onInput(std::string_view(buf, static_cast<size_t>(n)), now);
      out.progress = true;
      continue;
    }
    if (n == 0 || (n < 0 && ch_.eof())) {
      if (!eof_seen_ && ch_.eof()) {
        eof_seen_ = true;
        engine_->onEof(now);
        out.progress = true;
      }
      return true;
    }
    if (ctx.ssh.blocked(static_cast<int>(n), this)) return true;
    out.progress = true;
    out.connection_failure = "reading from " + ctx.relay + ": " + ctx.ssh.lastError();
    return false;
  }
}

bool ProbeChannel::writeOutput(const ProbeContext& ctx, ProbeStep& out) {
  for (;;) {
    if (wbuf_.empty()) {
      std::string_view pending = engine_->output();
      if (pending.empty()) return true;
      wbuf_.assign(pending);
    }
    ssize_t n = ch_.write(wbuf_.data(), wbuf_.size());
    if (n > 0) {
      ctx.ssh.released(this);
      if (!engine_->ended()) engine_->consumed(static_cast<size_t>(n));
      wbuf_.erase(0, static_cast<size_t>(n));
      out.progress = true;
      continue;
    }
    if (n == 0) return true;
    if (ctx.ssh.blocked(static_cast<int>(n), this)) return true;
    out.progress = true;
    out.connection_failure = "writing to " + ctx.relay + ": " + ctx.ssh.lastError();
    return false;
  }
}

ProbeStep ProbeChannel::stepRunning(const ProbeContext& ctx, SteadyClock::time_point now) {
  ProbeStep out;
  if (!readInput(ctx, now, out)) return out;
  if (auto d = engine_->deadline(); d && now >= *d) engine_->onTimeout(now);
  if (auto r = engine_->takeResult()) {
    probing_.reset();
    idle_since_ = now;
    ctx.probes.probeDone(ctx.client.name, *r);
    out.progress = true;
  }
  if (engine_->ready() && !probing_ && wbuf_.empty()) {
    if (ctx.stopping || now - idle_since_ >= ctx.tunneld.idle_close) {
      engine_->quit(now);
    } else if (auto a = ctx.probes.nextProbe(ctx.client.name)) {
      probing_ = *a;
      engine_->start(*a, now);
      if (auto r = engine_->takeResult()) {  // not sendable: answered at once
        probing_.reset();
        ctx.probes.probeDone(ctx.client.name, *r);
      }
    }
    out.progress = true;
  }
  if (!writeOutput(ctx, out)) return out;
  if (engine_->ended() && wbuf_.empty()) {
    std::string why = engine_->state() == ProbeEngine::State::Failed
                          ? "probe session at " + ctx.relay + " ended: " + engine_->failure()
                          : std::string();
    if (!why.empty()) {
      logf(LogLevel::Info, "client=%s: %s", ctx.client.name.c_str(), why.c_str());
      out.failed = why;
    }
    close(ctx, now, why.empty() ? "probe session ended" : why);
    out.progress = true;
  }
  return out;
}

}  // namespace dynmx::tunneld
