// session.hpp: one message passing through dynmx-milter, independent of libmilter.
//
// Contract: the libmilter glue (filter.cpp) feeds a MessageSession the envelope, headers and body
// as they arrive and turns its verdicts into SMFIS_* codes. Recipients that route to a client are
// "captured": their message copy is streamed into one temporary spool file per client (never held
// whole in memory), with one trace header in front. endOfMessage() commits every file and only
// then names the recipients to delete. Nothing is deleted and nothing is discarded unless every
// spool file of the message is committed.
//
// Failure behaviour: a failure while streaming (a full disk, an unwritable spool) is remembered,
// the temporary files are removed at once and the rest of the message is ignored; endOfMessage()
// then answers Tempfail (or Accept with on_error = "accept"). If a later commit fails after an
// earlier one succeeded, the committed files are withdrawn from incoming/ when still there, and any
// that cannot be withdrawn are logged as possible duplicates (the MTA retries the whole message).
// Over spool.max_message_size the copy stops and the message is rejected with 552 5.3.4.
// With a StorageGuard, a spool short of space (spool.min_free) or a client over its queue limits
// tempfails with 452 (storage_guard.hpp); with a RelayGuard, a recipient relayed from a leased
// address is checked against the client's relay_senders (relay_guard.hpp).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "milter/recipient_check.hpp"
#include "shared/config.hpp"
#include "shared/crlf.hpp"
#include "shared/routing.hpp"
#include "shared/spool.hpp"

namespace dynmx::milter {

class StorageGuard;
class RelayGuard;

// What a reload may change: the configuration and the routing built from it. Immutable once
// built; each message holds the snapshot it started with, so a reload never changes a message
// half-way through.
struct Snapshot {
  Config config;
  Router router;
  RecipientCheck recipients;  // the clients' recipient lists (re-read on change)
  explicit Snapshot(Config c) : config(std::move(c)), router(config.clients), recipients(config) {}
};

// ESMTP parameters of MAIL FROM that the spool keeps (RFC 1870, 6152, 3461, 6531).
struct MailParams {
  std::optional<uint64_t> size;  // SIZE=, when given and numeric
  std::string body;              // BODY= value upper-cased ("8BITMIME", "7BIT", "BINARYMIME")
  std::string ret;               // RET= upper-cased
  std::string envid;             // ENVID= as given (xtext)
  bool smtputf8 = false;
};
// ESMTP parameters of RCPT TO (RFC 3461).
struct RcptParams {
  std::string notify;  // upper-cased
  std::string orcpt;   // as given
};

// Parses the ESMTP arguments after the address (argv[1..] of xxfi_envfrom / xxfi_envrcpt).
// Keywords are case-insensitive; unknown keywords are ignored (the MTA has accepted them).
MailParams parseMailParams(const std::vector<std::string_view>& args);
RcptParams parseRcptParams(const std::vector<std::string_view>& args);

// Where the connection came from.
struct Peer {
  std::string addr;      // client IP address; "" for local submissions (no address)
  std::string mta_host;  // the MTA's own name (macro j), for the trace header
};

enum class Verdict {
  Continue,  // go on
  Discard,   // every recipient captured and committed: drop the MTA's copy
  Accept,    // on_error = "accept": let the message pass untouched
  Tempfail,  // 451 4.3.0, or 452 from the storage limits (reply set)
  Reject,    // 552 5.3.4 (reply set)
};

struct Reply {
  std::string code;   // "451", "552"
  std::string xcode;  // "4.3.0", "5.3.4"
  std::string text;
};

struct RcptOutcome {
  // Continue, Reject (early SIZE= check, unknown recipient) or Tempfail (storage; recipient list
  // unreadable)
  Verdict verdict = Verdict::Continue;
  Reply reply;
};

struct EomOutcome {
  Verdict verdict = Verdict::Continue;
  Reply reply;                       // for Tempfail / Reject
  std::vector<std::string> delrcpt;  // exact envrcpt strings to remove (with Continue or Accept)
};

class MessageSession {
 public:
  // `now` is the arrival time (unix seconds) recorded in the envelope.
  MessageSession(Spool& spool, std::shared_ptr<const Snapshot> snap, Peer peer, int64_t now);
  ~MessageSession();
  MessageSession(const MessageSession&) = delete;
  MessageSession& operator=(const MessageSession&) = delete;

  // The MTA's queue id as far as known (macro i); used in logs and the trace header.
  void setQueueId(std::string_view qid);
  const std::string& queueId() const { return qid_; }

  // argv[0] of xxfi_envfrom and the parameters after it.
  void mailFrom(std::string_view sender, const std::vector<std::string_view>& args);
  // argv[0] of xxfi_envrcpt exactly as given (kept for smfi_delrcpt) and its parameters.
  RcptOutcome rcpt(std::string_view rcpt, const std::vector<std::string_view>& args);

  // The storage limits (storage_guard.hpp); without a guard nothing is checked. The check at MAIL
  // is made only when SIZE= was declared: 452 4.3.1 when the message would not fit above
  // spool.min_free. At RCPT (a client's recipient) and end of message the limits answer
  // Tempfail with 452 4.3.1 or 452 4.2.2.
  void setStorageGuard(StorageGuard* guard) { guard_ = guard; }
  std::optional<Reply> storageAtMail();
  // relay_senders (relay_guard.hpp) for recipients of no client; without a guard nothing is
  // checked. `mailer` is the MTA's {rcpt_mailer} for the next rcpt() ("" when not sent).
  void setRelayGuard(RelayGuard* guard) { relay_ = guard; }
  void setRcptMailer(std::string_view mailer) { rcpt_mailer_ = std::string(mailer); }

  // True when at least one recipient was captured (otherwise the content is not needed).
  bool capturing() const { return !parts_.empty(); }
  size_t capturedCount() const;

  // Content. Each is a no-op when nothing is captured or after a failure. `value` is the header
  // value as libmilter gives it (folded lines joined by "\n\t"); `leadspc` says whether it still
  // carries the space after the colon (SMFIP_HDR_LEADSPC); without it one space is written.
  void header(std::string_view name, std::string_view value, bool leadspc);
  void endOfHeaders();
  void body(std::string_view chunk);

  // Commits and decides. Call once; the session is finished afterwards.
  EomOutcome endOfMessage();
  // Removes every temporary file (xxfi_abort; also done by the destructor).
  void abort();

 private:
  struct CapturedRcpt {
    std::string raw;   // exact argv[0]
    std::string bare;  // without angle brackets
    RcptParams params;
  };
  struct Part {  // one client's copy
    size_t client = 0;
    std::vector<CapturedRcpt> rcpts;
    std::unique_ptr<MessageWriter> writer;
  };

  bool ensureStarted();  // creates the writers and writes the trace headers
  void write(Part& part, std::string_view bytes);
  void writeAll(std::string_view bytes);
  void fail(const std::string& why);
  void dropWriters();
  std::string traceHeader(const Part& part) const;
  EomOutcome errorOutcome(const std::string& why, std::vector<std::string> committed_delrcpt);
  Envelope envelopeFor(const Part& p) const;
  // A commit failed after the parts in `committed` succeeded.
  EomOutcome commitFailed(const std::string& why, const std::vector<size_t>& committed);
  void withdraw(const std::string& id);  // a committed spool file, from incoming/
  EomOutcome capturedOutcome();          // every part committed
  const std::string& logId() const;

  Spool& spool_;
  StorageGuard* guard_ = nullptr;
  RelayGuard* relay_ = nullptr;
  std::string rcpt_mailer_;
  std::optional<std::string> relay_holder_;  // the lease holder of the peer, once asked
  std::shared_ptr<const Snapshot> snap_;
  Peer peer_;
  int64_t arrival_ = 0;
  std::string qid_;
  std::string sender_;
  MailParams mail_;
  size_t total_rcpts_ = 0;
  std::vector<Part> parts_;
  CrlfNormalizer crlf_;  // one for all parts: they all get the same bytes after the trace header
  bool started_ = false;
  bool headers_done_ = false;
  uint64_t received_ = 0;  // message bytes received from the MTA (for max_message_size)
  bool oversize_ = false;
  std::optional<std::string> failed_;
};

}  // namespace dynmx::milter
