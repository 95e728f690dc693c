// bench_driver.cpp: the measuring part of tests/bench/milter_bench.
//
// Starts three real sendmails (queue-only, loopback, free ports): without a milter, with a milter
// that does nothing (null-milter), and with dynmx-milter capturing every message. Each round
// sends N messages of about 4 KB to a client domain over one SMTP connection to each, in turn;
// the median rate per configuration is printed with the ratios. Figures only: no pass/fail.
//   milter-bench-driver [--messages N] [--rounds R] [--size BYTES]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"
#include "tests/harness/sendmail_harness.hpp"

using namespace dynmx::test;

namespace {

std::string message(size_t size, int n) {
  std::string m = "From: bench@x.example\r\nTo: bob@alpha.example\r\nSubject: bench " +
                  std::to_string(n) + "\r\nMessage-ID: <bench-" + std::to_string(n) +
                  "@x.example>\r\n\r\n";
  std::string line = std::string(76, 'b') + "\r\n";
  while (m.size() + line.size() <= size) m += line;
  return m;
}

double rate(TestSendmail& sm, int count, size_t size) {
  SmtpSession smtp(sm.port());
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) {
    SmtpReply r = smtp.sendMail("bench@x.example", {"bob@alpha.example"}, message(size, i));
    if (r.code != 250) {
      std::fprintf(stderr, "milter_bench: message %d refused: %s\n", i, r.text.c_str());
      std::exit(1);
    }
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  smtp.quit();
  return count / s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int count = 300, rounds = 3;
  size_t size = 4096;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--messages"))
      count = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds"))
      rounds = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--size"))
      size = std::strtoul(argv[i + 1], nullptr, 10);
  }
  TempDir tmp("dynmx-milter-bench");

  TestMilter dynmx(tmp.path() + "/dynmx");
  dynmx.start();
  // Next to dynmx-milter's socket: sendmail refuses sockets below world-writable directories.
  std::string sock = dynmx.socketPath();
  std::string null_sock = sock.substr(0, sock.rfind('/')) + "/null-milter.sock";
  SpawnOptions so;
  so.stderr_path = tmp.path() + "/null-milter.log";
  Process null_milter({binDir() + "/null-milter", "unix:" + null_sock}, so);
  if (!waitFor([&] { return unixSocketAccepts(null_sock); })) {
    std::fprintf(stderr, "milter_bench: null-milter did not start\n");
    return 1;
  }

  TestSendmailOptions plain;
  plain.relay_domains = {"alpha.example"};
  TestSendmailOptions with_null = plain;
  with_null.milter_socket = "unix:" + null_sock;
  TestSendmailOptions with_dynmx = plain;
  with_dynmx.milter_socket = dynmx.socketSpec();
  TestSendmail sm_plain(tmp.path() + "/sm-plain", plain);
  TestSendmail sm_null(tmp.path() + "/sm-null", with_null);
  TestSendmail sm_dynmx(tmp.path() + "/sm-dynmx", with_dynmx);
  sm_plain.start();
  sm_null.start();
  sm_dynmx.start();

  rate(sm_plain, 20, size);  // warm-up
  rate(sm_null, 20, size);
  rate(sm_dynmx, 20, size);
  std::vector<double> r_plain, r_null, r_dynmx;
  for (int r = 0; r < rounds; ++r) {
    r_plain.push_back(rate(sm_plain, count, size));
    r_null.push_back(rate(sm_null, count, size));
    r_dynmx.push_back(rate(sm_dynmx, count, size));
  }
  double p = median(r_plain), n = median(r_null), d = median(r_dynmx);
  std::printf(
      "messages/s over one SMTP connection, %zu-byte messages to a client domain,\n"
      "sendmail queue-only, median of %d rounds of %d messages:\n",
      size, rounds, count);
  std::printf("  no milter                %8.1f\n", p);
  std::printf("  do-nothing milter        %8.1f\n", n);
  std::printf("  dynmx-milter (capturing) %8.1f\n", d);
  std::printf("  dynmx / do-nothing       %8.3f  (target >= 0.95)\n", d / n);
  std::printf("  dynmx / no milter        %8.3f\n", d / p);
  return 0;
}
