// exposition.cpp: the text of the metrics (see exposition.hpp); one Family per metric family.
#include "tunneld/metrics/exposition.hpp"

namespace dynmx::tunneld {

namespace {

struct Family {
  const char* name;  // the family's name (a counter's samples add _total, an info's _info)
  const char* type;  // "counter", "gauge" or "info"
  const char* unit;  // "" or the unit the name ends in
  const char* help;
};

std::string escapeLabel(std::string_view v) {
  std::string o;
  for (char c : v) {
    if (c == '\\')
      o += "\\\\";
    else if (c == '"')
      o += "\\\"";
    else if (c == '\n')
      o += "\\n";
    else
      o += c;
  }
  return o;
}

class Writer {
 public:
  explicit Writer(ExpositionFormat f) : f_(f) {}

  void family(const Family& fam) {
    fam_ = &fam;
    std::string type = fam.type;
    std::string name = fam.name;
    bool om = f_ == ExpositionFormat::OpenMetrics;
    if (!om && type == "counter") name += "_total";
    if (!om && type == "info") {
      name += "_info";
      type = "gauge";
    }
    out_ += "# HELP " + name + " " + fam.help + "\n";
    out_ += "# TYPE " + name + " " + type + "\n";
    if (om && *fam.unit) out_ += "# UNIT " + name + " " + fam.unit + "\n";
  }

  // One sample of the current family; labels are (name, value) pairs.
  void sample(std::initializer_list<std::pair<const char*, std::string_view>> labels,
              uint64_t value) {
    sampleText(labels, std::to_string(value));
  }
  void sampleSigned(std::initializer_list<std::pair<const char*, std::string_view>> labels,
                    int64_t value) {
    sampleText(labels, std::to_string(value));
  }

  std::string finish() {
    if (f_ == ExpositionFormat::OpenMetrics) out_ += "# EOF\n";
    return std::move(out_);
  }

 private:
  void sampleText(std::initializer_list<std::pair<const char*, std::string_view>> labels,
                  const std::string& value) {
    std::string type = fam_->type;
    out_ += fam_->name;
    if (type == "counter") out_ += "_total";
    if (type == "info") out_ += "_info";
    if (labels.size()) {
      out_ += '{';
      bool first = true;
      for (auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += std::string(k) + "=\"" + escapeLabel(v) + "\"";
      }
      out_ += '}';
    }
    out_ += ' ' + value + '\n';
  }

  ExpositionFormat f_;
  const Family* fam_ = nullptr;
  std::string out_;
};

constexpr Family kBuild{"dynmx_build", "info", "", "The version of dynmx-tunneld."};
constexpr Family kStart{"dynmx_start_time_seconds", "gauge", "seconds",
                        "When dynmx-tunneld started, in seconds since the epoch."};
constexpr Family kConnected{"dynmx_client_connected", "gauge", "",
                            "1 while the client's SSH connection is up and verified, else 0."};
constexpr Family kLoginKey{"dynmx_client_login_key", "info", "",
                           "The identity key the client's connection logged in with (while "
                           "connected; see KEY ROTATION in dynmx-tunneld(8))."};
constexpr Family kQueue{"dynmx_queue_messages", "gauge", "",
                        "Messages queued for the client, by state (active, deferred, hold, "
                        "in_flight)."};
constexpr Family kNotifications{"dynmx_notification_messages", "gauge", "",
                                "Bounces and delay warnings waiting for the local sendmail, by "
                                "state."};
constexpr Family kSpool{"dynmx_spool_messages", "gauge", "",
                        "Messages in the spool not in any client's queue: incoming (not yet "
                        "taken) and corrupt."};

// The per-client counters, in the order they are printed.
struct CounterFamily {
  Family family;
  uint64_t ClientCounters::*field;
};
const CounterFamily kCounters[] = {
    {{"dynmx_recipients_delivered", "counter", "", "Recipients the client's far end accepted."},
     &ClientCounters::delivered},
    {{"dynmx_recipients_deferred", "counter", "",
      "Recipient attempts that failed temporarily (tried again later)."},
     &ClientCounters::deferred},
    {{"dynmx_recipients_bounced", "counter", "", "Recipients the far end refused permanently."},
     &ClientCounters::bounced},
    {{"dynmx_recipients_expired", "counter", "",
      "Recipients that failed after queue_lifetime without a delivery."},
     &ClientCounters::expired},
    {{"dynmx_sent_bytes", "counter", "bytes",
      "Bytes written into the client's SMTP channels (SMTP commands and message data, before "
      "SSH encryption)."},
     &ClientCounters::sent_bytes},
    {{"dynmx_connection_attempts", "counter", "", "TCP connections to the client started."},
     &ClientCounters::connection_attempts},
    {{"dynmx_handshake_failures", "counter", "",
      "SSH handshakes with the client that failed or timed out (host keys not counted)."},
     &ClientCounters::handshake_failures},
    {{"dynmx_host_key_mismatches", "counter", "",
      "Connections on which the client's address presented another host key than the stored "
      "one."},
     &ClientCounters::host_key_mismatches},
    {{"dynmx_authentication_failures", "counter", "",
      "Logins at the client refused with every identity key."},
     &ClientCounters::auth_failures},
};
constexpr Family kLastDelivery{"dynmx_last_delivery_timestamp_seconds", "gauge", "seconds",
                               "When a recipient was last delivered to the client, in seconds "
                               "since the epoch (absent before the first)."};

}  // namespace

std::string renderMetrics(const MetricsSnapshot& s, ExpositionFormat f) {
  Writer w(f);
  w.family(kBuild);
  w.sample({{"version", s.version}}, 1);
  w.family(kStart);
  w.sampleSigned({}, s.start_time);
  w.family(kConnected);
  for (auto& [name, c] : s.clients)
    if (c.configured) w.sample({{"client", name}}, c.connected ? 1 : 0);
  w.family(kLoginKey);
  for (auto& [name, c] : s.clients)
    if (c.configured && c.connected && !c.login_key.empty())
      w.sample({{"client", name}, {"key", c.login_key}}, 1);
  w.family(kQueue);
  for (auto& [name, c] : s.clients) {
    w.sample({{"client", name}, {"state", "active"}}, c.active);
    w.sample({{"client", name}, {"state", "deferred"}}, c.deferred);
    w.sample({{"client", name}, {"state", "hold"}}, c.hold);
    w.sample({{"client", name}, {"state", "in_flight"}}, c.in_flight);
  }
  w.family(kNotifications);
  w.sample({{"state", "active"}}, s.notifications_active);
  w.sample({{"state", "deferred"}}, s.notifications_deferred);
  w.sample({{"state", "hold"}}, s.notifications_hold);
  w.sample({{"state", "in_flight"}}, s.notifications_in_flight);
  w.family(kSpool);
  w.sample({{"state", "incoming"}}, s.incoming);
  w.sample({{"state", "corrupt"}}, s.corrupt);
  for (const CounterFamily& cf : kCounters) {
    w.family(cf.family);
    for (auto& [name, c] : s.clients) w.sample({{"client", name}}, c.counters.*cf.field);
  }
  w.family(kLastDelivery);
  for (auto& [name, c] : s.clients)
    if (c.counters.last_delivery) w.sampleSigned({{"client", name}}, c.counters.last_delivery);
  return w.finish();
}

const char* contentType(ExpositionFormat f) {
  return f == ExpositionFormat::OpenMetrics ? "application/openmetrics-text; version=1.0.0; "
                                              "charset=utf-8"
                                            : "text/plain; version=0.0.4; charset=utf-8";
}

ExpositionFormat negotiateFormat(std::string_view accept) {
  // Each media range up to its parameters; OpenMetrics when any range names it.
  size_t i = 0;
  while (i <= accept.size()) {
    size_t comma = accept.find(',', i);
    if (comma == std::string_view::npos) comma = accept.size();
    std::string_view range = accept.substr(i, comma - i);
    size_t semi = range.find(';');
    range = range.substr(0, semi);
    while (!range.empty() && (range.front() == ' ' || range.front() == '\t'))
      range.remove_prefix(1);
    while (!range.empty() && (range.back() == ' ' || range.back() == '\t')) range.remove_suffix(1);
    if (range == "application/openmetrics-text") return ExpositionFormat::OpenMetrics;
    i = comma + 1;
  }
  return ExpositionFormat::Prometheus;
}

}  // namespace dynmx::tunneld
