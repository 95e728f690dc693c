// daemon_metrics_test.cpp: dynmx-tunneld's metrics as mail moves, read the way a monitoring system
// reads them: `dynmxctl metrics` and GET /metrics on [tunneld] metrics_listen, both parsed by
// python3-prometheus-client's own parsers (metrics_parse.py). The daemon delivers through a real
// sshd into a real far-end `sendmail -bs`; the counters must move with the mail (recipients
// delivered, bytes sent, the last delivery), a host-key mismatch must move its counter and drop
// the connected gauge, and the HTTP endpoint must serve the same families, 404 and 405 where due.
// Waiting is always for an event with a generous deadline; nothing asserts on elapsed time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <map>
#include <set>

#include "shared/fd.hpp"
#include "shared/spool.hpp"
#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(120);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// What metrics_parse.py read: sample "NAME{LABELS}" -> value, and the family lines. Empty
// families when the parser refused the text.
struct Parsed {
  std::map<std::string, double> samples;
  std::set<std::string> families;  // "NAME TYPE UNIT"
  std::string raw;
  double at(const std::string& key) const {
    auto it = samples.find(key);
    return it == samples.end() ? -1 : it->second;
  }
};

Parsed parseMetrics(const std::string& text, const char* format) {
  Parsed p;
  int rc =
      runCommand({"/usr/bin/python3", std::string(DYNMX_TESTS_DIR) + "/metrics_parse.py", format},
                 &p.raw, text);
  if (rc != 0) return Parsed{};
  size_t at = 0;
  while (at < p.raw.size()) {
    size_t nl = p.raw.find('\n', at);
    std::string line = p.raw.substr(at, nl - at);
    at = nl == std::string::npos ? p.raw.size() : nl + 1;
    if (line.rfind("family ", 0) == 0) p.families.insert(line.substr(7));
    if (line.rfind("sample ", 0) != 0) continue;
    size_t sp = line.rfind(' ');
    p.samples[line.substr(7, sp - 7)] = std::stod(line.substr(sp + 1));
  }
  return p;
}

// One HTTP exchange with 127.0.0.1:port: sends `request`, reads until the server closes.
std::string http(uint16_t port, const std::string& request) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) return "";
  if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size()))
    return "";
  std::string out;
  char buf[8192];
  while (true) {
    pollfd p{fd.get(), POLLIN, 0};
    if (poll(&p, 1, 60000) <= 0) break;
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string body(const std::string& response) {
  size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

class DaemonMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bin = binDir();
    mkdir((dir / "sshd").c_str(), 0700);
    sshd = std::make_unique<TestSshd>(dir / "sshd");
    key = generateKey(dir / "id_ed25519");
    metrics_port = freePort();
  }

  // The far end: a real sendmail -bs with its own queue (queue-only), in a UTS namespace of its
  // own so that it has a qualified host name.
  void startFarEnd() {
    std::string q = dir / "farend-queue";
    mkdir(q.c_str(), 0700);
    std::string mc =
        "include(`/usr/share/sendmail/cf/m4/cf.m4')dnl\nOSTYPE(`debian')dnl\n"
        "FEATURE(`no_default_msa')dnl\ndefine(`QUEUE_DIR', `" +
        q + "')dnl\ndefine(`confPID_FILE', `" + (dir / "farend.pid") +
        "')dnl\ndefine(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n"
        "define(`confDOMAIN_NAME', `farend.test')dnl\n"
        "define(`confDONT_PROBE_INTERFACES', `True')dnl\n"
        "FEATURE(`accept_unresolvable_domains')dnl\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n";
    writeFile(dir / "farend.mc", mc);
    std::string cf;
    ASSERT_EQ(runCommand({"/usr/bin/m4", dir / "farend.mc"}, &cf), 0);
    writeFile(dir / "farend.cf", cf);
    writeFile(dir / "farend.sh",
              "#!/bin/sh\nexec /usr/bin/unshare --uts /bin/sh -c 'hostname farend.test && exec "
              "/usr/sbin/sendmail -C" +
                  (dir / "farend.cf") + " -odq -bs'\n",
              0755);
    sshd->authorize(key, dir / "farend.sh");
    sshd->start();
    writeFile(dir / "known_hosts", sshd->knownHostsLine() + "\n");
  }

  void startDaemon() {
    std::string c = "[spool]\ndir = \"" + (dir / "spool") + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + sock() + "\"\nidentity = \"" + key.private_path +
         "\"\nknown_hosts = \"" + (dir / "known_hosts") + "\"\n";
    c += "keepalive = \"10s\"\nconnect_timeout = \"20s\"\nreconnect_min = \"1s\"\n"
         "reconnect_max = \"2s\"\nretry_min = \"1s\"\nretry_max = \"2s\"\n"
         "sendmail = [\"/bin/true\"]\nhostname = \"mx.test\"\n";
    c += "metrics_listen = \"127.0.0.1:" + std::to_string(metrics_port) + "\"\n\n";
    c += "[[client]]\nname = \"alpha\"\nhost = \"127.0.0.1\"\nport = " +
         std::to_string(sshd->port()) + "\nuser = \"" + sshd->user() +
         "\"\ndomains = [\"alpha.test\"]\n";
    writeFile(dir / "dynmx.toml", c, 0644);
    daemon = std::make_unique<Process>(
        std::vector<std::string>{bin + "/dynmx-tunneld", "-f", "-c", dir / "dynmx.toml"},
        SpawnOptions{"", "", dir / "daemon.log", {}, true});
    ASSERT_TRUE(waitFor([&] { return !daemon->running() || ctl({"status"}).first == 0; }, kLong));
    ASSERT_TRUE(daemon->running()) << log();
  }

  std::string sock() { return dir / "ctl.sock"; }
  std::string log() { return readFile(dir / "daemon.log"); }
  std::pair<int, std::string> ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{bin + "/dynmxctl", "-s", sock()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    int rc = runCommand(argv, &out);
    return {rc, out};
  }
  Parsed metrics() { return parseMetrics(ctl({"metrics"}).second, "openmetrics"); }

  std::string spool(const std::string& content, const std::vector<std::string>& rcpts) {
    Spool sp(dir / "spool");
    EXPECT_TRUE(sp.prepare().ok());
    auto w = sp.create();
    EXPECT_TRUE(w.ok());
    EXPECT_TRUE((*w)->write(content).ok());
    Envelope env;
    env.client = "alpha";
    env.sender = "sender@origin.test";
    env.arrival = time(nullptr);
    env.origin = "test";
    for (auto& r : rcpts) {
      SpoolRecipient sr;
      sr.address = r;
      env.rcpts.push_back(sr);
    }
    std::string id = (*w)->id();
    EXPECT_TRUE((*w)->commit(env).ok());
    return id;
  }
  size_t spooled() {
    Spool sp(dir / "spool");
    return sp.list(QueueState::Incoming).size() + sp.list(QueueState::Active).size() +
           sp.list(QueueState::Deferred).size() + sp.list(QueueState::Hold).size();
  }

  void TearDown() override {
    if (HasFailure()) std::cerr << "---- daemon log ----\n" << log();
    daemon.reset();
    sshd.reset();
  }

  TempDir dir{"dynmx-metrics"};
  std::string bin;
  std::unique_ptr<TestSshd> sshd;
  KeyPair key;
  uint16_t metrics_port = 0;
  std::unique_ptr<Process> daemon;
};

const std::string kAlpha = "{client=\"alpha\"}";

}  // namespace

TEST_F(DaemonMetricsTest, CountersMoveAsMailMovesAndTheHttpEndpointServesTheSameFamilies) {
  startFarEnd();
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return metrics().at("dynmx_client_connected" + kAlpha) == 1; }, kLong))
      << ctl({"status"}).second;
  Parsed before = metrics();
  ASSERT_FALSE(before.families.empty()) << ctl({"metrics"}).second;
  EXPECT_EQ(before.at("dynmx_recipients_delivered_total" + kAlpha), 0);
  EXPECT_EQ(before.at("dynmx_last_delivery_timestamp_seconds" + kAlpha), -1);  // none yet
  EXPECT_GE(before.at("dynmx_connection_attempts_total" + kAlpha), 1);
  EXPECT_EQ(before.at("dynmx_host_key_mismatches_total" + kAlpha), 0);
  EXPECT_EQ(before.at("dynmx_build_info{version=\"" DYNMX_VERSION "\"}"), 1);
  EXPECT_GT(before.at("dynmx_start_time_seconds{}"), 1.7e9);
  EXPECT_EQ(
      before.at("dynmx_client_login_key_info{client=\"alpha\",key=\"" + key.private_path + "\"}"),
      1)
      << before.raw;
  double bytes_before = before.at("dynmx_sent_bytes_total" + kAlpha);

  std::string content = "Subject: metrics\r\n\r\n" + std::string(5000, 'x') + "\r\n";
  spool(content, {"bob@alpha.test", "carol@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << ctl({"status"}).second;
  Parsed after = metrics();
  EXPECT_EQ(after.at("dynmx_recipients_delivered_total" + kAlpha), 2) << after.raw;
  EXPECT_EQ(after.at("dynmx_recipients_bounced_total" + kAlpha), 0);
  EXPECT_GE(after.at("dynmx_sent_bytes_total" + kAlpha), bytes_before + content.size());
  EXPECT_GE(after.at("dynmx_last_delivery_timestamp_seconds" + kAlpha),
            after.at("dynmx_start_time_seconds{}"));
  EXPECT_EQ(after.at("dynmx_queue_messages{client=\"alpha\",state=\"active\"}"), 0);
  EXPECT_EQ(after.at("dynmx_queue_messages{client=\"alpha\",state=\"in_flight\"}"), 0);

  // The same families over HTTP: OpenMetrics when asked for, Prometheus text otherwise.
  std::string om = http(metrics_port,
                        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
                        "application/openmetrics-text; version=1.0.0\r\n\r\n");
  ASSERT_EQ(om.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << om;
  EXPECT_TRUE(contains(om, "Content-Type: application/openmetrics-text; version=1.0.0")) << om;
  Parsed over_http = parseMetrics(body(om), "openmetrics");
  EXPECT_EQ(over_http.families, after.families) << body(om);
  EXPECT_EQ(over_http.at("dynmx_recipients_delivered_total" + kAlpha), 2);
  std::string text = http(metrics_port, "GET /metrics HTTP/1.0\r\n\r\n");
  ASSERT_EQ(text.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << text;
  EXPECT_TRUE(contains(text, "Content-Type: text/plain; version=0.0.4")) << text;
  Parsed prom = parseMetrics(body(text), "prometheus");
  EXPECT_EQ(prom.at("dynmx_recipients_delivered_total" + kAlpha), 2) << body(text);
  EXPECT_EQ(prom.at("dynmx_client_connected" + kAlpha), 1);
  EXPECT_EQ(http(metrics_port, "GET / HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0), 0u);
  std::string post = http(metrics_port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405 ", 0), 0u) << post;
  EXPECT_TRUE(contains(post, "Allow: GET, HEAD\r\n")) << post;
  EXPECT_EQ(http(metrics_port, "GET /metrics HTTP/3\r\n\r\n").rfind("HTTP/1.1 505 ", 0), 0u);
  EXPECT_EQ(http(metrics_port, "GET metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 400 ", 0), 0u);
  std::string head = http(metrics_port, "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
  EXPECT_EQ(body(head), "");

  // Another host key at the client's address: the mismatch is counted, the gauge drops.
  sshd->restartWithHostKey(generateKey(dir / "stranger_host_key"));
  ASSERT_TRUE(waitFor(
      [&] {
        Parsed m = metrics();
        return m.at("dynmx_host_key_mismatches_total" + kAlpha) >= 1 &&
               m.at("dynmx_client_connected" + kAlpha) == 0;
      },
      kLong))
      << ctl({"metrics"}).second;
  Parsed mismatch =
      parseMetrics(body(http(metrics_port, "GET /metrics HTTP/1.1\r\n\r\n")), "prometheus");
  EXPECT_GE(mismatch.at("dynmx_host_key_mismatches_total" + kAlpha), 1);
  EXPECT_GT(mismatch.at("dynmx_connection_attempts_total" + kAlpha),
            after.at("dynmx_connection_attempts_total" + kAlpha));
  EXPECT_EQ(mismatch.at("dynmx_recipients_delivered_total" + kAlpha), 2);
}

TEST_F(DaemonMetricsTest, ScrapersThatHangDoNotHoldUpDeliveryAndAreClosed) {
  startFarEnd();
  startDaemon();
  // More connections than the endpoint takes, none sending a byte: mail still goes, the admin
  // socket still answers, and the server closes them (its timeout).
  UniqueFd idle(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(metrics_port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(idle.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  std::vector<UniqueFd> more;
  for (int i = 0; i < 12; ++i) {
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    more.push_back(std::move(fd));
  }
  EXPECT_EQ(ctl({"metrics"}).first, 0);
  spool("Subject: while scrapers hang\r\n\r\nhi\r\n", {"bob@alpha.test"});
  ASSERT_TRUE(waitFor([&] { return spooled() == 0; }, kLong)) << ctl({"status"}).second;
  // The idle connection is closed by the server (its timeout), not by us.
  pollfd p{idle.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 60000), 1);
  char c;
  EXPECT_EQ(read(idle.get(), &c, 1), 0);
}
