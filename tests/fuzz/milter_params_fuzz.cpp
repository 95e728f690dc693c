// milter_params_fuzz.cpp: the ESMTP parameters of MAIL and RCPT come from SMTP clients (through
// the MTA); parsing them must never crash, whatever the bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "milter/session.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Split the input at NULs into argument strings, as libmilter hands them over.
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> args;
  size_t start = 0;
  for (size_t i = 0; i <= in.size(); ++i) {
    if (i == in.size() || in[i] == '\0') {
      args.push_back(in.substr(start, i - start));
      start = i + 1;
    }
  }
  auto m = dynmx::milter::parseMailParams(args);
  auto r = dynmx::milter::parseRcptParams(args);
  if (m.envid.size() > size || r.orcpt.size() > size) __builtin_trap();
  return 0;
}
