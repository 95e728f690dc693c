// session.cpp: one message through dynmx-milter (see session.hpp for the contract).
//
// The copy of the message in the spool is: one trace header written by us, then the headers and
// body exactly as the MTA passed them, line ends normalised to CRLF. All clients' copies are
// complete before the first commit, so that a failure while writing never leaves a committed file
// behind; only a commit that fails after another succeeded can, and that file is withdrawn again
// when dynmx-tunneld has not taken it yet (else it is logged as a possible duplicate).
#include "milter/session.hpp"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>

#include "shared/date.hpp"
#include "milter/relay_guard.hpp"
#include "milter/storage_guard.hpp"
#include "shared/host_name.hpp"
#include "shared/log.hpp"

namespace dynmx::milter {

namespace {

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// Splits "KEY=VALUE" (or "KEY") and compares the key case-insensitively.
bool keyIs(std::string_view arg, std::string_view key, std::string_view* value) {
  size_t eq = arg.find('=');
  std::string_view k = arg.substr(0, eq);
  if (k.size() != key.size() || strncasecmp(k.data(), key.data(), k.size()) != 0) return false;
  *value = eq == std::string_view::npos ? std::string_view() : arg.substr(eq + 1);
  return true;
}

const Reply kTempfailReply{"451", "4.3.0",
                           "dynmx-milter cannot spool the message now, try again later"};

}  // namespace

MailParams parseMailParams(const std::vector<std::string_view>& args) {
  MailParams p;
  for (std::string_view a : args) {
    std::string_view v;
    if (keyIs(a, "SIZE", &v)) {
      uint64_t n = 0;
      auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec == std::errc() && ptr == v.data() + v.size() && !v.empty()) p.size = n;
    } else if (keyIs(a, "BODY", &v)) {
      p.body = upper(v);
    } else if (keyIs(a, "RET", &v)) {
      p.ret = upper(v);
    } else if (keyIs(a, "ENVID", &v)) {
      p.envid = std::string(v);
    } else if (keyIs(a, "SMTPUTF8", &v)) {
      p.smtputf8 = true;
    }
  }
  return p;
}

RcptParams parseRcptParams(const std::vector<std::string_view>& args) {
  RcptParams p;
  for (std::string_view a : args) {
    std::string_view v;
    if (keyIs(a, "NOTIFY", &v)) {
      p.notify = upper(v);
    } else if (keyIs(a, "ORCPT", &v)) {
      p.orcpt = std::string(v);
    }
  }
  return p;
}

MessageSession::MessageSession(Spool& spool, std::shared_ptr<const Snapshot> snap, Peer peer,
                               int64_t now)
    : spool_(spool), snap_(std::move(snap)), peer_(std::move(peer)), arrival_(now) {}

MessageSession::~MessageSession() {
  abort();
}

void MessageSession::setQueueId(std::string_view qid) {
  if (!qid.empty()) qid_ = std::string(qid);
}

const std::string& MessageSession::logId() const {
  static const std::string kNoQueue = "NOQUEUE";
  return qid_.empty() ? kNoQueue : qid_;
}

size_t MessageSession::capturedCount() const {
  size_t n = 0;
  for (const Part& p : parts_) n += p.rcpts.size();
  return n;
}

std::optional<Reply> MessageSession::storageAtMail() {
  if (!guard_ || !mail_.size) return std::nullopt;
  std::optional<StorageRefusal> r = guard_->atMail(snap_->config, *mail_.size);
  if (!r) return std::nullopt;
  logf(LogLevel::Warning, "%s: milter: tempfail: MAIL from=<%s>: %s %s %s", logId().c_str(),
       sender_.c_str(), r->code.c_str(), r->xcode.c_str(), r->why.c_str());
  return Reply{r->code, r->xcode, r->text};
}

void MessageSession::mailFrom(std::string_view sender, const std::vector<std::string_view>& args) {
  sender_ = bareAddress(sender);
  mail_ = parseMailParams(args);
}

RcptOutcome MessageSession::rcpt(std::string_view rcpt, const std::vector<std::string_view>& args) {
  for (const Part& p : parts_) {
    for (const CapturedRcpt& r : p.rcpts) {
      if (r.raw == rcpt) return {};  // the same recipient twice: the MTA keeps one
    }
  }
  std::optional<size_t> client = snap_->router.route(rcpt);
  if (!client) {
    if (relay_) {
      std::optional<RcptOutcome> r = relay_->atRcpt(*snap_, peer_, sender_, bareAddress(rcpt),
                                                    rcpt_mailer_, relay_holder_, logId());
      if (r) return *r;
    }
    ++total_rcpts_;
    return {};
  }
  if (auto refused = snap_->recipients.check(*client, rcpt, logId()))
    return {refused->permanent ? Verdict::Reject : Verdict::Tempfail,
            {refused->code, refused->xcode, refused->text}};
  const std::string& name = snap_->router.clientName(*client);
  uint64_t max = snap_->config.spool.max_message_size;
  if (mail_.size && *mail_.size > max) {
    // Early refusal (RFC 1870): only a declared SIZE= is trusted this early, so local submissions
    // without SIZE= are never rejected here.
    logf(LogLevel::Notice,
         "%s: milter: reject: RCPT to=<%s>, client=%s: 552 5.3.4 declared SIZE=%llu exceeds "
         "spool.max_message_size %llu",
         logId().c_str(), bareAddress(rcpt).c_str(), name.c_str(),
         static_cast<unsigned long long>(*mail_.size), static_cast<unsigned long long>(max));
    return {Verdict::Reject,
            {"552", "5.3.4", "Message size exceeds the limit for this recipient's domain"}};
  }
  if (guard_) {
    const ClientConfig* cc = snap_->config.findClient(name);
    std::optional<StorageRefusal> r =
        cc ? guard_->atRcpt(snap_->config, *cc, mail_.size.value_or(0)) : std::nullopt;
    if (r) {
      logf(LogLevel::Warning, "%s: milter: tempfail: RCPT to=<%s>, client=%s: %s %s %s",
           logId().c_str(), bareAddress(rcpt).c_str(), name.c_str(), r->code.c_str(),
           r->xcode.c_str(), r->why.c_str());
      return {Verdict::Tempfail, {r->code, r->xcode, r->text}};
    }
  }
  ++total_rcpts_;
  auto it = std::find_if(parts_.begin(), parts_.end(),
                         [&](const Part& p) { return p.client == *client; });
  if (it == parts_.end()) {
    parts_.emplace_back();
    it = std::prev(parts_.end());
    it->client = *client;
  }
  it->rcpts.push_back({std::string(rcpt), bareAddress(rcpt), parseRcptParams(args)});
  return {};
}

std::string MessageSession::traceHeader(const Part& part) const {
  std::string host = hostNameOr(peer_.mta_host);
  std::string h = "Received: by " + host + " (dynmx-milter";
  if (!qid_.empty()) h += ", MTA queue id " + qid_;
  h += ")\r\n\tid " + part.writer->id();
  if (part.rcpts.size() == 1) h += " for <" + part.rcpts.front().bare + ">";
  h += "; " + rfc5322Date(arrival_) + "\r\n";
  return h;
}

bool MessageSession::ensureStarted() {
  if (failed_ || oversize_ || parts_.empty()) return false;
  if (started_) return true;
  started_ = true;
  for (Part& p : parts_) {
    Result<std::unique_ptr<MessageWriter>> w = spool_.create();
    if (!w) {
      fail(w.error().message);
      return false;
    }
    p.writer = std::move(w.value());
    Status st = p.writer->write(traceHeader(p));
    if (!st) {
      fail(st.error().message);
      return false;
    }
  }
  return true;
}

void MessageSession::fail(const std::string& why) {
  if (!failed_) failed_ = why;
  dropWriters();
}

void MessageSession::dropWriters() {
  for (Part& p : parts_) {
    if (p.writer) {
      p.writer->discard();
      p.writer.reset();
    }
  }
}

void MessageSession::writeAll(std::string_view bytes) {
  if (bytes.empty() || failed_ || oversize_) return;
  received_ += bytes.size();
  if (received_ > snap_->config.spool.max_message_size) {
    oversize_ = true;
    dropWriters();  // no point keeping a copy that will be refused
    return;
  }
  for (Part& p : parts_) {
    Status st = p.writer->write(bytes);
    if (!st) {
      fail(st.error().message);
      return;
    }
  }
}

void MessageSession::header(std::string_view name, std::string_view value, bool leadspc) {
  if (!ensureStarted()) return;
  std::string out;
  crlf_.feed(name, out);
  crlf_.feed(leadspc ? ":" : ": ", out);
  crlf_.feed(value, out);  // "\n\t" folding from the MTA becomes "\r\n\t"
  crlf_.feed("\r\n", out);
  writeAll(out);
}

void MessageSession::endOfHeaders() {
  if (headers_done_) return;
  headers_done_ = true;
  if (!ensureStarted()) return;
  std::string out;
  crlf_.feed("\r\n", out);
  writeAll(out);
}

void MessageSession::body(std::string_view chunk) {
  if (!headers_done_) endOfHeaders();
  if (!ensureStarted()) return;
  std::string out;
  out.reserve(chunk.size() + chunk.size() / 32);
  crlf_.feed(chunk, out);
  writeAll(out);
}

EomOutcome MessageSession::errorOutcome(const std::string& why,
                                        std::vector<std::string> committed_delrcpt) {
  dropWriters();
  EomOutcome out;
  if (snap_->config.milter.on_error == OnError::Accept) {
    logf(LogLevel::Error,
         "%s: milter: ERROR: %s; on_error=accept: message passed on WITHOUT capture for %s, "
         "their mail goes out by the MTA's normal route",
         logId().c_str(), why.c_str(),
         committed_delrcpt.empty() ? "any client" : "the clients not yet committed");
    out.verdict = committed_delrcpt.empty() ? Verdict::Accept : Verdict::Continue;
    out.delrcpt = std::move(committed_delrcpt);
    return out;
  }
  logf(LogLevel::Error, "%s: milter: tempfail: %s", logId().c_str(), why.c_str());
  out.verdict = Verdict::Tempfail;
  out.reply = kTempfailReply;
  return out;
}

EomOutcome MessageSession::endOfMessage() {
  if (parts_.empty()) return {};
  if (oversize_) {
    dropWriters();
    logf(LogLevel::Notice,
         "%s: milter: reject: message larger than spool.max_message_size %llu: 552 5.3.4",
         logId().c_str(), static_cast<unsigned long long>(snap_->config.spool.max_message_size));
    return {Verdict::Reject,
            {"552", "5.3.4", "Message size exceeds the limit for this recipient's domain"},
            {}};
  }
  if (!headers_done_) endOfHeaders();
  if (ensureStarted()) {
    std::string out;
    crlf_.finish(out);
    writeAll(out);
  }
  if (oversize_) return endOfMessage();  // the final CRLF tipped it over
  if (failed_) return errorOutcome(*failed_, {});
  if (guard_) {
    if (std::optional<StorageRefusal> r = guard_->atEom(snap_->config)) {
      dropWriters();
      logf(LogLevel::Warning, "%s: milter: tempfail: end of message: %s %s %s", logId().c_str(),
           r->code.c_str(), r->xcode.c_str(), r->why.c_str());
      return {Verdict::Tempfail, {r->code, r->xcode, r->text}, {}};
    }
  }

  // Every copy is complete: commit them one after another.
  std::vector<size_t> committed;
  for (size_t i = 0; i < parts_.size(); ++i) {
    Part& p = parts_[i];
    Envelope env = envelopeFor(p);
    Status st = p.writer->commit(env);
    if (!st) {
      std::string why = "commit of spool file " + p.writer->id() + " for client " + env.client +
                        " failed: " + st.error().message;
      p.writer.reset();
      return commitFailed(why, committed);
    }
    committed.push_back(i);
    if (guard_) guard_->committed(p.writer->id(), env.client, p.writer->size());
  }
  return capturedOutcome();
}

Envelope MessageSession::envelopeFor(const Part& p) const {
  Envelope env;
  env.client = snap_->router.clientName(p.client);
  env.sender = sender_;
  env.envid = mail_.envid;
  env.ret = mail_.ret;
  env.body = mail_.body;
  env.smtputf8 = mail_.smtputf8;
  env.mta_queue_id = qid_;
  env.origin = peer_.addr.empty() ? "local" : peer_.addr;
  env.arrival = arrival_;
  for (const CapturedRcpt& r : p.rcpts) {
    SpoolRecipient sr;
    sr.address = r.bare;
    sr.notify = r.params.notify;
    sr.orcpt = r.params.orcpt;
    env.rcpts.push_back(std::move(sr));
  }
  return env;
}

EomOutcome MessageSession::commitFailed(const std::string& why,
                                        const std::vector<size_t>& committed) {
  std::vector<std::string> committed_delrcpt;
  std::vector<std::string> committed_ids;
  for (size_t c : committed) {
    committed_ids.push_back(parts_[c].writer->id());
    parts_[c].writer.reset();  // committed: the writer has nothing left to remove
    for (const CapturedRcpt& r : parts_[c].rcpts) committed_delrcpt.push_back(r.raw);
  }
  if (snap_->config.milter.on_error != OnError::Accept) {
    committed_delrcpt.clear();
    // The MTA will offer the whole message again: take back what is already committed.
    for (const std::string& id : committed_ids) withdraw(id);
  }
  return errorOutcome(why, std::move(committed_delrcpt));
}

void MessageSession::withdraw(const std::string& id) {
  Result<SpoolMessage> m = spool_.load(QueueState::Incoming, id);
  Status rm = m ? spool_.remove(*m) : Status(m.error());
  if (rm) {
    logf(LogLevel::Warning, "%s: milter: withdrew committed spool=%s after a later failure",
         logId().c_str(), id.c_str());
  } else {
    logf(LogLevel::Error,
         "%s: milter: possible duplicate: spool=%s is committed and could not be "
         "withdrawn (%s); the MTA will offer the message again",
         logId().c_str(), id.c_str(), rm.error().message.c_str());
  }
}

EomOutcome MessageSession::capturedOutcome() {
  EomOutcome out;
  size_t captured = 0;
  for (const Part& p : parts_) {
    const std::string& name = snap_->router.clientName(p.client);
    for (const CapturedRcpt& r : p.rcpts) {
      logf(LogLevel::Info, "%s: milter: captured to=<%s>, client=%s, spool=%s, size=%llu",
           logId().c_str(), r.bare.c_str(), name.c_str(), p.writer->id().c_str(),
           static_cast<unsigned long long>(p.writer->size()));
      out.delrcpt.push_back(r.raw);
      ++captured;
    }
  }
  if (captured >= total_rcpts_) {
    out.verdict = Verdict::Discard;
    out.delrcpt.clear();
  }
  for (Part& p : parts_) p.writer.reset();  // committed: nothing to remove
  parts_.clear();
  return out;
}

void MessageSession::abort() {
  dropWriters();
  parts_.clear();
}

}  // namespace dynmx::milter
