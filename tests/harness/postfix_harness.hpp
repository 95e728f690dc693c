// postfix_harness.hpp: Debian 12's real Postfix, run from its unpacked package, for tests.
//
// Debian's `postfix` and `sendmail-bin` conflict, so Postfix is never installed here: the package
// is downloaded once with `apt-get download postfix`, unpacked with `dpkg -x` into a cache
// (/var/cache/dynmx-tests/postfix, or $DYNMX_POSTFIX_CACHE) and run from there, its programs
// finding libpostfix-*.so through LD_LIBRARY_PATH (which main.cf's import_environment passes on
// to every daemon). A second run uses the cache and downloads nothing; concurrent test processes
// take a lock while one of them fills it.
//
// TestPostfix runs one private instance: its own config directory (main.cf, master.cf written
// from the options), queue, data directory and log file (maillog_file: no syslog), an smtpd on
// 127.0.0.1 and a port chosen at run time, `mail_owner = mail`, `setgid_group = news`, its own
// copy of the package's commands (command_directory). start()
// runs `postfix set-permissions`, then the master daemon in the foreground (`master -s`), so the
// pid held is the master's; stop() and the destructor stop it by that pid and every process it
// started (found in /proc) by theirs. Setup failures throw std::runtime_error naming the cause,
// with the tail of Postfix's log.
//
// postfixPackage() says why when the package cannot be had (no network, no apt lists): tests then
// skip with that reason; nothing else makes them skip.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"

namespace dynmx::test {

struct PostfixPackage {
  std::string root;     // the unpacked package: ROOT/usr/sbin/postfix, ROOT/usr/lib/postfix/...
  std::string version;  // Debian version, e.g. "3.7.11-0+deb12u1"
  std::string libDir() const { return root + "/usr/lib/postfix"; }
  std::string daemonDir() const { return root + "/usr/lib/postfix/sbin"; }
  std::string commandDir() const { return root + "/usr/sbin"; }
  // The environment every program of the package needs (LD_LIBRARY_PATH).
  std::vector<std::string> env() const { return {"LD_LIBRARY_PATH=" + libDir()}; }
};

// The unpacked package from the cache, downloaded and unpacked first when missing. On failure
// returns nullopt and puts the reason (apt-get's own words included) into *why.
std::optional<PostfixPackage> postfixPackage(std::string* why);

struct TestPostfixOptions {
  std::string myhostname = "mx.dynmx-test.example";
  std::vector<std::string> relay_domains;  // relay_domains: the client domains
  // Start the queue manager and delivery agents. Without it, accepted mail stays in incoming/,
  // where queue() reads it: what the MTA kept is visible and nothing leaves.
  bool deliver = false;
  bool smtpd = true;  // an smtpd on 127.0.0.1:port()
  // Run the services Debian's master.cf runs chrooted (smtpd, cleanup, pickup, qmgr...) chrooted
  // in the queue directory, as Debian does.
  bool chroot = false;
  std::string main_cf;    // more main.cf lines (after ours: a later line wins)
  std::string master_cf;  // more master.cf lines
};

// A message in the instance's queue, as postcat shows it.
struct PostfixQueued {
  std::string id;                       // queue id (file name)
  std::string queue;                    // "incoming", "active", "deferred", "hold", "maildrop"
  std::string sender;                   // envelope sender ("" for <>)
  std::vector<std::string> recipients;  // recipients still to be delivered
  std::string content;                  // header and body, lines ending in "\n"
};

class TestPostfix {
 public:
  // Everything lives under `dir` (created): conf/, queue/, data/, sbin/, maillog. The port is
  // chosen and main.cf and master.cf are written here, so that postmap can run before start().
  TestPostfix(std::string dir, PostfixPackage pkg, TestPostfixOptions opts = {});
  ~TestPostfix();
  TestPostfix(const TestPostfix&) = delete;
  TestPostfix& operator=(const TestPostfix&) = delete;

  // Sets permissions, starts the master and
  // waits until the smtpd accepts connections (or, without an smtpd, until the master logged
  // that it started).
  void start();
  void stop();
  bool running() { return proc_.running(); }
  pid_t pid() const { return proc_.pid(); }

  uint16_t port() const { return port_; }
  const PostfixPackage& package() const { return pkg_; }
  const std::string& dir() const { return dir_; }
  std::string confDir() const { return dir_ + "/conf"; }
  std::string queueDir() const { return dir_ + "/queue"; }
  std::string logPath() const { return dir_ + "/maillog"; }
  std::string log() const;
  bool waitForLog(const std::string& needle,
                  std::chrono::milliseconds deadline = std::chrono::seconds(60)) const;
  // command_directory: a private copy of the package's usr/sbin, so that set-permissions never
  // touches the cache and the set-gid bits can be dropped (see start()).
  std::string commandDir() const { return dir_ + "/sbin"; }
  std::string sendmailPath() const { return commandDir() + "/sendmail"; }
  std::vector<std::string> env() const;  // LD_LIBRARY_PATH and MAIL_CONFIG for this instance

  // Runs a program of the package (argv[0] a bare name like "postcat" or "postqueue") with this
  // instance's environment; returns its exit status, stdout (and stderr) into *out.
  int run(std::vector<std::string> argv, std::string* out = nullptr,
          const std::string& stdin_data = "") const;

  // Every message in incoming/, active/, deferred/, hold/ and maildrop/.
  std::vector<PostfixQueued> queue() const;

 private:
  std::string mainCf() const;
  std::string masterCf() const;
  void copyCommands();

  std::string dir_;
  PostfixPackage pkg_;
  TestPostfixOptions opts_;
  uint16_t port_ = 0;
  Process proc_;
};

// Runs argv with `env` added to the environment and `cwd` as working directory ("" = ours);
// stdout and stderr go to *out when given. Returns the exit status, -1 if it did not exit.
int runWithEnv(const std::vector<std::string>& argv, const std::vector<std::string>& env,
               const std::string& cwd, std::string* out, const std::string& stdin_data = "");

}  // namespace dynmx::test
