// host_name.hpp: the name this host gives itself (EHLO, trace headers, bounces).
//
// Contract: hostNameOr(preferred) is `preferred` when it is not empty (a configured or
// MTA-supplied name), else the system's host name (gethostname(2)), else "localhost" when the
// system has none. Never fails; no DNS lookup.
#pragma once

#include <string>
#include <string_view>

namespace dynmx {

std::string hostNameOr(std::string_view preferred);

}  // namespace dynmx
