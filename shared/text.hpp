// text.hpp: two small pieces of the line formats dynmx writes itself (spool records, the lease
// file): fields split at single spaces, and checksums as eight lowercase hex digits.
//
// Contract: pure, total; splitSpaces keeps empty fields ("a  b" is "a", "", "b"), so that a reader
// can refuse a line with a doubled space instead of guessing.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace dynmx {

inline std::vector<std::string_view> splitSpaces(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == ' ') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

inline std::string hex8(uint32_t v) {
  char b[9];
  (void)std::snprintf(b, sizeof b, "%08" PRIx32, v);
  return b;
}

}  // namespace dynmx
