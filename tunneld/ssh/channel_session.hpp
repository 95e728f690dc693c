// channel_session.hpp: one SMTP session run in an exec channel of a client's SSH connection.
//
// Contract: a ChannelSession opens a session channel, runs the remote command in it (exec), and
// pumps bytes between the channel and an SmtpClient engine: the far end's stdout into the engine,
// the engine's output into the channel (a write that returned EAGAIN is repeated with the very
// same bytes), the far end's stderr into the log line by line. When its engine is Ready it takes
// the next job from the JobSource (with overlap, a second one while the previous final dot's reply
// is pending; with CHUNKING, up to 32 streamed back to back before the oldest reply), keeps still
// as a warm spare while `concurrency` other sessions work, or QUITs (at the transaction cap, when
// the daemon stops, after idle_close). Results go back to the JobSource as they arrive; jobs the
// session cannot finish are abandoned, never counted as delivered. How many sessions run is the
// connection's decision (SshClient); a session only reports what it did.
// The first line on the far end's stdout may be the client's "dynmx-peer ..." confirmation (its
// forced command echoes SSH_CONNECTION before exec'ing sendmail; man/dynmx-relay.7): a line that
// starts with "dynmx-peer" is taken off before the engine sees anything and handed up in
// ChannelStep::peer; anything else (the greeting of a client without the echo) goes to the engine
// at once, and ChannelStep::peer says NotPeerLine. The peer line is never an SMTP reply, and its
// absence never holds delivery back (the first byte that cannot start "dynmx-peer" decides).
// Failure behaviour: a channel error that breaks the transport comes back as connection_failure
// (the connection is torn down); a channel open the far end refuses (sshd MaxSessions) comes back
// as channel_refused, holding no job (the connection learns its limit); a refused exec or a
// session that ends before any transaction comes back as session_failure (new sessions wait);
// nothing throws.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "tunneld/delivery/delivery.hpp"
#include "tunneld/relay/peer_check.hpp"
#include "tunneld/smtp/smtp_client.hpp"
#include "tunneld/ssh/channel.hpp"
#include "tunneld/ssh/peer_line_reader.hpp"
#include "tunneld/ssh/session.hpp"

namespace dynmx::tunneld {

class ChannelSession;
using ChannelSessions = std::vector<std::unique_ptr<ChannelSession>>;

// The connection as its channel sessions see it, for one step.
struct ChannelContext {
  SshSession& ssh;
  JobSource& jobs;
  const TimeSource& time;
  const ClientConfig& client;
  const TunneldConfig& tunneld;
  const std::string& relay;  // "HOST[IP]:PORT", for log lines and results
  bool stopping;
  const ChannelSessions& all;  // every session of the connection (for the warm-spare rule)
  // Sessions of this connection that must give their channel back ([tunneld] max_channels: the
  // client holds more than its share). A session that takes one of them takes no more jobs and
  // QUITs once its open ones ended; null: none.
  size_t* shed = nullptr;
};

// What one step did, for the connection to act on.
struct ChannelStep {
  bool progress = false;
  bool transaction_done = false;   // a transaction ended with a reply: the far end works
  std::string connection_failure;  // non-empty: the connection must be torn down
  std::string session_failure;     // non-empty: new SMTP sessions must wait
  std::optional<PeerLine> peer;    // set once per session: what its first line was
  std::string channel_refused;     // non-empty: the far end refused this channel's open
  size_t bytes_written = 0;        // taken by the channel (for the metrics)
};

class ChannelSession {
 public:
  enum class St { Opening, Exec, Running, Closing };

  explicit ChannelSession(SteadyClock::time_point now) : idle_since_(now) {}
  ChannelSession(const ChannelSession&) = delete;
  ChannelSession& operator=(const ChannelSession&) = delete;

  // Advances the session as far as it goes without blocking.
  ChannelStep step(const ChannelContext& ctx, SteadyClock::time_point now);
  // The connection is going: abandon the jobs in flight (their recipients stay pending) and leave
  // the channel to the session, which frees it.
  void abandon(JobSource& jobs, const std::string& reason, int64_t unix_now);

  St state() const { return st_; }
  // Closed and freed: the connection may drop it.
  bool gone() const { return st_ == St::Closing && !ch_; }
  // The far end refused to open its channel: it never held a session there.
  bool refused() const { return refused_; }
  // Can take more transactions: not closing, not giving its channel back, under the cap, engine
  // not ended.
  bool usable(uint32_t max_transactions) const;
  // Holds a job or runs a transaction.
  bool working() const {
    return !jobs_.empty() || (smtp_ && smtp_->state() == SmtpClient::State::Busy);
  }
  uint32_t transactions() const { return transactions_; }
  size_t inFlight() const { return jobs_.size(); }
  // Has bytes on their way to the far end.
  bool sending() const { return !wbuf_.empty() || (smtp_ && smtp_->wantsToWrite()); }
  // When this session next needs a step without I/O (engine timeout, idle_close, close deadline).
  std::optional<SteadyClock::time_point> deadline(std::chrono::seconds idle_close) const;

 private:
  ChannelStep stepOpening(const ChannelContext& ctx);
  ChannelStep stepExec(const ChannelContext& ctx, SteadyClock::time_point now);
  ChannelStep stepClosing(const ChannelContext& ctx, SteadyClock::time_point now);
  ChannelStep stepRunning(const ChannelContext& ctx, SteadyClock::time_point now);
  // The pieces of a running session's step, in the order they run. Those that can break the
  // transport return false after setting out.connection_failure.
  bool readInput(const ChannelContext& ctx, SteadyClock::time_point now, ChannelStep& out);
  void logStderr(const ChannelContext& ctx, ChannelStep& out);
  // Far end's stdout -> (the peer line, then) the engine.
  void input(std::string_view bytes, SteadyClock::time_point now, ChannelStep& out);
  void takeResults(const ChannelContext& ctx, SteadyClock::time_point now, ChannelStep& out);
  void takeNextJob(const ChannelContext& ctx, SteadyClock::time_point now, ChannelStep& out);
  bool writeOutput(const ChannelContext& ctx, SteadyClock::time_point now, ChannelStep& out);
  void endIfDone(const ChannelContext& ctx, SteadyClock::time_point now, ChannelStep& out);
  // Abandons the jobs still open and starts the channel's teardown.
  void close(const ChannelContext& ctx, SteadyClock::time_point now, const std::string& reason);
  void quit(SteadyClock::time_point now, ChannelStep& out);

  St st_ = St::Opening;
  SshChannel ch_;
  std::unique_ptr<SmtpClient> smtp_;
  // Jobs started in this session, oldest first; with SmtpClient::Options::overlap up to two (the
  // next one starts while the previous final dot's reply is pending), with CHUNKING up to 32.
  // std::deque: a Job's
  // SmtpJob view points into it, and push_back/pop_front keep the others in place.
  std::deque<Job> jobs_;
  uint32_t transactions_ = 0;
  SteadyClock::time_point idle_since_{};
  SteadyClock::time_point close_deadline_{};
  std::string stderr_buf_;
  std::string wbuf_;  // a copy of what libssh2 was last asked to write (retried until done)
  bool eof_seen_ = false;
  PeerLineReader peer_;         // the first line of stdout: the client's dynmx-peer line?
  bool peer_reported_ = false;  // ChannelStep::peer was set
  bool quit_by_us_ = false;  // we ended it (idle, cap, stopping): not a failure of the far end
  bool shedding_ = false;    // gives its channel back (ChannelContext::shed): no new jobs
  bool refused_ = false;     // the channel open was refused
};

// Sessions that hold a job or run a transaction.
size_t sessionsWithWork(const ChannelSessions& all);

}  // namespace dynmx::tunneld
