// host_name.cpp: see host_name.hpp.
#include "shared/host_name.hpp"

#include <unistd.h>

namespace dynmx {

std::string hostNameOr(std::string_view preferred) {
  if (!preferred.empty()) return std::string(preferred);
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

}  // namespace dynmx
