// smtp_reply.hpp: small pure helpers for SMTP replies and ESMTP parameters, shared by the SMTP
// engine, the queue manager's logs and the bounce builder.
//
// Contract: every function is a pure function of its input, never throws on any bytes and never
// reads past the view it is given (they see the far end's bytes first, so they are fuzzed through
// the engine).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace dynmx {

// One line of a reply: "250-PIPELINING" (last = false) or "250 Ok" (last = true). The code's
// first digit must be 2..5 and the code must be followed by ' ', '-' or the end of the line.
struct ReplyLine {
  int code = 0;
  bool last = true;
  std::string_view text;  // after "ddd " / "ddd-"
};
std::optional<ReplyLine> parseReplyLine(std::string_view line);

// The enhanced status code ("5.1.1") at the start of `text`, trusted only when its class digit
// matches the first digit of `code` (RFC 3463/2034); "" otherwise.
std::string enhancedStatus(int code, std::string_view text);

// The reply code at the start of a stored one-line reply ("550 5.1.1 no such user" -> 550), or 0
// when the string is not a far-end reply (our own reason such as "lost connection ...").
int replyCode(std::string_view reply);

// The RFC 3464 Status value for a stored reply: its trusted enhanced code, else "C.0.0" from the
// reply code, else `fallback`.
std::string dsnStatus(std::string_view reply, std::string_view fallback);

// RFC 3461 xtext: '+', '=', and bytes outside 33..126 become "+HH".
std::string xtextEncode(std::string_view s);
// RFC 3461 xtext decoding; malformed "+" sequences are kept as they are.
std::string xtextDecode(std::string_view s);

// A copy safe for one log line: control bytes and non-ASCII become '?', cut at `max` bytes.
std::string printable(std::string_view s, size_t max = 400);

}  // namespace dynmx
