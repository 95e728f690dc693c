// text.hpp: small pieces of the line formats dynmx reads and writes (spool records, the lease
// file, the verify cache, control replies): fields split at single spaces, checksums as eight
// lowercase hex digits, non-negative decimals of at most 18 digits, and ASCII lower case (of
// domains and addresses; the C locale's, whatever the process's locale).
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

// A non-negative decimal of 1 to 18 digits (fits int64_t); false for anything else.
inline bool parseDecimal(std::string_view s, int64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

inline std::string asciiLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace dynmx
