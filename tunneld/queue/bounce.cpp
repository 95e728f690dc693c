// bounce.cpp: RFC 3464 delivery status notifications and their hand-off to the local sendmail.
//
// Contract: buildDsn() is a pure function of its input and the original's bytes in the spool; it
// returns the whole notification with CRLF line ends, or an Error when the original cannot be
// read (the caller keeps the message and tries again later). Everything taken from the envelope
// that lands in a header has CR, LF and NUL replaced by spaces, so an address cannot add headers.
// SendmailBounceSender::send() spawns the MTA with argv only (no shell), feeds it with poll() and
// non-blocking pipes so that neither a child that does not read nor one that does not exit can
// hold us past the timeout, kills such a child, and reports the exit status with its stderr.
#include "tunneld/queue/bounce.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <cstdio>
#include <ctime>
#include <thread>

#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"

namespace dynmx::tunneld {
namespace {

std::string clean(std::string_view s) {
  std::string r(s);
  for (char& c : r) {
    if (c == '\r' || c == '\n' || c == '\0') c = ' ';
  }
  return r;
}

std::string stamp(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  struct tm tm {};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

// The original's header block (up to and including the CRLF that ends the last header line) or
// the whole message; at most about `cap` bytes are kept, cut at a line end.
Result<std::string> readOriginal(const Spool& spool, const SpoolMessage& msg, bool headers_only,
                                 uint64_t cap) {
  auto reader = spool.openContent(msg);
  if (!reader.ok()) return reader.error();
  std::string text;
  for (;;) {
    auto chunk = reader->next(65536);
    if (!chunk.ok()) return chunk.error();
    if (chunk->empty()) break;
    text.append(chunk->data(), chunk->size());
    if (headers_only) {
      size_t end = text.find("\r\n\r\n");
      if (end != std::string::npos) {
        text.resize(end + 2);
        return text;
      }
      size_t lf = text.find("\n\n");
      if (lf != std::string::npos) {
        text.resize(lf + 1);
        return text;
      }
    }
    if (text.size() > cap) break;
  }
  if (headers_only || text.size() > cap) {
    // No end of headers within the cap (or a message without a body): keep whole lines only.
    if (text.size() > cap) text.resize(cap);
    size_t last = text.rfind('\n');
    text.resize(last == std::string::npos ? 0 : last + 1);
    if (headers_only) {
      // A header block never holds an empty line; a message of headers only ends at its end.
      size_t blank = text.find("\r\n\r\n");
      if (blank != std::string::npos) text.resize(blank + 2);
    }
  }
  return text;
}

std::string recipientLine(const SpoolRecipient& r, const std::string& remote) {
  std::string s = "<" + clean(r.address) + ">: ";
  if (replyCode(r.reply) != 0) {
    s += "host " + (remote.empty() ? std::string("the far end") : remote) +
         " said: " + clean(r.reply);
  } else if (!r.reply.empty()) {
    s += clean(r.reply);
  } else {
    s += "no delivery attempt was possible";
  }
  return s;
}

}  // namespace

namespace {

// What buildDsn() decided once, for the parts that follow.
struct DsnShape {
  bool failure = true;  // a failure report (else a delay warning)
  bool full = false;    // the whole original goes back (else its headers)
  bool eight = false;   // ... and it is 8BITMIME
  std::string host;     // the reporting host, cleaned
  std::string boundary;
};

void line(std::string& m, std::string_view l) {
  m.append(l);
  m.append("\r\n");
}

void writeHeaders(std::string& m, const DsnInput& in, const DsnShape& d, const std::string& mid) {
  line(m, "From: Mail Delivery System <" + clean(in.from_header) + ">");
  line(m, "To: <" + clean(in.msg->env.sender) + ">");
  line(m, d.failure ? "Subject: Undelivered Mail Returned to Sender"
                    : "Subject: Delayed Mail (still being retried)");
  line(m, "Date: " + rfc5322Date(in.now));
  line(m, "Message-ID: <" + clean(mid) + ">");
  line(m, "Auto-Submitted: auto-replied");
  line(m, "MIME-Version: 1.0");
  line(m, "Content-Type: multipart/report; report-type=delivery-status;");
  line(m, "\tboundary=\"" + d.boundary + "\"");
  if (d.eight) line(m, "Content-Transfer-Encoding: 8bit");
  line(m, "");
  line(m, "This is a MIME-encapsulated message.");
  line(m, "");
}

// The human-readable part.
void writeNotification(std::string& m, const DsnInput& in, const DsnShape& d) {
  const Envelope& env = in.msg->env;
  line(m, "--" + d.boundary);
  line(m, "Content-Description: Notification");
  line(m, "Content-Type: text/plain; charset=us-ascii");
  line(m, "");
  line(m, "This is the mail system at host " + d.host + ".");
  line(m, "");
  if (d.failure) {
    line(m, "I'm sorry to have to inform you that your message could not");
    line(m, "be delivered to one or more recipients. It's attached below.");
    line(m, "");
    line(m, "For further assistance, please send mail to postmaster.");
    line(m, "");
    line(m, "If you do so, please include this problem report. You can");
    line(m, "delete your own text from the attached returned message.");
  } else {
    line(m, "####################################################################");
    line(m, "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #");
    line(m, "####################################################################");
    line(m, "");
    int64_t hours = env.arrival > 0 ? (in.now - env.arrival) / 3600 : 0;
    line(m, "Your message could not be delivered for more than " + std::to_string(hours) +
                " hour(s).");
    if (in.will_retry_until > 0) {
      int64_t days = (in.will_retry_until - env.arrival + 86399) / 86400;
      line(m, "It will be retried until it is " + std::to_string(days) + " day(s) old.");
    }
  }
  line(m, "");
  line(m, "                   The mail system");
  line(m, "");
  for (size_t idx : in.rcpt_indexes) {
    if (idx >= env.rcpts.size()) continue;
    line(m, recipientLine(env.rcpts[idx], clean(in.remote_mta)).substr(0, 990));
  }
  line(m, "");
}

// The per-recipient fields of the machine-readable part.
void writeRecipientStatus(std::string& m, const DsnInput& in, const DsnShape& d,
                          const SpoolRecipient& r) {
  line(m, "");
  line(m, "Final-Recipient: rfc822; " + clean(r.address));
  if (!r.orcpt.empty()) {
    size_t semi = r.orcpt.find(';');
    std::string type = semi == std::string::npos ? "rfc822" : r.orcpt.substr(0, semi);
    std::string addr = semi == std::string::npos ? r.orcpt : r.orcpt.substr(semi + 1);
    line(m, "Original-Recipient: " + clean(type) + "; " + clean(xtextDecode(addr)));
  }
  line(m, d.failure ? "Action: failed" : "Action: delayed");
  std::string fallback = in.fallback_status;
  if (fallback.empty()) fallback = d.failure ? "4.4.7" : "4.0.0";
  line(m, "Status: " + dsnStatus(r.reply, fallback));
  bool remote_reply = replyCode(r.reply) != 0;
  if (remote_reply && !in.remote_mta.empty()) line(m, "Remote-MTA: dns; " + clean(in.remote_mta));
  if (remote_reply) {
    line(m, "Diagnostic-Code: smtp; " + clean(r.reply).substr(0, 900));
  } else if (!r.reply.empty()) {
    line(m, "Diagnostic-Code: X-dynmx; " + clean(r.reply).substr(0, 900));
  }
  if (r.updated > 0) line(m, "Last-Attempt-Date: " + rfc5322Date(r.updated));
  if (!d.failure && in.will_retry_until > 0) {
    line(m, "Will-Retry-Until: " + rfc5322Date(in.will_retry_until));
  }
}

// The machine-readable part (message/delivery-status).
void writeDeliveryStatus(std::string& m, const DsnInput& in, const DsnShape& d) {
  const SpoolMessage& msg = *in.msg;
  const Envelope& env = msg.env;
  line(m, "--" + d.boundary);
  line(m, "Content-Description: Delivery report");
  line(m, "Content-Type: message/delivery-status");
  line(m, "");
  line(m, "Reporting-MTA: dns; " + d.host);
  line(m, "X-Dynmx-Queue-ID: " + msg.id);
  line(m, "X-Dynmx-Sender: rfc822; " + clean(env.sender));
  // RFC 3461 6.3: ENVID and ORCPT appear in the report decoded from xtext.
  if (!env.envid.empty()) line(m, "Original-Envelope-Id: " + clean(xtextDecode(env.envid)));
  if (env.arrival > 0) line(m, "Arrival-Date: " + rfc5322Date(env.arrival));
  for (size_t idx : in.rcpt_indexes) {
    if (idx >= env.rcpts.size()) continue;
    writeRecipientStatus(m, in, d, env.rcpts[idx]);
  }
  line(m, "");
}

// The original, whole or its headers, and the closing boundary.
void writeOriginal(std::string& m, const DsnShape& d, const std::string& original) {
  line(m, "--" + d.boundary);
  if (d.full) {
    line(m, "Content-Description: Undelivered Message");
    line(m, "Content-Type: message/rfc822");
    if (d.eight) line(m, "Content-Transfer-Encoding: 8bit");
  } else {
    line(m, d.failure ? "Content-Description: Undelivered Message Headers"
                      : "Content-Description: Delayed Message Headers");
    line(m, "Content-Type: text/rfc822-headers");
  }
  line(m, "");
  m += original;
  if (!original.empty() && original.back() != '\n') line(m, "");
  line(m, "");
  line(m, "--" + d.boundary + "--");
}

}  // namespace

Result<std::string> buildDsn(const DsnInput& in, const Spool& spool) {
  static std::atomic<unsigned> counter{0};
  const SpoolMessage& msg = *in.msg;
  const Envelope& env = msg.env;
  DsnShape d;
  d.failure = in.kind == DsnKind::Failure;
  d.host = clean(in.reporting_host);
  d.full = d.failure && env.ret != "HDRS" && env.ret != "hdrs" && msg.content_size <= kDsnFullLimit;
  auto original = readOriginal(spool, msg, !d.full, kDsnFullLimit);
  if (!original.ok()) return original.error();

  d.boundary = in.boundary;
  if (d.boundary.empty()) {
    d.boundary =
        msg.id + "." + std::to_string(in.now) + "." + std::to_string(counter++) + "/" + d.host;
  }
  std::string mid = in.message_id;
  if (mid.empty()) {
    mid = stamp(in.now) + "." + msg.id + (d.failure ? ".F" : ".D") + std::to_string(counter++) +
          "@" + d.host;
  }
  d.eight = d.full && env.body == "8BITMIME";

  std::string m;
  m.reserve(original->size() + 4096);
  writeHeaders(m, in, d, mid);
  writeNotification(m, in, d);
  writeDeliveryStatus(m, in, d);
  writeOriginal(m, d, *original);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Hand-off to sendmail.

SendmailBounceSender::SendmailBounceSender(std::vector<std::string> argv_prefix,
                                           std::chrono::seconds timeout, const TimeSource& time)
    : argv_(std::move(argv_prefix)), timeout_(timeout), time_(time) {}

namespace {

namespace bp = boost::process;

// Blocks SIGPIPE for this thread while we write into a child that may be gone, and swallows a
// SIGPIPE our own writes raised, so that neither the default action nor the daemon sees it.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~SigpipeGuard() {
    if (!was_pending_) {
      struct timespec zero {};
      while (sigtimedwait(&set_, nullptr, &zero) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t set_, old_;
  bool was_pending_ = false;
};

std::string toLf(const std::string& s) {
  std::string r;
  r.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') continue;
    r += s[i];
  }
  return r;
}

// One run of sendmail for one notification: spawn(), feed() the message while collecting its
// stderr, waitExit(). Every step ends by the deadline; a child that outlives it (or a cancel) is
// killed and reaped. Each step's Error is final: the caller returns it.
class SendmailRun {
 public:
  SendmailRun(const std::string& prog, const std::string& recipient, std::chrono::seconds timeout,
              const TimeSource& time, const std::atomic<bool>& cancelled)
      : prog_(prog),
        recipient_(recipient),
        timeout_(timeout),
        time_(time),
        cancelled_(cancelled),
        deadline_(time.steady() + timeout) {}

  Status spawn(const std::vector<std::string>& args) {
    std::error_code ec;
    // The daemon blocks the signals it reads from its signalfd and ignores SIGPIPE; both would
    // survive exec. sendmail gets a clean slate: no blocked signal, SIGPIPE at its default.
    auto clean_signals = bp::extend::on_exec_setup([](auto&) {
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      signal(SIGPIPE, SIG_DFL);
    });
    child_ = bp::child(bp::exe = prog_, bp::args = args, bp::std_in<in_, bp::std_out> bp::null,
                       bp::std_err > err_, clean_signals, ec);
    if (ec) return Error{ec.value(), "bounce: cannot run " + prog_ + ": " + ec.message()};
    wfd_ = in_.native_sink();
    rfd_ = err_.native_source();
    ::fcntl(wfd_, F_SETFL, ::fcntl(wfd_, F_GETFL) | O_NONBLOCK);
    ::fcntl(rfd_, F_SETFL, ::fcntl(rfd_, F_GETFL) | O_NONBLOCK);
    return {};
  }

  // Writes `data` to the child's stdin and closes it, and reads its stderr until EOF.
  Status feed(const std::string& data) {
    data_ = &data;
    while (writing_ || reading_) {
      if (writing_ && off_ == data.size()) {
        in_.close();  // EOF for the child; closes our write end only
        writing_ = false;
        continue;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - time_.steady());
      if (left.count() <= 0)
        return kill("timed out after " + std::to_string(timeout_.count()) + "s");
      if (cancelled_) {
        Status st = kill("given up on: dynmx-tunneld is stopping");
        logf(LogLevel::Warning, "%s (the notification stays spooled)", st.error().message.c_str());
        return st;
      }
      if (Status st = pollOnce(left); !st) return st;
    }
    return {};
  }

  // Both pipes are done: waits for the exit and reports it, with the child's stderr.
  Status waitExit() {
    for (;;) {
      std::error_code rec;
      if (!child_.running(rec)) break;
      if (time_.steady() >= deadline_) {
        return kill("did not exit within " + std::to_string(timeout_.count()) + "s");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    int status = child_.native_exit_code();
    std::string detail = printable(errtext_, 500);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status{};
    std::string how = WIFEXITED(status)     ? "exit status " + std::to_string(WEXITSTATUS(status))
                      : WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                            : "status " + std::to_string(status);
    return Error{0, "bounce: " + prog_ + " for <" + recipient_ + "> failed with " + how +
                        (detail.empty() ? "" : ": " + detail)};
  }

 private:
  Status kill(const std::string& why) {
    // Boost 1.74's terminate() reaps with WNOHANG and so may leave a zombie: kill and reap here.
    pid_t pid = child_.id();
    ::kill(pid, SIGKILL);
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    child_.detach();
    return Error{ETIMEDOUT,
                 "bounce: " + prog_ + " for <" + recipient_ + "> " + why + "; killed it"};
  }

  // One poll() over the pipes still open, at most a second (so that a cancel is seen).
  Status pollOnce(std::chrono::milliseconds left) {
    pollfd fds[2];
    int n = 0;
    if (writing_) fds[n++] = pollfd{wfd_, POLLOUT, 0};
    if (reading_) fds[n++] = pollfd{rfd_, POLLIN, 0};
    int pr = ::poll(fds, static_cast<nfds_t>(n),
                    static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (pr < 0 && errno != EINTR) {
      int e = errno;
      (void)kill("poll failed");
      return sysError(e, "bounce: poll on the pipes of " + prog_);
    }
    if (pr <= 0) return {};
    for (int i = 0; i < n; ++i) {
      if (fds[i].fd == wfd_ && (fds[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
        if (Status st = writeSome(); !st) return st;
      }
      if (fds[i].fd == rfd_ && (fds[i].revents & (POLLIN | POLLERR | POLLHUP))) readSome();
    }
    return {};
  }

  Status writeSome() {
    ssize_t w = ::write(wfd_, data_->data() + off_, data_->size() - off_);
    if (w > 0) {
      off_ += static_cast<size_t>(w);
    } else if (w < 0 && errno == EPIPE) {
      // The child closed its stdin; its exit status says whether it took the message.
      in_.close();
      writing_ = false;
    } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
      int e = errno;
      (void)kill("could not be written to");
      return sysError(e, "bounce: write to " + prog_);
    }
    return {};
  }

  void readSome() {
    char buf[4096];
    ssize_t r = ::read(rfd_, buf, sizeof buf);
    if (r > 0) {
      if (errtext_.size() < 2000) errtext_.append(buf, static_cast<size_t>(r));
    } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
      reading_ = false;
    }
  }

  const std::string& prog_;
  const std::string& recipient_;
  std::chrono::seconds timeout_;
  const TimeSource& time_;
  const std::atomic<bool>& cancelled_;
  SteadyClock::time_point deadline_;
  bp::pipe in_, err_;
  bp::child child_;
  int wfd_ = -1, rfd_ = -1;
  const std::string* data_ = nullptr;
  size_t off_ = 0;
  bool writing_ = true, reading_ = true;
  std::string errtext_;
};

}  // namespace

Status SendmailBounceSender::send(const std::string& recipient, const std::string& message) {
  if (argv_.empty() || argv_[0].empty()) return Error{0, "bounce: no sendmail program configured"};
  if (recipient.empty()) return Error{0, "bounce: refusing to send a notification to <>"};
  if (cancelled_) return Error{ECANCELED, "bounce: not handed to sendmail: stopping"};
  const std::string& prog = argv_[0];
  std::vector<std::string> args(argv_.begin() + 1, argv_.end());
  for (const char* a : {"-oi", "-f", "<>", "--"}) args.emplace_back(a);
  args.push_back(recipient);

  SigpipeGuard guard;
  SendmailRun run(prog, recipient, timeout_, time_, cancelled_);
  if (Status st = run.spawn(args); !st) return st;
  if (Status st = run.feed(toLf(message)); !st) return st;
  return run.waitExit();
}

}  // namespace dynmx::tunneld
