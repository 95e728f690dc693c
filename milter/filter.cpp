// filter.cpp: libmilter callbacks of dynmx-milter.
//
// Each callback is a thin adapter: it reads the macros it needs, passes the data to the
// connection's MessageSession and maps the session's verdict to an SMFIS_* code. All of them run
// inside guarded(), the one place that catches exceptions: a thrown error frees the message state
// (temporary files removed) and answers SMFIS_TEMPFAIL with 451 4.3.0, or lets the message pass
// with on_error = "accept" and a loud log line. Stages negotiated as "no reply" (headers) remember
// the failure and report it at end of message instead.
//
// Negotiation: the MTA must offer SMFIF_DELRCPT; when it does not, the connection is refused at
// negotiation (SMFIS_REJECT: with sendmail's F=T or Postfix's milter_default_action = tempfail
// the mail is tempfailed, never passed on) and the reason is logged.
//
// Stopping: guarded() is also the gate of filter.hpp's stop: once closed, a callback does nothing
// (tempfail where it has a reply) and the stopper waits for the ones still running.
#include "milter/filter.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <condition_variable>
#include <ctime>
#include <exception>
#include <libmilter/mfdef.h>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "shared/log.hpp"

namespace dynmx::milter {

namespace {

std::mutex g_mu;
Spool* g_spool = nullptr;
std::shared_ptr<const Snapshot> g_snap;

// Per-connection private data (smfi_setpriv); freed in xxfi_close.
struct Conn {
  unsigned long pflags = 0;  // protocol flags agreed at negotiation
  Peer peer;
  std::unique_ptr<MessageSession> msg;
  std::optional<std::string> pending_error;  // from a no-reply stage, reported at eom
};

// The stop gate: how many callbacks run now, whether new ones may start, and every live
// connection (so that the stopper can drop their unfinished messages once no callback runs).
std::mutex g_gate_mu;
std::condition_variable g_gate_cv;
size_t g_running = 0;
bool g_closed = false;
std::unordered_set<Conn*> g_conns;

// Holds the gate open for one callback; `entered` is false when stopping (do nothing then).
class GatePass {
 public:
  GatePass() {
    std::lock_guard<std::mutex> lock(g_gate_mu);
    if (g_closed) return;
    ++g_running;
    entered = true;
  }
  ~GatePass() {
    if (!entered) return;
    std::lock_guard<std::mutex> lock(g_gate_mu);
    if (--g_running == 0) g_gate_cv.notify_all();
  }
  GatePass(const GatePass&) = delete;
  GatePass& operator=(const GatePass&) = delete;
  bool entered = false;
};

Conn* conn(SMFICTX* ctx) {
  return static_cast<Conn*>(smfi_getpriv(ctx));
}

Conn& ensureConn(SMFICTX* ctx) {
  Conn* c = conn(ctx);
  if (!c) {
    c = new Conn;
    {
      std::lock_guard<std::mutex> lock(g_gate_mu);
      g_conns.insert(c);
    }
    smfi_setpriv(ctx, c);
  }
  return *c;
}

std::string macro(SMFICTX* ctx, const char* name) {
  const char* v = smfi_getsymval(ctx, const_cast<char*>(name));
  return v ? std::string(v) : std::string();
}

std::vector<std::string_view> params(char** argv) {
  std::vector<std::string_view> out;
  if (!argv || !argv[0]) return out;
  for (char** a = argv + 1; *a; ++a) out.emplace_back(*a);
  return out;
}

void setReply(SMFICTX* ctx, const Reply& r) {
  std::string code = r.code, xcode = r.xcode, text = r.text;
  smfi_setreply(ctx, code.data(), xcode.data(), text.data());
}

OnError onError() {
  std::shared_ptr<const Snapshot> s = currentSnapshot();
  return s ? s->config.milter.on_error : OnError::Tempfail;
}

const std::string& qidOf(Conn* c) {
  static const std::string kNoQueue = "NOQUEUE";
  return c && c->msg ? (c->msg->queueId().empty() ? kNoQueue : c->msg->queueId()) : kNoQueue;
}

// What an unexpected failure answers at a stage that replies.
sfsistat failureCode(SMFICTX* ctx, const char* stage, const std::string& why) {
  Conn* c = conn(ctx);
  std::string qid = qidOf(c);
  if (c) c->msg.reset();  // frees the message state and removes its temporary files
  if (onError() == OnError::Accept) {
    logf(LogLevel::Error,
         "%s: milter: ERROR in %s: %s; on_error=accept: message passed on WITHOUT capture",
         qid.c_str(), stage, why.c_str());
    return SMFIS_ACCEPT;
  }
  logf(LogLevel::Error, "%s: milter: tempfail: error in %s: %s", qid.c_str(), stage, why.c_str());
  setReply(ctx, {"451", "4.3.0", "dynmx-milter cannot spool the message now, try again later"});
  return SMFIS_TEMPFAIL;
}

enum class Kind { Replies, NoReply, Housekeeping };

// The one exception boundary between dynmx and libmilter.
template <class F>
sfsistat guarded(SMFICTX* ctx, const char* stage, Kind kind, F&& f) noexcept {
  GatePass pass;
  if (!pass.entered) {
    // Stopping: the process exits in a moment and the MTA retries (its connection closes).
    if (kind != Kind::Replies) return SMFIS_CONTINUE;
    static char code[] = "421", xcode[] = "4.3.2", text[] = "dynmx-milter is stopping, try again";
    smfi_setreply(ctx, code, xcode, text);
    return SMFIS_TEMPFAIL;
  }
  std::string why;
  try {
    return f();
  } catch (const std::exception& e) {
    why = e.what();
  } catch (...) {
    why = "unknown exception";
  }
  try {
    if (kind == Kind::Housekeeping) {
      Conn* c = conn(ctx);
      logf(LogLevel::Error, "%s: milter: error in %s: %s", qidOf(c).c_str(), stage, why.c_str());
      if (c) c->msg.reset();
      return SMFIS_CONTINUE;
    }
    if (kind == Kind::NoReply) {
      Conn* c = conn(ctx);
      if (c) {
        if (!c->pending_error) c->pending_error = std::string(stage) + ": " + why;
        c->msg.reset();
      }
      return (c && (c->pflags & SMFIP_NR_HDR)) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
    }
    return failureCode(ctx, stage, why);
  } catch (...) {
    return kind == Kind::Replies ? SMFIS_TEMPFAIL : SMFIS_CONTINUE;
  }
}

Conn& needConn(SMFICTX* ctx) {
  Conn* c = conn(ctx);
  if (!c) throw std::logic_error("no connection state (callback before connect)");
  return *c;
}

MessageSession& needMsg(Conn& c) {
  if (!c.msg) throw std::logic_error("no message state (callback before MAIL FROM)");
  return *c.msg;
}

sfsistat xxNegotiate(SMFICTX* ctx, unsigned long f0, unsigned long f1, unsigned long /*f2*/,
                     unsigned long /*f3*/, unsigned long* pf0, unsigned long* pf1,
                     unsigned long* pf2, unsigned long* pf3) {
  return guarded(ctx, "negotiate", Kind::Replies, [&]() -> sfsistat {
    if (!(f0 & SMFIF_DELRCPT)) {
      logf(LogLevel::Error,
           "NOQUEUE: milter: the MTA does not offer the delete-recipient action (SMFIF_DELRCPT); "
           "dynmx-milter cannot capture mail without it and refuses the connection");
      return SMFIS_REJECT;
    }
    Conn& c = ensureConn(ctx);
    *pf0 = SMFIF_DELRCPT | (f0 & SMFIF_SETSYMLIST);
    const unsigned long want = SMFIP_NOHELO | SMFIP_NOUNKNOWN | SMFIP_NR_HDR | SMFIP_HDR_LEADSPC;
    *pf1 = f1 & want;
    *pf2 = 0;
    *pf3 = 0;
    c.pflags = *pf1;
    if (f0 & SMFIF_SETSYMLIST) {
      smfi_setsymlist(ctx, SMFIM_CONNECT, const_cast<char*>(kConnectMacros));
      smfi_setsymlist(ctx, SMFIM_ENVFROM, const_cast<char*>(kEnvfromMacros));
      smfi_setsymlist(ctx, SMFIM_ENVRCPT, const_cast<char*>(kEnvrcptMacros));
      smfi_setsymlist(ctx, SMFIM_DATA, const_cast<char*>(kDataMacros));
      smfi_setsymlist(ctx, SMFIM_EOH, const_cast<char*>(kEohMacros));
      smfi_setsymlist(ctx, SMFIM_EOM, const_cast<char*>(kEomMacros));
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat xxConnect(SMFICTX* ctx, char* /*hostname*/, _SOCK_ADDR* addr) {
  return guarded(ctx, "connect", Kind::Replies, [&]() -> sfsistat {
    Conn& c = ensureConn(ctx);
    c.peer.mta_host = macro(ctx, "j");
    c.peer.addr = macro(ctx, "{client_addr}");
    if (c.peer.addr.empty() && addr) {
      char buf[INET6_ADDRSTRLEN] = {};
      if (addr->sa_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(addr)->sin_addr, buf, sizeof buf);
      } else if (addr->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(addr)->sin6_addr, buf, sizeof buf);
      }
      c.peer.addr = buf;
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat xxEnvfrom(SMFICTX* ctx, char** argv) {
  return guarded(ctx, "MAIL FROM", Kind::Replies, [&]() -> sfsistat {
    Conn& c = needConn(ctx);
    std::shared_ptr<const Snapshot> snap = currentSnapshot();
    c.pending_error.reset();
    c.msg = std::make_unique<MessageSession>(*g_spool, std::move(snap), c.peer,
                                             static_cast<int64_t>(std::time(nullptr)));
    c.msg->setQueueId(macro(ctx, "i"));
    c.msg->mailFrom(argv && argv[0] ? argv[0] : "", params(argv));
    return SMFIS_CONTINUE;
  });
}

sfsistat xxEnvrcpt(SMFICTX* ctx, char** argv) {
  return guarded(ctx, "RCPT TO", Kind::Replies, [&]() -> sfsistat {
    MessageSession& m = needMsg(needConn(ctx));
    m.setQueueId(macro(ctx, "i"));
    RcptOutcome r = m.rcpt(argv && argv[0] ? argv[0] : "", params(argv));
    if (r.verdict == Verdict::Reject || r.verdict == Verdict::Tempfail) {
      setReply(ctx, r.reply);
      return r.verdict == Verdict::Reject ? SMFIS_REJECT : SMFIS_TEMPFAIL;
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat xxData(SMFICTX* ctx) {
  return guarded(ctx, "DATA", Kind::Replies, [&]() -> sfsistat {
    Conn& c = needConn(ctx);
    MessageSession& m = needMsg(c);
    m.setQueueId(macro(ctx, "i"));
    if (!m.capturing()) {
      c.msg.reset();
      return SMFIS_ACCEPT;  // no client recipient: nothing more to see in this message
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat xxHeader(SMFICTX* ctx, char* name, char* value) {
  return guarded(ctx, "header", Kind::NoReply, [&]() -> sfsistat {
    Conn& c = needConn(ctx);
    sfsistat done = (c.pflags & SMFIP_NR_HDR) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
    if (!c.msg) return done;  // after an earlier failure
    c.msg->header(name ? name : "", value ? value : "", (c.pflags & SMFIP_HDR_LEADSPC) != 0);
    return done;
  });
}

sfsistat xxEoh(SMFICTX* ctx) {
  return guarded(ctx, "end of headers", Kind::Replies, [&]() -> sfsistat {
    Conn& c = needConn(ctx);
    if (c.pending_error) return failureCode(ctx, "header", *c.pending_error);
    MessageSession& m = needMsg(c);
    m.setQueueId(macro(ctx, "i"));
    if (!m.capturing()) {
      c.msg.reset();
      return SMFIS_ACCEPT;
    }
    m.endOfHeaders();
    return SMFIS_CONTINUE;
  });
}

sfsistat xxBody(SMFICTX* ctx, unsigned char* chunk, size_t len) {
  return guarded(ctx, "body", Kind::Replies, [&]() -> sfsistat {
    Conn& c = needConn(ctx);
    if (c.pending_error) return failureCode(ctx, "header", *c.pending_error);
    MessageSession& m = needMsg(c);
    m.body(std::string_view(reinterpret_cast<const char*>(chunk), len));
    return SMFIS_CONTINUE;
  });
}

sfsistat xxEom(SMFICTX* ctx) {
  return guarded(ctx, "end of message", Kind::Replies, [&]() -> sfsistat {
    Conn& c = needConn(ctx);
    if (c.pending_error) return failureCode(ctx, "header", *c.pending_error);
    MessageSession& m = needMsg(c);
    m.setQueueId(macro(ctx, "i"));
    std::string qid = m.queueId().empty() ? "NOQUEUE" : m.queueId();
    EomOutcome out = m.endOfMessage();
    c.msg.reset();
    switch (out.verdict) {
      case Verdict::Discard:
        return SMFIS_DISCARD;
      case Verdict::Tempfail:
      case Verdict::Reject:
        setReply(ctx, out.reply);
        return out.verdict == Verdict::Tempfail ? SMFIS_TEMPFAIL : SMFIS_REJECT;
      case Verdict::Continue:
      case Verdict::Accept:
        break;
    }
    for (std::string& r : out.delrcpt) {
      if (smfi_delrcpt(ctx, r.data()) != MI_SUCCESS) {
        // The copy is committed; if the MTA kept the recipient it would also deliver it by its
        // normal route. Tempfail so that it does not: the retry makes a possible duplicate.
        logf(LogLevel::Error,
             "%s: milter: possible duplicate: smfi_delrcpt(%s) failed after the spool commit; "
             "tempfailing so that the MTA does not deliver it by its normal route",
             qid.c_str(), r.c_str());
        setReply(ctx, {"451", "4.3.0", "dynmx-milter could not remove a recipient, try again"});
        return SMFIS_TEMPFAIL;
      }
    }
    return out.verdict == Verdict::Accept ? SMFIS_ACCEPT : SMFIS_CONTINUE;
  });
}

sfsistat xxAbort(SMFICTX* ctx) {
  return guarded(ctx, "abort", Kind::Housekeeping, [&]() -> sfsistat {
    Conn* c = conn(ctx);
    if (c) {
      c->msg.reset();  // removes the temporary files
      c->pending_error.reset();
    }
    return SMFIS_CONTINUE;
  });
}

sfsistat xxClose(SMFICTX* ctx) {
  return guarded(ctx, "close", Kind::Housekeeping, [&]() -> sfsistat {
    Conn* c = conn(ctx);
    smfi_setpriv(ctx, nullptr);
    if (c) {
      std::lock_guard<std::mutex> lock(g_gate_mu);
      g_conns.erase(c);
    }
    delete c;
    return SMFIS_CONTINUE;
  });
}

}  // namespace

struct smfiDesc& filterDescription() {
  static struct smfiDesc desc = {
      const_cast<char*>("dynmx-milter"),
      SMFI_VERSION,
      SMFIF_DELRCPT | SMFIF_SETSYMLIST,
      xxConnect,
      nullptr,  // helo: not used
      xxEnvfrom,
      xxEnvrcpt,
      xxHeader,
      xxEoh,
      xxBody,
      xxEom,
      xxAbort,
      xxClose,
      nullptr,  // unknown commands: not used
      xxData,
      xxNegotiate,
  };
  return desc;
}

void install(Spool* spool, std::shared_ptr<const Snapshot> snap) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_spool = spool;
  g_snap = std::move(snap);
}

void setSnapshot(std::shared_ptr<const Snapshot> snap) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_snap = std::move(snap);
}

std::shared_ptr<const Snapshot> currentSnapshot() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_snap;
}

void closeGate() {
  std::lock_guard<std::mutex> lock(g_gate_mu);
  g_closed = true;
}

bool waitIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(g_gate_mu);
  return g_gate_cv.wait_until(lock, deadline, [] { return g_running == 0; });
}

void waitIdle() {
  std::unique_lock<std::mutex> lock(g_gate_mu);
  g_gate_cv.wait(lock, [] { return g_running == 0; });
}

size_t discardOpenMessages() {
  // The gate is closed and no callback runs: nothing else touches a connection any more.
  std::lock_guard<std::mutex> lock(g_gate_mu);
  size_t n = 0;
  for (Conn* c : g_conns) {
    if (!c->msg) continue;
    c->msg.reset();  // removes its temporary files
    ++n;
  }
  return n;
}

}  // namespace dynmx::milter
