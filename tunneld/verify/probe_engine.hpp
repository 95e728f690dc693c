// probe_engine.hpp: the SMTP dialogue of an address probe, without I/O ("sans-IO"), like
// tunneld/smtp's delivery engine: fed the far end's bytes, it hands out the bytes to send.
//
// Contract: waits for the 220 greeting (lines before it that are not replies, such as a relay
// client's "dynmx-peer" line or a login shell's noise, are skipped), says EHLO (HELO when EHLO
// gets a 5xx), then for each address given to start(): "MAIL FROM:<>", "RCPT TO:<addr>", "RSET",
// one command at a time, and hands out one ProbeResult per start(). Never DATA, never any
// message content: a probe cannot deliver anything. The RCPT reply decides
// (verifyStatusOfRcptReply: 250/251 valid, 550/551/553 or a 5.1.x code invalid, anything else
// unknown); a MAIL FROM:<> that is refused makes the result unknown. quit() sends QUIT when idle.
// Failure behaviour: a reply that does not parse, comes unasked, a refused greeting or RSET, EOF
// or a timeout (deadline(), then onTimeout()) ends the session (Failed, failure() says why); the
// probe under way, if any, is then handed out as unknown with that reason. An address with a
// byte outside printable ASCII, a blank or an angle bracket is not sent: unknown at once.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "shared/clock.hpp"
#include "shared/verify_reply.hpp"

namespace dynmx::tunneld {

struct ProbeResult {
  std::string address;
  VerifyStatus status = VerifyStatus::Unknown;
  std::string reply;  // the far end's RCPT (or MAIL) reply, one line, or why there was none
};

class ProbeEngine {
 public:
  enum class State { Greeting, Ehlo, Ready, Mail, Rcpt, Rset, Quitting, Closed, Failed };

  ProbeEngine(std::string helo_name, std::chrono::seconds reply_timeout,
              SteadyClock::time_point now);

  State state() const { return st_; }
  bool ready() const { return st_ == State::Ready; }
  bool ended() const { return st_ == State::Closed || st_ == State::Failed; }
  const std::string& failure() const { return failure_; }

  void onInput(std::string_view bytes, SteadyClock::time_point now);
  void onEof(SteadyClock::time_point now);
  std::string_view output() const { return out_; }
  void consumed(size_t n) { out_.erase(0, n); }
  std::optional<SteadyClock::time_point> deadline() const;
  void onTimeout(SteadyClock::time_point now);

  // Only when ready(): probes `address` (without angle brackets).
  void start(const std::string& address, SteadyClock::time_point now);
  std::optional<ProbeResult> takeResult();
  void quit(SteadyClock::time_point now);

 private:
  void reply(int code, const std::string& text, SteadyClock::time_point now);
  void send(const std::string& line, State next, SteadyClock::time_point now);
  void fail(const std::string& why);
  void finish(VerifyStatus status, std::string reply);

  std::string helo_;
  std::chrono::seconds timeout_;
  State st_ = State::Greeting;
  bool helo_fallback_ = false;
  std::string in_;          // bytes of an incomplete line
  std::string reply_text_;  // lines of a multi-line reply so far
  std::string out_;
  std::optional<SteadyClock::time_point> deadline_;
  std::string address_;  // the probe under way
  bool probing_ = false;
  std::optional<ProbeResult> result_;
  std::string failure_;
};

}  // namespace dynmx::tunneld
