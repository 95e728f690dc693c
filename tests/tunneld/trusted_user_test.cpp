// trusted_user_test.cpp: the sendmail line `dynmxctl add-client` prints,
// define(`confTRUSTED_USERS', `USER')dnl, does what it claims with the real sendmail 8.17: run as
// the client's dedicated account, `sendmail -bs` with a foreign envelope sender then queues the
// message without an X-Authentication-Warning header; without the line it adds one.
//
// How: a real unprivileged account (useradd here, userdel at the end, also on failure); the line
// taken verbatim from dynmxctl add-client --user THAT_ACCOUNT; two .cf files built with m4 from a
// minimal .mc, one with the line and one without. The forced command on the client is
// "/usr/sbin/sendmail -bs" with no -C, and sendmail run so by an ordinary user reads submit.cf
// (the test proves it: only submit.cf is replaced). So each run happens in a child with private
// mount and UTS namespaces, where the built .cf is bind-mounted over /etc/mail/submit.cf and the
// host name is qualified; the child drops to the account (setgroups, setgid, setuid) and execs
// /usr/sbin/sendmail -odq -bs. Not -C: sendmail adds "Processed by USER with -C FILE" for any
// non-root caller, trusted or not. The test speaks SMTP on its stdin/stdout and reads the header
// lines (H) of the qf file in the .cf's private queue directory.
// Failure behaviour: needs root (skipped otherwise); each step's failure names the step.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr int kReplyDeadlineMs = 120000;  // a guard against hanging, not an assertion

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// A user that exists for the life of the object (removed with userdel, also when a test fails).
class TempAccount {
 public:
  explicit TempAccount(std::string name) : name_(std::move(name)) {
    if (getpwnam(name_.c_str()))  // left over by a test that was killed
      (void)runCommand({"/usr/sbin/userdel", name_});
    ok_ = runCommand({"/usr/sbin/useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name_}) == 0;
  }
  ~TempAccount() {
    if (ok_) (void)runCommand({"/usr/sbin/userdel", name_});
  }
  TempAccount(const TempAccount&) = delete;
  TempAccount& operator=(const TempAccount&) = delete;
  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  bool ok_ = false;
};

// One SMTP reply (the lines up to the one whose fourth character is a space), or "" at EOF.
std::string readReply(int fd) {
  std::string reply, line;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, kReplyDeadlineMs) <= 0) return reply;
    char c = 0;
    if (read(fd, &c, 1) != 1) return reply;
    line += c;
    if (c != '\n') continue;
    reply += line;
    bool last = line.size() < 4 || line[3] != '-';
    line.clear();
    if (last) return reply;
  }
}

bool writeAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// In the child: private mount and UTS namespaces, `cf` over /etc/mail/submit.cf, a qualified
// host name, then the account's identity and sendmail -bs. Only system calls after fork.
[[noreturn]] void execSendmailAs(const char* cf, uid_t uid, gid_t gid, int in, int out) {
  if (dup2(in, 0) < 0 || dup2(out, 1) < 0) _exit(120);
  static const char kHost[] = "mx.dynmx-test.example";
  if (unshare(CLONE_NEWNS | CLONE_NEWUTS) != 0) _exit(121);
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(122);
  if (mount(cf, "/etc/mail/submit.cf", nullptr, MS_BIND, nullptr) != 0) _exit(123);
  if (sethostname(kHost, sizeof kHost - 1) != 0) _exit(124);
  if (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(125);
  char* const argv[] = {const_cast<char*>("/usr/sbin/sendmail"), const_cast<char*>("-odq"),
                        const_cast<char*>("-bs"), nullptr};
  char* const envp[] = {const_cast<char*>("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nullptr};
  execve(argv[0], argv, envp);
  _exit(127);
}

class TrustedUserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (useradd, mount namespaces, setuid)";
    std::signal(SIGPIPE, SIG_IGN);  // sendmail may close first; write() then says so
    account = std::make_unique<TempAccount>("dxtr" + std::to_string(getpid() % 100000));
    ASSERT_TRUE(account->ok()) << "useradd " << account->name() << " failed";
    struct passwd* pw = getpwnam(account->name().c_str());
    ASSERT_NE(pw, nullptr) << "getpwnam " << account->name();
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }

  // The sendmail line exactly as dynmxctl add-client prints it for the account.
  std::string printedLine() {
    KeyPair key = generateKey(dir / "id_ed25519");
    writeFile(dir / "before.toml", "[spool]\ndir = \"" + (dir / "spool") +
                                       "\"\n[tunneld]\nhostname = \"mx.test\"\nidentity = \"" +
                                       key.private_path + "\"\n");
    std::string out;
    int rc = runCommand({binDir() + "/dynmxctl", "-c", dir / "before.toml", "add-client", "alpha",
                         "alpha.example.net", "--from", "192.0.2.1", "--user", account->name()},
                        &out);
    EXPECT_EQ(rc, 0) << out;
    std::istringstream in(out);
    for (std::string l; std::getline(in, l);)
      if (l.rfind("define(`confTRUSTED_USERS'", 0) == 0) return l + "\n";
    ADD_FAILURE() << "no confTRUSTED_USERS line in:\n" << out;
    return "";
  }

  // A .cf from a minimal .mc with `extra` in it; its queue, NAME/q, belongs to the account.
  std::string buildCf(const std::string& name, const std::string& extra) {
    std::string d = dir / name;
    mkdir(d.c_str(), 0755);
    std::string q = d + "/q";
    mkdir(q.c_str(), 0700);
    EXPECT_EQ(chown(q.c_str(), uid, gid), 0) << "chown " << q << ": " << strerror(errno);
    std::string mc =
        "divert(-1)\ndivert(0)dnl\n"
        "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n"
        "OSTYPE(`debian')dnl\n"
        "FEATURE(`no_default_msa')dnl\n"
        "FEATURE(`accept_unresolvable_domains')dnl\n"
        "define(`QUEUE_DIR', `" +
        q + "')dnl\ndefine(`confPID_FILE', `" + d +
        "/pid')dnl\n"
        "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n" +
        extra + "MAILER(`local')dnl\nMAILER(`smtp')dnl\n";
    writeFile(d + "/submit.mc", mc);
    std::string cf;
    EXPECT_EQ(runCommand({"/usr/bin/m4", d + "/submit.mc"}, &cf), 0) << "m4 " << d << "/submit.mc";
    writeFile(d + "/submit.cf", cf);
    return d;
  }

  // sendmail -bs as the account with d/submit.cf as its submit.cf: one message from someone
  // else; returns the H lines of the queued qf file (or a description of what went wrong).
  std::string submitAndReadHeaders(const std::string& d) {
    std::string cf = d + "/submit.cf";
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) return "pipe failed";
    pid_t pid = fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) execSendmailAs(cf.c_str(), uid, gid, to_child[0], from_child[1]);
    close(to_child[0]);
    close(from_child[1]);
    std::string transcript;
    auto say = [&](const std::string& cmd) {
      transcript += ">> " + cmd;
      if (!writeAll(to_child[1], cmd)) return std::string();
      std::string r = readReply(from_child[0]);
      transcript += r;
      return r;
    };
    transcript += readReply(from_child[0]);
    std::string last;
    if (transcript.rfind("220", 0) == 0 && say("EHLO c.example\r\n").rfind("250", 0) == 0 &&
        say("MAIL FROM:<someone@else.example>\r\n").rfind("250", 0) == 0 &&
        say("RCPT TO:<bob@client.example>\r\n").rfind("250", 0) == 0 &&
        say("DATA\r\n").rfind("354", 0) == 0)
      last = say("Subject: trusted?\r\n\r\nhi\r\n.\r\n");
    (void)say("QUIT\r\n");
    close(to_child[1]);
    close(from_child[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (last.rfind("250", 0) != 0)
      return "not queued (exit " + std::to_string(WEXITSTATUS(status)) + "):\n" + transcript;
    std::string headers;
    for (const std::string& f : listDir(d + "/q")) {
      if (f.rfind("qf", 0) != 0) continue;
      std::istringstream qf(readFile(d + "/q/" + f));
      for (std::string l; std::getline(qf, l);)
        if (l.rfind("H", 0) == 0) headers += l + "\n";
    }
    return headers.empty() ? "no qf file in " + d + "/q:\n" + transcript : headers;
  }

  TempDir dir{"dynmx-trusted"};
  std::unique_ptr<TempAccount> account;
  uid_t uid = 0;
  gid_t gid = 0;
};

TEST_F(TrustedUserTest, PrintedLineStopsTheAuthenticationWarningOfSendmailBs) {
  std::string line = printedLine();
  ASSERT_EQ(line, "define(`confTRUSTED_USERS', `" + account->name() + "')dnl\n");

  std::string without = submitAndReadHeaders(buildCf("without", ""));
  ASSERT_TRUE(contains(without, "From: someone@else.example")) << without;
  EXPECT_TRUE(contains(without, "X-Authentication-Warning:")) << without;
  EXPECT_TRUE(contains(without, account->name() + " owned process doing -bs")) << without;

  std::string with = submitAndReadHeaders(buildCf("with", line));
  ASSERT_TRUE(contains(with, "From: someone@else.example")) << with;
  EXPECT_FALSE(contains(with, "X-Authentication-Warning")) << with;
}

}  // namespace
