// probe_engine.cpp: MAIL FROM:<>, RCPT TO:, RSET, and nothing else (see probe_engine.hpp).
#include "tunneld/verify/probe_engine.hpp"

#include "shared/smtp_reply.hpp"

namespace dynmx::tunneld {

namespace {
constexpr size_t kMaxLine = 4096;  // a longer reply line ends the session

bool sendableAddress(std::string_view a) {
  if (a.empty() || a.size() > 320) return false;
  for (unsigned char c : a)
    if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>') return false;
  return true;
}
}  // namespace

ProbeEngine::ProbeEngine(std::string helo_name, std::chrono::seconds reply_timeout,
                         SteadyClock::time_point now)
    : helo_(std::move(helo_name)), timeout_(reply_timeout), deadline_(now + reply_timeout) {}

std::optional<SteadyClock::time_point> ProbeEngine::deadline() const {
  return ended() ? std::nullopt : deadline_;
}

void ProbeEngine::onTimeout(SteadyClock::time_point now) {
  if (deadline_ && now >= *deadline_ && !ended()) fail("timed out waiting for a reply");
}

void ProbeEngine::onEof(SteadyClock::time_point) {
  if (st_ == State::Quitting) {
    st_ = State::Closed;
    deadline_.reset();
    return;
  }
  if (!ended()) fail("the far end closed the session");
}

void ProbeEngine::fail(const std::string& why) {
  if (probing_) finish(VerifyStatus::Unknown, why);
  failure_ = why;
  st_ = State::Failed;
  deadline_.reset();
  out_.clear();
}

void ProbeEngine::finish(VerifyStatus status, std::string reply) {
  result_ = ProbeResult{address_, status, std::move(reply)};
  probing_ = false;
}

void ProbeEngine::send(const std::string& line, State next, SteadyClock::time_point now) {
  out_ += line + "\r\n";
  st_ = next;
  deadline_ = now + timeout_;
}

void ProbeEngine::start(const std::string& address, SteadyClock::time_point now) {
  if (!ready() || result_) return;
  address_ = address;
  probing_ = true;
  if (!sendableAddress(address)) {
    finish(VerifyStatus::Unknown,
           "address not probed: it has a blank, a bracket or a byte that "
           "is not printable ASCII");
    return;
  }
  send("MAIL FROM:<>", State::Mail, now);
}

std::optional<ProbeResult> ProbeEngine::takeResult() {
  return std::exchange(result_, std::nullopt);
}

void ProbeEngine::quit(SteadyClock::time_point now) {
  if (st_ == State::Ready) send("QUIT", State::Quitting, now);
}

void ProbeEngine::onInput(std::string_view bytes, SteadyClock::time_point now) {
  in_.append(bytes);
  size_t nl;
  while (!ended() && (nl = in_.find('\n')) != std::string::npos) {
    std::string line = in_.substr(0, nl);
    in_.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto r = parseReplyLine(line);
    if (!r) {
      if (st_ == State::Greeting && reply_text_.empty()) continue;  // noise before the greeting
      return fail("not an SMTP reply: \"" + printable(line, 80) + "\"");
    }
    reply_text_ += (reply_text_.empty() ? "" : " / ") + std::string(r->text);
    if (!r->last) continue;
    std::string text = std::to_string(r->code) + " " + printable(reply_text_, 400);
    reply_text_.clear();
    reply(r->code, text, now);
  }
  if (in_.size() > kMaxLine && !ended()) fail("reply line longer than 4096 bytes");
}

void ProbeEngine::reply(int code, const std::string& text, SteadyClock::time_point now) {
  switch (st_) {
    case State::Greeting:
      if (code != 220) return fail("greeting refused: " + text);
      return send("EHLO " + helo_, State::Ehlo, now);
    case State::Ehlo:
      if (code / 100 == 2) {
        st_ = State::Ready;
        deadline_.reset();
        return;
      }
      if (code / 100 == 5 && !helo_fallback_) {
        helo_fallback_ = true;
        return send("HELO " + helo_, State::Ehlo, now);
      }
      return fail("EHLO refused: " + text);
    case State::Mail:
      if (code / 100 == 2) return send("RCPT TO:<" + address_ + ">", State::Rcpt, now);
      finish(VerifyStatus::Unknown, text);
      return send("RSET", State::Rset, now);
    case State::Rcpt:
      finish(verifyStatusOfRcptReply(code, std::string_view(text).substr(4)), text);
      return send("RSET", State::Rset, now);
    case State::Rset:
      if (code / 100 != 2) return fail("RSET refused: " + text);
      st_ = State::Ready;
      deadline_.reset();
      return;
    case State::Quitting:
      st_ = State::Closed;
      deadline_.reset();
      return;
    case State::Ready:
    case State::Closed:
    case State::Failed:
      return fail("a reply nobody asked for: " + text);
  }
}

}  // namespace dynmx::tunneld
