// smtp_reply.cpp: SMTP reply parsing and ESMTP parameter encoding.
//
// Contract: see smtp_reply.hpp. Pure functions, no allocation beyond their result, no failure
// modes: input that does not parse yields nullopt, 0 or "".
#include "shared/smtp_reply.hpp"

#include <cctype>

namespace dynmx {
namespace {

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

// Length of "C.SSS.DDD" at the start of s (followed by end or space), or 0.
size_t enhancedLength(std::string_view s) {
  size_t i = 0;
  if (s.size() < 5 || !(s[0] == '2' || s[0] == '4' || s[0] == '5') || s[1] != '.') return 0;
  i = 2;
  for (int part = 0; part < 2; ++part) {
    size_t start = i;
    while (i < s.size() && isDigit(s[i]) && i - start < 3) ++i;
    if (i == start) return 0;
    if (part == 0) {
      if (i >= s.size() || s[i] != '.') return 0;
      ++i;
    }
  }
  if (i < s.size() && s[i] != ' ') return 0;
  return i;
}

}  // namespace

std::optional<ReplyLine> parseReplyLine(std::string_view line) {
  if (line.size() < 3 || !isDigit(line[0]) || !isDigit(line[1]) || !isDigit(line[2])) {
    return std::nullopt;
  }
  if (line[0] < '2' || line[0] > '5') return std::nullopt;
  ReplyLine r;
  r.code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (line.size() == 3) return r;
  if (line[3] == '-') {
    r.last = false;
  } else if (line[3] != ' ') {
    return std::nullopt;
  }
  r.text = line.substr(4);
  return r;
}

std::string enhancedStatus(int code, std::string_view text) {
  size_t n = enhancedLength(text);
  if (n == 0 || code < 200 || code > 599 || text[0] - '0' != code / 100) return "";
  return std::string(text.substr(0, n));
}

int replyCode(std::string_view reply) {
  auto r = parseReplyLine(reply);
  return r ? r->code : 0;
}

std::string dsnStatus(std::string_view reply, std::string_view fallback) {
  auto r = parseReplyLine(reply);
  if (!r || r->code / 100 == 3) return std::string(fallback);
  std::string e = enhancedStatus(r->code, r->text);
  if (!e.empty()) return e;
  return std::to_string(r->code / 100) + ".0.0";
}

std::string xtextEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 33 || c > 126 || c == '+' || c == '=') {
      out += '+';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string xtextDecode(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string printable(std::string_view s, size_t max) {
  std::string out;
  size_t n = s.size() < max ? s.size() : max;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c < 32 || c > 126) ? '?' : static_cast<char>(c);
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace dynmx
