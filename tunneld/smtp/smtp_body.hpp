// smtp_body.hpp: message content as it goes on the wire after DATA.
//
// Contract: feed() any bytes in any chunking; the output is the same as for the whole input at
// once. Bare CR, bare LF and CRLF all become CRLF (so no <LF>.<LF> can ever end the data early at
// the far end: SMTP smuggling); a line starting with '.' gets another '.' (RFC 5321 4.5.2); a line
// longer than kMaxLine octets on the wire (the stuffed dot included, CRLF excluded) is folded the
// way Postfix's smtp client does (smtp_line_length_limit = 998): CRLF and one SPACE are inserted,
// so the continuation is a folded header line in the header and a line starting with a space in
// the body. finish() ends an unterminated last line with CRLF; the caller adds ".\r\n".
// For BDAT (RFC 3030: length-delimited, no dot-stuffing) construct it with stuff_dots = false:
// the output is then exactly the DATA output with the stuffed dots taken out again (the lines
// fold at the same places), so the far end stores the same bytes either way.
// Output grows by at most 3 bytes per input byte plus 4 (the bound the engine relies on).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace dynmx::tunneld {

class SmtpBodyEncoder {
 public:
  static constexpr size_t kMaxLine = 998;

  explicit SmtpBodyEncoder(bool stuff_dots = true) : stuff_dots_(stuff_dots) {}

  void feed(std::string_view in, std::string& out);
  void finish(std::string& out);

 private:
  void endLine(std::string& out) {
    out += "\r\n";
    line_len_ = 0;
  }
  bool stuff_dots_ = true;
  bool pending_cr_ = false;
  size_t line_len_ = 0;  // octets of the current line in its DATA wire form (stuffed dot counted)
};

}  // namespace dynmx::tunneld
