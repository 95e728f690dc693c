// exposition.hpp: dynmx-tunneld's metrics as OpenMetrics 1.0 or Prometheus 0.0.4 text.
//
// Contract: renderMetrics() is a pure function of a snapshot (the daemon takes it from the
// Metrics registry, its SSH clients and the queue at the time of the request). The families are
// listed in dynmx-tunneld(8), METRICS; every family has HELP and TYPE lines, counters end in
// _total, units are in the names (_seconds, _bytes). OpenMetrics adds UNIT lines, an `info` family
// for the build and `# EOF`; the Prometheus text format has neither (the build is a gauge of
// value 1), as Prometheus' own clients do. The time of the last delivery is a timestamp gauge,
// not "seconds since" (Prometheus' advice: a timestamp does not go stale between scrapes, and
// time() - dynmx_last_delivery_timestamp_seconds gives the age). Label values are escaped (\\,
// \", \n). negotiateFormat() picks the format from an HTTP Accept header the way Prometheus'
// clients do: OpenMetrics when it is asked for, the Prometheus text otherwise.
// Failure behaviour: none; every snapshot renders.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "tunneld/metrics/metrics.hpp"

namespace dynmx::tunneld {

enum class ExpositionFormat { OpenMetrics, Prometheus };

struct ClientSnapshot {
  bool configured = false;  // in the running configuration (else: removed by a reload)
  bool connected = false;
  std::string login_key;  // while connected: the identity file it logged in with
  ClientCounters counters;
  // Messages of the client by queue state: active, deferred, hold, in_flight.
  uint64_t active = 0, deferred = 0, hold = 0, in_flight = 0;
};

struct MetricsSnapshot {
  std::string version;     // shared/version.hpp
  int64_t start_time = 0;  // unix seconds the daemon started
  std::map<std::string, ClientSnapshot> clients;
  // Notifications (bounces, delay warnings) waiting for the local sendmail, by queue state.
  uint64_t notifications_active = 0, notifications_deferred = 0, notifications_hold = 0,
           notifications_in_flight = 0;
  uint64_t incoming = 0;  // messages in incoming/ not yet taken into the queue
  uint64_t corrupt = 0;   // files in corrupt/ (the administrator's to look at)
};

std::string renderMetrics(const MetricsSnapshot& s, ExpositionFormat f);
// The Content-Type of each format.
const char* contentType(ExpositionFormat f);
// From the value of an Accept header ("" when there was none).
ExpositionFormat negotiateFormat(std::string_view accept);

}  // namespace dynmx::tunneld
