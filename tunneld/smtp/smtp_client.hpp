// smtp_client.hpp: the sending side of one SMTP session, without I/O ("sans-IO").
//
// The engine is fed the bytes that arrive from the far end (the client's `sendmail -bs`, reached
// through an SSH exec channel) and hands out the bytes to send. It never blocks and never touches a
// socket, so the SSH event loop can drive hundreds of them and tests can drive one from a table.
//
// Contract:
//  - Waits for the 220 greeting; lines before it that are not SMTP replies (a login shell's noise)
//    are reported through notes() and skipped. EHLO, HELO fallback on 5xx.
//  - PIPELINING only when offered; SIZE, 8BITMIME, SMTPUTF8 and the DSN parameters (ENVID, RET,
//    NOTIFY, ORCPT) only when offered. Many transactions per session, RSET between them.
//  - CHUNKING (RFC 3030) when offered with PIPELINING: no DATA; MAIL, RCPT and the content as
//    BDAT chunks (the last with LAST) go out without waiting, since a server that refused the
//    envelope reads and discards a chunk (503/554). No dot-stuffing; otherwise the same encoding,
//    so the far end stores the same bytes as with DATA. A refused chunk (or every recipient
//    refused) stops further chunks; the LAST chunk's reply counts as the final dot's. With DATA,
//    no content is ever sent before the 354.
//  - The body is pulled from a ContentSource in chunks (never whole in memory), dot-stuffed, with
//    CRLF only (bare CR or LF become CRLF) and lines over 998 octets folded; output is bounded.
//  - Per-recipient outcome from each RCPT reply; a 4xx/5xx to MAIL, DATA, a BDAT chunk or the
//    final dot applies to every recipient of the transaction not refused already. Losing the session after the final dot was
//    sent and before its reply sets possible_duplicate (the caller logs it and retries).
//  - Any reply that does not parse, or comes when none is expected, ends the session (Failed).
//  - deadline() tells when the awaited reply is overdue (RFC 5321 4.5.3.2 values by default); the
//    caller calls onTimeout() then.
// Details chosen here (smtp_client.cpp, smtp_body.hpp): RSET goes before every transaction but
// the first of a session (in the same group when pipelining); a message over the far end's SIZE
// limit, and an address with CR/LF/NUL in the spool, fail locally without a round trip; ENVID and
// the address part of ORCPT go out as valid xtext (decoded, then encoded: right whether the spool
// holds them as received, in xtext, or decoded); long lines are folded as Postfix does (CRLF +
// SPACE after 998 octets). After Failed the output is empty: the caller closes the channel.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/clock.hpp"
#include "shared/result.hpp"
#include "shared/spool.hpp"
#include "tunneld/delivery/delivery.hpp"

namespace dynmx::tunneld {

struct SmtpTimeouts {
  std::chrono::seconds greeting{300}, ehlo{300}, mail{300}, rcpt{300}, data{120}, block{180},
      final_dot{600}, rset{120}, quit{60};
};

// One message to send: the envelope and which of its recipients to try now.
struct SmtpJob {
  const Envelope* env = nullptr;     // owned by the caller until the result is taken
  std::vector<size_t> rcpt_indexes;  // indexes into env->rcpts still pending
  ContentSource* content = nullptr;  // owned by the caller
  uint64_t size_hint = 0;            // for SIZE=
};

// The engine's view of a queue Job (which must stay in place while the view is used).
SmtpJob smtpJobFor(Job& job);

class SmtpClient {
 public:
  enum class State {
    Greeting,  // waiting for 220 (and the EHLO dance)
    Ready,     // idle, a transaction may start
    Busy,      // a transaction (or RSET) is in progress
    Quitting,  // QUIT sent
    Closed,    // ended cleanly
    Failed,    // ended by an error: see failure()
  };

  struct Options {
    std::string helo_name = "localhost";
    SmtpTimeouts timeouts;
    size_t max_output = 256 * 1024;  // bytes of body buffered ahead of the channel
    // Added: with PIPELINING, become Ready as soon as a message's final dot (or LAST chunk) is in
    // the output, so that the next transaction's commands follow it in the same group (RFC 2920:
    // the content may start a group) and a message costs one round trip instead of two. Then
    // with DATA up to two transactions are open at once (the next waits for its 354), with BDAT
    // as many as the caller starts; takeResult() hands their results out in start() order, so
    // the caller keeps its jobs in a FIFO. Off by default (one job at a time).
    bool overlap = false;
  };

  explicit SmtpClient(Options opts, SteadyClock::time_point now);
  ~SmtpClient();
  SmtpClient(SmtpClient&& other) noexcept;
  SmtpClient& operator=(SmtpClient&& other) noexcept;
  SmtpClient(const SmtpClient&) = delete;
  SmtpClient& operator=(const SmtpClient&) = delete;

  State state() const;
  const std::string& failure() const;
  // The server's greeting and EHLO capabilities, once known (for status and logs).
  const std::string& greeting() const;
  bool offers(std::string_view keyword) const;

  // Bytes that arrived from the far end.
  void onInput(std::string_view bytes, SteadyClock::time_point now);
  // The far end closed the stream (EOF) or the channel broke.
  void onEof(SteadyClock::time_point now);
  // Bytes waiting to be sent; after sending n of them call consumed(n).
  std::string_view output();
  void consumed(size_t n, SteadyClock::time_point now);
  // True when the engine could produce more output if asked (it pulls body chunks lazily).
  bool wantsToWrite() const;
  // When the awaited reply is overdue, or nullopt when nothing is awaited.
  std::optional<SteadyClock::time_point> deadline() const;
  void onTimeout(SteadyClock::time_point now);

  // Starts a transaction; only in Ready. The result comes back from takeResult() (one per
  // start(), in start() order).
  void start(SmtpJob job, SteadyClock::time_point now);
  std::optional<TransactionResult> takeResult();
  // Sends QUIT (in Ready) and ends the session. While Busy (or still in the EHLO dance), QUIT
  // follows the end of the current transaction; before the greeting the session just ends (Closed).
  void quit(SteadyClock::time_point now);
  // Lines from the far end that were not replies, and stderr-worthy remarks, for the log.
  std::vector<std::string> takeNotes();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;  // all of the session's state
};

}  // namespace dynmx::tunneld
