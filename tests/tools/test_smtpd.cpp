// dynmx-test-smtpd: a scripted SMTP server on stdin/stdout, spoken the way `sendmail -bs` speaks
// it, so that it can be the forced command of an sshd authorized_keys line in tests and benchmarks.
//
// Usage: dynmx-test-smtpd [options]
//   --maildir DIR           sink mode: each accepted message becomes DIR/N.env (the MAIL and the
//                           accepted RCPT command lines as received, CRLF) and DIR/N.data (the DATA
//                           bytes exactly as received, dot-stuffing undone, without the final
//                           ".\r\n"). Both are written as DIR/.tmp.* and renamed into place, .data
//                           last, so a test may wait for N.data and then read both.
//   --discard               count messages only (benchmark sink); this session's count goes to
//                           stderr at the end and, with --count-file FILE, each message adds one
//                           to the number in FILE (under flock: concurrent sessions share it)
//   --transcript FILE       append every command line received (not DATA content) to FILE
//   --name NAME             host name in the greeting and EHLO reply (default test.invalid)
//   --greeting-reply REPLY  instead of "220 NAME ESMTP" (e.g. "554 5.3.2 go away": then only QUIT)
//   --noise TEXT            a line printed before the greeting (repeatable), like a shell's motd
//   --no-pipelining --no-dsn --no-size --no-8bitmime --no-smtputf8 --no-ehlo
//                           leave that extension out of the EHLO reply (--no-ehlo: 502 to EHLO)
//   --chunking              offer CHUNKING (RFC 3030) as Postfix does, and take BDAT: each chunk
//                           is read whole (exactly its size) whatever the reply; a chunk after a
//                           failed MAIL or with no accepted recipient is discarded (503/554); the
//                           LAST chunk ends the message like the final dot (--dot-reply applies)
//   --size N                the SIZE limit advertised (default 104857600); bigger SIZE= is refused
//   --mail-reply REPLY      reply to every MAIL FROM (default 250 2.1.0 Ok)
//   --rcpt-reply ADDR=REPLY reply to RCPT TO:<ADDR> (case-insensitive; repeatable)
//   --data-reply REPLY      reply to DATA (default 354 ...)
//   --dot-reply REPLY       reply to the final dot (default 250 2.0.0 Ok: queued as N)
//   --disconnect-after-data-bytes N
//                           exit (closing the stream) once N bytes of DATA content were read
//   --stall STAGE           at STAGE never reply: read and discard input until EOF, then exit.
//                           STAGE: greeting ehlo mail rcpt data dot quit; or "body": after the
//                           354, stop reading altogether (the client's writes back up) and exit
//                           only when the reader of stdout hangs up (the channel closed)
//   --garbage STAGE         at STAGE reply with a line that is no SMTP reply
//   --messages-max N        exit after N messages (benchmarks)
//   --hold STAGE:N:FILE     pins a link fault for a test: in this session's Nth transaction, at
//                           STAGE, create FILE (O_EXCL: once across all sessions; when FILE is
//                           there already, nothing is held), send the replies due so far, and then
//                           neither read nor reply until the reader of stdout hangs up. STAGE:
//                           mail (the MAIL command read, not answered: between transactions),
//                           body (354 sent and one line of content read; with BDAT: the BDAT
//                           command read, its chunk not), dot (the final dot or BDAT LAST read,
//                           the message stored, its reply never sent)
// A REPLY is a whole reply line without CRLF, e.g. "450 4.2.0 busy"; "\n" inside it (two
// characters) makes a multi-line reply ("550-5.1.1 a\n550 5.1.1 b").
//
// Behaviour: replies are buffered and flushed before each blocking read, the way Postfix and
// sendmail do, so a pipelining client gets one write per group. Exit 0 after QUIT or EOF, 64 on a
// bad option, 74 when the maildir cannot be written. No libraries beyond the standard one.
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string maildir;
  bool discard = false;
  std::string count_file;
  std::string transcript;
  std::string name = "test.invalid";
  std::string greeting_reply;
  std::vector<std::string> noise;
  bool pipelining = true, dsn = true, size = true, eightbit = true, smtputf8 = true, ehlo = true;
  bool chunking = false;
  unsigned long long size_limit = 104857600ull;
  std::string mail_reply, data_reply, dot_reply;
  std::map<std::string, std::string> rcpt_reply;  // lower-case address -> reply
  long long disconnect_after = -1;
  std::string stall, garbage;
  long long messages_max = -1;
  std::string hold_stage, hold_file;
  unsigned long long hold_at = 0;  // transaction number in this session, from 1
};

Options g_opt;
std::string g_out;
std::string g_in;
size_t g_in_pos = 0;
bool g_eof = false;
FILE* g_transcript = nullptr;

void flushOut() {
  size_t off = 0;
  while (off < g_out.size()) {
    ssize_t n = ::write(1, g_out.data() + off, g_out.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::exit(0);  // the client is gone
    }
    off += static_cast<size_t>(n);
  }
  g_out.clear();
}

// Reads more input; flushes replies first (we are about to block).
bool fill() {
  if (g_eof) return false;
  flushOut();
  if (g_in_pos > 0) {
    g_in.erase(0, g_in_pos);
    g_in_pos = 0;
  }
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      g_eof = true;
      return false;
    }
    g_in.append(buf, static_cast<size_t>(n));
    return true;
  }
}

// One line including its LF (or what is left at EOF); false at EOF with nothing left.
bool readLine(std::string& line) {
  for (;;) {
    size_t nl = g_in.find('\n', g_in_pos);
    if (nl != std::string::npos) {
      line.assign(g_in, g_in_pos, nl + 1 - g_in_pos);
      g_in_pos = nl + 1;
      return true;
    }
    if (!fill()) {
      if (g_in_pos < g_in.size()) {
        line.assign(g_in, g_in_pos, std::string::npos);
        g_in_pos = g_in.size();
        return true;
      }
      return false;
    }
  }
}

// Exactly n bytes (a BDAT chunk); false at EOF before that.
bool readExact(size_t n, std::string& out) {
  while (g_in.size() - g_in_pos < n) {
    if (!fill()) return false;
  }
  out.assign(g_in, g_in_pos, n);
  g_in_pos += n;
  return true;
}

void reply(const std::string& r) {
  size_t start = 0;
  for (;;) {
    size_t nl = r.find("\\n", start);
    g_out += r.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    g_out += "\r\n";
    if (nl == std::string::npos) break;
    start = nl + 2;
  }
}

// Waits, reading nothing, until whoever reads our stdout is gone (POLLERR/POLLHUP on fd 1).
[[noreturn]] void waitForHangup() {
  flushOut();
  pollfd p{1, 0, 0};
  for (;;) {
    int n = ::poll(&p, 1, -1);
    if (n > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL))) std::exit(0);
  }
}

// --hold: whether `stage` of this session's transaction number `transaction` is the held one,
// and it was not held yet (by this or another session).
bool holdDue(const char* stage, unsigned long long transaction) {
  return g_opt.hold_stage == stage && g_opt.hold_at == transaction &&
         ::access(g_opt.hold_file.c_str(), F_OK) != 0;
}

// Claims the hold (the file, O_EXCL: one session of all wins); false when another has it.
bool claimHold(const char* stage, unsigned long long transaction) {
  if (!holdDue(stage, transaction)) return false;
  int fd = ::open(g_opt.hold_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  std::string what = std::string(stage) + " " + std::to_string(transaction) + "\n";
  (void)!::write(fd, what.data(), what.size());
  ::close(fd);
  return true;
}

// mail and body: the replies due so far go out, then nothing more (see --hold).
void holdPoint(const char* stage, unsigned long long transaction) {
  if (!holdDue(stage, transaction)) return;
  flushOut();
  if (claimHold(stage, transaction)) waitForHangup();
}

[[noreturn]] void stallForever() {
  flushOut();
  std::string line;
  while (readLine(line)) {
  }
  std::exit(0);
}

// Fault hooks for a stage: stall or garbage instead of the reply. True when handled.
bool fault(const char* stage) {
  if (g_opt.stall == stage) stallForever();
  if (g_opt.garbage == stage) {
    g_out += "this is not an SMTP reply\r\n";
    return true;
  }
  return false;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string upperPrefix(const std::string& s, size_t n) {
  std::string r = s.substr(0, n);
  for (char& c : r) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return r;
}

std::string chomp(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

bool writeFile(const std::string& path, const std::string& data) {
  std::string tmp = g_opt.maildir + "/.tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      ::close(fd);
      return false;
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) return false;
  return ::rename(tmp.c_str(), path.c_str()) == 0;
}

// A name not used yet in the maildir (several sessions may write into one directory).
std::string nextBase() {
  static unsigned long counter = 0;
  for (;;) {
    std::string base =
        g_opt.maildir + "/" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    if (::access((base + ".data").c_str(), F_OK) != 0) return base;
  }
}

// Adds one to the decimal number in `path`, under flock, so that concurrent sessions (one process
// each) count into one file. The number only grows, and is written in one pwrite.
void bumpCounter(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (::flock(fd, LOCK_EX) == 0) {
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    unsigned long long v = n > 0 ? std::strtoull(buf, nullptr, 10) : 0;
    std::string s = std::to_string(v + 1) + "\n";
    // Never shorter than before (the number grows): no truncation needed.
    if (::pwrite(fd, s.data(), s.size(), 0) != static_cast<ssize_t>(s.size())) {
      std::fprintf(stderr, "dynmx-test-smtpd: cannot update %s\n", path.c_str());
    }
  }
  ::close(fd);  // releases the lock
}

void usage(const char* why) {
  std::fprintf(stderr, "dynmx-test-smtpd: %s (see the comment at the top of test_smtpd.cpp)\n",
               why);
  std::exit(64);
}

void parseArgs(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--maildir")
      g_opt.maildir = val();
    else if (a == "--discard")
      g_opt.discard = true;
    else if (a == "--count-file")
      g_opt.count_file = val();
    else if (a == "--transcript")
      g_opt.transcript = val();
    else if (a == "--name")
      g_opt.name = val();
    else if (a == "--greeting-reply")
      g_opt.greeting_reply = val();
    else if (a == "--noise")
      g_opt.noise.push_back(val());
    else if (a == "--no-pipelining")
      g_opt.pipelining = false;
    else if (a == "--no-dsn")
      g_opt.dsn = false;
    else if (a == "--no-size")
      g_opt.size = false;
    else if (a == "--no-8bitmime")
      g_opt.eightbit = false;
    else if (a == "--no-smtputf8")
      g_opt.smtputf8 = false;
    else if (a == "--no-ehlo")
      g_opt.ehlo = false;
    else if (a == "--chunking")
      g_opt.chunking = true;
    else if (a == "--size")
      g_opt.size_limit = std::strtoull(val().c_str(), nullptr, 10);
    else if (a == "--mail-reply")
      g_opt.mail_reply = val();
    else if (a == "--data-reply")
      g_opt.data_reply = val();
    else if (a == "--dot-reply")
      g_opt.dot_reply = val();
    else if (a == "--rcpt-reply") {
      std::string v = val();
      size_t eq = v.find('=');
      if (eq == std::string::npos) usage("--rcpt-reply wants ADDR=REPLY");
      g_opt.rcpt_reply[lower(v.substr(0, eq))] = v.substr(eq + 1);
    } else if (a == "--disconnect-after-data-bytes")
      g_opt.disconnect_after = std::atoll(val().c_str());
    else if (a == "--stall")
      g_opt.stall = val();
    else if (a == "--garbage")
      g_opt.garbage = val();
    else if (a == "--messages-max")
      g_opt.messages_max = std::atoll(val().c_str());
    else if (a == "--hold") {
      std::string v = val();
      size_t c1 = v.find(':'), c2 = c1 == std::string::npos ? c1 : v.find(':', c1 + 1);
      if (c2 == std::string::npos) usage("--hold wants STAGE:N:FILE");
      g_opt.hold_stage = v.substr(0, c1);
      g_opt.hold_at = std::strtoull(v.c_str() + c1 + 1, nullptr, 10);
      g_opt.hold_file = v.substr(c2 + 1);
      if (g_opt.hold_stage != "mail" && g_opt.hold_stage != "body" && g_opt.hold_stage != "dot")
        usage("--hold STAGE is mail, body or dot");
    } else
      usage(("unknown option " + a).c_str());
  }
  if (g_opt.maildir.empty() && !g_opt.discard) usage("need --maildir DIR or --discard");
}

// The address inside <...> after "MAIL FROM:" / "RCPT TO:".
std::string pathOf(const std::string& line, size_t prefix) {
  size_t lt = line.find('<', prefix);
  size_t gt = line.find('>', lt == std::string::npos ? prefix : lt);
  if (lt == std::string::npos || gt == std::string::npos) return "";
  return line.substr(lt + 1, gt - lt - 1);
}

// The end of a message (final dot or BDAT LAST): stores or counts it and replies. Returns 0 to go
// on, 1 when --messages-max is reached, 74 when the maildir cannot be written.
int completeMessage(const std::string& envelope, const std::string& data,
                    unsigned long long& messages) {
  std::string dr = g_opt.dot_reply.empty()
                       ? "250 2.0.0 Ok: queued as " + std::to_string(messages + 1)
                       : g_opt.dot_reply;
  if (dr[0] == '2') {
    ++messages;
    if (!g_opt.discard) {
      std::string base = nextBase();
      if (!writeFile(base + ".env", envelope) || !writeFile(base + ".data", data)) {
        std::fprintf(stderr, "dynmx-test-smtpd: cannot write into %s: %s\n",
                     g_opt.maildir.c_str(), std::strerror(errno));
        reply("451 4.3.0 Error: cannot write the message");
        flushOut();
        return 74;
      }
    } else if (!g_opt.count_file.empty()) {
      bumpCounter(g_opt.count_file);
    }
  }
  reply(dr);
  if (g_opt.messages_max >= 0 && static_cast<long long>(messages) >= g_opt.messages_max) {
    flushOut();
    return 1;
  }
  return 0;
}

// completeMessage, or with --hold at "dot": the message stored, the replies before it sent, its
// own reply never (the hold is claimed only once the message is stored).
int completeWithHold(const std::string& envelope, const std::string& data,
                     unsigned long long& messages, unsigned long long transaction) {
  bool hold = holdDue("dot", transaction);
  if (hold) flushOut();
  int end = completeMessage(envelope, data, messages);
  if (hold && end != 74 && claimHold("dot", transaction)) {
    g_out.clear();
    waitForHangup();
  }
  return end;
}

}  // namespace

int main(int argc, char** argv) {
  parseArgs(argc, argv);
  if (!g_opt.transcript.empty()) {
    g_transcript = std::fopen(g_opt.transcript.c_str(), "a");
    if (g_transcript == nullptr) usage("cannot open the transcript file");
    setvbuf(g_transcript, nullptr, _IOLBF, 0);
  }
  for (const auto& n : g_opt.noise) g_out += n + "\r\n";
  if (!fault("greeting")) {
    reply(g_opt.greeting_reply.empty() ? "220 " + g_opt.name + " ESMTP dynmx-test-smtpd"
                                       : g_opt.greeting_reply);
  }
  bool refused = !g_opt.greeting_reply.empty() && g_opt.greeting_reply[0] != '2';

  bool have_mail = false;
  std::string envelope;
  size_t rcpts_ok = 0;
  unsigned long long messages = 0;
  unsigned long long mails = 0;  // MAIL commands in this session (--hold counts transactions)
  std::string bdat_data;  // the chunks of the message so far
  long long bdat_seen = 0;
  std::string line;
  while (readLine(line)) {
    std::string cmd = chomp(line);
    if (g_transcript) std::fprintf(g_transcript, "%s\n", cmd.c_str());
    std::string verb = upperPrefix(cmd, 4);
    if (verb == "QUIT") {
      if (fault("quit")) continue;
      reply("221 2.0.0 " + g_opt.name + " closing connection");
      break;
    }
    if (refused) {
      reply("503 5.5.0 polite people say goodbye");
      continue;
    }
    if (verb == "EHLO") {
      if (fault("ehlo")) continue;
      if (!g_opt.ehlo) {
        reply("502 5.5.2 Error: command not recognized");
        continue;
      }
      std::vector<std::string> caps;
      if (g_opt.pipelining) caps.push_back("PIPELINING");
      if (g_opt.size) caps.push_back("SIZE " + std::to_string(g_opt.size_limit));
      if (g_opt.eightbit) caps.push_back("8BITMIME");
      if (g_opt.dsn) caps.push_back("DSN");
      if (g_opt.smtputf8) caps.push_back("SMTPUTF8");
      if (g_opt.chunking) caps.push_back("CHUNKING");
      caps.push_back("ENHANCEDSTATUSCODES");
      g_out += "250-" + g_opt.name + "\r\n";
      for (size_t i = 0; i < caps.size(); ++i) {
        g_out += (i + 1 == caps.size() ? "250 " : "250-") + caps[i] + "\r\n";
      }
      have_mail = false;
    } else if (verb == "HELO") {
      if (fault("ehlo")) continue;
      reply("250 " + g_opt.name);
    } else if (verb == "MAIL") {
      holdPoint("mail", ++mails);
      if (fault("mail")) continue;
      if (have_mail) {
        reply("503 5.5.1 Error: nested MAIL command");
        continue;
      }
      size_t sz = lower(cmd).find(" size=");
      if (g_opt.size && sz != std::string::npos &&
          std::strtoull(cmd.c_str() + sz + 6, nullptr, 10) > g_opt.size_limit) {
        reply("552 5.3.4 Message size exceeds fixed limit");
        continue;
      }
      std::string r = g_opt.mail_reply.empty() ? "250 2.1.0 Ok" : g_opt.mail_reply;
      reply(r);
      if (r[0] == '2') {
        have_mail = true;
        envelope = cmd + "\r\n";
        rcpts_ok = 0;
        bdat_data.clear();
        bdat_seen = 0;
      }
    } else if (verb == "RCPT") {
      if (fault("rcpt")) continue;
      if (!have_mail) {
        reply("503 5.5.1 Error: need MAIL command");
        continue;
      }
      auto it = g_opt.rcpt_reply.find(lower(pathOf(cmd, 8)));
      std::string r = it == g_opt.rcpt_reply.end() ? "250 2.1.5 Ok" : it->second;
      reply(r);
      if (r[0] == '2') {
        envelope += cmd + "\r\n";
        ++rcpts_ok;
      }
    } else if (verb == "DATA") {
      if (fault("data")) continue;
      if (!have_mail) {
        reply("503 5.5.1 Error: need RCPT command");
        continue;
      }
      if (rcpts_ok == 0) {
        reply("554 5.5.1 Error: no valid recipients");
        continue;
      }
      std::string r =
          g_opt.data_reply.empty() ? "354 End data with <CR><LF>.<CR><LF>" : g_opt.data_reply;
      reply(r);
      if (r.compare(0, 3, "354") != 0) continue;
      if (g_opt.stall == "body") waitForHangup();
      std::string data;
      long long seen = 0;
      bool complete = false;
      while (readLine(line)) {
        if (seen == 0) holdPoint("body", mails);
        seen += static_cast<long long>(line.size());
        if (g_opt.disconnect_after >= 0 && seen >= g_opt.disconnect_after) {
          flushOut();
          return 0;
        }
        if (line == ".\r\n") {
          complete = true;
          break;
        }
        if (!g_opt.discard) data.append(line[0] == '.' ? line.substr(1) : line);
      }
      if (!complete) return 0;  // EOF inside DATA: nothing was accepted
      have_mail = false;
      if (fault("dot")) continue;
      int end = completeWithHold(envelope, data, messages, mails);
      if (end == 74) return 74;
      if (end == 1) break;
    } else if (verb == "BDAT" && g_opt.chunking) {
      // BDAT <size> [LAST]
      char* endp = nullptr;
      std::string arg = cmd.size() > 5 ? cmd.substr(5) : "";
      unsigned long long n = std::strtoull(arg.c_str(), &endp, 10);
      std::string rest = endp ? lower(std::string(endp)) : "";
      bool last = rest == " last";
      if (arg.empty() || endp == arg.c_str() || (!last && !rest.empty())) {
        reply("501 5.5.4 Syntax: BDAT size [LAST]");
        continue;
      }
      if (bdat_seen == 0) holdPoint("body", mails);
      std::string chunk;
      if (!readExact(static_cast<size_t>(n), chunk)) return 0;  // EOF in a chunk: nothing kept
      bdat_seen += static_cast<long long>(n);
      if (g_opt.disconnect_after >= 0 && bdat_seen >= g_opt.disconnect_after) {
        flushOut();
        return 0;
      }
      if (!have_mail) {
        reply("503 5.5.1 Error: need MAIL command");
        continue;
      }
      if (rcpts_ok == 0) {
        have_mail = false;
        reply("554 5.5.1 Error: no valid recipients");
        continue;
      }
      if (!g_opt.discard) bdat_data += chunk;
      if (!last) {
        reply("250 2.0.0 " + std::to_string(n) + " octets received");
        continue;
      }
      have_mail = false;
      if (fault("dot")) continue;
      int end = completeWithHold(envelope, bdat_data, messages, mails);
      bdat_data.clear();
      bdat_seen = 0;
      if (end == 74) return 74;
      if (end == 1) break;
    } else if (verb == "RSET") {
      have_mail = false;
      reply("250 2.0.0 Ok");
    } else if (verb == "NOOP") {
      reply("250 2.0.0 Ok");
    } else {
      reply("500 5.5.2 Error: command not recognized");
    }
  }
  flushOut();
  if (g_opt.discard) std::fprintf(stderr, "dynmx-test-smtpd: %llu messages\n", messages);
  return 0;
}
