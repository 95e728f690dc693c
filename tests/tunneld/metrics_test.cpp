// metrics_test.cpp: the metrics exposition and the metrics endpoint's HTTP request parser.
//
// The rendered text is read back with python3-prometheus-client's own parsers (OpenMetrics and
// the Prometheus text format, tests/tunneld/metrics_parse.py), so that a scraper's reading, not
// our idea of the format, is what the tests check. The HTTP parser is tested from a table of
// requests, byte-split where it matters (a scrape may arrive in pieces).
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"
#include "tunneld/metrics/exposition.hpp"
#include "tunneld/metrics/http_request.hpp"

using namespace dynmx;
using namespace dynmx::tunneld;

namespace {

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// What the python parser read ("family ..." and "sample ..." lines), or "" when it refused.
std::string parsed(const std::string& text, const char* format) {
  std::string out;
  int rc = test::runCommand(
      {"/usr/bin/python3", std::string(DYNMX_TESTS_DIR) + "/metrics_parse.py", format}, &out, text);
  return rc == 0 ? out : "";
}

MetricsSnapshot sample() {
  MetricsSnapshot s;
  s.version = "1.2.3";
  s.start_time = 1764470000;
  ClientSnapshot& a = s.clients["alpha"];
  a.configured = true;
  a.connected = true;
  a.login_key = "/etc/dynmx/id_ed25519.new";
  a.counters.delivered = 3;
  a.counters.deferred = 1;
  a.counters.bounced = 2;
  a.counters.expired = 4;
  a.counters.sent_bytes = 12345;
  a.counters.connection_attempts = 5;
  a.counters.handshake_failures = 6;
  a.counters.host_key_mismatches = 7;
  a.counters.auth_failures = 8;
  a.counters.last_delivery = 1764470100;
  a.active = 9;
  a.deferred = 10;
  a.hold = 11;
  a.in_flight = 12;
  ClientSnapshot& b = s.clients["beta.old"];  // removed by a reload: counters, no gauge
  b.counters.delivered = 1;
  s.notifications_deferred = 2;
  s.incoming = 13;
  s.corrupt = 14;
  return s;
}

}  // namespace

TEST(MetricsExposition, OpenMetricsParsesWithTheRealParserAndCarriesEveryValue) {
  std::string text = renderMetrics(sample(), ExpositionFormat::OpenMetrics);
  ASSERT_TRUE(text.size() > 6 && text.compare(text.size() - 6, 6, "# EOF\n") == 0) << text;
  std::string p = parsed(text, "openmetrics");
  ASSERT_FALSE(p.empty()) << text;
  for (const char* want : {
           "family dynmx_build info -",
           "sample dynmx_build_info{version=\"1.2.3\"} 1.0",
           "family dynmx_start_time_seconds gauge seconds",
           "sample dynmx_start_time_seconds{} 1764470000.0",
           "sample dynmx_client_connected{client=\"alpha\"} 1.0",
           "family dynmx_client_login_key info -",
           "sample dynmx_client_login_key_info{client=\"alpha\",key=\"/etc/dynmx/id_ed25519.new\"} "
           "1.0",
           "sample dynmx_queue_messages{client=\"alpha\",state=\"active\"} 9.0",
           "sample dynmx_queue_messages{client=\"alpha\",state=\"deferred\"} 10.0",
           "sample dynmx_queue_messages{client=\"alpha\",state=\"hold\"} 11.0",
           "sample dynmx_queue_messages{client=\"alpha\",state=\"in_flight\"} 12.0",
           "sample dynmx_notification_messages{state=\"deferred\"} 2.0",
           "sample dynmx_spool_messages{state=\"incoming\"} 13.0",
           "sample dynmx_spool_messages{state=\"corrupt\"} 14.0",
           "family dynmx_recipients_delivered counter -",
           "sample dynmx_recipients_delivered_total{client=\"alpha\"} 3.0",
           "sample dynmx_recipients_delivered_total{client=\"beta.old\"} 1.0",
           "sample dynmx_recipients_deferred_total{client=\"alpha\"} 1.0",
           "sample dynmx_recipients_bounced_total{client=\"alpha\"} 2.0",
           "sample dynmx_recipients_expired_total{client=\"alpha\"} 4.0",
           "family dynmx_sent_bytes counter bytes",
           "sample dynmx_sent_bytes_total{client=\"alpha\"} 12345.0",
           "sample dynmx_connection_attempts_total{client=\"alpha\"} 5.0",
           "sample dynmx_handshake_failures_total{client=\"alpha\"} 6.0",
           "sample dynmx_host_key_mismatches_total{client=\"alpha\"} 7.0",
           "sample dynmx_authentication_failures_total{client=\"alpha\"} 8.0",
           "family dynmx_last_delivery_timestamp_seconds gauge seconds",
           "sample dynmx_last_delivery_timestamp_seconds{client=\"alpha\"} 1764470100.0",
       })
    EXPECT_TRUE(contains(p, std::string(want) + "\n")) << want << "\n" << p;
  // A removed client has no connected gauge; a client without a delivery has no timestamp.
  EXPECT_FALSE(contains(p, "dynmx_client_connected{client=\"beta.old\"}")) << p;
  EXPECT_FALSE(contains(p, "dynmx_last_delivery_timestamp_seconds{client=\"beta.old\"}")) << p;
}

TEST(MetricsExposition, PrometheusTextParsesWithTheRealParser) {
  std::string text = renderMetrics(sample(), ExpositionFormat::Prometheus);
  EXPECT_FALSE(contains(text, "# EOF")) << text;
  EXPECT_FALSE(contains(text, "# UNIT")) << text;
  std::string p = parsed(text, "prometheus");
  ASSERT_FALSE(p.empty()) << text;
  for (const char* want : {
           "sample dynmx_build_info{version=\"1.2.3\"} 1.0",
           "family dynmx_recipients_delivered counter -",
           "sample dynmx_recipients_delivered_total{client=\"alpha\"} 3.0",
           "sample dynmx_sent_bytes_total{client=\"alpha\"} 12345.0",
           "sample dynmx_client_connected{client=\"alpha\"} 1.0",
           "family dynmx_client_login_key_info gauge -",
           "sample dynmx_client_login_key_info{client=\"alpha\",key=\"/etc/dynmx/id_ed25519.new\"} "
           "1.0",
       })
    EXPECT_TRUE(contains(p, std::string(want) + "\n")) << want << "\n" << p;
}

TEST(MetricsExposition, EveryFamilyHasHelpAndTypeAndCountersEndInTotal) {
  std::string text = renderMetrics(sample(), ExpositionFormat::OpenMetrics);
  std::vector<std::string> lines;
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    lines.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  std::string family, type;
  bool help = false;
  for (auto& l : lines) {
    if (l.rfind("# HELP ", 0) == 0) {
      family = l.substr(7, l.find(' ', 7) - 7);
      help = true;
      type.clear();
    } else if (l.rfind("# TYPE ", 0) == 0) {
      EXPECT_EQ(l.substr(7, family.size()), family) << l;
      type = l.substr(l.rfind(' ') + 1);
    } else if (l.rfind("# ", 0) != 0) {
      EXPECT_TRUE(help && !type.empty()) << "sample before HELP and TYPE: " << l;
      EXPECT_EQ(l.rfind(family, 0), 0u) << l;
      if (type == "counter") {
        EXPECT_TRUE(contains(l, family + "_total")) << l;
      }
    }
  }
}

TEST(MetricsExposition, LabelValuesAreEscaped) {
  MetricsSnapshot s;
  s.version = "a\"b\\c\nd";
  std::string p = parsed(renderMetrics(s, ExpositionFormat::OpenMetrics), "openmetrics");
  EXPECT_TRUE(contains(p, "sample dynmx_build_info{version=\"a\\\"b\\\\c\\nd\"} 1.0")) << p;
}

TEST(MetricsExposition, AcceptHeaderPicksTheFormat) {
  struct Case {
    const char* accept;
    ExpositionFormat want;
  } cases[] = {
      {"", ExpositionFormat::Prometheus},
      {"*/*", ExpositionFormat::Prometheus},
      {"text/plain;version=0.0.4;q=0.3,*/*;q=0.2", ExpositionFormat::Prometheus},
      // What Prometheus 2 sends.
      {"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
       "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
       ExpositionFormat::OpenMetrics},
      {" application/openmetrics-text ", ExpositionFormat::OpenMetrics},
      {"application/openmetrics-textual", ExpositionFormat::Prometheus},
  };
  for (auto& c : cases) EXPECT_EQ(negotiateFormat(c.accept), c.want) << c.accept;
  EXPECT_TRUE(contains(contentType(ExpositionFormat::OpenMetrics), "openmetrics-text"));
  EXPECT_TRUE(contains(contentType(ExpositionFormat::Prometheus), "version=0.0.4"));
}

TEST(MetricsHttpRequest, ParsesRequestsFromATable) {
  using S = HttpRequest::State;
  struct Case {
    std::string in;
    S state;
    int status;
    std::string method, path, accept;
  } cases[] = {
      {"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", S::Complete, 0, "GET", "/metrics", ""},
      {"GET /metrics HTTP/1.0\n\n", S::Complete, 0, "GET", "/metrics", ""},
      {"\r\nHEAD /metrics?x=1 HTTP/1.1\r\nACCEPT: a/b\r\naccept:  c/d \r\n\r\n", S::Complete, 0,
       "HEAD", "/metrics", "a/b, c/d"},
      {"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", S::Complete, 0, "POST", "/metrics",
       ""},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\n", S::Incomplete, 0, "", "", ""},
      {"GET /met", S::Incomplete, 0, "", "", ""},
      {"", S::Incomplete, 0, "", "", ""},
      {"GET /metrics HTTP/2.0\r\n\r\n", S::Bad, 505, "", "", ""},
      {"GET /metrics FTP/1.1\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET metrics HTTP/1.1\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET  /metrics HTTP/1.1\r\n\r\n", S::Bad, 400, "", "", ""},
      {"G(T /metrics HTTP/1.1\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET /metrics HTTP/1.1\r\n folded\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET /m\x01 HTTP/1.1\r\n\r\n", S::Bad, 400, "", "", ""},
      {"GET /" + std::string(kMaxHttpRequest, 'a'), S::Bad, 431, "", "", ""},
      {"GET / HTTP/1.1\r\nX: " + std::string(kMaxHttpRequest, 'a') + "\r\n\r\n", S::Bad, 431, "",
       "", ""},
  };
  for (auto& c : cases) {
    HttpRequest r = parseHttpRequest(c.in);
    std::string what = c.in.substr(0, 60);
    EXPECT_EQ(r.state, c.state) << what;
    EXPECT_EQ(r.status, c.status) << what;
    if (c.state != S::Complete) continue;
    EXPECT_EQ(r.method, c.method) << what;
    EXPECT_EQ(r.path, c.path) << what;
    EXPECT_EQ(r.accept, c.accept) << what;
  }
}

TEST(MetricsHttpRequest, ARequestArrivingInPiecesIsCompleteOnlyAtItsEnd) {
  std::string req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";
  for (size_t n = 0; n < req.size(); ++n)
    EXPECT_EQ(parseHttpRequest(req.substr(0, n)).state, HttpRequest::State::Incomplete) << n;
  EXPECT_EQ(parseHttpRequest(req).state, HttpRequest::State::Complete);
}

TEST(MetricsHttpRequest, RoutesMetricsNotFoundAndMethodNotAllowed) {
  auto route = [](const char* in) { return routeMetricsRequest(parseHttpRequest(in)); };
  EXPECT_EQ(route("GET /metrics HTTP/1.1\r\n\r\n"), MetricsRoute::Metrics);
  EXPECT_EQ(route("HEAD /metrics HTTP/1.1\r\n\r\n"), MetricsRoute::Metrics);
  EXPECT_EQ(route("POST /metrics HTTP/1.1\r\n\r\n"), MetricsRoute::MethodNotAllowed);
  EXPECT_EQ(route("GET / HTTP/1.1\r\n\r\n"), MetricsRoute::NotFound);
  EXPECT_EQ(route("GET /metrics/ HTTP/1.1\r\n\r\n"), MetricsRoute::NotFound);
  std::string r = httpResponse(405, "text/plain", "no\n", false, "Allow: GET, HEAD\r\n");
  EXPECT_EQ(r,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
            "Connection: close\r\nAllow: GET, HEAD\r\n\r\nno\n");
  EXPECT_EQ(httpResponse(200, "t", "body", true),
            "HTTP/1.1 200 OK\r\nContent-Type: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\n");
}
