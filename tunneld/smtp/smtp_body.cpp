// smtp_body.cpp: the body encoder: message bytes to their wire form after DATA.
//
// Contract: see smtp_body.hpp (CRLF only, dot-stuffing, lines folded after kMaxLine octets, the
// same output for any chunking; without dot-stuffing for BDAT). A bare CR is held back until the next byte shows whether an LF
// follows, so a CRLF split between two chunks is still one line end.
// Failure behaviour: none; every input has an encoding. The output grows by at most 3x + 4,
// which the engine's output bound relies on.
#include "tunneld/smtp/smtp_body.hpp"

#include <algorithm>

namespace dynmx::tunneld {

void SmtpBodyEncoder::feed(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size()) {
    char c = in[i];
    if (pending_cr_) {
      pending_cr_ = false;
      endLine(out);
      if (c == '\n') {
        ++i;
        continue;
      }
    }
    if (c == '\r') {
      pending_cr_ = true;
      ++i;
      continue;
    }
    if (c == '\n') {
      endLine(out);
      ++i;
      continue;
    }
    size_t j = in.find_first_of("\r\n", i);
    if (j == std::string_view::npos) j = in.size();
    while (i < j) {
      if (line_len_ == 0 && in[i] == '.') {
        // Counted without BDAT too, so that lines fold where they do with DATA.
        if (stuff_dots_) out += '.';
        line_len_ = 1;
      }
      if (line_len_ >= kMaxLine) {
        out += "\r\n ";
        line_len_ = 1;
      }
      size_t n = std::min(j - i, kMaxLine - line_len_);
      out.append(in.data() + i, n);
      line_len_ += n;
      i += n;
    }
  }
}

void SmtpBodyEncoder::finish(std::string& out) {
  if (pending_cr_) {
    pending_cr_ = false;
    endLine(out);
  } else if (line_len_ > 0) {
    endLine(out);
  }
}

}  // namespace dynmx::tunneld
