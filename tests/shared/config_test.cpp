// config_test.cpp: the configuration loader, from tables of good and bad input.
//
// Each bad input names the exact file:line:col and key path the loader must report, so that a
// change which loses or shifts locations fails here. File checks (identity mode, known_hosts) use
// real files in a private temporary directory.
#include "shared/config.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "shared/sysexits.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

constexpr const char* kPath = "/etc/dynmx/dynmx.toml";
constexpr const char* kEd25519 =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIvIEBFQr07lsKG79JPBxnU+fjxFI5sUASR6nODWqYWA test";
constexpr const char* kEcdsa =
    "ecdsa-sha2-nistp256 "
    "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHkezlK63LVv3/QCsJWd6h+"
    "7aO+NAAyOuoszHO7Rl0yw9UmXOyTYJXg70KJM8YpcFn0bTk9/10tjU+IgkdyYVeM=";
constexpr const char* kFingerprint = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak";

std::string allErrors(const LoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += e.str() + "\n";
  return s;
}

// ---------------------------------------------------------------- durations, sizes, sockets

TEST(ParseDuration, AcceptsUnitsAndSums) {
  struct Case {
    const char* text;
    int64_t seconds;
  } cases[] = {
      {"0", 0},          {"0s", 0},
      {"30s", 30},       {"5m", 300},
      {"2h", 7200},      {"5d", 432000},
      {"1w", 604800},    {"1h30m", 5400},
      {"1d12h", 129600}, {"1w2d3h4m5s", 788645},
      {"90m", 5400},     {"3650d", 3650LL * 86400},
  };
  for (const auto& c : cases) {
    auto d = parseDuration(c.text);
    ASSERT_TRUE(d.has_value()) << c.text;
    EXPECT_EQ(d->count(), c.seconds) << c.text;
  }
}

TEST(ParseDuration, RejectsMalformed) {
  for (const char* text : {"", "30", "30 seconds", "30S", "s", "5x", "1h 30m", "30m1h", "1h1h",
                           "-5m", "+5m", "1.5h", "5mm", "3651d", "99999999999999999999s", " 5m"}) {
    EXPECT_FALSE(parseDuration(text).has_value()) << '"' << text << '"';
  }
}

TEST(FormatDuration, IsTheInverseOfParse) {
  for (const char* text : {"0s", "30s", "5m", "1h30m", "5d", "1d1h1m1s"}) {
    EXPECT_EQ(formatDuration(*parseDuration(text)), text);
  }
}

TEST(ParseSize, AcceptsBytesAndPowersOf1024) {
  struct Case {
    const char* text;
    uint64_t bytes;
  } cases[] = {
      {"1000", 1000},       {"0", 0},           {"512K", 512 * 1024},     {"512k", 512 * 1024},
      {"50M", 50ull << 20}, {"1G", 1ull << 30}, {"16777216G", 1ull << 54}};
  for (const auto& c : cases) {
    auto s = parseSize(c.text);
    ASSERT_TRUE(s.has_value()) << c.text;
    EXPECT_EQ(*s, c.bytes) << c.text;
  }
}

TEST(ParseSize, RejectsMalformedAndOverflow) {
  for (const char* text : {"", "M", "50 M", "50MB", "-1", "1.5M", "50T", "18446744073709551616",
                           "17179869184G", "0x10"}) {
    EXPECT_FALSE(parseSize(text).has_value()) << '"' << text << '"';
  }
}

TEST(ParseSocketSpec, AcceptsTheMilterForms) {
  struct Case {
    const char* text;
    SocketSpec::Kind kind;
    const char* path;
    const char* host;
    uint16_t port;
    const char* normal;
  } cases[] = {
      {"unix:/run/dynmx/milter.sock", SocketSpec::Kind::Unix, "/run/dynmx/milter.sock", "", 0,
       "unix:/run/dynmx/milter.sock"},
      {"local:/run/m.sock", SocketSpec::Kind::Unix, "/run/m.sock", "", 0, "unix:/run/m.sock"},
      {"inet:8891@127.0.0.1", SocketSpec::Kind::Inet, "", "127.0.0.1", 8891, "inet:8891@127.0.0.1"},
      {"inet:8891@localhost", SocketSpec::Kind::Inet, "", "localhost", 8891, "inet:8891@localhost"},
      {"inet:1", SocketSpec::Kind::Inet, "", "", 1, "inet:1"},
      {"inet:65535", SocketSpec::Kind::Inet, "", "", 65535, "inet:65535"},
      {"inet6:8891@::1", SocketSpec::Kind::Inet6, "", "::1", 8891, "inet6:8891@::1"},
      {"inet6:8891@[::1]", SocketSpec::Kind::Inet6, "", "::1", 8891, "inet6:8891@[::1]"},
  };
  for (const auto& c : cases) {
    std::string why;
    auto s = parseSocketSpec(c.text, &why);
    ASSERT_TRUE(s.has_value()) << c.text << ": " << why;
    EXPECT_EQ(s->kind, c.kind) << c.text;
    EXPECT_EQ(s->path, c.path) << c.text;
    EXPECT_EQ(s->host, c.host) << c.text;
    EXPECT_EQ(s->port, c.port) << c.text;
    EXPECT_EQ(s->text, c.normal) << c.text;
  }
}

TEST(ParseSocketSpec, RejectsBadSpecsSayingWhatWasExpected) {
  struct Case {
    const char* text;
    const char* why;  // a part of the explanation
  } cases[] = {
      {"", "expected \"unix:/absolute/path\""},
      {"/run/m.sock", "expected \"unix:/absolute/path\""},
      {"unix:run/m.sock", "absolute path"},
      {"unix:", "absolute path"},
      {"tcp:25@localhost", "expected \"unix:/absolute/path\""},
      {"inet:0@localhost", "from 1 to 65535"},
      {"inet:65536@localhost", "from 1 to 65535"},
      {"inet:port@localhost", "from 1 to 65535"},
      {"inet:@localhost", "from 1 to 65535"},
      {"inet:25@", "IPv4"},
      {"inet:25@bad host", "IPv4"},
      {"inet6:25@not:an:address", "IPv6"},
      {"unix:/very/long/path/"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
       "at most 107 bytes"},
  };
  for (const auto& c : cases) {
    std::string why;
    EXPECT_FALSE(parseSocketSpec(c.text, &why).has_value()) << c.text;
    EXPECT_NE(why.find(c.why), std::string::npos) << c.text << ": " << why;
  }
}

// ---------------------------------------------------------------- whole files

TEST(LoadConfig, EmptyFileIsValidWithEmbeddedDefaults) {
  auto r = parseConfig("", kPath);
  ASSERT_TRUE(r.errors.empty()) << allErrors(r);
  ASSERT_TRUE(r.config.has_value());
  const Config& c = *r.config;
  EXPECT_EQ(c.path, kPath);
  EXPECT_EQ(c.spool.dir, "/var/spool/dynmx");
  EXPECT_EQ(c.spool.max_message_size, 50ull << 20);
  EXPECT_EQ(c.milter.socket.text, "unix:/run/dynmx/milter.sock");
  EXPECT_EQ(c.milter.socket.kind, SocketSpec::Kind::Unix);
  EXPECT_EQ(c.milter.socket.path, "/run/dynmx/milter.sock");
  EXPECT_EQ(c.milter.socket_mode, 0660u);
  EXPECT_EQ(c.milter.on_error, OnError::Tempfail);
  EXPECT_EQ(c.tunneld.control_socket, "/run/dynmx/tunneld.sock");
  EXPECT_EQ(c.tunneld.identity, "/etc/dynmx/id_ed25519");
  EXPECT_EQ(c.tunneld.known_hosts, "/etc/dynmx/known_hosts");
  EXPECT_EQ(c.tunneld.keepalive, Seconds(30));
  EXPECT_EQ(c.tunneld.retry.retry_min, Seconds(300));
  EXPECT_EQ(c.tunneld.retry.retry_max, Seconds(4000));
  EXPECT_EQ(c.tunneld.retry.queue_lifetime, Seconds(5 * 86400));
  EXPECT_EQ(c.tunneld.retry.delay_warning, Seconds(4 * 3600));
  EXPECT_EQ(c.tunneld.sendmail, std::vector<std::string>{"/usr/sbin/sendmail"});
  EXPECT_EQ(c.tunneld.remote_command, "/usr/sbin/sendmail -bs");
  EXPECT_TRUE(c.clients.empty());
}

TEST(LoadConfig, CommentsAndEmptySectionsAreValid) {
  auto r = parseConfig("# nothing set\n[spool]\n[milter]\n[tunneld]\n", kPath);
  EXPECT_TRUE(r.errors.empty()) << allErrors(r);
}

TEST(LoadConfig, FullValidFileSetsEveryKey) {
  std::string text = R"(# every key
[spool]
dir = "/srv/dynmx/spool"
max_message_size = "20M"

[milter]
socket = "local:/run/dynmx/m.sock"
socket_mode = "0600"
socket_group = "smmsp"
user = "dynmx"
on_error = "accept"

[tunneld]
control_socket = "/run/dynmx/ctl.sock"
control_group = "adm"
control_mode = 0o640
identity = "/nonexistent/dynmx/id_ed25519"
known_hosts = "/nonexistent/dynmx/known_hosts"
keepalive = "15s"
connect_timeout = "1m"
reconnect_min = "10s"
reconnect_max = "20m"
retry_min = "10m"
retry_max = "2h"
queue_lifetime = "3d"
delay_warning = "0"
idle_close = "2m"
max_transactions = 50
max_channels = 24
bounce_from = "Mail Delivery System <MAILER-DAEMON@mx.example.net>"
sendmail = ["/usr/sbin/sendmail", "-oi"]
remote_command = "/usr/sbin/sendmail -bs -oi"
hostname = "mx.example.net"
user = "dynmx"
pid_file = "/run/dynmx/tunneld.pid"

[[client]]
name = "home"
host = "home.dyn.example.net"
port = 2222
user = "mail"
domains = ["Example.ORG", ".example.org", "example.com."]
host_key = ")" + std::string(kEd25519) +
                     R"("
identity = "/nonexistent/dynmx/home_key"
concurrency = 3
max_connections = 4
retry_min = "1m"
retry_max = "30m"
queue_lifetime = "7d"
delay_warning = "1h"

[[client]]
name = "office-2.b_c"
host = "192.0.2.7"
domains = ["office.example"]
host_key = ")" + kFingerprint +
                     R"("
retry_max = "3h"

[[client]]
name = "v6"
host = "2001:db8::7"
domains = ["v6.example"]
host_key = ")" + kEcdsa +
                     R"( comment here"
)";
  auto r = parseConfig(text, kPath);
  ASSERT_TRUE(r.errors.empty()) << allErrors(r);
  const Config& c = *r.config;
  EXPECT_EQ(c.spool.dir, "/srv/dynmx/spool");
  EXPECT_EQ(c.spool.max_message_size, 20ull << 20);
  EXPECT_EQ(c.milter.socket.text, "unix:/run/dynmx/m.sock");
  EXPECT_EQ(c.milter.socket_mode, 0600u);
  EXPECT_EQ(c.milter.socket_group, "smmsp");
  EXPECT_EQ(c.milter.user, "dynmx");
  EXPECT_EQ(c.milter.on_error, OnError::Accept);
  const auto& t = c.tunneld;
  EXPECT_EQ(t.control_socket, "/run/dynmx/ctl.sock");
  EXPECT_EQ(t.control_group, "adm");
  EXPECT_EQ(t.control_mode, 0640u);
  EXPECT_EQ(t.identity, "/nonexistent/dynmx/id_ed25519");
  EXPECT_EQ(t.known_hosts, "/nonexistent/dynmx/known_hosts");
  EXPECT_EQ(t.keepalive, Seconds(15));
  EXPECT_EQ(t.connect_timeout, Seconds(60));
  EXPECT_EQ(t.reconnect_min, Seconds(10));
  EXPECT_EQ(t.reconnect_max, Seconds(1200));
  EXPECT_EQ(t.retry.retry_min, Seconds(600));
  EXPECT_EQ(t.retry.retry_max, Seconds(7200));
  EXPECT_EQ(t.retry.queue_lifetime, Seconds(3 * 86400));
  EXPECT_EQ(t.retry.delay_warning, Seconds(0));
  EXPECT_EQ(t.idle_close, Seconds(120));
  EXPECT_EQ(t.max_transactions, 50u);
  EXPECT_EQ(t.max_channels, 24u);
  EXPECT_EQ(t.bounce_from, "Mail Delivery System <MAILER-DAEMON@mx.example.net>");
  EXPECT_EQ(t.sendmail, (std::vector<std::string>{"/usr/sbin/sendmail", "-oi"}));
  EXPECT_EQ(t.remote_command, "/usr/sbin/sendmail -bs -oi");
  EXPECT_EQ(t.hostname, "mx.example.net");
  EXPECT_EQ(t.user, "dynmx");
  EXPECT_EQ(t.pid_file, "/run/dynmx/tunneld.pid");

  ASSERT_EQ(c.clients.size(), 3u);
  const auto& home = c.clients[0];
  EXPECT_EQ(home.name, "home");
  EXPECT_EQ(home.host, "home.dyn.example.net");
  EXPECT_EQ(home.port, 2222);
  EXPECT_EQ(home.user, "mail");
  EXPECT_EQ(home.domains, (std::vector<std::string>{"example.org", ".example.org", "example.com"}));
  EXPECT_EQ(home.host_key, kEd25519);
  EXPECT_EQ(home.identity, "/nonexistent/dynmx/home_key");
  EXPECT_EQ(home.concurrency, 3u);
  EXPECT_EQ(home.max_connections, 4u);
  EXPECT_EQ(home.retry.retry_min, Seconds(60));
  EXPECT_EQ(home.retry.retry_max, Seconds(1800));
  EXPECT_EQ(home.retry.queue_lifetime, Seconds(7 * 86400));
  EXPECT_EQ(home.retry.delay_warning, Seconds(3600));
  EXPECT_EQ(home.loc.file, kPath);
  EXPECT_EQ(home.loc.line, 37u);

  // Unset keys take the defaults and the [tunneld] retry values.
  const auto& office = c.clients[1];
  EXPECT_EQ(office.name, "office-2.b_c");
  EXPECT_EQ(office.port, 22);
  EXPECT_EQ(office.user, "dynmx");
  EXPECT_EQ(office.identity, "");
  EXPECT_EQ(office.concurrency, 8u);  // the default
  EXPECT_EQ(office.max_connections, 2u);  // the default
  EXPECT_EQ(office.host_key, kFingerprint);
  EXPECT_EQ(office.retry.retry_min, Seconds(600));
  EXPECT_EQ(office.retry.retry_max, Seconds(3 * 3600));
  EXPECT_EQ(office.retry.queue_lifetime, Seconds(3 * 86400));
  EXPECT_EQ(office.retry.delay_warning, Seconds(0));
  EXPECT_EQ(c.clients[2].host, "2001:db8::7");

  ASSERT_NE(c.findClient("office-2.b_c"), nullptr);
  EXPECT_EQ(c.findClient("office-2.b_c")->host, "192.0.2.7");
  EXPECT_EQ(c.findClient("nobody"), nullptr);
}

TEST(LoadConfig, ClientsInheritTunneldValuesWrittenAfterThem) {
  // [[client]] comes first in the file; the [tunneld] values still apply to it.
  auto r = parseConfig(R"([[client]]
name = "a"
host = "a.example"
domains = ["a.example"]
host_key = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak"
queue_lifetime = "1d"

[tunneld]
retry_min = "1m"
retry_max = "10m"
delay_warning = "2h"
)",
                       kPath);
  ASSERT_TRUE(r.errors.empty()) << allErrors(r);
  const auto& a = r.config->clients.at(0);
  EXPECT_EQ(a.retry.retry_min, Seconds(60));
  EXPECT_EQ(a.retry.retry_max, Seconds(600));
  EXPECT_EQ(a.retry.delay_warning, Seconds(7200));
  EXPECT_EQ(a.retry.queue_lifetime, Seconds(86400));
}

TEST(LoadConfig, ModesAsOctalStringOrOctalInteger) {
  auto r = parseConfig("[milter]\nsocket_mode = \"660\"\n[tunneld]\ncontrol_mode = 0o600\n", kPath);
  ASSERT_TRUE(r.errors.empty()) << allErrors(r);
  EXPECT_EQ(r.config->milter.socket_mode, 0660u);
  EXPECT_EQ(r.config->tunneld.control_mode, 0600u);
}

TEST(LoadConfig, SizeAsInteger) {
  auto r = parseConfig("[spool]\nmax_message_size = 1048576\n", kPath);
  ASSERT_TRUE(r.errors.empty()) << allErrors(r);
  EXPECT_EQ(r.config->spool.max_message_size, 1048576u);
}

// One bad input, and the one error it must give, with its exact place in the file.
struct BadCase {
  const char* name;
  std::string text;
  uint32_t line;
  uint32_t col;
  const char* key;
  const char* message;  // a part of the message that says what was expected
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

// A client table that is valid on its own, to which a case adds or changes keys.
std::string client(const std::string& name, const std::string& domains,
                   const std::string& extra = "") {
  return "[[client]]\nname = \"" + name + "\"\nhost = \"h.example\"\ndomains = " + domains +
         "\nhost_key = \"" + kFingerprint + "\"\n" + extra;
}

class BadConfig : public testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, ReportsOneErrorAtItsPlace) {
  const BadCase& c = GetParam();
  auto r = parseConfig(c.text, kPath);
  EXPECT_FALSE(r.config.has_value());
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  const ConfigError& e = r.errors[0];
  EXPECT_EQ(e.where.file, kPath);
  EXPECT_EQ(e.where.line, c.line) << e.str();
  EXPECT_EQ(e.where.col, c.col) << e.str();
  EXPECT_EQ(e.key, c.key) << e.str();
  EXPECT_NE(e.message.find(c.message), std::string::npos) << e.str();
  // str() is "file:line:col: key: message".
  std::string head = std::string(kPath) + ":" + std::to_string(c.line) + ":" +
                     std::to_string(c.col) + ": " + (e.key.empty() ? "" : e.key + ": ");
  EXPECT_EQ(e.str(), head + e.message);
}

// Columns: a value starts after "key = "; an unknown key is reported where the key starts.
INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfig,
    testing::Values(
        // ---- syntax: toml++'s own position
        BadCase{"SyntaxError", "[spool]\ndir = \"/x\nmax_message_size = 1\n", 2, 10, "",
                "control characters"},
        BadCase{"DuplicateKey", "[spool]\ndir = \"/a\"\ndir = \"/b\"\n", 3, 7, "", "redefine"},
        // ---- unknown keys and sections
        BadCase{"UnknownKeySuggests", "[spool]\ndirr = \"/x\"\n", 2, 1, "spool.dirr",
                "unknown key \"dirr\" in [spool] (did you mean \"dir\"?)"},
        BadCase{"UnknownKeyIndented", "[tunneld]\n  keepalive_interval = \"5s\"\n", 2, 3,
                "tunneld.keepalive_interval", "unknown key \"keepalive_interval\" in [tunneld]"},
        BadCase{"KeyInWrongSection", "[milter]\nidentity = \"/etc/k\"\n", 2, 1, "milter.identity",
                "\"identity\" belongs in [tunneld]"},
        BadCase{"UnknownSectionSuggests", "[tunnel]\nkeepalive = \"5s\"\n", 1, 2, "tunnel",
                "unknown section or key \"tunnel\" (did you mean \"tunneld\"?)"},
        BadCase{"UnknownSectionListsKnown", "\n[queue]\n", 2, 2, "queue",
                "unknown section or key \"queue\" (known sections: [spool], [milter], [tunneld], "
                "[relay], [[client]])"},
        BadCase{"TopLevelKey", "max_message_size = \"1M\"\n", 1, 1, "max_message_size",
                "belongs in [spool]"},
        BadCase{"UnknownClientKey", client("a", "[\"a.example\"]", "hostkey = \"x\"\n"), 6, 1,
                "client[0].hostkey", "did you mean \"host_key\"?"},
        BadCase{"ClientAsTable", "[client]\nname = \"a\"\n", 1, 1, "client",
                "write [[client]], with double brackets"},
        BadCase{"SectionNotATable", "spool = \"/var/spool/dynmx\"\n", 1, 9, "spool",
                "expected a table ([spool]), got \"/var/spool/dynmx\""},
        // ---- wrong types
        BadCase{"PathNotAString", "[spool]\ndir = 5\n", 2, 7, "spool.dir",
                "expected an absolute path, got the integer 5"},
        BadCase{"PortAsString", client("a", "[\"a.example\"]", "port = \"22\"\n"), 6, 8,
                "client[0].port", "expected an integer from 1 to 65535, got \"22\""},
        BadCase{"OnErrorBoolean", "[milter]\non_error = true\n", 2, 12, "milter.on_error",
                "expected \"tempfail\" or \"accept\", got the boolean true"},
        BadCase{"DomainsNotArray", client("a", "\"a.example\""), 4, 11, "client[0].domains",
                "expected a non-empty array of domain names"},
        BadCase{"DomainNotAString", client("a", "[\"a.example\", 7]"), 4, 25,
                "client[0].domains[1]", "expected a domain name, got the integer 7"},
        BadCase{"SendmailNotArray", "[tunneld]\nsendmail = \"/usr/sbin/sendmail\"\n", 2, 12,
                "tunneld.sendmail", "expected an array of strings"},
        BadCase{"SendmailElementType", "[tunneld]\nsendmail = [\"/usr/sbin/sendmail\", 1]\n", 2, 35,
                "tunneld.sendmail[1]", "expected a string, got the integer 1"},
        // ---- durations
        BadCase{"DurationWords", "[tunneld]\nkeepalive = \"30 seconds\"\n", 2, 13,
                "tunneld.keepalive",
                "expected a duration such as \"30s\", \"5m\", \"1h\", \"5d\", got \"30 seconds\""},
        BadCase{"DurationInteger", "[tunneld]\nconnect_timeout = 30\n", 2, 19,
                "tunneld.connect_timeout", "got the integer 30 (write \"30s\")"},
        BadCase{"DurationZero", "[tunneld]\nretry_min = \"0\"\n", 2, 13, "tunneld.retry_min",
                "more than zero"},
        BadCase{"ClientDuration", client("a", "[\"a.example\"]", "queue_lifetime = \"5 days\"\n"),
                6, 18, "client[0].queue_lifetime", "got \"5 days\" (client \"a\")"},
        // ---- sizes
        BadCase{"SizeWithB", "[spool]\nmax_message_size = \"50MB\"\n", 2, 20,
                "spool.max_message_size", "expected a size such as \"50M\""},
        BadCase{"SizeZero", "[spool]\nmax_message_size = 0\n", 2, 20, "spool.max_message_size",
                "more than zero"},
        BadCase{"MinFreeWithB", "[spool]\nmin_free = \"1MB\"\n", 2, 12, "spool.min_free",
                "expected a size such as \"50M\""},
        BadCase{"MinFreeNegative", "[spool]\nmin_free = -1\n", 2, 12, "spool.min_free",
                "(0: no limit), got the integer -1"},
        BadCase{"QueueMessagesNegative",
                client("a", "[\"a.example\"]", "max_queue_messages = -1\n"), 6, 22,
                "client[0].max_queue_messages", "expected an integer from 0 to 1000000000"},
        BadCase{"RelaySendersNoAt",
                client("a", "[\"a.example\"]", "relay_senders = [\"partner.example\"]\n"), 6,
                18, "client[0].relay_senders[0]",
                "expected an address such as \"alice@example.net\" or a domain written "
                "\"@example.org\", got \"partner.example\""},
        BadCase{"RelaySendersString", client("a", "[\"a.example\"]", "relay_senders = \"yes\"\n"),
                6, 17, "client[0].relay_senders", "true (the client's domains only), false"},
        BadCase{"QueueBytesWords", client("a", "[\"a.example\"]", "max_queue_bytes = \"lots\"\n"),
                6, 19, "client[0].max_queue_bytes", "got \"lots\""},
        // ---- sockets and modes
        BadCase{"SocketRelative", "[milter]\nsocket = \"unix:milter.sock\"\n", 2, 10,
                "milter.socket", "absolute path), got \"unix:milter.sock\""},
        BadCase{"SocketBadPort", "[milter]\nsocket = \"inet:0@127.0.0.1\"\n", 2, 10,
                "milter.socket", "from 1 to 65535"},
        BadCase{"SocketUnknownKind", "[milter]\nsocket = \"tcp:25\"\n", 2, 10, "milter.socket",
                "expected \"unix:/absolute/path\""},
        BadCase{"ModeNotOctal", "[milter]\nsocket_mode = \"0999\"\n", 2, 15, "milter.socket_mode",
                "expected a file mode such as \"0660\""},
        BadCase{"ModeDecimalInteger", "[milter]\nsocket_mode = 660\n", 2, 15, "milter.socket_mode",
                "the decimal integer 660 (write \"0660\" or 0o660"},
        BadCase{"ModeTooBig", "[tunneld]\ncontrol_mode = \"4755\"\n", 2, 16, "tunneld.control_mode",
                "from \"0000\" to \"0777\""},
        BadCase{"OnErrorUnknown", "[milter]\non_error = \"bounce\"\n", 2, 12, "milter.on_error",
                "expected \"tempfail\" or \"accept\", got \"bounce\""},
        BadCase{"ControlSocketRelative", "[tunneld]\ncontrol_socket = \"run/t.sock\"\n", 2, 18,
                "tunneld.control_socket", "expected an absolute path"},
        // ---- paths and strings
        BadCase{"SpoolDirRelative", "[spool]\ndir = \"spool\"\n", 2, 7, "spool.dir",
                "expected an absolute path (starting with \"/\"), got \"spool\""},
        BadCase{"IdentityRelative", "[tunneld]\nidentity = \"id_ed25519\"\n", 2, 12,
                "tunneld.identity", "expected an absolute path"},
        BadCase{"KnownHostsRelative", "[tunneld]\nknown_hosts = \"~/.ssh/known_hosts\"\n", 2, 15,
                "tunneld.known_hosts", "expected an absolute path"},
        BadCase{"IdentityThreeKeys",
                "[tunneld]\nidentity = [\"/k/new\", \"/k/old\", \"/k/older\"]\n", 2, 12,
                "tunneld.identity", "got an array of 3 keys"},
        BadCase{"IdentityEmptyArray", "[tunneld]\nidentity = []\n", 2, 12, "tunneld.identity",
                "an array of two (the new key first, then the old one), got []"},
        BadCase{"IdentityElementNotAString", "[tunneld]\nidentity = [\"/k/new\", 7]\n", 2, 23,
                "tunneld.identity[1]", "expected an absolute path"},
        BadCase{"IdentityElementRelative", "[tunneld]\nidentity = [\"k/new\", \"/k/old\"]\n", 2,
                13, "tunneld.identity[0]", "expected an absolute path"},
        BadCase{"IdentitySameKeyTwice", "[tunneld]\nidentity = [\"/k/a\", \"/k/a\"]\n", 2, 21,
                "tunneld.identity[1]", "the same key as tunneld.identity[0]"},
        BadCase{"IdentityNotAPathOrArray", "[tunneld]\nidentity = 1\n", 2, 12, "tunneld.identity",
                "expected an absolute path, or an array of two"},
        BadCase{"ClientIdentityThreeKeys",
                client("a", "[\"a.example\"]", "identity = [\"/a\", \"/b\", \"/c\"]\n"), 6,
                12, "client[0].identity", "got an array of 3 keys"},
        BadCase{"MetricsListenHostName", "[tunneld]\nmetrics_listen = \"localhost:9187\"\n", 2, 18,
                "tunneld.metrics_listen", "expected an address and port such as"},
        BadCase{"MetricsListenNoPort", "[tunneld]\nmetrics_listen = \"127.0.0.1\"\n", 2, 18,
                "tunneld.metrics_listen", "got \"127.0.0.1\""},
        BadCase{"MetricsListenV6WithoutBrackets", "[tunneld]\nmetrics_listen = \"::1:9187\"\n",
                2, 18, "tunneld.metrics_listen", "[::1]:9187"},
        BadCase{"MetricsListenNotAString", "[tunneld]\nmetrics_listen = 9187\n", 2, 18,
                "tunneld.metrics_listen", "expected an address and port"},
        BadCase{"PidFileRelative", "[tunneld]\npid_file = \"t.pid\"\n", 2, 12, "tunneld.pid_file",
                "expected an absolute path"},
        BadCase{"SendmailEmpty", "[tunneld]\nsendmail = []\n", 2, 12, "tunneld.sendmail", "got []"},
        BadCase{"SendmailRelative", "[tunneld]\nsendmail = [\"sendmail\", \"-oi\"]\n", 2, 13,
                "tunneld.sendmail[0]", "absolute path of the sendmail program"},
        BadCase{"BounceFromNewline", "[tunneld]\nbounce_from = \"a\\nBcc: x\"\n", 2, 15,
                "tunneld.bounce_from", "no control characters"},
        BadCase{"MaxTransactionsZero", "[tunneld]\nmax_transactions = 0\n", 2, 20,
                "tunneld.max_transactions", "from 1 to 1000000"},
        BadCase{"MaxChannelsNegative", "[tunneld]\nmax_channels = -1\n", 2, 16,
                "tunneld.max_channels", "from 0 to 100000"},
        BadCase{"MaxChannelsText", "[tunneld]\nmax_channels = \"64\"\n", 2, 16,
                "tunneld.max_channels", "expected an integer"},
        BadCase{"HostnameBad", "[tunneld]\nhostname = \"mx_1.example\"\n", 2, 12,
                "tunneld.hostname", "expected a host name (letters"},
        BadCase{"UserWithSpace", "[milter]\nuser = \"mail user\"\n", 2, 8, "milter.user",
                "expected a user name"},
        // ---- order of minimum and maximum: the error is on the second key
        BadCase{"RetryMaxBelowMin", "[tunneld]\nretry_min = \"1h\"\nretry_max = \"10m\"\n", 3, 13,
                "tunneld.retry_max", "retry_max 10m is less than retry_min 1h"},
        BadCase{"RetryMaxBelowMinMaxFirst", "[tunneld]\nretry_max = \"10m\"\nretry_min = \"1h\"\n",
                2, 13, "tunneld.retry_max", "retry_max 10m is less than retry_min 1h"},
        BadCase{"RetryMinAboveDefaultMax", "[tunneld]\nretry_min = \"2h\"\n", 2, 13,
                "tunneld.retry_min", "retry_max 1h6m40s (the default) is less than retry_min 2h"},
        BadCase{"ReconnectMaxBelowMin",
                "[tunneld]\nreconnect_min = \"5m\"\nreconnect_max = \"1m\"\n", 3, 17,
                "tunneld.reconnect_max", "reconnect_max 1m is less than reconnect_min 5m"},
        BadCase{"ClientRetryMaxBelowInherited",
                "[tunneld]\nretry_min = \"30m\"\n" +
                    client("b", "[\"b.example\"]", "retry_max = \"10m\"\n"),
                8, 13, "client[0].retry_max",
                "retry_max 10m is less than retry_min 30m (from [tunneld]); expected retry_min <= "
                "retry_max (client \"b\")"},
        // ---- clients
        BadCase{"ClientNameChars", client("my client", "[\"a.example\"]"), 2, 8, "client[0].name",
                "letters, digits, '.', '_' or '-'"},
        BadCase{"ClientNameEmpty", client("", "[\"a.example\"]"), 2, 8, "client[0].name",
                "got \"\""},
        BadCase{"ClientNameDotDot", client("..", "[\"a.example\"]"), 2, 8, "client[0].name",
                "not starting with '.'"},
        BadCase{"ClientNameSlash", client("a/b", "[\"a.example\"]"), 2, 8, "client[0].name",
                "used in file names"},
        BadCase{"ClientMissingHost", "[[client]]\nname = \"a\"\ndomains = [\"a.example\"]\n", 1, 1,
                "client[0]", "missing required key \"host\" in [[client]] (client \"a\")"},
        BadCase{"ClientMissingDomains",
                "\n[[client]]\nname = \"a\"\nhost = \"h\"\nhost_key = \"" +
                    std::string(kFingerprint) + "\"\n",
                2, 1, "client[0]", "missing required key \"domains\" in [[client]] (client \"a\")"},
        BadCase{"ClientDomainsEmpty", client("a", "[]"), 4, 11, "client[0].domains",
                "expected a non-empty array of domain names"},
        BadCase{"ClientDomainInvalid", client("a", "[\"ok.example\", \"bad_domain.example\"]"), 4,
                26, "client[0].domains[1]",
                "expected a domain name (letters, digits, '-' and '.'; a leading '.' means every "
                "subdomain), got \"bad_domain.example\" (client \"a\")"},
        BadCase{"ClientDomainDoubleDot", client("a", "[\"..example\"]"), 4, 12,
                "client[0].domains[0]", "expected a domain name"},
        BadCase{"ClientDomainListedTwice", client("a", "[\"a.example\", \"A.Example\"]"), 4, 25,
                "client[0].domains[1]", "domain \"a.example\" is listed twice"},
        BadCase{"ClientHostEmpty",
                "[[client]]\nname = \"a\"\nhost = \"\"\ndomains = [\"a.example\"]\nhost_key = \"" +
                    std::string(kFingerprint) + "\"\n",
                3, 8, "client[0].host", "expected a host name or an IPv4 or IPv6 address"},
        BadCase{"ClientPortZero", client("a", "[\"a.example\"]", "port = 0\n"), 6, 8,
                "client[0].port", "expected an integer from 1 to 65535, got 0 (client \"a\")"},
        BadCase{"ClientPortTooBig", client("a", "[\"a.example\"]", "port = 65536\n"), 6, 8,
                "client[0].port", "got 65536"},
        BadCase{"ClientMaxConnectionsZero", client("a", "[\"a.example\"]", "max_connections = 0\n"),
                6, 19, "client[0].max_connections", "expected an integer from 1 to 16, got 0"},
        BadCase{"ClientConcurrencyTooBig", client("a", "[\"a.example\"]", "concurrency = 65\n"), 6,
                15, "client[0].concurrency", "expected an integer from 1 to 64, got 65"},
        BadCase{"ClientUserEmpty", client("a", "[\"a.example\"]", "user = \"\"\n"), 6, 8,
                "client[0].user", "expected the login name on the client"},
        BadCase{"ClientIdentityRelative", client("a", "[\"a.example\"]", "identity = \"key\"\n"), 6,
                12, "client[0].identity", "expected an absolute path"},
        // ---- host keys
        BadCase{"HostKeyShortFingerprint",
                "[[client]]\nname = \"a\"\nhost = \"h\"\ndomains = [\"a.example\"]\n"
                "host_key = \"SHA256:OAVr3k7KEr7rtB4zvmG8\"\n",
                5, 12, "client[0].host_key", "43 base64 characters"},
        BadCase{"HostKeyPaddedFingerprint",
                "[[client]]\nname = \"a\"\nhost = \"h\"\ndomains = [\"a.example\"]\n"
                "host_key = \"SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak=\"\n",
                5, 12, "client[0].host_key", "without '=' padding"},
        BadCase{"HostKeyUnknownType",
                "[[client]]\nname = \"a\"\nhost = \"h\"\ndomains = [\"a.example\"]\n"
                "host_key = \"ssh-dss AAAAB3NzaC1kc3M=\"\n",
                5, 12, "client[0].host_key", "unsupported key type \"ssh-dss\""},
        BadCase{"HostKeyBadBase64",
                "[[client]]\nname = \"a\"\nhost = \"h\"\ndomains = [\"a.example\"]\n"
                "host_key = \"ssh-ed25519 AAAA!!!!\"\n",
                5, 12, "client[0].host_key", "not valid base64"},
        BadCase{"HostKeyTypeMismatch",
                "[[client]]\nname = \"a\"\nhost = \"h\"\ndomains = [\"a.example\"]\n"
                "host_key = \"ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIIvIEBFQr07lsKG79JPBxnU+fjxFI5sUASR6"
                "nODWqYWA\"\n",
                5, 12, "client[0].host_key", "is a \"ssh-ed25519\" key, not ssh-rsa"},
        BadCase{
            "HostKeyJustBase64",
            "[[client]]\nname = \"a\"\nhost = \"h\"\ndomains = [\"a.example\"]\n"
            "host_key = \"AAAAC3NzaC1lZDI1NTE5AAAAIIvIEBFQr07lsKG79JPBxnU+fjxFI5sUASR6nODWqYWA\"\n",
            5, 12, "client[0].host_key", "expected \"SHA256:\""}),
    [](const testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

// ---- [relay] and the relay keys of [[client]]

TEST(RelayConfig, DefaultsAreOffAndDocumented) {
  auto r = parseConfig(client("a", "[\"a.example\"]"), kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  const RelayConfig& c = r.config->relay;
  EXPECT_EQ(c.socket, "/run/dynmx/relay.sock");
  EXPECT_EQ(c.socket_mode, 0660u);
  EXPECT_EQ(c.socket_group, "");
  EXPECT_EQ(c.user, "");
  EXPECT_EQ(c.lease_grace, Seconds(120));
  EXPECT_EQ(c.lease_lifetime, Seconds(1200));
  EXPECT_EQ(c.revoke_hold, Seconds(3600));
  EXPECT_TRUE(c.mx_addresses.empty());
  EXPECT_EQ(c.lease_file, "/var/lib/dynmx/leases");
  EXPECT_FALSE(r.config->clients[0].relay);
  EXPECT_TRUE(r.config->clients[0].relay_networks.empty());
}

TEST(RelayConfig, EveryKeyIsRead) {
  std::string text =
      R"([relay]
socket = "/var/spool/postfix/private/dynmx-relay"
socket_mode = "0666"
socket_group = "postfix"
user = "dynmx-relay"
lease_grace = "5m"
lease_lifetime = "30m"
revoke_hold = "0"
mx_addresses = ["198.51.100.25", "2001:DB8::25", "::ffff:198.51.100.26"]
lease_file = "/srv/dynmx/leases"
checkin_user = "dynmx-checkin"
)" +
      client("office", "[\"office.example\"]",
             "relay = true\nrelay_networks = [\"192.0.2.0/24\", \"2001:db8:1::/48\", "
             "\"203.0.113.7\"]\n") +
      client("home", "[\"home.example\"]", "relay = false\n");
  auto r = parseConfig(text, kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  const RelayConfig& c = r.config->relay;
  EXPECT_EQ(c.socket, "/var/spool/postfix/private/dynmx-relay");
  EXPECT_EQ(c.socket_mode, 0666u);
  EXPECT_EQ(c.socket_group, "postfix");
  EXPECT_EQ(c.user, "dynmx-relay");
  EXPECT_EQ(c.lease_grace, Seconds(300));
  EXPECT_EQ(c.lease_lifetime, Seconds(1800));
  EXPECT_EQ(c.revoke_hold, Seconds(0));
  ASSERT_EQ(c.mx_addresses.size(), 3u);
  EXPECT_EQ(c.mx_addresses[0].str(), "198.51.100.25");
  EXPECT_EQ(c.mx_addresses[1].str(), "2001:db8::25");
  EXPECT_EQ(c.mx_addresses[2].str(), "198.51.100.26");
  EXPECT_EQ(c.lease_file, "/srv/dynmx/leases");
  EXPECT_EQ(c.checkin_user, "dynmx-checkin");
  EXPECT_EQ(RelayConfig{}.checkin_user, "");  // no check-in account unless one is named
  const ClientConfig& office = r.config->clients[0];
  EXPECT_TRUE(office.relay);
  ASSERT_EQ(office.relay_networks.size(), 3u);
  EXPECT_EQ(office.relay_networks[0].str(), "192.0.2.0/24");
  EXPECT_EQ(office.relay_networks[1].str(), "2001:db8:1::/48");
  EXPECT_EQ(office.relay_networks[2].str(), "203.0.113.7/32");
  EXPECT_FALSE(r.config->clients[1].relay);
}

TEST(RelayConfig, KeepaliveLongerThanGraceIsFineWithoutARelayClient) {
  auto r = parseConfig("[tunneld]\nkeepalive = \"5m\"\n" + client("a", "[\"a.example\"]"), kPath);
  EXPECT_TRUE(r.config) << allErrors(r);
}

INSTANTIATE_TEST_SUITE_P(
    Relay, BadConfig,
    testing::Values(
        BadCase{"RelayNotATable", "relay = true\n", 1, 9, "relay", "expected a table ([relay])"},
        BadCase{"RelayUnknownKeySuggests", "[relay]\nleasegrace = \"1m\"\n", 2, 1,
                "relay.leasegrace",
                "unknown key \"leasegrace\" in [relay] (did you mean "
                "\"lease_grace\"?)"},
        BadCase{"RelayNetworksBelongInClient", "[relay]\nrelay_networks = [\"192.0.2.0/24\"]\n", 2,
                1, "relay.relay_networks", "\"relay_networks\" belongs in [[client]]"},
        BadCase{"RelayGraceAsInteger", "[relay]\nlease_grace = 120\n", 2, 15, "relay.lease_grace",
                "(write \"120s\")"},
        BadCase{"RelayLifetimeZero", "[relay]\nlease_lifetime = \"0\"\n", 2, 18,
                "relay.lease_lifetime", "expected a duration of more than zero"},
        BadCase{"RelayHoldMalformed", "[relay]\nrevoke_hold = \"1 hour\"\n", 2, 15,
                "relay.revoke_hold", "expected a duration such as"},
        BadCase{"RelaySocketRelative", "[relay]\nsocket = \"relay.sock\"\n", 2, 10, "relay.socket",
                "expected an absolute path"},
        BadCase{"RelaySocketTooLong", "[relay]\nsocket = \"/" + std::string(120, 'x') + "\"\n", 2,
                10, "relay.socket", "the most a Unix socket allows"},
        BadCase{"RelaySocketModeDecimal", "[relay]\nsocket_mode = 660\n", 2, 15,
                "relay.socket_mode", "the decimal integer 660"},
        BadCase{"RelayUserWithSpace", "[relay]\nuser = \"a b\"\n", 2, 8, "relay.user",
                "expected a user name"},
        BadCase{"RelayCheckinUserWithSlash", "[relay]\ncheckin_user = \"a/b\"\n", 2, 16,
                "relay.checkin_user", "expected a user name"},
        BadCase{"RelayLeaseFileEmpty", "[relay]\nlease_file = \"\"\n", 2, 14, "relay.lease_file",
                "expected an absolute path"},
        BadCase{"MxAddressesNotAnArray", "[relay]\nmx_addresses = \"192.0.2.25\"\n", 2, 16,
                "relay.mx_addresses", "expected an array of this host's IPv4 or IPv6 addresses"},
        BadCase{"MxAddressName", "[relay]\nmx_addresses = [\"192.0.2.25\", \"mx.example\"]\n", 2,
                31, "relay.mx_addresses[1]",
                "expected an IPv4 or IPv6 address such as \"192.0.2.25\" or \"2001:db8::25\" (not "
                "a network, a name or the unspecified address), got \"mx.example\""},
        BadCase{"MxAddressNetwork", "[relay]\nmx_addresses = [\"192.0.2.0/24\"]\n", 2, 17,
                "relay.mx_addresses[0]", "got \"192.0.2.0/24\""},
        BadCase{"MxAddressUnspecified", "[relay]\nmx_addresses = [\"::\"]\n", 2, 17,
                "relay.mx_addresses[0]", "the unspecified address"},
        BadCase{"MxAddressNotAString", "[relay]\nmx_addresses = [25]\n", 2, 17,
                "relay.mx_addresses[0]", "expected an IPv4 or IPv6 address, got the integer 25"},
        BadCase{"ClientRelayNotABoolean", client("a", "[\"a.example\"]", "relay = \"yes\"\n"), 6, 9,
                "client[0].relay", "expected true or false, got \"yes\""},
        BadCase{"ClientRelayNetworksEmpty", client("a", "[\"a.example\"]", "relay_networks = []\n"),
                6, 18, "client[0].relay_networks",
                "(leave the key out to allow any address), got []"},
        BadCase{"ClientRelayNetworksNotAnArray",
                client("a", "[\"a.example\"]", "relay_networks = \"192.0.2.0/24\"\n"), 6, 18,
                "client[0].relay_networks", "expected a non-empty array of networks"},
        BadCase{"ClientRelayNetworkHostBits",
                client("a", "[\"a.example\"]", "relay_networks = [\"192.0.2.1/24\"]\n"), 6, 19,
                "client[0].relay_networks[0]",
                "network \"192.0.2.1/24\" has bits set after its prefix length; did you mean "
                "\"192.0.2.0/24\"?"},
        BadCase{"ClientRelayNetworkHostBitsV6",
                client("a", "[\"a.example\"]",
                       "relay_networks = [\"192.0.2.0/24\", \"2001:db8::1/64\"]\n"),
                6, 35, "client[0].relay_networks[1]", "did you mean \"2001:db8::/64\"?"},
        BadCase{"ClientRelayNetworkPrefixTooLong",
                client("a", "[\"a.example\"]", "relay_networks = [\"192.0.2.0/33\"]\n"), 6, 19,
                "client[0].relay_networks[0]", "expected a network in CIDR form"},
        BadCase{"ClientRelayNetworkName",
                client("a", "[\"a.example\"]", "relay_networks = [\"office.example\"]\n"), 6, 19,
                "client[0].relay_networks[0]", "got \"office.example\" (client \"a\")"},
        BadCase{
            "KeepaliveNotShorterThanGrace",
            "[tunneld]\nkeepalive = \"2m\"\n" + client("a", "[\"a.example\"]", "relay = true\n"), 2,
            13, "tunneld.keepalive",
            "lease_grace 2m is not longer than keepalive 2m; a tunnel lease is renewed by "
            "keepalives, so expected lease_grace > keepalive"},
        BadCase{
            "GraceNotLongerThanKeepalive",
            "[relay]\nlease_grace = \"30s\"\n" + client("a", "[\"a.example\"]", "relay = true\n"),
            2, 15, "relay.lease_grace", "lease_grace 30s is not longer than keepalive 30s"}),
    [](const testing::TestParamInfo<BadCase>& info) { return std::string(info.param.name); });

TEST(RestartOnlyDifferences, RelaySocketUserAndLeaseFileNeedARestartLeaseSettingsDoNot) {
  auto base = parseConfig(client("a", "[\"a.example\"]"), kPath);
  ASSERT_TRUE(base.config) << allErrors(base);
  struct Case {
    std::string text;
    std::vector<std::string> restart;
  } cases[] = {
      {"[relay]\nlease_grace = \"5m\"\nlease_lifetime = \"1h\"\nrevoke_hold = \"2h\"\n"
       "mx_addresses = [\"192.0.2.25\"]\n" +
           client("a", "[\"a.example\"]", "relay = true\nrelay_networks = [\"192.0.2.0/24\"]\n"),
       {}},
      {"[relay]\nsocket = \"/run/r.sock\"\nsocket_mode = \"0600\"\nsocket_group = \"mail\"\n"
       "user = \"nobody\"\nlease_file = \"/srv/leases\"\n" +
           client("a", "[\"a.example\"]"),
       {"relay.socket", "relay.socket_mode", "relay.socket_group", "relay.user",
        "relay.lease_file"}},
  };
  for (const auto& c : cases) {
    auto next = parseConfig(c.text, kPath);
    ASSERT_TRUE(next.config) << allErrors(next);
    EXPECT_EQ(restartOnlyDifferences(*base.config, *next.config), c.restart) << c.text;
  }
}

TEST(LoadConfig, MissingClientKeysAreEachReportedAtTheTable) {
  auto r = parseConfig("[spool]\n\n[[client]]\nport = 22\n", kPath);
  ASSERT_EQ(r.errors.size(), 3u) << allErrors(r);
  for (const auto& e : r.errors) {
    EXPECT_EQ(e.where.line, 3u);
    EXPECT_EQ(e.where.col, 1u);
    EXPECT_EQ(e.key, "client[0]");
  }
  EXPECT_NE(r.errors[0].message.find("\"name\""), std::string::npos);
  EXPECT_NE(r.errors[1].message.find("\"host\""), std::string::npos);
  EXPECT_NE(r.errors[2].message.find("\"domains\""), std::string::npos);
}

TEST(LoadConfig, DuplicateClientNameNamesTheFirst) {
  auto r = parseConfig(
      client("alpha", "[\"a.example\"]") + "\n" + client("alpha", "[\"b.example\"]"), kPath);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].str(), std::string(kPath) +
                                   ":8:8: client[1].name: duplicate client name \"alpha\"; the "
                                   "first is client[0] at line 2");
}

TEST(LoadConfig, DomainClaimedByTwoClientsNamesBoth) {
  auto r = parseConfig(client("alpha", "[\"a.example\", \"shared.example\"]") + "\n" +
                           client("beta", "[\"b.example\", \"Shared.Example.\"]"),
                       kPath);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].str(),
            std::string(kPath) +
                ":10:25: client[1].domains[1]: domain \"shared.example\" is already claimed by "
                "client \"alpha\" (client[0], line 4); a domain can belong to one client only "
                "(client \"beta\")");
}

TEST(LoadConfig, ExactAndSubdomainClaimsMayBelongToDifferentClients) {
  auto r = parseConfig(client("alpha", "[\"example.org\"]") + client("beta", "[\".example.org\"]") +
                           client("gamma", "[\"deep.example.org\"]"),
                       kPath);
  EXPECT_TRUE(r.errors.empty()) << allErrors(r);
}

TEST(LoadConfig, CollectsEveryErrorInFileOrder) {
  std::string text = R"([tunneld]
keepalive = "soon"
retry_min = 5

[spool]
dir = "relative"
max_message_size = "huge"

[[client]]
name = "bad name"
host = "h.example"
domains = ["ok.example", "not ok"]
port = 0
host_key = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak"

[milter]
socket = "inet:99999"
colour = "blue"
)";
  auto r = parseConfig(text, kPath);
  EXPECT_FALSE(r.config.has_value());
  struct Want {
    uint32_t line, col;
    const char* key;
  } want[] = {
      {2, 13, "tunneld.keepalive"}, {3, 13, "tunneld.retry_min"},
      {6, 7, "spool.dir"},          {7, 20, "spool.max_message_size"},
      {10, 8, "client[0].name"},    {12, 26, "client[0].domains[1]"},
      {13, 8, "client[0].port"},    {17, 10, "milter.socket"},
      {18, 1, "milter.colour"},
  };
  ASSERT_EQ(r.errors.size(), std::size(want)) << allErrors(r);
  for (size_t i = 0; i < std::size(want); ++i) {
    EXPECT_EQ(r.errors[i].where.line, want[i].line) << r.errors[i].str();
    EXPECT_EQ(r.errors[i].where.col, want[i].col) << r.errors[i].str();
    EXPECT_EQ(r.errors[i].key, want[i].key) << r.errors[i].str();
  }
  // The client's name is mentioned even though the name itself is bad.
  EXPECT_NE(r.errors[6].message.find("(client \"bad name\")"), std::string::npos);
}

TEST(LoadConfig, MissingFileIsOneErrorWithoutLineNumbers) {
  auto r = loadConfig("/nonexistent/dynmx/dynmx.toml");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].str(),
            "/nonexistent/dynmx/dynmx.toml: cannot open the configuration file: No such file or "
            "directory");
}

// ---------------------------------------------------------------- the annotated sample

std::string repoFile(const std::string& rel) {
  // DYNMX_TEST_SOURCE_DIR is tests/shared in the source tree (set by tests/shared/CMakeLists.txt).
#ifdef DYNMX_TEST_SOURCE_DIR
  auto root = std::filesystem::path(DYNMX_TEST_SOURCE_DIR).parent_path().parent_path();
#else
  auto root = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
#endif
  std::ifstream in(root / rel);
  if (!in) return {};
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// "#key = value" and "#[[client]]" lines are settings shown commented out; "# text" is prose.
std::string uncommentSettings(const std::string& text) {
  std::istringstream in(text);
  std::string out, line;
  while (std::getline(in, line)) {
    bool setting = line.size() > 1 && line[0] == '#' &&
                   (line[1] == '[' ||
                    ((line[1] >= 'a' && line[1] <= 'z') && line.find(" = ") != std::string::npos));
    out += (setting ? line.substr(1) : line) + "\n";
  }
  return out;
}

void expectDefaults(const Config& c) {
  Config d;
  EXPECT_EQ(c.spool.dir, d.spool.dir);
  EXPECT_EQ(c.spool.max_message_size, d.spool.max_message_size);
  EXPECT_EQ(c.milter.socket.text, "unix:/run/dynmx/milter.sock");
  EXPECT_EQ(c.milter.socket_mode, d.milter.socket_mode);
  EXPECT_EQ(c.milter.socket_group, d.milter.socket_group);
  EXPECT_EQ(c.milter.user, d.milter.user);
  EXPECT_EQ(c.milter.on_error, d.milter.on_error);
  const auto &t = c.tunneld, &u = d.tunneld;
  EXPECT_EQ(t.control_socket, u.control_socket);
  EXPECT_EQ(t.control_group, u.control_group);
  EXPECT_EQ(t.control_mode, u.control_mode);
  EXPECT_EQ(t.identity, u.identity);
  EXPECT_EQ(t.known_hosts, u.known_hosts);
  EXPECT_EQ(t.keepalive, u.keepalive);
  EXPECT_EQ(t.connect_timeout, u.connect_timeout);
  EXPECT_EQ(t.reconnect_min, u.reconnect_min);
  EXPECT_EQ(t.reconnect_max, u.reconnect_max);
  EXPECT_EQ(t.retry.retry_min, u.retry.retry_min);
  EXPECT_EQ(t.retry.retry_max, u.retry.retry_max);
  EXPECT_EQ(t.retry.queue_lifetime, u.retry.queue_lifetime);
  EXPECT_EQ(t.retry.delay_warning, u.retry.delay_warning);
  EXPECT_EQ(t.idle_close, u.idle_close);
  EXPECT_EQ(t.max_transactions, u.max_transactions);
  EXPECT_EQ(t.max_channels, u.max_channels);
  EXPECT_EQ(t.bounce_from, u.bounce_from);
  EXPECT_EQ(t.sendmail, u.sendmail);
  EXPECT_EQ(t.remote_command, u.remote_command);
  EXPECT_EQ(t.hostname, u.hostname);
  EXPECT_EQ(t.user, u.user);
  EXPECT_EQ(t.pid_file, u.pid_file);
  EXPECT_EQ(t.metrics_listen, u.metrics_listen);
  const auto &r = c.relay, &q = d.relay;
  EXPECT_EQ(r.socket, q.socket);
  EXPECT_EQ(r.socket_mode, q.socket_mode);
  EXPECT_EQ(r.socket_group, q.socket_group);
  EXPECT_EQ(r.user, q.user);
  EXPECT_EQ(r.lease_grace, q.lease_grace);
  EXPECT_EQ(r.lease_lifetime, q.lease_lifetime);
  EXPECT_EQ(r.revoke_hold, q.revoke_hold);
  EXPECT_EQ(r.mx_addresses, q.mx_addresses);
  EXPECT_EQ(r.lease_file, q.lease_file);
}

TEST(SampleConfig, IsValidAsShipped) {
  std::string text = repoFile("etc/dynmx.toml");
  ASSERT_FALSE(text.empty()) << "etc/dynmx.toml not found next to the tests";
  auto r = parseConfig(text, "etc/dynmx.toml");
  ASSERT_TRUE(r.errors.empty()) << allErrors(r);
  expectDefaults(*r.config);
  EXPECT_TRUE(r.config->clients.empty());
}

TEST(SampleConfig, ShowsEveryKeyWithItsDefault) {
  std::string text = uncommentSettings(repoFile("etc/dynmx.toml"));
  auto r = parseConfig(text, "etc/dynmx.toml");
  ASSERT_TRUE(r.errors.empty()) << allErrors(r) << text;
  expectDefaults(*r.config);
  ASSERT_EQ(r.config->clients.size(), 1u);
  const ClientConfig& c = r.config->clients[0];
  ClientConfig d;
  EXPECT_EQ(c.port, d.port);
  EXPECT_EQ(c.user, d.user);
  EXPECT_EQ(c.identity, d.identity);
  EXPECT_EQ(c.concurrency, d.concurrency);
  EXPECT_EQ(c.max_connections, d.max_connections);
  EXPECT_EQ(c.retry.retry_min, r.config->tunneld.retry.retry_min);
  EXPECT_EQ(c.retry.retry_max, r.config->tunneld.retry.retry_max);
  EXPECT_EQ(c.retry.queue_lifetime, r.config->tunneld.retry.queue_lifetime);
  EXPECT_EQ(c.retry.delay_warning, r.config->tunneld.retry.delay_warning);
  EXPECT_EQ(c.relay, d.relay);
  ASSERT_EQ(c.relay_networks.size(), 2u);  // the sample shows an example, not the default (none)
  EXPECT_EQ(c.relay_networks[0].str(), "192.0.2.0/24");

  struct Section {
    const char* header;
    std::vector<const char*> keys;
  } sections[] = {
      {"[spool]", {"dir", "max_message_size"}},
      {"[milter]", {"socket", "socket_mode", "socket_group", "user", "on_error"}},
      {"[tunneld]",
       {"control_socket", "control_group",   "control_mode",   "identity",      "known_hosts",
        "keepalive",      "connect_timeout", "reconnect_min",  "reconnect_max", "retry_min",
        "retry_max",      "queue_lifetime",  "delay_warning",  "idle_close",    "max_transactions",
        "max_channels",   "bounce_from",     "sendmail",       "remote_command", "hostname",
        "user",           "pid_file",        "metrics_listen"}},
      {"[relay]",
       {"socket", "socket_mode", "socket_group", "user", "lease_grace", "lease_lifetime",
        "revoke_hold", "mx_addresses", "lease_file"}},
      {"[[client]]",
       {"name", "host", "port", "user", "domains", "host_key", "identity", "concurrency",
        "max_connections", "retry_min", "retry_max", "queue_lifetime", "delay_warning", "relay",
        "relay_networks"}},
  };
  for (const auto& s : sections) {
    size_t begin = text.find(std::string("\n") + s.header + "\n");
    ASSERT_NE(begin, std::string::npos) << s.header;
    size_t end = text.find("\n[", begin + 1);
    std::string body =
        text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    for (const char* k : s.keys)
      EXPECT_NE(body.find(std::string("\n") + k + " = "), std::string::npos)
          << s.header << " " << k << " is not in etc/dynmx.toml";
  }
}

// ---------------------------------------------------------------- files on disk

using test::TempDir;

// Writes `content` to NAME in `dir` with exactly `mode`; returns its path.
std::string fileIn(const TempDir& dir, const std::string& name, const std::string& content,
                   mode_t mode) {
  std::string p = dir / name;
  test::writeFile(p, content, mode);
  return p;
}

std::string tunneldWith(const std::string& identity, const std::string& known_hosts,
                        const std::string& clients) {
  return "[tunneld]\nidentity = \"" + identity + "\"\nknown_hosts = \"" + known_hosts + "\"\n" +
         clients;
}

TEST(IdentityCheck, PrivateKeyReadableByOthersIsAnErrorInEveryRole) {
  TempDir dir;
  std::string key = fileIn(dir, "id_ed25519", "not really a key\n", 0644);
  std::string kh = fileIn(dir, "known_hosts", "", 0644);
  std::string text = tunneldWith(key, kh, client("a", "[\"a.example\"]"));
  for (auto role :
       {ConfigRole::Any, ConfigRole::Enqueue, ConfigRole::Milter, ConfigRole::Tunneld}) {
    auto r = parseConfig(text, kPath, role);
    ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
    EXPECT_EQ(r.errors[0].str(), std::string(kPath) + ":2:12: tunneld.identity: identity file " +
                                     key +
                                     " has mode 0644 and is accessible by group or others; a "
                                     "private key must be private: chmod 600 " +
                                     key);
  }
}

TEST(IdentityCheck, GroupBitsAloneAreAnError) {
  TempDir dir;
  std::string key = fileIn(dir, "id", "k\n", 0640);
  auto r = parseConfig(tunneldWith(key, "/nonexistent", ""), kPath, ConfigRole::Milter);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_NE(r.errors[0].message.find("mode 0640"), std::string::npos);
}

TEST(IdentityCheck, PrivateKeyWithMode0600IsAccepted) {
  TempDir dir;
  std::string key = fileIn(dir, "id_ed25519", "k\n", 0600);
  std::string kh = fileIn(dir, "known_hosts", "", 0644);
  auto r =
      parseConfig(tunneldWith(key, kh, client("a", "[\"a.example\"]")), kPath, ConfigRole::Tunneld);
  EXPECT_TRUE(r.errors.empty()) << allErrors(r);
}

TEST(IdentityCheck, MissingKeyIsAnErrorOnlyForTunneld) {
  TempDir dir;
  std::string key = dir.path() + "/missing_key";
  std::string text = tunneldWith(key, "/nonexistent", client("a", "[\"a.example\"]"));
  for (auto role : {ConfigRole::Any, ConfigRole::Enqueue, ConfigRole::Milter}) {
    auto r = parseConfig(text, kPath, role);
    EXPECT_TRUE(r.errors.empty()) << allErrors(r);
  }
  auto r = parseConfig(text, kPath, ConfigRole::Tunneld);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].where.line, 2u);
  EXPECT_EQ(r.errors[0].where.col, 12u);
  EXPECT_EQ(r.errors[0].key, "tunneld.identity");
  EXPECT_NE(r.errors[0].message.find(key + ": No such file or directory"), std::string::npos)
      << r.errors[0].str();
}

TEST(IdentityCheck, UnusedDefaultKeyIsNotRequired) {
  // No client uses [tunneld] identity, so tunneld does not need it to exist.
  TempDir dir;
  std::string own = fileIn(dir, "own_key", "k\n", 0600);
  auto r = parseConfig(
      "[tunneld]\nknown_hosts = \"/nonexistent\"\n" +
          client("a", "[\"a.example\"]", "identity = \"" + own + "\"\n"),
      kPath, ConfigRole::Tunneld);
  EXPECT_TRUE(r.errors.empty()) << allErrors(r);
}

TEST(IdentityCheck, DirectoryIsNotAKey) {
  TempDir dir;
  auto r = parseConfig(tunneldWith(dir.path(), "/nonexistent", client("a", "[\"a.example\"]")),
                       kPath, ConfigRole::Tunneld);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_NE(r.errors[0].message.find("is not a regular file"), std::string::npos);
}

TEST(IdentityCheck, ClientIdentityIsCheckedAtItsOwnKey) {
  TempDir dir;
  std::string good = fileIn(dir, "id", "k\n", 0600);
  std::string loose = fileIn(dir, "client_key", "k\n", 0604);
  auto r =
      parseConfig(tunneldWith(good, "/nonexistent",
                              client("a", "[\"a.example\"]", "identity = \"" + loose + "\"\n")),
                  kPath, ConfigRole::Tunneld);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].where.line, 9u);
  EXPECT_EQ(r.errors[0].where.col, 12u);
  EXPECT_EQ(r.errors[0].key, "client[0].identity");
  EXPECT_NE(r.errors[0].message.find("mode 0604"), std::string::npos);
  EXPECT_NE(r.errors[0].message.find("chmod 600 " + loose), std::string::npos);
  EXPECT_NE(r.errors[0].message.find("(client \"a\")"), std::string::npos);
}

TEST(KnownHostsCheck, ClientWithoutHostKeyNeedsKnownHostsForTunneld) {
  TempDir dir;
  std::string key = fileIn(dir, "id", "k\n", 0600);
  std::string kh = dir.path() + "/known_hosts";
  std::string text = tunneldWith(key, kh,
                                 "\n[[client]]\nname = \"nokey\"\nhost = \"h\"\n"
                                 "domains = [\"n.example\"]\n");
  EXPECT_TRUE(parseConfig(text, kPath, ConfigRole::Milter).errors.empty());
  auto r = parseConfig(text, kPath, ConfigRole::Tunneld);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].where.line, 5u);
  EXPECT_EQ(r.errors[0].where.col, 1u);
  EXPECT_EQ(r.errors[0].key, "client[0]");
  EXPECT_NE(r.errors[0].message.find("no host_key, and the known_hosts file " + kh),
            std::string::npos)
      << r.errors[0].str();
  EXPECT_NE(r.errors[0].message.find("(client \"nokey\")"), std::string::npos);

  fileIn(dir, "known_hosts", "", 0644);
  auto ok = parseConfig(text, kPath, ConfigRole::Tunneld);
  EXPECT_TRUE(ok.errors.empty()) << allErrors(ok);
}

TEST(KnownHostsCheck, WorldWritableKnownHostsIsAnErrorForTunneld) {
  TempDir dir;
  std::string key = fileIn(dir, "id", "k\n", 0600);
  std::string kh = fileIn(dir, "known_hosts", "", 0666);
  auto r = parseConfig(tunneldWith(key, kh, ""), kPath, ConfigRole::Tunneld);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].where.line, 3u);
  EXPECT_EQ(r.errors[0].key, "tunneld.known_hosts");
  EXPECT_NE(r.errors[0].message.find("chmod o-w " + kh), std::string::npos);
}

TEST(LoadConfig, ReadsTheFileFromDisk) {
  TempDir dir;
  std::string path = fileIn(dir, "dynmx.toml", "[tunneld]\nkeepalive = \"30 seconds\"\n", 0644);
  auto r = loadConfig(path);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].str(), path +
                                   ":2:13: tunneld.keepalive: expected a duration such as "
                                   "\"30s\", \"5m\", \"1h\", \"5d\", got \"30 seconds\"");
}

TEST(LoadConfig, DirectoryIsNotAConfigFile) {
  TempDir dir;
  auto r = loadConfig(dir.path());
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].str(), dir.path() + ": cannot read the configuration file: Is a directory");
}

// ---------------------------------------------------------------- --check-config

std::string captured(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

TEST(CheckConfigCommand, PrintsConfigOkAndExitsZero) {
  TempDir dir;
  std::string path = fileIn(dir, "dynmx.toml", "[spool]\ndir = \"/var/spool/dynmx\"\n", 0644);
  std::FILE* out = std::tmpfile();
  std::FILE* err = std::tmpfile();
  ASSERT_TRUE(out && err);
  EXPECT_EQ(checkConfigCommand(path, ConfigRole::Any, out, err), 0);
  EXPECT_EQ(captured(out), "config OK\n");
  EXPECT_EQ(captured(err), "");
  std::fclose(out);
  std::fclose(err);
}

TEST(CheckConfigCommand, PrintsEveryErrorAndExits78) {
  TempDir dir;
  std::string path =
      fileIn(dir, "dynmx.toml", "[spool]\ndir = \"x\"\n[milter]\non_error = \"maybe\"\n", 0644);
  std::FILE* out = std::tmpfile();
  std::FILE* err = std::tmpfile();
  ASSERT_TRUE(out && err);
  EXPECT_EQ(checkConfigCommand(path, ConfigRole::Milter, out, err), kExitConfig);
  EXPECT_EQ(kExitConfig, 78);
  EXPECT_EQ(captured(out), "");
  EXPECT_EQ(captured(err),
            path + ":2:7: spool.dir: expected an absolute path (starting with \"/\"), got \"x\"\n" +
                path +
                ":4:12: milter.on_error: expected \"tempfail\" or \"accept\", got \"maybe\"\n");
  std::fclose(out);
  std::fclose(err);
}

// ---------------------------------------------------------------- reload

TEST(RestartOnlyDifferences, SeparatesRestartKeysFromReloadableOnes) {
  auto base = parseConfig(client("a", "[\"a.example\"]"), kPath);
  ASSERT_TRUE(base.config) << allErrors(base);

  struct Case {
    std::string text;
    std::vector<std::string> restart;
  } cases[] = {
      {client("a", "[\"a.example\"]"), {}},
      // Clients, routing and retry policy are applied by a reload.
      {client("a", "[\"a.example\", \"b.example\"]") + client("c", "[\"c.example\"]") +
           "[tunneld]\nretry_min = \"1m\"\nkeepalive = \"10s\"\nqueue_lifetime = \"1d\"\n",
       {}},
      {"[milter]\non_error = \"accept\"\n", {}},
      // The milter's sessions read the size limit from the reloaded snapshot: not restart-only.
      {"[spool]\ndir = \"/srv/spool\"\nmax_message_size = \"1M\"\n", {"spool.dir"}},
      // The bounce sender is built once, with its argv: a new one needs a restart.
      {"[tunneld]\nsendmail = [\"/usr/lib/sendmail\"]\n", {"tunneld.sendmail"}},
      {"[milter]\nsocket = \"inet:8891@127.0.0.1\"\nsocket_mode = \"0600\"\nsocket_group = "
       "\"mail\"\nuser = \"dynmx\"\n",
       {"milter.socket", "milter.socket_mode", "milter.socket_group", "milter.user"}},
      {"[milter]\nsocket = \"local:/run/dynmx/milter.sock\"\n", {}},
      {"[tunneld]\ncontrol_socket = \"/run/x.sock\"\ncontrol_group = \"adm\"\ncontrol_mode = "
       "\"0600\"\nuser = \"dynmx\"\npid_file = \"/run/t.pid\"\n",
       {"tunneld.control_socket", "tunneld.control_group", "tunneld.control_mode", "tunneld.user",
        "tunneld.pid_file"}},
      // The metrics endpoint is bound at start-up, before privileges are dropped.
      {"[tunneld]\nmetrics_listen = \"127.0.0.1:9187\"\n", {"tunneld.metrics_listen"}},
  };
  for (const auto& c : cases) {
    auto next = parseConfig(c.text, kPath);
    ASSERT_TRUE(next.config) << allErrors(next);
    EXPECT_EQ(restartOnlyDifferences(*base.config, *next.config), c.restart) << c.text;
  }
}

TEST(LoadConfig, StorageLimits) {
  auto unset = parseConfig(client("a", "[\"a.example\"]"), kPath);
  ASSERT_TRUE(unset.config) << allErrors(unset);
  EXPECT_FALSE(unset.config->spool.min_free.has_value()) << "unset: 1.5 x max_message_size";
  EXPECT_EQ(unset.config->clients[0].max_queue_messages, 0u);
  EXPECT_EQ(unset.config->clients[0].max_queue_bytes, 0u);
  auto set = parseConfig("[spool]\nmin_free = \"200M\"\n" +
                             client("a", "[\"a.example\"]",
                                    "max_queue_messages = 5000\nmax_queue_bytes = \"2G\"\n"),
                         kPath);
  ASSERT_TRUE(set.config) << allErrors(set);
  EXPECT_EQ(set.config->spool.min_free, 200ull << 20);
  EXPECT_EQ(set.config->clients[0].max_queue_messages, 5000u);
  EXPECT_EQ(set.config->clients[0].max_queue_bytes, 2ull << 30);
  auto off = parseConfig("[spool]\nmin_free = 0\n", kPath);
  ASSERT_TRUE(off.config) << allErrors(off);
  EXPECT_EQ(off.config->spool.min_free, 0u) << "0 is set (no check), not unset";
}

TEST(LoadConfig, RelaySenders) {
  auto r = parseConfig(client("a", "[\"a.example\"]") + client("b", "[\"b.example\"]",
                                                              "relay_senders = true\n") +
                           client("c", "[\"c.example\"]",
                                  "relay_senders = [\"Boss@Partner.Example\", \"@corp.example\"]\n") +
                           client("d", "[\"d.example\"]", "relay_senders = false\n"),
                       kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  EXPECT_FALSE(r.config->clients[0].relay_senders.has_value());
  ASSERT_TRUE(r.config->clients[1].relay_senders.has_value());
  EXPECT_TRUE(r.config->clients[1].relay_senders->empty()) << "true: the client's domains only";
  EXPECT_EQ(r.config->clients[2].relay_senders,
            (std::vector<std::string>{"boss@partner.example", "@corp.example"}));
  EXPECT_FALSE(r.config->clients[3].relay_senders.has_value()) << "false: no check";
}

TEST(PlanReload, StorageLimitsAreTakenByTheMilterAndTheDaemon) {
  auto base = parseConfig(client("a", "[\"a.example\"]"), kPath);
  auto next = parseConfig("[spool]\nmin_free = \"1G\"\n" +
                              client("a", "[\"a.example\"]", "max_queue_bytes = \"1G\"\n"),
                          kPath);
  ASSERT_TRUE(base.config && next.config) << allErrors(base) << allErrors(next);
  ReloadPlan milter = planReload(*base.config, *next.config, ConfigRole::Milter);
  EXPECT_EQ(milter.taken,
            (std::vector<std::string>{"spool.min_free", "client a: max_queue_bytes"}));
  EXPECT_TRUE(milter.waiting.empty());
  EXPECT_EQ(milter.config.spool.min_free, 1ull << 30);
  ReloadPlan tunneld = planReload(*base.config, *next.config, ConfigRole::Tunneld);
  EXPECT_EQ(tunneld.taken, (std::vector<std::string>{"client a: max_queue_bytes"}));
}

TEST(PlanReload, KeepsRestartKeysAsRunningAndSaysWhatEachProgramTook) {
  auto base = parseConfig(client("a", "[\"a.example\"]") + client("b", "[\"b.example\"]"), kPath);
  ASSERT_TRUE(base.config) << allErrors(base);
  auto next = parseConfig(
      "[spool]\ndir = \"/srv/spool\"\nmax_message_size = \"1M\"\n"
      "[milter]\nuser = \"dynmx\"\non_error = \"accept\"\n"
      "[tunneld]\ncontrol_mode = \"0600\"\nkeepalive = \"10s\"\n"
      "max_channels = 10\n" +
          client("a", "[\"a.example\", \"c.example\"]", "port = 2222\nmax_connections = 3\n") +
          client("d", "[\"d.example\"]"),
      kPath);
  ASSERT_TRUE(next.config) << allErrors(next);

  struct Case {
    ConfigRole role;
    std::vector<std::string> taken, waiting;
  } cases[] = {
      {ConfigRole::Milter,
       {"spool.max_message_size", "milter.on_error", "client a: domains", "client d added",
        "client b removed"},
       {"spool.dir", "milter.user"}},
      {ConfigRole::Tunneld,
       {"tunneld.keepalive", "tunneld.max_channels", "client a: port, domains, max_connections",
        "client d added", "client b removed"},
       {"spool.dir", "tunneld.control_mode"}},
      {ConfigRole::Any,
       {"spool.max_message_size", "milter.on_error", "tunneld.keepalive", "tunneld.max_channels",
        "client a: port, domains, max_connections", "client d added", "client b removed"},
       {"spool.dir", "milter.user", "tunneld.control_mode"}},
  };
  for (const auto& c : cases) {
    ReloadPlan plan = planReload(*base.config, *next.config, c.role);
    EXPECT_EQ(plan.taken, c.taken) << static_cast<int>(c.role);
    EXPECT_EQ(plan.waiting, c.waiting) << static_cast<int>(c.role);
    // What waits for a restart runs as before; everything else is the new file's.
    EXPECT_EQ(plan.config.spool.dir, base.config->spool.dir);
    EXPECT_EQ(plan.config.milter.user, "");
    EXPECT_EQ(plan.config.tunneld.control_mode, 0660u);
    EXPECT_EQ(plan.config.spool.max_message_size, 1u << 20);
    EXPECT_EQ(plan.config.milter.on_error, OnError::Accept);
    EXPECT_EQ(plan.config.tunneld.keepalive, Seconds(10));
    ASSERT_EQ(plan.config.clients.size(), 2u);
    EXPECT_EQ(plan.config.clients[0].port, 2222);
    EXPECT_EQ(plan.config.clients[0].max_connections, 3u);
    EXPECT_EQ(plan.config.tunneld.max_channels, 10u);
  }
  EXPECT_EQ(joinKeys(planReload(*base.config, *base.config, ConfigRole::Any).taken), "");
}

// The check-in account is taken on a reload (dynmx-tunneld resolves it again then).
TEST(PlanReload, CheckinUserIsTakenOnReload) {
  auto base = parseConfig(client("a", "[\"a.example\"]"), kPath);
  ASSERT_TRUE(base.config) << allErrors(base);
  auto next = parseConfig(
      "[relay]\ncheckin_user = \"dynmx-checkin\"\n" + client("a", "[\"a.example\"]"), kPath);
  ASSERT_TRUE(next.config) << allErrors(next);
  ReloadPlan plan = planReload(*base.config, *next.config, ConfigRole::Tunneld);
  EXPECT_EQ(plan.taken, std::vector<std::string>{"relay.checkin_user"});
  EXPECT_TRUE(plan.waiting.empty());
  EXPECT_EQ(plan.config.relay.checkin_user, "dynmx-checkin");
}

TEST(ClientIdentityFile, IsTheClientsOwnElseTheTunneldDefault) {
  TunneldConfig t;
  t.identity = "/etc/dynmx/id_default";
  ClientConfig c;
  EXPECT_EQ(c.identityFile(t), "/etc/dynmx/id_default");
  c.identity = "/etc/dynmx/id_home";
  EXPECT_EQ(c.identityFile(t), "/etc/dynmx/id_home");
}


TEST(ListenAddress, ParsesAddressAndPortFromATable) {
  struct Case {
    const char* text;
    const char* str;  // nullptr: refused
  } cases[] = {
      {"127.0.0.1:9187", "127.0.0.1:9187"},
      {"[::1]:9187", "[::1]:9187"},
      {"0.0.0.0:1", "0.0.0.0:1"},
      {"192.0.2.7:65535", "192.0.2.7:65535"},
      {"[2001:DB8::1]:80", "[2001:db8::1]:80"},
      {"127.0.0.1:0", nullptr},
      {"127.0.0.1:65536", nullptr},
      {"127.0.0.1:09187", nullptr},
      {"127.0.0.1:", nullptr},
      {":9187", nullptr},
      {"::1:9187", nullptr},
      {"[127.0.0.1]:9187", nullptr},
      {"[IPv6:::1]:9187", nullptr},
      {"[::1]9187", nullptr},
      {"localhost:9187", nullptr},
      {"127.0.0.1:91a7", nullptr},
      {"127.0.0.1:9187 ", nullptr},
  };
  for (const auto& c : cases) {
    auto a = ListenAddress::parse(c.text);
    if (!c.str) {
      EXPECT_FALSE(a) << c.text;
      continue;
    }
    ASSERT_TRUE(a) << c.text;
    EXPECT_EQ(a->str(), c.str);
    EXPECT_EQ(ListenAddress::parse(a->str()), a) << c.text;
  }
}

TEST(LoadConfig, MetricsListenIsOffByDefaultAndEmptyMeansOff) {
  auto r = parseConfig("", kPath);
  ASSERT_TRUE(r.config);
  EXPECT_FALSE(r.config->tunneld.metrics_listen);
  r = parseConfig("[tunneld]\nmetrics_listen = \"\"\n", kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  EXPECT_FALSE(r.config->tunneld.metrics_listen);
  r = parseConfig("[tunneld]\nmetrics_listen = \"[::1]:9187\"\n", kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  ASSERT_TRUE(r.config->tunneld.metrics_listen);
  EXPECT_EQ(r.config->tunneld.metrics_listen->port, 9187);
  EXPECT_FALSE(r.config->tunneld.metrics_listen->addr.isV4());
}

TEST(IdentityRotation, AnArrayOfTwoKeysIsTheNewOneThenTheOldOne) {
  auto r = parseConfig(
      "[tunneld]\nidentity = [\"/k/new\", \"/k/old\"]\n" +
          client("a", "[\"a.example\"]") +
          client("b", "[\"b.example\"]", "identity = [\"/k/b-new\", \"/k/b-old\"]\n") +
          client("c", "[\"c.example\"]", "identity = [\"/k/c\"]\n"),
      kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  const TunneldConfig& t = r.config->tunneld;
  EXPECT_EQ(t.identity, "/k/new");
  EXPECT_EQ(t.identity_old, "/k/old");
  EXPECT_EQ(r.config->clients[0].identityFiles(t), (std::vector<std::string>{"/k/new", "/k/old"}));
  EXPECT_EQ(r.config->clients[1].identityFiles(t),
            (std::vector<std::string>{"/k/b-new", "/k/b-old"}));
  EXPECT_EQ(r.config->clients[2].identityFiles(t), (std::vector<std::string>{"/k/c"}));
  // A single string is one key, as before.
  r = parseConfig("[tunneld]\nidentity = \"/k/one\"\n", kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  EXPECT_EQ(r.config->tunneld.identity_old, "");
  EXPECT_EQ(ClientConfig{}.identityFiles(r.config->tunneld), (std::vector<std::string>{"/k/one"}));
}

TEST(IdentityRotation, OldKeyReadableByOthersIsAnErrorAtItsOwnPlace) {
  test::TempDir dir("dynmx-config");
  std::string fresh = dir / "new";
  std::string old = dir / "old";
  test::writeFile(fresh, "key", 0600);
  test::writeFile(old, "key", 0644);
  auto r = parseConfig(
      "[tunneld]\nidentity = [\"" + fresh + "\",\n  \"" + old + "\"]\n", kPath,
      ConfigRole::Tunneld);
  ASSERT_EQ(r.errors.size(), 1u) << allErrors(r);
  EXPECT_EQ(r.errors[0].key, "tunneld.identity[1]");
  EXPECT_EQ(r.errors[0].where.line, 3u);
  EXPECT_EQ(r.errors[0].where.col, 3u);
  EXPECT_NE(r.errors[0].message.find("chmod 600 " + old), std::string::npos) << r.errors[0].str();
}

TEST(IdentityRotation, ChangingEitherKeyIsTakenByAReload) {
  auto a = parseConfig("[tunneld]\nidentity = [\"/k/new\", \"/k/old\"]\n", kPath);
  auto b = parseConfig("[tunneld]\nidentity = \"/k/new\"\n", kPath);
  ASSERT_TRUE(a.config && b.config);
  ReloadPlan p = planReload(*a.config, *b.config, ConfigRole::Tunneld);
  EXPECT_EQ(p.taken, (std::vector<std::string>{"tunneld.identity"}));
  EXPECT_TRUE(p.waiting.empty());
  EXPECT_EQ(p.config.tunneld.identity_old, "");
}
}  // namespace
}  // namespace dynmx
