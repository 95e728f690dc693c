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


Result<std::string> buildDsn(const DsnInput& in, const Spool& spool) {
  static std::atomic<unsigned> counter{0};
  const SpoolMessage& msg = *in.msg;
  const Envelope& env = msg.env;
  const bool failure = in.kind == DsnKind::Failure;
  const std::string host = clean(in.reporting_host);

  bool full =
      failure && env.ret != "HDRS" && env.ret != "hdrs" && msg.content_size <= kDsnFullLimit;
  auto original = readOriginal(spool, msg, !full, kDsnFullLimit);
  if (!original.ok()) return original.error();

  std::string boundary = in.boundary;
  if (boundary.empty()) {
    boundary = msg.id + "." + std::to_string(in.now) + "." + std::to_string(counter++) + "/" + host;
  }
  std::string mid = in.message_id;
  if (mid.empty()) {
    mid = stamp(in.now) + "." + msg.id + (failure ? ".F" : ".D") + std::to_string(counter++) + "@" +
          host;
  }
  bool eight = full && env.body == "8BITMIME";

  std::string m;
  m.reserve(original->size() + 4096);
  auto line = [&m](std::string_view l) {
    m.append(l);
    m.append("\r\n");
  };
  line("From: Mail Delivery System <" + clean(in.from_header) + ">");
  line("To: <" + clean(env.sender) + ">");
  line(failure ? "Subject: Undelivered Mail Returned to Sender"
               : "Subject: Delayed Mail (still being retried)");
  line("Date: " + rfc5322Date(in.now));
  line("Message-ID: <" + clean(mid) + ">");
  line("Auto-Submitted: auto-replied");
  line("MIME-Version: 1.0");
  line("Content-Type: multipart/report; report-type=delivery-status;");
  line("\tboundary=\"" + boundary + "\"");
  if (eight) line("Content-Transfer-Encoding: 8bit");
  line("");
  line("This is a MIME-encapsulated message.");
  line("");

  // Human-readable part.
  line("--" + boundary);
  line("Content-Description: Notification");
  line("Content-Type: text/plain; charset=us-ascii");
  line("");
  line("This is the mail system at host " + host + ".");
  line("");
  if (failure) {
    line("I'm sorry to have to inform you that your message could not");
    line("be delivered to one or more recipients. It's attached below.");
    line("");
    line("For further assistance, please send mail to postmaster.");
    line("");
    line("If you do so, please include this problem report. You can");
    line("delete your own text from the attached returned message.");
  } else {
    line("####################################################################");
    line("# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #");
    line("####################################################################");
    line("");
    int64_t hours = env.arrival > 0 ? (in.now - env.arrival) / 3600 : 0;
    line("Your message could not be delivered for more than " + std::to_string(hours) +
         " hour(s).");
    if (in.will_retry_until > 0) {
      int64_t days = (in.will_retry_until - env.arrival + 86399) / 86400;
      line("It will be retried until it is " + std::to_string(days) + " day(s) old.");
    }
  }
  line("");
  line("                   The mail system");
  line("");
  for (size_t idx : in.rcpt_indexes) {
    if (idx >= env.rcpts.size()) continue;
    line(recipientLine(env.rcpts[idx], clean(in.remote_mta)).substr(0, 990));
  }
  line("");

  // Machine-readable part.
  line("--" + boundary);
  line("Content-Description: Delivery report");
  line("Content-Type: message/delivery-status");
  line("");
  line("Reporting-MTA: dns; " + host);
  line("X-Dynmx-Queue-ID: " + msg.id);
  line("X-Dynmx-Sender: rfc822; " + clean(env.sender));
  // RFC 3461 6.3: ENVID and ORCPT appear in the report decoded from xtext.
  if (!env.envid.empty()) line("Original-Envelope-Id: " + clean(xtextDecode(env.envid)));
  if (env.arrival > 0) line("Arrival-Date: " + rfc5322Date(env.arrival));
  for (size_t idx : in.rcpt_indexes) {
    if (idx >= env.rcpts.size()) continue;
    const SpoolRecipient& r = env.rcpts[idx];
    line("");
    line("Final-Recipient: rfc822; " + clean(r.address));
    if (!r.orcpt.empty()) {
      size_t semi = r.orcpt.find(';');
      std::string type = semi == std::string::npos ? "rfc822" : r.orcpt.substr(0, semi);
      std::string addr = semi == std::string::npos ? r.orcpt : r.orcpt.substr(semi + 1);
      line("Original-Recipient: " + clean(type) + "; " + clean(xtextDecode(addr)));
    }
    line(failure ? "Action: failed" : "Action: delayed");
    line("Status: " + dsnStatus(r.reply, failure ? "4.4.7" : "4.0.0"));
    bool remote_reply = replyCode(r.reply) != 0;
    if (remote_reply && !in.remote_mta.empty()) line("Remote-MTA: dns; " + clean(in.remote_mta));
    if (remote_reply) {
      line("Diagnostic-Code: smtp; " + clean(r.reply).substr(0, 900));
    } else if (!r.reply.empty()) {
      line("Diagnostic-Code: X-dynmx; " + clean(r.reply).substr(0, 900));
    }
    if (r.updated > 0) line("Last-Attempt-Date: " + rfc5322Date(r.updated));
    if (!failure && in.will_retry_until > 0) {
      line("Will-Retry-Until: " + rfc5322Date(in.will_retry_until));
    }
  }
  line("");

  // The original.
  line("--" + boundary);
  if (full) {
    line("Content-Description: Undelivered Message");
    line("Content-Type: message/rfc822");
    if (eight) line("Content-Transfer-Encoding: 8bit");
  } else {
    line(failure ? "Content-Description: Undelivered Message Headers"
                 : "Content-Description: Delayed Message Headers");
    line("Content-Type: text/rfc822-headers");
  }
  line("");
  m += *original;
  if (!original->empty() && original->back() != '\n') line("");
  line("");
  line("--" + boundary + "--");
  return m;
}

// ---------------------------------------------------------------------------------------------
// Hand-off to sendmail.

SendmailBounceSender::SendmailBounceSender(std::vector<std::string> argv_prefix,
                                           std::chrono::seconds timeout)
    : argv_(std::move(argv_prefix)), timeout_(timeout) {}

namespace {

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

}  // namespace

Status SendmailBounceSender::send(const std::string& recipient, const std::string& message) {
  namespace bp = boost::process;
  if (argv_.empty() || argv_[0].empty()) return Error{0, "bounce: no sendmail program configured"};
  if (recipient.empty()) return Error{0, "bounce: refusing to send a notification to <>"};
  if (cancelled_) return Error{ECANCELED, "bounce: not handed to sendmail: stopping"};
  const std::string& prog = argv_[0];
  std::vector<std::string> args(argv_.begin() + 1, argv_.end());
  for (const char* a : {"-oi", "-f", "<>", "--"}) args.emplace_back(a);
  args.push_back(recipient);

  SigpipeGuard guard;
  bp::pipe in, err;
  std::error_code ec;
  bp::child child(bp::exe = prog, bp::args = args, bp::std_in<in, bp::std_out> bp::null,
                  bp::std_err > err, ec);
  if (ec) return Error{ec.value(), "bounce: cannot run " + prog + ": " + ec.message()};

  int wfd = in.native_sink();
  int rfd = err.native_source();
  ::fcntl(wfd, F_SETFL, ::fcntl(wfd, F_GETFL) | O_NONBLOCK);
  ::fcntl(rfd, F_SETFL, ::fcntl(rfd, F_GETFL) | O_NONBLOCK);
  const std::string data = toLf(message);
  size_t off = 0;
  bool writing = true, reading = true;
  std::string errtext;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  std::string failure;

  auto kill = [&](const std::string& why) -> Status {
    // Boost 1.74's terminate() reaps with WNOHANG and so may leave a zombie: kill and reap here.
    pid_t pid = child.id();
    ::kill(pid, SIGKILL);
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    child.detach();
    return Error{ETIMEDOUT, "bounce: " + prog + " for <" + recipient + "> " + why + "; killed it"};
  };

  while (writing || reading) {
    if (writing && off == data.size()) {
      in.close();  // EOF for the child; closes our write end only
      writing = false;
      continue;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return kill("timed out after " + std::to_string(timeout_.count()) + "s");
    if (cancelled_) {
      Status st = kill("given up on: dynmx-tunneld is stopping");
      logf(LogLevel::Warning, "%s (the notification stays spooled)", st.error().message.c_str());
      return st;
    }
    pollfd fds[2];
    int n = 0;
    if (writing) fds[n++] = pollfd{wfd, POLLOUT, 0};
    if (reading) fds[n++] = pollfd{rfd, POLLIN, 0};
    int pr = ::poll(fds, static_cast<nfds_t>(n),
                    static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (pr < 0 && errno != EINTR) {
      int e = errno;
      (void)kill("poll failed");
      return sysError(e, "bounce: poll on the pipes of " + prog);
    }
    if (pr <= 0) continue;
    for (int i = 0; i < n; ++i) {
      if (fds[i].fd == wfd && (fds[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t w = ::write(wfd, data.data() + off, data.size() - off);
        if (w > 0) {
          off += static_cast<size_t>(w);
        } else if (w < 0 && errno == EPIPE) {
          // The child closed its stdin; its exit status says whether it took the message.
          in.close();
          writing = false;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
          int e = errno;
          (void)kill("could not be written to");
          return sysError(e, "bounce: write to " + prog);
        }
      }
      if (fds[i].fd == rfd && (fds[i].revents & (POLLIN | POLLERR | POLLHUP))) {
        char buf[4096];
        ssize_t r = ::read(rfd, buf, sizeof buf);
        if (r > 0) {
          if (errtext.size() < 2000) errtext.append(buf, static_cast<size_t>(r));
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
          reading = false;
        }
      }
    }
  }

  // Both pipes are done; wait for the exit.
  for (;;) {
    std::error_code rec;
    if (!child.running(rec)) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      return kill("did not exit within " + std::to_string(timeout_.count()) + "s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  int status = child.native_exit_code();
  std::string detail = printable(errtext, 500);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status{};
  std::string how = WIFEXITED(status)     ? "exit status " + std::to_string(WEXITSTATUS(status))
                    : WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                          : "status " + std::to_string(status);
  return Error{0, "bounce: " + prog + " for <" + recipient + "> failed with " + how +
                      (detail.empty() ? "" : ": " + detail)};
}

}  // namespace dynmx::tunneld
