// smtp_client.cpp: the sans-IO SMTP client engine (see smtp_client.hpp for the contract).
//
// Shape: every command we send pushes an expectation (which command, its deadline) on a FIFO;
// every complete reply pops one. With PIPELINING the whole envelope ([RSET] MAIL, RCPT..., DATA)
// goes out as one group; without it, one command at a time. With PIPELINING and CHUNKING (RFC
// 3030) there is no DATA: the content follows the RCPTs at once as BDAT chunks (the last one
// with LAST), each awaiting its own reply, because a server that refused the envelope reads and
// discards a chunk (503/554) instead of taking it for commands. After an error reply to a chunk no
// further chunk is sent (RFC 3030 section 2), nor once every recipient was refused; RSET before the
// next transaction clears the far end's state. A chunk is one pull or more of encoded content,
// staged until the next pull shows whether it is the last. The deadline of the final dot's (or
// the LAST chunk's) reply starts when its last byte has gone out (a byte count, sent_total,
// against the mark of each expectation). Message content is pulled from the
// ContentSource only when the output buffer is at most half full, and each pull asks for no more
// than a third of the free room, so the buffer never exceeds Options::max_output whatever the
// content (the body encoder grows its input by at most 3x + 4).
//
// All of the session's state lives in SmtpClient::Impl (the facade only forwards), and a complete
// reply goes to the one step that awaits it: onGreeting, onEhlo, onHelo, onRset, onMail, onRcpt,
// onData, onDot (QUIT's reply just closes).
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
#include "shared/smtp_reply.hpp"
#include "tunneld/smtp/smtp_body.hpp"

namespace dynmx::tunneld {

SmtpJob smtpJobFor(Job& job) {
  SmtpJob j;
  j.env = &job.msg.env;
  j.rcpt_indexes = job.rcpt_indexes;
  j.content = job.content.get();
  j.size_hint = job.msg.content_size;
  return j;
}

namespace {

constexpr size_t kMaxInputLine = 16 * 1024;  // longer "lines" from the far end end the session
constexpr size_t kMaxReplyLines = 1000;
constexpr size_t kMinOutput = 1024;
constexpr size_t kReserve = 16;    // room kept for the pending CR, the last CRLF and ".\r\n"
constexpr size_t kChunkLine = 32;  // room kept for "BDAT <size> LAST\r\n"

enum class Cmd { Greeting, Ehlo, Helo, Rset, Mail, Rcpt, Data, Dot, Bdat, BdatLast, Quit };

// Replies to these come only after content bytes that may not have gone out yet.
bool awaitsContent(Cmd c) {
  return c == Cmd::Dot || c == Cmd::Bdat || c == Cmd::BdatLast;
}

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
    case Cmd::Bdat:
      return "sending BDAT chunk";
    case Cmd::BdatLast:
      return "sending the last BDAT chunk -- message may be sent more than once";
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
  Options opts;
  // The session as the caller sees it (state(), failure(), greeting()).
  State state = State::Greeting;
  std::string failure;
  std::string greeting;

  // One transaction. With Options::overlap two may be open: one waiting for its final dot's
  // reply, the next one already sent behind it.
  enum class RcptState { Waiting, Accepted, Final };
  struct Tx {
    SmtpJob job;
    TransactionResult result;
    std::vector<RcptState> rstate;
    size_t accepted = 0;
    bool mail_failed = false;
    size_t next_rcpt = 0;     // lock-step: the next RCPT to send
    bool body_done = false;   // the terminator (or the LAST chunk) is in the output, or none comes
    bool dot_sent = false;    // ... and has gone out
    bool done = false;        // the result is complete
    bool bdat = false;        // content goes as BDAT chunks
    size_t bdat_pending = 0;  // chunks whose reply has not come yet
    bool bdat_error = false;  // a chunk was refused: no further chunk
  };

  struct Expect {
    Cmd cmd;
    Tx* tx;                            // Rset/Mail/Rcpt/Data/Dot/Bdat/BdatLast
    size_t pos;                        // Rcpt: position in job.rcpt_indexes
    SteadyClock::time_point deadline;  // max(): its content has not gone out yet
    uint64_t end_mark = 0;             // content: sent_total once its last byte has gone out
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
  bool chunking = false;  // CHUNKING and PIPELINING offered: BDAT instead of DATA
  std::vector<std::string> notes;
  bool used = false;        // a transaction was started in this session: RSET before the next
  bool quit_after = false;  // quit() came while busy

  std::deque<std::unique_ptr<Tx>> txs;  // open transactions, oldest first
  std::deque<TransactionResult> ready;  // finished, in the order the transactions started

  // Content of the newest transaction.
  Tx* body_tx = nullptr;  // set between the 354 (BDAT: the RCPTs) and the terminator
  SmtpBodyEncoder enc;
  std::string staged;         // BDAT: encoded content not yet framed as a chunk
  uint64_t sent_total = 0;    // bytes ever consumed from the output
  uint64_t content_mark = 0;  // sent_total once the newest content has gone out
  SteadyClock::time_point last_progress;

  explicit Impl(Options o) : opts(std::move(o)) {
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
      case Cmd::BdatLast:
        return t.final_dot;
      case Cmd::Bdat:
        return t.block;
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

  bool offers(std::string_view keyword) const { return caps.count(upper(keyword)) > 0; }

  bool alive() const { return state != State::Failed && state != State::Closed; }

  // --- session end

  void fail(const std::string& why) {
    if (!alive()) return;
    failure = why;
    state = State::Failed;
    out.clear();
    out_pos = 0;
    content_mark = sent_total;
    expect.clear();
    body_tx = nullptr;
    staged.clear();
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
    state = State::Closed;
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
    if (!alive() || state == State::Quitting || state == State::Greeting) return;
    for (const auto& t : txs) {
      if (!t->done && !(opts.overlap && pipelining && t->body_done)) {
        state = State::Busy;
        return;
      }
    }
    goReady(now);
  }

  void goReady(SteadyClock::time_point now) {
    state = State::Ready;
    if (quit_after) sendQuit(now);
  }

  void sendQuit(SteadyClock::time_point now) {
    quit_after = false;
    send(Cmd::Quit, "QUIT", now);
    state = State::Quitting;
  }

  std::string mailCommand(const Tx& t) const {
    const Envelope& env = *t.job.env;
    std::string cmd = "MAIL FROM:<" + env.sender + ">";
    if (offers("SIZE") && t.job.size_hint > 0) {
      cmd += " SIZE=" + std::to_string(t.job.size_hint);
    }
    std::string body = upper(env.body);
    if (offers("8BITMIME") && (body == "8BITMIME" || body == "7BIT")) cmd += " BODY=" + body;
    if (offers("SMTPUTF8") && env.smtputf8) cmd += " SMTPUTF8";
    if (offers("DSN")) {
      if (safeParam(env.ret)) cmd += " RET=" + upper(env.ret);
      if (!env.envid.empty()) cmd += " ENVID=" + xtext(env.envid);
    }
    return cmd;
  }

  std::string rcptCommand(const Tx& t, size_t pos) const {
    const SpoolRecipient& r = t.job.env->rcpts[t.job.rcpt_indexes[pos]];
    std::string cmd = "RCPT TO:<" + r.address + ">";
    if (offers("DSN")) {
      if (safeParam(r.notify)) cmd += " NOTIFY=" + upper(r.notify);
      if (!r.orcpt.empty()) cmd += " ORCPT=" + orcptParam(r.orcpt);
    }
    return cmd;
  }

  void start(SmtpJob j, SteadyClock::time_point now) {
    if (state != State::Ready || j.env == nullptr || j.content == nullptr) {
      logf(LogLevel::Critical, "SmtpClient::start called in the wrong state or without a job");
      std::abort();
    }
    txs.push_back(std::make_unique<Tx>());
    Tx& t = *txs.back();
    t.job = std::move(j);
    state = State::Busy;
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
      if (chunking) {
        t.bdat = true;
        body_tx = &t;
        enc = SmtpBodyEncoder(false);
        staged.clear();
        last_progress = now;
      } else {
        send(Cmd::Data, "DATA", now, &t);
      }
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

  // A complete reply: its code, class (2..5) and one-line form for results and logs.
  struct Reply {
    int code;
    int cls;
    std::string flat;
  };

  // Takes the expectation a reply answers and hands it to the step that awaits it.
  void handleReply(int code, SteadyClock::time_point now) {
    Reply r{code, code / 100, flatten(code, reply_lines)};
    if (expect.empty()) {
      fail("unexpected reply from the far end: " + r.flat);
      return;
    }
    Expect e = expect.front();
    if (awaitsContent(e.cmd) && e.end_mark > sent_total) {
      // A reply to a final dot that has not gone out yet: the far end is out of step.
      fail("unexpected reply from the far end before the end of data: " + r.flat);
      return;
    }
    expect.pop_front();
    switch (e.cmd) {
      case Cmd::Greeting:
        return onGreeting(r, now);
      case Cmd::Ehlo:
        return onEhlo(r, now);
      case Cmd::Helo:
        return onHelo(r, now);
      case Cmd::Quit:
        return close();
      case Cmd::Rset:
        return onRset(*e.tx, r, now);
      case Cmd::Mail:
        return onMail(*e.tx, r, now);
      case Cmd::Rcpt:
        return onRcpt(*e.tx, e.pos, r, now);
      case Cmd::Data:
        return onData(*e.tx, r, now);
      case Cmd::Dot:
        return onDot(*e.tx, r, now);
      case Cmd::Bdat:
      case Cmd::BdatLast:
        return onBdat(*e.tx, e.cmd == Cmd::BdatLast, r, now);
    }
  }

  void onGreeting(const Reply& r, SteadyClock::time_point now) {
    greeted = true;
    if (r.code != 220) {
      fail("far end refused the session: " + r.flat);
      return;
    }
    greeting = r.flat;
    send(Cmd::Ehlo, "EHLO " + opts.helo_name, now);
  }

  // 2xx: the capabilities (one keyword per line after the first); 5xx: HELO instead.
  void onEhlo(const Reply& r, SteadyClock::time_point now) {
    if (r.cls == 2) {
      caps.clear();
      for (size_t i = 1; i < reply_lines.size(); ++i) {
        std::string_view l = reply_lines[i];
        size_t sp = l.find(' ');
        std::string kw = upper(l.substr(0, sp));
        std::string params = sp == std::string_view::npos ? "" : std::string(l.substr(sp + 1));
        if (!kw.empty()) caps[kw] = params;
      }
      pipelining = caps.count("PIPELINING") > 0;
      chunking = pipelining && caps.count("CHUNKING") > 0;
      goReady(now);
    } else if (r.cls == 5) {
      notes.push_back("EHLO rejected (" + r.flat + "), trying HELO");
      send(Cmd::Helo, "HELO " + opts.helo_name, now);
    } else {
      fail("far end rejected EHLO: " + r.flat);
    }
  }

  void onHelo(const Reply& r, SteadyClock::time_point now) {
    if (r.cls != 2) {
      fail("far end rejected HELO: " + r.flat);
      return;
    }
    caps.clear();
    pipelining = false;
    chunking = false;
    goReady(now);
  }

  void onRset(Tx& t, const Reply& r, SteadyClock::time_point now) {
    if (r.cls != 2) {
      fail("far end rejected RSET: " + r.flat);
      return;
    }
    if (!pipelining) send(Cmd::Mail, mailCommand(t), now, &t);
  }

  void onMail(Tx& t, const Reply& r, SteadyClock::time_point now) {
    if (r.cls == 2) {
      if (!pipelining) sendNextRcptOrData(t, now);
    } else if (r.cls == 4 || r.cls == 5) {
      t.mail_failed = true;
      applyToOpen(t, r.code, r.flat);
      if (!pipelining) {
        endTransaction(t, now);  // t is gone
      } else if (t.bdat) {
        stopChunks(t, now);
      }
    } else {
      fail("unexpected reply to MAIL FROM: " + r.flat);
    }
  }

  // The reply to the RCPT of t.job.rcpt_indexes[pos].
  void onRcpt(Tx& t, size_t pos, const Reply& r, SteadyClock::time_point now) {
    if (r.cls != 2 && r.cls != 4 && r.cls != 5) {
      fail("unexpected reply to RCPT TO: " + r.flat);
      return;
    }
    if (!t.mail_failed && t.rstate[pos] == RcptState::Waiting) {
      if (r.cls == 2) {
        t.rstate[pos] = RcptState::Accepted;
        t.result.rcpts[pos].reply = r.flat;
        ++t.accepted;
      } else {
        setRcpt(t, pos, r.cls == 5 ? Outcome::Failed : Outcome::Deferred, r.flat);
      }
    }
    if (!pipelining) {
      sendNextRcptOrData(t, now);  // may end t
    } else if (t.bdat && t.accepted == 0 && !awaited(t, Cmd::Rcpt)) {
      stopChunks(t, now);
    }
  }

  bool awaited(const Tx& t, Cmd c) const {
    return std::any_of(expect.begin(), expect.end(),
                       [&](const Expect& e) { return e.tx == &t && e.cmd == c; });
  }

  // BDAT: no further chunk of t (the envelope or a chunk was refused); the chunks already in the
  // output still go and get their replies. The transaction ends with the last awaited reply.
  // May end t (and free it).
  void stopChunks(Tx& t, SteadyClock::time_point now) {
    if (body_tx == &t) {
      body_tx = nullptr;
      staged.clear();
      t.body_done = true;
      updateState(now);
    }
    endBdatIfComplete(t, now);
  }

  void endBdatIfComplete(Tx& t, SteadyClock::time_point now) {
    if (t.done || !t.body_done || t.bdat_pending > 0) return;
    bool waiting =
        std::any_of(expect.begin(), expect.end(), [&](const Expect& e) { return e.tx == &t; });
    if (waiting) return;
    endTransaction(t, now);
  }

  // The reply to a BDAT chunk of t. After a refused envelope the far end discards the chunk and
  // must say so (503/554); a refused chunk fails the open recipients and stops the chunks.
  void onBdat(Tx& t, bool last, const Reply& r, SteadyClock::time_point now) {
    --t.bdat_pending;
    bool refused = t.mail_failed || t.accepted == 0;
    if (r.cls == 2) {
      if (refused) {
        fail("far end accepted BDAT without a valid recipient: " + r.flat);
        return;
      }
      if (last) {
        for (size_t i = 0; i < t.rstate.size(); ++i) {
          if (t.rstate[i] == RcptState::Accepted) setRcpt(t, i, Outcome::Delivered, r.flat);
        }
      }
    } else if (r.cls == 4 || r.cls == 5) {
      if (!refused && !t.bdat_error) {
        t.bdat_error = true;
        applyToOpen(t, r.code, r.flat);
      }
      stopChunks(t, now);  // may end t
      return;
    } else {
      fail("unexpected reply to BDAT: " + r.flat);
      return;
    }
    endBdatIfComplete(t, now);
  }

  void onData(Tx& t, const Reply& r, SteadyClock::time_point now) {
    if (t.mail_failed || t.accepted == 0) {
      // Pipelined DATA after a refused MAIL or with no accepted recipient: the far end must
      // refuse it (503/554). Anything else would make it wait for content nobody asked for.
      if (r.cls == 4 || r.cls == 5) {
        endTransaction(t, now);
      } else {
        fail("far end accepted DATA without a valid recipient: " + r.flat);
      }
      return;
    }
    if (r.code == 354) {
      body_tx = &t;
      enc = SmtpBodyEncoder{};
      last_progress = now;
      return;
    }
    if (r.cls == 4 || r.cls == 5) {
      applyToOpen(t, r.code, r.flat);
      endTransaction(t, now);
    } else {
      fail("unexpected reply to DATA: " + r.flat);
    }
  }

  void onDot(Tx& t, const Reply& r, SteadyClock::time_point now) {
    if (r.cls == 2) {
      for (size_t i = 0; i < t.rstate.size(); ++i) {
        if (t.rstate[i] == RcptState::Accepted) setRcpt(t, i, Outcome::Delivered, r.flat);
      }
      endTransaction(t, now);
    } else if (r.cls == 4 || r.cls == 5) {
      applyToOpen(t, r.code, r.flat);
      endTransaction(t, now);
    } else {
      fail("unexpected reply to end of data: " + r.flat);
    }
  }

  // What we were doing, for a message about a lost or silent far end.
  std::string where() const {
    if (body_tx != nullptr || content_mark > sent_total) return "sending message body";
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
        // Its reply is awaited from now on; the deadline starts once the dot has gone out.
        expectContent(Cmd::Dot, t);
        updateState(now);
        return;
      }
      enc.feed(*chunk, out);
    }
  }

  // The reply to content just put in the output, awaited once its last byte has gone out.
  void expectContent(Cmd c, Tx& t) {
    content_mark = sent_total + (out.size() - out_pos);
    expect.push_back(Expect{c, &t, 0, SteadyClock::time_point::max(), content_mark});
  }

  // BDAT: content is encoded into `staged` and framed as a chunk once it is big enough, or when
  // the source is done (the LAST chunk). The output bound holds as for DATA: staged content counts
  // against it, and a chunk's command line is small.
  void fillChunks(SteadyClock::time_point now) {
    size_t chunk_size = opts.max_output / 4;
    while (body_tx != nullptr) {
      Tx& t = *body_tx;
      if (out_pos > 0) {
        out.erase(0, out_pos);
        out_pos = 0;
      }
      size_t used_room = out.size() + staged.size();
      if (used_room > opts.max_output / 2) return;
      size_t want = (opts.max_output - used_room - kReserve - kChunkLine) / 3;
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
        enc.finish(staged);
        sendChunk(t, true);
        body_tx = nullptr;
        t.body_done = true;
        updateState(now);
        return;
      }
      enc.feed(*chunk, staged);
      if (staged.size() >= chunk_size) sendChunk(t, false);
    }
  }

  void sendChunk(Tx& t, bool last) {
    out += "BDAT " + std::to_string(staged.size()) + (last ? " LAST\r\n" : "\r\n");
    out += staged;
    staged.clear();
    ++t.bdat_pending;
    expectContent(last ? Cmd::BdatLast : Cmd::Bdat, t);
  }

  // Content expectations whose bytes have now gone out: their deadlines start.
  void contentSent(SteadyClock::time_point now) {
    for (Expect& e : expect) {
      if (!awaitsContent(e.cmd) || e.deadline != SteadyClock::time_point::max()) continue;
      if (e.end_mark > sent_total) break;
      e.deadline = now + timeoutFor(e.cmd);
      if (e.cmd != Cmd::Bdat) e.tx->dot_sent = true;
    }
  }
  // --- the calls of the facade

  void onInput(std::string_view bytes, SteadyClock::time_point now) {
    if (!alive()) return;
    in.append(bytes);
    size_t start = 0;
    for (;;) {
      size_t nl = in.find('\n', start);
      if (nl == std::string::npos) break;
      std::string_view line(in.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      start = nl + 1;
      handleLine(line, now);
      if (!alive()) {
        in.clear();
        return;
      }
    }
    in.erase(0, start);
    if (in.size() > kMaxInputLine) {
      fail("reply line too long from the far end");
      in.clear();
    }
  }

  void onEof(SteadyClock::time_point /*now*/) {
    if (state == State::Quitting && !pendingTransactions()) {
      close();
      return;
    }
    if (!alive()) return;
    fail("lost connection with the far end while " + where());
  }

  std::string_view output() {
    if (body_tx != nullptr && alive()) {
      if (body_tx->bdat) {
        fillChunks(last_progress);
      } else {
        fillBody(last_progress);
      }
    }
    return std::string_view(out).substr(out_pos);
  }

  void consumed(size_t n, SteadyClock::time_point now) {
    if (n > out.size() - out_pos) {
      logf(LogLevel::Critical, "SmtpClient::consumed(%zu) beyond the %zu bytes handed out", n,
           out.size() - out_pos);
      std::abort();
    }
    out_pos += n;
    sent_total += n;
    if (n > 0) last_progress = now;
    if (n > 0) contentSent(now);
    if (out_pos == out.size()) {
      out.clear();
      out_pos = 0;
    }
  }

  bool wantsToWrite() const {
    if (out_pos < out.size()) return true;
    return alive() && body_tx != nullptr;
  }

  std::optional<SteadyClock::time_point> deadline() const {
    if (!alive()) return std::nullopt;
    // While content (or its final dot) is still going out, the channel must keep taking it.
    if (body_tx != nullptr || content_mark > sent_total) {
      return last_progress + opts.timeouts.block;
    }
    if (!expect.empty()) return expect.front().deadline;
    return std::nullopt;
  }

  void onTimeout(SteadyClock::time_point now) {
    auto d = deadline();
    if (!d || now < *d) return;
    if (state == State::Quitting && !pendingTransactions()) {
      close();
      return;
    }
    fail("conversation with the far end timed out while " + where());
  }

  std::optional<TransactionResult> takeResult() {
    if (ready.empty()) return std::nullopt;
    std::optional<TransactionResult> r = std::move(ready.front());
    ready.pop_front();
    return r;
  }

  void quit(SteadyClock::time_point now) {
    switch (state) {
      case State::Ready:
        sendQuit(now);
        break;
      case State::Busy:
        quit_after = true;
        break;
      case State::Greeting:
        if (greeted) {
          quit_after = true;
        } else {
          close();  // nothing was said yet, and nothing may be said before the greeting
        }
        break;
      default:
        break;
    }
  }

  std::vector<std::string> takeNotes() {
    std::vector<std::string> n;
    n.swap(notes);
    return n;
  }
};

SmtpClient::SmtpClient(Options opts, SteadyClock::time_point now)
    : impl_(std::make_unique<Impl>(std::move(opts))) {
  impl_->expect.push_back(
      Impl::Expect{Cmd::Greeting, nullptr, 0, now + impl_->opts.timeouts.greeting});
}

SmtpClient::~SmtpClient() = default;
SmtpClient::SmtpClient(SmtpClient&& other) noexcept = default;
SmtpClient& SmtpClient::operator=(SmtpClient&& other) noexcept = default;

SmtpClient::State SmtpClient::state() const {
  return impl_->state;
}
const std::string& SmtpClient::failure() const {
  return impl_->failure;
}
const std::string& SmtpClient::greeting() const {
  return impl_->greeting;
}
bool SmtpClient::offers(std::string_view keyword) const {
  return impl_->offers(keyword);
}

void SmtpClient::onInput(std::string_view bytes, SteadyClock::time_point now) {
  impl_->onInput(bytes, now);
}

void SmtpClient::onEof(SteadyClock::time_point now) {
  impl_->onEof(now);
}

std::string_view SmtpClient::output() {
  return impl_->output();
}

void SmtpClient::consumed(size_t n, SteadyClock::time_point now) {
  impl_->consumed(n, now);
}

bool SmtpClient::wantsToWrite() const {
  return impl_->wantsToWrite();
}

std::optional<SteadyClock::time_point> SmtpClient::deadline() const {
  return impl_->deadline();
}

void SmtpClient::onTimeout(SteadyClock::time_point now) {
  impl_->onTimeout(now);
}

void SmtpClient::start(SmtpJob job, SteadyClock::time_point now) {
  impl_->start(std::move(job), now);
}

std::optional<TransactionResult> SmtpClient::takeResult() {
  return impl_->takeResult();
}

void SmtpClient::quit(SteadyClock::time_point now) {
  impl_->quit(now);
}

std::vector<std::string> SmtpClient::takeNotes() {
  return impl_->takeNotes();
}

}  // namespace dynmx::tunneld
