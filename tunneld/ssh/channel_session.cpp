// channel_session.cpp: an SMTP session in an exec channel: open, exec, pump, log stderr, close.
//
// Failure behaviour: every failure is a value in ChannelStep (see the header); a session that
// ends hands out what results its engine has and abandons the rest of its jobs, so a transaction
// that could not end cleanly is retried later, never counted as delivered.
#include "tunneld/ssh/channel_session.hpp"

#include <unistd.h>

#include <algorithm>

#include "shared/host_name.hpp"
#include "shared/log.hpp"

namespace dynmx::tunneld {

namespace {
constexpr auto kChannelCloseTimeout = std::chrono::seconds(30);
constexpr size_t kWriteChunk = 32768;
constexpr size_t kReadChunk = 16384;
constexpr size_t kMaxStderrLine = 4096;
// Jobs open at once in one SMTP session: the one whose final dot waits for its reply, and the next.
constexpr size_t kMaxOpenJobs = 2;
// With CHUNKING (BDAT) nothing waits for a 354: transactions stream back to back, and this many
// may be open before the oldest reply is back (a link's bandwidth-delay product of 4 KB messages:
// 32 cover 20 Mbit/s at 50 ms on one channel). Each holds its spool file open until its result.
constexpr size_t kMaxOpenJobsChunking = 32;

uint32_t maxTransactions(const TunneldConfig& t) {
  return std::max<uint32_t>(1, t.max_transactions);
}
}  // namespace

size_t sessionsWithWork(const ChannelSessions& all) {
  size_t n = 0;
  for (auto& c : all)
    if (c->working()) ++n;
  return n;
}

bool ChannelSession::usable(uint32_t max_transactions) const {
  if (st_ == St::Closing || shedding_) return false;
  if (transactions_ >= std::max<uint32_t>(1, max_transactions)) return false;
  if (!smtp_) return true;
  auto st = smtp_->state();
  return st == SmtpClient::State::Greeting || st == SmtpClient::State::Ready ||
         st == SmtpClient::State::Busy;
}

std::optional<SteadyClock::time_point> ChannelSession::deadline(
    std::chrono::seconds idle_close) const {
  std::optional<SteadyClock::time_point> d;
  auto take = [&](SteadyClock::time_point t) {
    if (!d || t < *d) d = t;
  };
  if (st_ == St::Closing) take(close_deadline_);
  if (smtp_) {
    if (auto sd = smtp_->deadline()) take(*sd);
    if (smtp_->state() == SmtpClient::State::Ready && jobs_.empty()) take(idle_since_ + idle_close);
  }
  return d;
}

void ChannelSession::abandon(JobSource& jobs, const std::string& reason, int64_t unix_now) {
  while (!jobs_.empty()) {
    jobs.abandon(std::move(jobs_.front()), reason, unix_now);
    jobs_.pop_front();
  }
  ch_.leaveToSession();
}

void ChannelSession::close(const ChannelContext& ctx, SteadyClock::time_point now,
                           const std::string& reason) {
  while (!jobs_.empty()) {
    ctx.jobs.abandon(std::move(jobs_.front()), reason, ctx.time.unixSeconds());
    jobs_.pop_front();
  }
  if (st_ != St::Closing) {
    st_ = St::Closing;
    close_deadline_ = now + kChannelCloseTimeout;
  }
}

ChannelStep ChannelSession::step(const ChannelContext& ctx, SteadyClock::time_point now) {
  switch (st_) {
    case St::Opening:
      return stepOpening(ctx);
    case St::Exec:
      return stepExec(ctx, now);
    case St::Closing:
      return stepClosing(ctx, now);
    case St::Running:
      break;
  }
  return stepRunning(ctx, now);
}

ChannelStep ChannelSession::stepOpening(const ChannelContext& ctx) {
  ChannelStep out;
  SshChannel ch = ctx.ssh.openChannel();
  if (!ch) {
    int err = ctx.ssh.lastErrno();
    if (ctx.ssh.blocked(err, this)) return out;
    out.progress = true;
    if (err == LIBSSH2_ERROR_CHANNEL_FAILURE) {
      // SSH_MSG_CHANNEL_OPEN_FAILURE: the far end said no (sshd MaxSessions), the transport is
      // fine. This session never held a job; it just goes.
      ctx.ssh.released(this);
      out.channel_refused =
          "opening a channel at " + ctx.relay + " refused: " + ctx.ssh.lastError();
      st_ = St::Closing;
      refused_ = true;
      return out;
    }
    out.connection_failure =
        "opening a channel at " + ctx.relay + " failed: " + ctx.ssh.lastError();
    return out;
  }
  ctx.ssh.released(this);
  ch_ = std::move(ch);
  st_ = St::Exec;
  out.progress = true;
  return out;
}

ChannelStep ChannelSession::stepExec(const ChannelContext& ctx, SteadyClock::time_point now) {
  ChannelStep out;
  const std::string& command = ctx.tunneld.remote_command;
  int rc = ch_.exec(command);
  if (ctx.ssh.blocked(rc, this)) return out;
  ctx.ssh.released(this);
  out.progress = true;
  if (rc != 0) {
    std::string why =
        "exec of \"" + command + "\" at " + ctx.relay + " refused: " + ctx.ssh.lastError();
    logf(LogLevel::Warning, "client=%s: %s", ctx.client.name.c_str(), why.c_str());
    close(ctx, now, why);
    out.session_failure = why;
    return out;
  }
  SmtpClient::Options o;
  o.overlap = true;
  o.helo_name = hostNameOr(ctx.tunneld.hostname);
  smtp_ = std::make_unique<SmtpClient>(o, now);
  idle_since_ = now;
  st_ = St::Running;
  return out;
}

ChannelStep ChannelSession::stepClosing(const ChannelContext& ctx, SteadyClock::time_point now) {
  ChannelStep out;
  if (!ch_) return out;
  if (ch_.close(ctx.ssh, this)) {
    out.progress = true;
  } else if (now >= close_deadline_) {
    out.progress = true;
    out.connection_failure = "closing a channel at " + ctx.relay + ": timed out";
  }
  return out;
}

ChannelStep ChannelSession::stepRunning(const ChannelContext& ctx, SteadyClock::time_point now) {
  ChannelStep out;
  if (!readInput(ctx, now, out)) return out;
  logStderr(ctx, out);
  for (auto& note : smtp_->takeNotes())
    logf(LogLevel::Info, "client=%s: %s: %s", ctx.client.name.c_str(), ctx.relay.c_str(),
         note.c_str());
  if (auto d = smtp_->deadline(); d && now >= *d) {
    smtp_->onTimeout(now);
    out.progress = true;
  }
  takeResults(ctx, now, out);
  // The engine produces a body into its output when asked for it: ask now, so that a message
  // whose end is already there makes it Ready (overlap) before the next job is considered, and
  // that job's MAIL, RCPT and DATA go out with the final dot, in the same SSH packet.
  if (wbuf_.empty()) (void)smtp_->output();
  // Ready with an empty FIFO, or (overlap) Ready while the previous final dot's reply is pending.
  size_t max_open = smtp_->offers("CHUNKING") && smtp_->offers("PIPELINING") ? kMaxOpenJobsChunking
                                                                             : kMaxOpenJobs;
  if (smtp_->state() == SmtpClient::State::Ready && jobs_.size() < max_open)
    takeNextJob(ctx, now, out);
  if (!writeOutput(ctx, now, out)) return out;
  endIfDone(ctx, now, out);
  // Reads for one purpose (stderr, a write draining window adjustments) can pull this channel's
  // data out of the socket into libssh2's queue, which poll() would never report: SshClient goes
  // round its channels again while bytes arrive (stepConnected).
  return out;
}

// Far end -> engine.
bool ChannelSession::readInput(const ChannelContext& ctx, SteadyClock::time_point now,
                               ChannelStep& out) {
  char buf[kReadChunk];
  for (;;) {
    ssize_t n = ch_.read(buf, sizeof buf);
    if (n > 0) {
      input(std::string_view(buf, static_cast<size_t>(n)), now, out);
      out.progress = true;
      continue;
    }
    if (n == 0 || (n < 0 && ch_.eof())) {
      if (!eof_seen_ && ch_.eof()) {
        eof_seen_ = true;
        if (!peer_.decided()) {
          // Ended before a whole first line: whatever came is the engine's.
          std::string held = peer_.finish();
          peer_reported_ = true;
          out.peer = peer_.line();
          if (!held.empty()) smtp_->onInput(held, now);
        }
        smtp_->onEof(now);
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

void ChannelSession::input(std::string_view bytes, SteadyClock::time_point now, ChannelStep& out) {
  std::string engine = peer_.feed(bytes);
  if (peer_.decided() && !peer_reported_) {
    peer_reported_ = true;
    out.peer = peer_.line();
  }
  if (!engine.empty()) smtp_->onInput(engine, now);
}

// The far end's stderr, logged line by line.
void ChannelSession::logStderr(const ChannelContext& ctx, ChannelStep& out) {
  char buf[kReadChunk];
  for (;;) {
    ssize_t n = ch_.readStderr(buf, sizeof buf);
    if (n <= 0) return;
    stderr_buf_.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = stderr_buf_.find('\n')) != std::string::npos) {
      std::string line = stderr_buf_.substr(0, nl);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      logf(LogLevel::Warning, "client=%s: remote stderr: %s", ctx.client.name.c_str(),
           line.c_str());
      stderr_buf_.erase(0, nl + 1);
    }
    if (stderr_buf_.size() > kMaxStderrLine) {
      logf(LogLevel::Warning, "client=%s: remote stderr: %s", ctx.client.name.c_str(),
           stderr_buf_.c_str());
      stderr_buf_.clear();
    }
    out.progress = true;
  }
}

void ChannelSession::takeResults(const ChannelContext& ctx, SteadyClock::time_point now,
                                 ChannelStep& out) {
  while (auto r = smtp_->takeResult()) {
    if (!jobs_.empty()) {
      ctx.jobs.finish(std::move(jobs_.front()), *r, ctx.relay, ctx.time.unixSeconds());
      jobs_.pop_front();
    }
    ++transactions_;
    out.transaction_done = true;
    idle_since_ = now;
    out.progress = true;
  }
}

void ChannelSession::quit(SteadyClock::time_point now, ChannelStep& out) {
  smtp_->quit(now);
  quit_by_us_ = true;
  out.progress = true;
}

// The engine is Ready: a job, QUIT, or nothing yet (a warm spare, or waiting for mail).
void ChannelSession::takeNextJob(const ChannelContext& ctx, SteadyClock::time_point now,
                                 ChannelStep& out) {
  if (!shedding_ && ctx.shed && *ctx.shed > 0) {
    shedding_ = true;  // the client is over its share of [tunneld] max_channels
    --*ctx.shed;
    out.progress = true;
  }
  if (shedding_) {
    if (jobs_.empty()) quit(now, out);
  } else if (ctx.stopping || transactions_ + jobs_.size() >= maxTransactions(ctx.tunneld)) {
    quit(now, out);
  } else if (jobs_.empty() &&
             sessionsWithWork(ctx.all) >= std::max<uint32_t>(1, ctx.client.concurrency)) {
    // A warm spare: waits until a working session ends.
  } else if (auto job = ctx.jobs.nextJob(ctx.client.name, ctx.time.unixSeconds())) {
    jobs_.push_back(std::move(*job));
    smtp_->start(smtpJobFor(jobs_.back()), now);
    out.progress = true;
  } else if (jobs_.empty() && now - idle_since_ >= ctx.tunneld.idle_close) {
    quit(now, out);
  }
}

// Engine -> far end. A write that returned EAGAIN is repeated with the very same bytes.
bool ChannelSession::writeOutput(const ChannelContext& ctx, SteadyClock::time_point now,
                                 ChannelStep& out) {
  for (;;) {
    if (wbuf_.empty()) {
      std::string_view pending = smtp_->output();
      if (pending.empty()) return true;
      wbuf_.assign(pending.substr(0, kWriteChunk));
    }
    ssize_t n = ch_.write(wbuf_.data(), wbuf_.size());
    if (n > 0) {
      out.bytes_written += static_cast<size_t>(n);
      ctx.ssh.released(this);
      auto st = smtp_->state();
      if (st != SmtpClient::State::Closed && st != SmtpClient::State::Failed)
        smtp_->consumed(static_cast<size_t>(n), now);
      wbuf_.clear();
      out.progress = true;
      continue;
    }
    if (n == 0) return true;  // the far end's window is full: wait for it to read
    if (ctx.ssh.blocked(static_cast<int>(n), this)) return true;
    out.progress = true;
    out.connection_failure = "writing to " + ctx.relay + ": " + ctx.ssh.lastError();
    return false;
  }
}

// An engine that ended (QUIT done, or failed) with nothing left to send: results out, jobs
// abandoned, the channel closed.
void ChannelSession::endIfDone(const ChannelContext& ctx, SteadyClock::time_point now,
                               ChannelStep& out) {
  auto st = smtp_->state();
  if ((st != SmtpClient::State::Closed && st != SmtpClient::State::Failed) || !wbuf_.empty())
    return;
  std::string why = st == SmtpClient::State::Failed ? smtp_->failure() : "session ended";
  if (st == SmtpClient::State::Failed)
    logf(LogLevel::Info, "client=%s: SMTP session at %s ended: %s", ctx.client.name.c_str(),
         ctx.relay.c_str(), why.c_str());
  while (auto r = smtp_->takeResult()) {
    if (jobs_.empty()) break;
    ctx.jobs.finish(std::move(jobs_.front()), *r, ctx.relay, ctx.time.unixSeconds());
    jobs_.pop_front();
  }
  close(ctx, now, why);
  // A far end that ends sessions before any transaction (a refused greeting, a command that
  // is not there) must not be hammered: new sessions wait, with the reconnect backoff.
  if (!quit_by_us_ && transactions_ == 0 && !ctx.stopping)
    out.session_failure = "SMTP session at " + ctx.relay + " ended before any transaction: " + why;
  out.progress = true;
}

}  // namespace dynmx::tunneld
