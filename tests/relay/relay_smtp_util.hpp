// relay_smtp_util.hpp: for relay tests with a real sendmail: an SMTP client that binds its source
// address (SmtpFrom), and the sendmail the shipped etc/sendmail/dynmx-relay.m4 is tested in
// (startRelaySendmail). Failures throw std::runtime_error (SmtpFrom) or fail the test (gtest
// assertions in startRelaySendmail).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <sstream>
#include <stdexcept>
#include <string>

#include "tests/harness/harness.hpp"

namespace dynmx::relay {

// One SMTP conversation from a chosen source address; replies as "CODE text" of the last line.
class SmtpFrom {
 public:
  SmtpFrom(const std::string& source, const std::string& server, uint16_t port) {
    bool v6 = source.find(':') != std::string::npos;
    fd_ = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{120, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_storage src{}, dst{};
    socklen_t len = fill(v6, source, 0, src);
    fill(v6, server, port, dst);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&src), len) != 0 ||
        connect(fd_, reinterpret_cast<sockaddr*>(&dst), len) != 0) {
      throw std::runtime_error("SMTP from " + source + " to " + server + ": " +
                               std::strerror(errno));
    }
    greeting_ = reply();
  }
  ~SmtpFrom() { close(fd_); }
  const std::string& greeting() const { return greeting_; }
  std::string command(const std::string& line) {
    std::string out = line + "\r\n";
    if (send(fd_, out.data(), out.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(out.size())) {
      throw std::runtime_error("SMTP send: " + std::string(std::strerror(errno)));
    }
    return reply();
  }
  // EHLO and MAIL FROM, then the reply to RCPT TO:<rcpt>.
  std::string rcpt(const std::string& rcpt) {
    if (!started_) {
      expect250(command("EHLO client.home.example"));
      expect250(command("MAIL FROM:<someone@home.example>"));
      started_ = true;
    }
    return command("RCPT TO:<" + rcpt + ">");
  }

 private:
  static socklen_t fill(bool v6, const std::string& addr, uint16_t port, sockaddr_storage& ss) {
    if (v6) {
      auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons(port);
      inet_pton(AF_INET6, addr.c_str(), &s6->sin6_addr);
      return sizeof *s6;
    }
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    inet_pton(AF_INET, addr.c_str(), &s4->sin_addr);
    return sizeof *s4;
  }
  static void expect250(const std::string& r) {
    if (r.rfind("250", 0) != 0) throw std::runtime_error("SMTP: unexpected reply " + r);
  }
  std::string reply() {
    for (;;) {
      size_t nl;
      while ((nl = buf_.find('\n')) == std::string::npos) {
        char tmp[2048];
        ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
        if (n <= 0) throw std::runtime_error("SMTP: connection lost");
        buf_.append(tmp, static_cast<size_t>(n));
      }
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.size() < 4 || line[3] != '-') return line;
    }
  }
  int fd_ = -1;
  std::string buf_;
  std::string greeting_;
  bool started_ = false;
};

// Builds sendmail.cf in `dir` from a .mc that includes the shipped fragment pointed at `socket`
// (with `site_mc`, the site's own lines, before it), and runs sendmail -bD on a free port of
// 127.0.0.1 (and ::1 when `ipv6`); returns once it answers.
inline void startRelaySendmail(const std::string& dir, const std::string& socket,
                               const std::string& site_mc, bool ipv6, uint16_t& port,
                               dynmx::test::Process& sendmail) {
  namespace fs = std::filesystem;
  port = dynmx::test::freePort();
  std::string q = dir + "/queue";
  mkdir(q.c_str(), 0700);
  // Host names from files only: there is no DNS in the private network namespace, and a
  // resolver timeout would turn the relay check into "450 Cannot resolve PTR record".
  dynmx::test::writeFile(dir + "/service.switch", "hosts files\naliases files\n");
  std::ostringstream mc;
  mc << "divert(-1)\ndivert(0)dnl\n"
     << "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\n"
     << "VERSIONID(`dynmx relay test')dnl\n"
     << "OSTYPE(`debian')dnl\n"
     << "FEATURE(`no_default_msa')dnl\n"
     << "FEATURE(`accept_unresolvable_domains')dnl\n"
     << "define(`QUEUE_DIR', `" << q << "')dnl\n"
     << "define(`confPID_FILE', `" << dir << "/sendmail.pid')dnl\n"
     << "define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
     << "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
     << "define(`confSERVICE_SWITCH_FILE', `" << dir << "/service.switch')dnl\n"
     << "DAEMON_OPTIONS(`Port=" << port << ", Addr=127.0.0.1, Name=MTA')dnl\n";
  mc << site_mc;
  if (ipv6) mc << "DAEMON_OPTIONS(`Port=" << port << ", Addr=::1, Family=inet6, Name=MTA6')dnl\n";
  mc << "MAILER(`local')dnl\nMAILER(`smtp')dnl\n"
     << "define(`DYNMX_RELAY_SOCKET', `" << socket << "')dnl\n"
     << "include(`" << DYNMX_RELAY_M4 << "')dnl\n";
  dynmx::test::writeFile(dir + "/sendmail.mc", mc.str());
  std::string cf;
  ASSERT_EQ(dynmx::test::runCommand({"/usr/bin/m4", dir + "/sendmail.mc"}, &cf), 0);
  dynmx::test::writeFile(dir + "/sendmail.cf", cf);
  dynmx::test::SpawnOptions so;
  so.stdout_path = so.stderr_path = dir + "/sendmail.log";
  sendmail =
      dynmx::test::Process({"/usr/sbin/sendmail", "-C" + dir + "/sendmail.cf", "-bD", "-odq"}, so);
  uint16_t p = port;
  ASSERT_TRUE(dynmx::test::waitFor([&] {
    try {
      SmtpFrom probe("127.0.0.1", "127.0.0.1", p);
      return true;
    } catch (...) {
      return !sendmail.running();
    }
  }));
  ASSERT_TRUE(sendmail.running()) << dynmx::test::readFile(dir + "/sendmail.log");
}

}  // namespace dynmx::relay
