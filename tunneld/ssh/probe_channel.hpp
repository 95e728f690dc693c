// probe_channel.hpp: the SSH channel a client's connection keeps for recipient probes.
//
// Contract: like a ChannelSession (channel_session.hpp), a ProbeChannel opens a session channel
// of the connection, runs the remote command (the client's `sendmail -bs`), and pumps bytes, but
// between the channel and a ProbeEngine (tunneld/verify/probe_engine.hpp): it takes addresses
// from the ProbeSource one at a time and hands each result back. It never carries mail, and mail
// never waits for it. It QUITs after idle_close without probes, and when the daemon stops.
// Failure behaviour: a channel error that breaks the transport comes back as connection_failure;
// a refused open or exec, or a session that ends, closes the channel (`failed` says why) and the
// probe under way is handed back as unknown with the reason; the connection then waits before it
// opens another (SshClient).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "tunneld/ssh/channel.hpp"
#include "tunneld/ssh/session.hpp"
#include "tunneld/verify/probe_engine.hpp"
#include "tunneld/verify/verifier.hpp"

namespace dynmx::tunneld {

struct ProbeContext {
  SshSession& ssh;
  ProbeSource& probes;
  const ClientConfig& client;
  const TunneldConfig& tunneld;
  const std::string& relay;
  bool stopping;
};

struct ProbeStep {
  bool progress = false;
  std::string connection_failure;  // the connection must be torn down
  std::string failed;              // this channel ended without the far end's consent
};

class ProbeChannel {
 public:
  explicit ProbeChannel(SteadyClock::time_point now) : idle_since_(now) {}
  ProbeStep step(const ProbeContext& ctx, SteadyClock::time_point now);
  // The connection is going: the probe under way is handed back as unknown.
  void abandon(ProbeSource& probes, const std::string& client, const std::string& reason);
  bool gone() const { return st_ == St::Closing && !ch_; }
  bool sending() const { return !wbuf_.empty() || (engine_ && !engine_->output().empty()); }
  std::optional<SteadyClock::time_point> deadline(std::chrono::seconds idle_close) const;

 private:
  enum class St { Opening, Exec, Running, Closing };
  ProbeStep stepOpening(const ProbeContext& ctx, SteadyClock::time_point now);
  ProbeStep stepExec(const ProbeContext& ctx, SteadyClock::time_point now);
  ProbeStep stepRunning(const ProbeContext& ctx, SteadyClock::time_point now);
  ProbeStep stepClosing(const ProbeContext& ctx, SteadyClock::time_point now);
  bool readInput(const ProbeContext& ctx, SteadyClock::time_point now, ProbeStep& out);
  bool writeOutput(const ProbeContext& ctx, ProbeStep& out);
  void close(const ProbeContext& ctx, SteadyClock::time_point now, const std::string& why);

  St st_ = St::Opening;
  SshChannel ch_;
  std::unique_ptr<ProbeEngine> engine_;
  std::optional<std::string> probing_;  // the address under way
  SteadyClock::time_point idle_since_{};
  SteadyClock::time_point close_deadline_{};
  std::string wbuf_;
  bool eof_seen_ = false;
};

}  // namespace dynmx::tunneld
