// sendmail_harness.hpp: a real sendmail on a loopback port, dynmx-milter on a private socket, and
// a small SMTP client, for integration tests and benchmarks.
//
// TestSendmail builds a .cf from a small .mc with m4 (the options known to work on Debian 12: see
// /work/shared/REFERENCE.md), runs `sendmail -bD` (daemon in the foreground, so that it is ours
// to stop by pid) in queue-only mode on a free port, and reads its private queue. TestMilter
// writes a dynmx configuration and runs `dynmx-milter -f` on it. SmtpSession speaks plain SMTP to
// a port, one reply checked per command. Everything started is stopped by pid in the destructors,
// also when a test fails; setup failures throw std::runtime_error naming the cause.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"

namespace dynmx::test {

// ---------------------------------------------------------------------------------------------
// dynmx-milter under test.

struct TestClient {
  TestClient(std::string n, std::vector<std::string> d)
      : name(std::move(n)), domains(std::move(d)) {}
  std::string name;
  std::vector<std::string> domains;
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: not written (the default, 22)
  std::string host_key = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
  std::string extra;  // more lines for this [[client]] table, e.g. "identity = \"/k\"\n"
};

struct TestMilterOptions {
  std::vector<TestClient> clients = {{"alpha", {"alpha.example", ".alpha.example"}},
                                     {"beta", {"beta.example"}}};
  std::string max_message_size;  // TOML value text, e.g. "10000"; empty: the default
  std::string spool_extra;       // more [spool] lines, e.g. "min_free = \"1M\"\n"
  std::string on_error;          // "tempfail" / "accept"; empty: the default
  std::string socket_mode;       // e.g. "0600"; empty: the default
  std::string socket_group;      // milter.socket_group; empty: not written
  std::string user;              // milter.user; empty: not written
  std::string program;           // empty: <bin>/dynmx-milter
  std::string socket_path;       // empty: milter.sock in a private directory under /run
  std::string extra_toml;        // appended before the clients, e.g. a [tunneld] table, so that
                                 // one file serves the milter and dynmx-tunneld in a test
};

class TestMilter {
 public:
  // Everything lives under `dir` (dynmx.toml, spool/ (prepared), milter.log) except the socket:
  // sendmail refuses a milter socket with a world-writable directory anywhere on its path (such
  // as /tmp), so it goes into a private directory under /run, removed by the destructor.
  explicit TestMilter(std::string dir, TestMilterOptions opts = {});
  ~TestMilter();

  std::string configText() const;
  void writeConfig();  // (re)writes dynmx.toml from the options
  void setOptions(TestMilterOptions opts) { opts_ = std::move(opts); }
  TestMilterOptions& options() { return opts_; }

  // Starts `dynmx-milter -f -c dynmx.toml` and waits until it accepts connections.
  void start();
  void stop();
  Process& process() { return proc_; }

  const std::string& dir() const { return dir_; }
  std::string configPath() const { return dir_ + "/dynmx.toml"; }
  std::string spoolDir() const { return dir_ + "/spool"; }
  std::string socketPath() const {
    return opts_.socket_path.empty() ? sockdir_ + "/milter.sock" : opts_.socket_path;
  }
  std::string socketSpec() const { return "unix:" + socketPath(); }
  std::string logPath() const { return dir_ + "/milter.log"; }
  std::string log() const;
  // Waits until the log contains `needle` (generous deadline); false on timeout.
  bool waitForLog(const std::string& needle,
                  std::chrono::milliseconds deadline = std::chrono::seconds(60)) const;

 private:
  std::string dir_;
  std::string sockdir_;
  TestMilterOptions opts_;
  Process proc_;
};

// True once something accepts connections on the Unix socket.
bool unixSocketAccepts(const std::string& path);

// ---------------------------------------------------------------------------------------------
// sendmail.

struct TestSendmailOptions {
  std::string milter_socket;         // "unix:/path"; empty: no InputMailFilters
  std::string milter_flags = "F=T";  // as in INPUT_MAIL_FILTER
  std::string milter_timeouts = "S:10s;R:10s;E:1m";
  std::vector<std::string> relay_domains;  // RELAY_DOMAIN(...): the client domains
  std::string extra_mc;                    // more .mc lines, before the MAILER lines
  std::string tail_mc;                 // .mc lines after MAILER(`smtp'), e.g. MAILER_DEFINITIONS
  std::string delivery_mode = "-odq";  // "-odq": queue only; "-odb": deliver in background
};

struct QueuedMessage {
  std::string id;                       // sendmail queue id (qf<id>)
  std::string sender;                   // from the S line, without brackets
  std::vector<std::string> recipients;  // addresses from the R lines
  std::string headers;                  // H lines as stored (sendmail's own form)
  std::string body;                     // df file
};

class TestSendmail {
 public:
  // Everything lives under `dir` (created): sendmail.mc/.cf, queue/ (mode 700), sendmail.pid.
  TestSendmail(std::string dir, TestSendmailOptions opts);
  ~TestSendmail();

  // Builds the .cf (m4), picks a free port, starts sendmail -bD with the delivery mode (queue
  // only by default) and waits until it accepts connections.
  void start();
  void stop();
  bool running() { return proc_.running(); }
  Process& process() { return proc_; }

  uint16_t port() const { return port_; }
  const std::string& dir() const { return dir_; }
  std::string cfPath() const { return dir_ + "/sendmail.cf"; }
  std::string queueDir() const { return dir_ + "/queue"; }
  std::string logPath() const { return dir_ + "/sendmail.log"; }

  // The messages in the queue (qf/df pairs).
  std::vector<QueuedMessage> queue() const;

 private:
  std::string dir_;
  TestSendmailOptions opts_;
  uint16_t port_ = 0;
  Process proc_;
};

// ---------------------------------------------------------------------------------------------
// SMTP client.

struct SmtpReply {
  int code = 0;
  std::string text;  // all lines, joined with "\n"
};

class SmtpSession {
 public:
  // Connects to 127.0.0.1:port and reads the greeting; throws on failure.
  explicit SmtpSession(uint16_t port, std::chrono::seconds timeout = std::chrono::seconds(120));
  ~SmtpSession();
  SmtpSession(const SmtpSession&) = delete;
  SmtpSession& operator=(const SmtpSession&) = delete;

  const SmtpReply& greeting() const { return greeting_; }
  // Sends one command line (CRLF added) and reads its reply.
  SmtpReply command(const std::string& line);
  // Sends message content (CRLF line ends, dot-stuffed here) and the final dot; returns the reply.
  SmtpReply data(const std::string& content);

  // EHLO, MAIL, RCPT..., DATA, content. Returns the final reply, or the first failing one.
  SmtpReply sendMail(const std::string& from, const std::vector<std::string>& rcpts,
                     const std::string& content, std::vector<SmtpReply>* rcpt_replies = nullptr);
  void quit();

 private:
  SmtpReply readReply();
  void sendAll(const std::string& bytes);
  int fd_ = -1;
  std::string buf_;
  SmtpReply greeting_;
  bool ehlo_done_ = false;
};

}  // namespace dynmx::test
