// crlf.hpp: line-end normalisation for message content on its way into the spool.
//
// Bare CR and bare LF become CRLF; CRLF stays. A CR at the end of one chunk is held until the next
// chunk shows whether an LF follows. finish() flushes that and ends an unterminated last line with
// CRLF, so every spooled message ends with CRLF. Works on any bytes, NUL included.
#pragma once

#include <string>
#include <string_view>

namespace dynmx {

class CrlfNormalizer {
 public:
  // Appends the normalised form of `in` to `out`.
  void feed(std::string_view in, std::string& out);
  void finish(std::string& out);

 private:
  bool pending_cr_ = false;
  bool at_line_start_ = true;
};

}  // namespace dynmx
