// verify_reply.hpp: the answer to "verify CLIENT ADDRESS" on dynmx-tunneld's admin socket, the
// one body line dynmx-milter reads back.
//
// Contract: the line is "STATUS SOURCE REPLY": STATUS is valid, invalid or unknown; SOURCE says
// where it came from (cache: an earlier probe still fresh; probe: asked just now; none: not asked,
// REPLY then says why: not connected, timed out, ...); REPLY is the far end's reply or our reason,
// printable ASCII, possibly empty. parseVerifyLine() reads outside input: pure, total, fuzzed.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "shared/result.hpp"

namespace dynmx {

enum class VerifyStatus { Valid, Invalid, Unknown };
const char* verifyStatusName(VerifyStatus s);  // "valid", "invalid", "unknown"
std::optional<VerifyStatus> verifyStatusFromName(std::string_view name);

struct VerifyAnswer {
  VerifyStatus status = VerifyStatus::Unknown;
  std::string source;  // "cache", "probe", "none"
  std::string reply;
  bool operator==(const VerifyAnswer&) const = default;
};

std::string formatVerifyLine(const VerifyAnswer& a);
Result<VerifyAnswer> parseVerifyLine(std::string_view line);

// What a probe's RCPT reply says about the address: 250/251 valid; 550, 551, 553 (and any 5xx
// whose trusted enhanced code is 5.1.x: bad mailbox or address) invalid; anything else unknown
// (4xx, other 5xx such as a policy or syntax refusal, no reply).
VerifyStatus verifyStatusOfRcptReply(int code, std::string_view text);

}  // namespace dynmx
