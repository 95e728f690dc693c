// date.hpp: dates as mail headers write them (RFC 5322 3.3) and as logs, status and dynmxctl show
// them (ISO 8601), in UTC, independent of the locale.
#pragma once

#include <cstdint>
#include <string>

namespace dynmx {

// "Tue, 14 Nov 2023 22:13:20 +0000" for a unix time.
std::string rfc5322Date(int64_t unix_time);

// "2023-11-14T22:13:20Z" for a unix time.
std::string isoUtc(int64_t unix_time);
// isoUtc(), or "-" for 0 and earlier (a time not set).
std::string isoUtcOrDash(int64_t unix_time);

}  // namespace dynmx
