// smtp_client.cpp: the sans-IO SMTP client engine (see smtp_client.hpp for the contract).
//
// Shape: every command we send pushes an expectation (which command, its deadline) on a FIFO;
// every complete reply pops one. With PIPELINING the whole envelope ([RSET] MAIL, RCPT..., DATA)
// goes out as one group; without it, one command at a time. Message content is pulled from the
// ContentSource only when the output buffer is at most half full, and each pull asks for no more
// than a third of the free room, so the buffer never exceeds Options::max_output whatever the
// content (the body encoder grows its input by at most 3x + 4).
//
// Failure behaviour: a reply that does not parse, a reply nobody waits for, a reply code that
// makes no sense at that point, a lost stream or an overdue reply ends the session (Failed);
// recipients of the transaction that are not final yet are then Deferred with our reason, and
// possible_duplicate is set when the final dot had gone out and its reply had not come. A failed
// ContentSource ends the session without the final dot, so the far end discards the message.
#include "tunneld/smtp/smtp_client.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>

#include "shared/log.hpp"
#include "tunneld/smtp/smtp_body.hpp"
#include "shared/smtp_reply.hpp"

namespace dynmx::tunneld {

SmtpJob smtpJobFor(Job& job) {
  SmtpJob j;
  j.env = &job.msg.env;
  j.rcpt_indexes = job.rcpt_indexes;
  j.content = job.content.get();
  j.size_hint = job.msg.content_size;
  return j;
}

// ---------------------------------------------------------------------------------------------
// Body encoding.

void SmtpBodyEncoder::feed(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size()) {
    char c = in[i];
    if (pending_cr_) {
      pending_cr_ = false;
      endLine(out);
      if (c == '\n') {
        ++i;
        continue;
      }
    }
    if (c == '\r') {
      pending_cr_ = true;
      ++i;
      continue;
    }
    if (c == '\n') {
      endLine(out);
      ++i;
      continue;
    }
    size_t j = in.find_first_of("\r\n", i);
    if (j == std::string_view::npos) j = in.size();
    while (i < j) {
      if (line_len_ == 0 && in[i] == '.') {
        out += '.';
        line_len_ = 1;
      }
      if (line_len_ >= kMaxLine) {
        out += "\r\n ";
        line_len_ = 1;
      }
      size_t n = std::min(j - i, kMaxLine - line_len_);
      out.append(in.data() + i, n);
      line_len_ += n;
      i += n;
    }
  }
}

void SmtpBodyEncoder::finish(std::string& out) {
  if (pending_cr_) {
    pending_cr_ = false;
    endLine(out);
  } else if (line_len_ > 0) {
    endLine(out);
  }
}

// ---------------------------------------------------------------------------------------------
// The engine.

namespace {

constexpr size_t kMaxInputLine = 16 * 1024;  // longer "lines" from the far end end the session
constexpr size_t kMaxReplyLines = 1000;
constexpr size_t kMinOutput = 1024;
constexpr size_t kReserve = 16;  // room kept for the pending CR, the last CRLF and ".\r\n"

enum class Cmd { Greeting, Ehlo, Helo, Rset, Mail, Rcpt, Data, Dot, Quit };

const char* stage(Cmd c) {
  switch (c) {
    case Cmd::Greeting:
      return "receiving the initial server greeting";
    case Cmd::Ehlo:
      return "sending EHLO";
    case Cmd::Helo:
      return "sending HELO";
    case Cmd::Rset:
      return "sending RSET";
    case Cmd::Mail:
      return "sending MAIL FROM";
    case Cmd::Rcpt:
      return "sending RCPT TO";
    case Cmd::Data:
      return "sending DATA command";
    case Cmd::Dot:
      return "sending end of data -- message may be sent more than once";
    case Cmd::Quit:
      return "sending QUIT";
  }
  return "?";
}

std::string upper(std::string_view s) {
  std::string r(s);
  for (char& c : r) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return r;
}

// Text that may go into a command line: no CR, LF, NUL.
bool safeForCommand(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

// A keyword-like parameter value (NOTIFY, RET, BODY): letters, digits, ',', '-'.
bool safeParam(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == ',' ||
           c == '-';
  });
}

// The milter stores ENVID and ORCPT as the MTA received them (xtext already); a value stored
// decoded works too: decoding and encoding again gives valid xtext either way.
std::string xtext(std::string_view v) {
  return xtextEncode(xtextDecode(v));
}

std::string orcptParam(std::string_view orcpt) {
  size_t semi = orcpt.find(';');
  if (semi == std::string_view::npos) return "rfc822;" + xtext(orcpt);
  return std::string(orcpt.substr(0, semi)) + ";" + xtext(orcpt.substr(semi + 1));
}

}  // namespace

struct SmtpClient::Impl {
  SmtpClient* self;
  Options opts;

  // One transaction. With Options::overlap two may be open: one waiting for its final dot's
  // reply, the next one already sent behind it.
  enum class RcptState { Waiting, Accepted, Final };
  struct Tx {
    SmtpJob job;
    TransactionResult result;
    std::vector<RcptState> rstate;
    size_t accepted = 0;
    bool mail_failed = false;
    size_t next_rcpt = 0;    // lock-step: the next RCPT to send
    bool body_done = false;  // the terminator is in the output
    bool dot_sent = false;   // ... and has gone out
    bool done = false;       // the result is complete
  };

  struct Expect {
    Cmd cmd;
    Tx* tx;                      // Rset/Mail/Rcpt/Data/Dot
    size_t pos;                  // Rcpt: position in job.rcpt_indexes
    SteadyClock::time_point deadline;  // max(): the final dot has not gone out yet
  };

  // Input.
  std::string in;
  bool in_reply = false;
  int reply_code = 0;
  std::vector<std::string> reply_lines;
  bool greeted = false;

  // Output.
  std::string out;
  size_t out_pos = 0;
  std::deque<Expect> expect;

  std::map<std::string, std::string> caps;  // upper-case keyword -> parameters
  bool pipelining = false;
  std::vector<std::string> notes;
  bool used = false;        // a transaction was started in this session: RSET before the next
  bool quit_after = false;  // quit() came while busy

  std::deque<std::unique_ptr<Tx>> txs;  // open transactions, oldest first
  std::deque<TransactionResult> ready;  // finished, in the order the transactions started

  // Content of the newest transaction.
  Tx* body_tx = nullptr;  // set between the 354 and the terminator
  size_t until_dot = 0;   // unconsumed output bytes up to the end of ".\r\n"
  Tx* dot_tx = nullptr;   // whose terminator until_dot counts down to
  SmtpBodyEncoder enc;
  SteadyClock::time_point last_progress;

  Impl(SmtpClient* s, Options o) : self(s), opts(std::move(o)) {
    if (opts.max_output < kMinOutput) opts.max_output = kMinOutput;
  }

  std::chrono::seconds timeoutFor(Cmd c) const {
    const SmtpTimeouts& t = opts.timeouts;
    switch (c) {
      case Cmd::Greeting:
        return t.greeting;
      case Cmd::Ehlo:
      case Cmd::Helo:
        return t.ehlo;
      case Cmd::Rset:
        return t.rset;
      case Cmd::Mail:
        return t.mail;
      case Cmd::Rcpt:
        return t.rcpt;
      case Cmd::Data:
        return t.data;
      case Cmd::Dot:
        return t.final_dot;
      case Cmd::Quit:
        return t.quit;
    }
    return t.mail;
  }

  void send(Cmd c, const std::string& line, SteadyClock::time_point now, Tx* tx = nullptr,
            size_t pos = 0) {
    out += line;
    out += "\r\n";
    expect.push_back(Expect{c, tx, pos, now + timeoutFor(c)});
  }

  bool alive() const { return self->state_ != State::Failed && self->state_ != State::Closed; }

  // --- session end

  void fail(const std::string& why) {
    if (!alive()) return;
    self->failure_ = why;
    self->state_ = State::Failed;
    out.clear();
    out_pos = 0;
    until_dot = 0;
    expect.clear();
    body_tx = nullptr;
    dot_tx = nullptr;
    for (auto& t : txs) {
      if (t->done) continue;
      if (t->dot_sent) t->result.possible_duplicate = true;
      for (size_t i = 0; i < t->rstate.size(); ++i) {
        if (t->rstate[i] != RcptState::Final) {
          t->result.rcpts[i].outcome = Outcome::Deferred;
          t->result.rcpts[i].reply = why;
          t->rstate[i] = RcptState::Final;
        }
      }
      t->done = true;
    }
    release();
  }

  void close() {
    self->state_ = State::Closed;
    expect.clear();
  }

  // --- transaction bookkeeping

  static void setRcpt(Tx& t, size_t pos, Outcome o, const std::string& reply) {
    t.result.rcpts[pos].outcome = o;
    t.result.rcpts[pos].reply = reply;
    t.rstate[pos] = RcptState::Final;
  }

  // Applies a transaction-level reply to every recipient not final yet (accepted or waiting).
  static void applyToOpen(Tx& t, int code, const std::string& reply) {
    Outcome o = code >= 500 ? Outcome::Failed : Outcome::Deferred;
    for (size_t i = 0; i < t.rstate.size(); ++i) {
      if (t.rstate[i] != RcptState::Final) setRcpt(t, i, o, reply);
    }
  }

  // Hands out finished transactions, oldest first, never one before an older one.
  void release() {
    while (!txs.empty() && txs.front()->done) {
      ready.push_back(std::move(txs.front()->result));
      txs.pop_front();
    }
  }

  void endTransaction(Tx& t, SteadyClock::time_point now) {
    t.done = true;
    if (body_tx == &t) body_tx = nullptr;
    release();
    updateState(now);
  }

  bool pendingTransactions() const {
    for (const auto& t : txs) {
      if (!t->done) return true;
    }
    return false;
  }

  // Busy while a transaction needs the channel to itself; Ready when a new one may start (with
  // Options::overlap, already while the last one's final dot waits for its reply).
  void updateState(SteadyClock::time_point now) {
    if (!alive() || self->state_ == State::Quitting || self->state_ == State::Greeting) return;
    for (const auto& t : txs) {
      if (!t->done && !(opts.overlap && pipelining && t->body_done)) {
        self->state_ = State::Busy;
        return;
      }
    }
    goReady(now);
  }

  void goReady(SteadyClock::time_point now) {
    self->state_ = State::Ready;
    if (quit_after) sendQuit(now);
  }

  void sendQuit(SteadyClock::time_point now) {
    quit_after = false;
    send(Cmd::Quit, "QUIT", now);
    self->state_ = State::Quitting;
  }

  std::string mailCommand(const Tx& t) const {
    const Envelope& env = *t.job.env;
    std::string cmd = "MAIL FROM:<" + env.sender + ">";
    if (self->offers("SIZE") && t.job.size_hint > 0) {
      cmd += " SIZE=" + std::to_string(t.job.size_hint);
    }
    std::string body = upper(env.body);
    if (self->offers("8BITMIME") && (body == "8BITMIME" || body == "7BIT")) cmd += " BODY=" + body;
    if (self->offers("SMTPUTF8") && env.smtputf8) cmd += " SMTPUTF8";
    if (self->offers("DSN")) {
      if (safeParam(env.ret)) cmd += " RET=" + upper(env.ret);
      if (!env.envid.empty()) cmd += " ENVID=" + xtext(env.envid);
    }
    return cmd;
  }

  std::string rcptCommand(const Tx& t, size_t pos) const {
    const SpoolRecipient& r = t.job.env->rcpts[t.job.rcpt_indexes[pos]];
    std::string cmd = "RCPT TO:<" + r.address + ">";
    if (self->offers("DSN")) {
      if (safeParam(r.notify)) cmd += " NOTIFY=" + upper(r.notify);
      if (!r.orcpt.empty()) cmd += " ORCPT=" + orcptParam(r.orcpt);
    }
    return cmd;
  }

  void start(SmtpJob j, SteadyClock::time_point now) {
    if (self->state_ != State::Ready || j.env == nullptr || j.content == nullptr) {
      logf(LogLevel::Critical, "SmtpClient::start called in the wrong state or without a job");
      std::abort();
    }
    txs.push_back(std::make_unique<Tx>());
    Tx& t = *txs.back();
    t.job = std::move(j);
    self->state_ = State::Busy;
    t.rstate.assign(t.job.rcpt_indexes.size(), RcptState::Waiting);
    for (size_t i = 0; i < t.job.rcpt_indexes.size(); ++i) {
      if (t.job.rcpt_indexes[i] >= t.job.env->rcpts.size()) {
        logf(LogLevel::Critical, "SmtpClient::start: recipient index out of range");
        std::abort();
      }
      t.result.rcpts.push_back(RcptResult{t.job.rcpt_indexes[i], Outcome::Deferred, ""});
    }
    if (t.job.rcpt_indexes.empty()) {
      endTransaction(t, now);
      return;
    }
    // Refuse locally what must never reach a command line, and what the far end said it will not
    // take (SIZE): these need no round trip.
    if (!safeForCommand(t.job.env->sender) || !safeForCommand(t.job.env->envid)) {
      applyToOpen(t, 550, "invalid envelope sender or ENVID in the spool (control characters)");
      endTransaction(t, now);
      return;
    }
    for (size_t i = 0; i < t.rstate.size(); ++i) {
      const SpoolRecipient& r = t.job.env->rcpts[t.job.rcpt_indexes[i]];
      if (!safeForCommand(r.address) || !safeForCommand(r.orcpt)) {
        setRcpt(t, i, Outcome::Failed,
                "invalid recipient address in the spool (control characters)");
      }
    }
    auto size_cap = caps.find("SIZE");
    if (size_cap != caps.end() && t.job.size_hint > 0) {
      uint64_t limit = std::strtoull(size_cap->second.c_str(), nullptr, 10);
      if (limit > 0 && t.job.size_hint > limit) {
        applyToOpen(t, 552,
                    "message size " + std::to_string(t.job.size_hint) + " exceeds size limit " +
                        std::to_string(limit) + " of the far end");
        endTransaction(t, now);
        return;
      }
    }
    if (std::all_of(t.rstate.begin(), t.rstate.end(),
                    [](RcptState s) { return s == RcptState::Final; })) {
      endTransaction(t, now);
      return;
    }
    bool rset = used;
    used = true;
    if (rset) send(Cmd::Rset, "RSET", now, &t);
    if (pipelining) {
      send(Cmd::Mail, mailCommand(t), now, &t);
      for (size_t i = 0; i < t.rstate.size(); ++i) {
        if (t.rstate[i] == RcptState::Waiting) send(Cmd::Rcpt, rcptCommand(t, i), now, &t, i);
      }
      send(Cmd::Data, "DATA", now, &t);
    } else if (!rset) {
      send(Cmd::Mail, mailCommand(t), now, &t);
    }
  }

  // Lock-step: the next RCPT, or DATA, or the end when nobody was accepted.
  void sendNextRcptOrData(Tx& t, SteadyClock::time_point now) {
    while (t.next_rcpt < t.rstate.size() && t.rstate[t.next_rcpt] != RcptState::Waiting) {
      ++t.next_rcpt;
    }
    if (t.next_rcpt < t.rstate.size()) {
      size_t pos = t.next_rcpt++;
      send(Cmd::Rcpt, rcptCommand(t, pos), now, &t, pos);
    } else if (t.accepted > 0) {
      send(Cmd::Data, "DATA", now, &t);
    } else {
      endTransaction(t, now);  // RSET comes before the next transaction
    }
  }

  // --- replies

  std::string flatten(int code, const std::vector<std::string>& lines) const {
    std::string r = std::to_string(code);
    std::string first_enh;
    for (size_t i = 0; i < lines.size(); ++i) {
      std::string_view t = lines[i];
      if (i == 0) {
        first_enh = enhancedStatus(code, t);
      } else if (!first_enh.empty() && t.substr(0, first_enh.size()) == first_enh) {
        t.remove_prefix(first_enh.size());
        while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
      }
      if (!t.empty()) r += " " + std::string(t);
    }
    return printable(r, 2000);
  }

  void handleLine(std::string_view line, SteadyClock::time_point now) {
    auto rl = parseReplyLine(line);
    if (!greeted && !in_reply && !rl) {
      notes.push_back("non-reply line before the greeting: " + printable(line, 200));
      return;
    }
    if (!rl) {
      fail("garbage reply from the far end: \"" + printable(line, 200) + "\"");
      return;
    }
    if (in_reply && rl->code != reply_code) {
      fail("inconsistent multi-line reply from the far end: \"" + printable(line, 200) + "\"");
      return;
    }
    if (!in_reply) {
      in_reply = true;
      reply_code = rl->code;
      reply_lines.clear();
    }
    reply_lines.emplace_back(rl->text);
    if (!rl->last) {
      if (reply_lines.size() > kMaxReplyLines) fail("multi-line reply too long from the far end");
      return;
    }
    in_reply = false;
    handleReply(reply_code, now);
  }

  void handleReply(int code, SteadyClock::time_point now) {
    std::string flat = flatten(code, reply_lines);
    if (expect.empty()) {
      fail("unexpected reply from the far end: " + flat);
      return;
    }
    Expect e = expect.front();
    if (e.cmd == Cmd::Dot && !e.tx->dot_sent) {
      // A reply to a final dot that has not gone out yet: the far end is out of step.
      fail("unexpected reply from the far end before the end of data: " + flat);
      return;
    }
    expect.pop_front();
    int cls = code / 100;
    switch (e.cmd) {
      case Cmd::Greeting:
        greeted = true;
        if (code != 220) {
          fail("far end refused the session: " + flat);
          return;
        }
        self->greeting_ = flat;
        send(Cmd::Ehlo, "EHLO " + opts.helo_name, now);
        return;
      case Cmd::Ehlo:
        if (cls == 2) {
          caps.clear();
          for (size_t i = 1; i < reply_lines.size(); ++i) {
            std::string_view l = reply_lines[i];
            size_t sp = l.find(' ');
            std::string kw = upper(l.substr(0, sp));
            std::string params = sp == std::string_view::npos ? "" : std::string(l.substr(sp + 1));
            if (!kw.empty()) caps[kw] = params;
          }
          pipelining = caps.count("PIPELINING") > 0;
          goReady(now);
        } else if (cls == 5) {
          notes.push_back("EHLO rejected (" + flat + "), trying HELO");
          send(Cmd::Helo, "HELO " + opts.helo_name, now);
        } else {
          fail("far end rejected EHLO: " + flat);
        }
        return;
      case Cmd::Helo:
        if (cls != 2) {
          fail("far end rejected HELO: " + flat);
          return;
        }
        caps.clear();
        pipelining = false;
        goReady(now);
        return;
      case Cmd::Quit:
        close();
        return;
      default:
        break;
    }
    Tx& t = *e.tx;
    switch (e.cmd) {
      case Cmd::Rset:
        if (cls != 2) {
          fail("far end rejected RSET: " + flat);
          return;
        }
        if (!pipelining) send(Cmd::Mail, mailCommand(t), now, &t);
        return;
      case Cmd::Mail:
        if (cls == 2) {
          if (!pipelining) sendNextRcptOrData(t, now);
        } else if (cls == 4 || cls == 5) {
          t.mail_failed = true;
          applyToOpen(t, code, flat);
          if (!pipelining) endTransaction(t, now);
        } else {
          fail("unexpected reply to MAIL FROM: " + flat);
        }
        return;
      case Cmd::Rcpt:
        if (cls != 2 && cls != 4 && cls != 5) {
          fail("unexpected reply to RCPT TO: " + flat);
          return;
        }
        if (!t.mail_failed && t.rstate[e.pos] == RcptState::Waiting) {
          if (cls == 2) {
            t.rstate[e.pos] = RcptState::Accepted;
            t.result.rcpts[e.pos].reply = flat;
            ++t.accepted;
          } else {
            setRcpt(t, e.pos, cls == 5 ? Outcome::Failed : Outcome::Deferred, flat);
          }
        }
        if (!pipelining) sendNextRcptOrData(t, now);
        return;
      case Cmd::Data:
        if (t.mail_failed || t.accepted == 0) {
          // Pipelined DATA after a refused MAIL or with no accepted recipient: the far end must
          // refuse it (503/554). Anything else would make it wait for content nobody asked for.
          if (cls == 4 || cls == 5) {
            endTransaction(t, now);
          } else {
            fail("far end accepted DATA without a valid recipient: " + flat);
          }
          return;
        }
        if (code == 354) {
          body_tx = &t;
          enc = SmtpBodyEncoder{};
          last_progress = now;
          return;
        }
        if (cls == 4 || cls == 5) {
          applyToOpen(t, code, flat);
          endTransaction(t, now);
        } else {
          fail("unexpected reply to DATA: " + flat);
        }
        return;
      case Cmd::Dot:
        if (cls == 2) {
          for (size_t i = 0; i < t.rstate.size(); ++i) {
            if (t.rstate[i] == RcptState::Accepted) setRcpt(t, i, Outcome::Delivered, flat);
          }
          endTransaction(t, now);
        } else if (cls == 4 || cls == 5) {
          applyToOpen(t, code, flat);
          endTransaction(t, now);
        } else {
          fail("unexpected reply to end of data: " + flat);
        }
        return;
      default:
        return;
    }
  }

  // What we were doing, for a message about a lost or silent far end.
  std::string where() const {
    if (body_tx != nullptr || dot_tx != nullptr) return "sending message body";
    if (!expect.empty()) return stage(expect.front().cmd);
    return "idle";
  }

  // --- content

  void fillBody(SteadyClock::time_point now) {
    while (body_tx != nullptr) {
      Tx& t = *body_tx;
      if (out_pos > 0) {
        out.erase(0, out_pos);
        out_pos = 0;
      }
      size_t room = opts.max_output - out.size();
      if (room < opts.max_output / 2) return;
      size_t want = (room - kReserve) / 3;
      auto chunk = t.job.content->next(want);
      if (!chunk.ok()) {
        t.result.content_error = true;
        fail("cannot read the message content: " + chunk.error().message);
        return;
      }
      if (chunk->size() > want) {
        logf(LogLevel::Critical, "ContentSource returned %zu bytes when asked for at most %zu",
             chunk->size(), want);
        std::abort();
      }
      if (chunk->empty()) {
        enc.finish(out);
        out += ".\r\n";
        body_tx = nullptr;
        t.body_done = true;
        dot_tx = &t;
        until_dot = out.size() - out_pos;
        // Its reply is awaited from now on; the deadline starts once the dot has gone out.
        expect.push_back(Expect{Cmd::Dot, &t, 0, SteadyClock::time_point::max()});
        updateState(now);
        return;
      }
      enc.feed(*chunk, out);
    }
  }

  void dotSent(SteadyClock::time_point now) {
    dot_tx->dot_sent = true;
    for (Expect& e : expect) {
      if (e.cmd == Cmd::Dot && e.tx == dot_tx) e.deadline = now + opts.timeouts.final_dot;
    }
    dot_tx = nullptr;
  }
};

SmtpClient::SmtpClient(Options opts, SteadyClock::time_point now)
    : impl_(std::make_unique<Impl>(this, std::move(opts))) {
  impl_->expect.push_back(
      Impl::Expect{Cmd::Greeting, nullptr, 0, now + impl_->opts.timeouts.greeting});
}

SmtpClient::~SmtpClient() = default;

SmtpClient::SmtpClient(SmtpClient&& other) noexcept
    : impl_(std::move(other.impl_)),
      state_(other.state_),
      failure_(std::move(other.failure_)),
      greeting_(std::move(other.greeting_)) {
  if (impl_) impl_->self = this;
}

SmtpClient& SmtpClient::operator=(SmtpClient&& other) noexcept {
  impl_ = std::move(other.impl_);
  state_ = other.state_;
  failure_ = std::move(other.failure_);
  greeting_ = std::move(other.greeting_);
  if (impl_) impl_->self = this;
  return *this;
}

bool SmtpClient::offers(std::string_view keyword) const {
  return impl_->caps.count(upper(keyword)) > 0;
}

void SmtpClient::onInput(std::string_view bytes, SteadyClock::time_point now) {
  Impl& m = *impl_;
  if (!m.alive()) return;
  m.in.append(bytes);
  size_t start = 0;
  for (;;) {
    size_t nl = m.in.find('\n', start);
    if (nl == std::string::npos) break;
    std::string_view line(m.in.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    start = nl + 1;
    m.handleLine(line, now);
    if (!m.alive()) {
      m.in.clear();
      return;
    }
  }
  m.in.erase(0, start);
  if (m.in.size() > kMaxInputLine) {
    m.fail("reply line too long from the far end");
    m.in.clear();
  }
}

void SmtpClient::onEof(SteadyClock::time_point /*now*/) {
  Impl& m = *impl_;
  if (state_ == State::Quitting && !m.pendingTransactions()) {
    m.close();
    return;
  }
  if (!m.alive()) return;
  m.fail("lost connection with the far end while " + m.where());
}

std::string_view SmtpClient::output() {
  Impl& m = *impl_;
  if (m.body_tx != nullptr && m.alive()) m.fillBody(m.last_progress);
  return std::string_view(m.out).substr(m.out_pos);
}

void SmtpClient::consumed(size_t n, SteadyClock::time_point now) {
  Impl& m = *impl_;
  if (n > m.out.size() - m.out_pos) {
    logf(LogLevel::Critical, "SmtpClient::consumed(%zu) beyond the %zu bytes handed out", n,
         m.out.size() - m.out_pos);
    std::abort();
  }
  m.out_pos += n;
  if (n > 0) m.last_progress = now;
  if (m.until_dot > 0) {
    m.until_dot -= std::min(n, m.until_dot);
    if (m.until_dot == 0 && m.dot_tx != nullptr) m.dotSent(now);
  }
  if (m.out_pos == m.out.size()) {
    m.out.clear();
    m.out_pos = 0;
  }
}

bool SmtpClient::wantsToWrite() const {
  const Impl& m = *impl_;
  if (m.out_pos < m.out.size()) return true;
  return m.alive() && m.body_tx != nullptr;
}

std::optional<SteadyClock::time_point> SmtpClient::deadline() const {
  const Impl& m = *impl_;
  if (!m.alive()) return std::nullopt;
  // While content (or its final dot) is still going out, the channel must keep taking it.
  if (m.body_tx != nullptr || m.dot_tx != nullptr) return m.last_progress + m.opts.timeouts.block;
  if (!m.expect.empty()) return m.expect.front().deadline;
  return std::nullopt;
}

void SmtpClient::onTimeout(SteadyClock::time_point now) {
  Impl& m = *impl_;
  auto d = deadline();
  if (!d || now < *d) return;
  if (state_ == State::Quitting && !m.pendingTransactions()) {
    m.close();
    return;
  }
  m.fail("conversation with the far end timed out while " + m.where());
}

void SmtpClient::start(SmtpJob job, SteadyClock::time_point now) {
  impl_->start(std::move(job), now);
}

std::optional<TransactionResult> SmtpClient::takeResult() {
  Impl& m = *impl_;
  if (m.ready.empty()) return std::nullopt;
  std::optional<TransactionResult> r = std::move(m.ready.front());
  m.ready.pop_front();
  return r;
}

void SmtpClient::quit(SteadyClock::time_point now) {
  Impl& m = *impl_;
  switch (state_) {
    case State::Ready:
      m.sendQuit(now);
      break;
    case State::Busy:
      m.quit_after = true;
      break;
    case State::Greeting:
      if (m.greeted) {
        m.quit_after = true;
      } else {
        m.close();  // nothing was said yet, and nothing may be said before the greeting
      }
      break;
    default:
      break;
  }
}

std::vector<std::string> SmtpClient::takeNotes() {
  std::vector<std::string> n;
  n.swap(impl_->notes);
  return n;
}

}  // namespace dynmx::tunneld
