// crlf_test.cpp: line-end normalisation is the same whatever the chunking of the input.
#include <gtest/gtest.h>

#include "shared/crlf.hpp"

namespace dynmx {
namespace {

struct Case {
  const char* name;
  std::string in;
  std::string out;
};

std::string run(const std::string& in, size_t chunk) {
  CrlfNormalizer n;
  std::string out;
  for (size_t i = 0; i < in.size(); i += chunk) n.feed(std::string_view(in).substr(i, chunk), out);
  n.finish(out);
  return out;
}

TEST(CrlfNormalizer, TableOfLineEndsAnyChunking) {
  std::vector<Case> cases = {
      {"empty", "", ""},
      {"crlf kept", "a\r\nb\r\n", "a\r\nb\r\n"},
      {"bare lf", "a\nb\n", "a\r\nb\r\n"},
      {"bare cr", "a\rb\r", "a\r\nb\r\n"},
      {"cr cr lf", "a\r\r\nb", "a\r\n\r\nb\r\n"},
      {"lf cr", "a\n\rb", "a\r\n\r\nb\r\n"},
      {"unterminated last line", "a\r\nb", "a\r\nb\r\n"},
      {"smuggling attempt", "x\n.\nMAIL FROM:<e>\r\n", "x\r\n.\r\nMAIL FROM:<e>\r\n"},
      {"nul bytes", std::string("a\0b\n", 4), std::string("a\0b\r\n", 5)},
      {"trailing cr", "a\r", "a\r\n"},
  };
  for (const auto& c : cases) {
    for (size_t chunk : {1u, 2u, 3u, 7u, 1000u}) {
      EXPECT_EQ(run(c.in, chunk), c.out) << c.name << " chunk " << chunk;
    }
  }
}

}  // namespace
}  // namespace dynmx
