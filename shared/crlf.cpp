// crlf.cpp: bare CR / bare LF -> CRLF, across chunk boundaries (see crlf.hpp).
#include "shared/crlf.hpp"

namespace dynmx {

void CrlfNormalizer::feed(std::string_view in, std::string& out) {
  out.reserve(out.size() + in.size() + in.size() / 32 + 2);
  for (char c : in) {
    if (pending_cr_) {
      pending_cr_ = false;
      out += "\r\n";
      at_line_start_ = true;
      if (c == '\n') continue;  // CRLF: already emitted
    }
    if (c == '\r') {
      pending_cr_ = true;
    } else if (c == '\n') {
      out += "\r\n";
      at_line_start_ = true;
    } else {
      out += c;
      at_line_start_ = false;
    }
  }
}

void CrlfNormalizer::finish(std::string& out) {
  if (pending_cr_) {
    pending_cr_ = false;
    out += "\r\n";
    at_line_start_ = true;
  }
  if (!at_line_start_) {
    out += "\r\n";
    at_line_start_ = true;
  }
}

}  // namespace dynmx
