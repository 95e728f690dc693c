// man_page.cpp: configuration examples taken from the man page sources (see the header).
#include "tests/harness/man_page.hpp"

#include <sstream>
#include <stdexcept>

#include "tests/harness/harness.hpp"

namespace dynmx::test {

namespace {

std::string unroff(const std::string& line) {
  static const std::pair<const char*, const char*> kEscapes[] = {
      {"\\-", "-"},    {"\\(aq", "'"}, {"\\(ga", "`"}, {"\\(lq", "\""},
      {"\\(rq", "\""}, {"\\e", "\\"},  {"\\&", ""}};
  std::string out;
  for (size_t i = 0; i < line.size();) {
    bool done = false;
    for (const auto& [esc, plain] : kEscapes) {
      std::string e = esc;
      if (line.compare(i, e.size(), e) == 0) {
        out += plain;
        i += e.size();
        done = true;
        break;
      }
    }
    if (!done) out += line[i++];
  }
  return out;
}

}  // namespace

std::string manPagePath(const std::string& name) {
  return std::string(DYNMX_SOURCE_DIR) + "/man/" + name;
}

std::vector<std::string> manPageExample(const std::string& page, const std::string& marker,
                                        int nth) {
  std::istringstream in(readFile(manPagePath(page)));
  std::string line;
  bool after_marker = false, in_block = false;
  int seen = 0;
  std::vector<std::string> out;
  while (std::getline(in, line)) {
    if (!after_marker) {
      after_marker = line.find(marker) != std::string::npos;
      continue;
    }
    if (!in_block) {
      if (line == ".nf") in_block = true;
      continue;
    }
    if (line == ".fi") {
      if (seen++ == nth) return out;
      out.clear();
      in_block = false;
      continue;
    }
    out.push_back(unroff(line));
  }
  throw std::runtime_error("man/" + page + ": no example block " + std::to_string(nth) +
                           " after \"" + marker + "\"");
}

std::string joinReplacing(const std::vector<std::string>& lines,
                          const std::vector<std::pair<std::string, std::string>>& replace) {
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  for (const auto& [from, to] : replace) {
    if (from.empty()) continue;
    for (size_t p = out.find(from); p != std::string::npos; p = out.find(from, p + to.size())) {
      out.replace(p, from.size(), to);
    }
  }
  return out;
}

}  // namespace dynmx::test
