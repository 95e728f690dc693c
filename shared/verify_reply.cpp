// verify_reply.cpp: the verify answer line and the RCPT reply classification (see the header).
#include "shared/verify_reply.hpp"

#include "shared/smtp_reply.hpp"

namespace dynmx {

namespace {
constexpr size_t kMaxReply = 512;
constexpr std::string_view kSources[] = {"cache", "probe", "none"};

bool printableText(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c >= 0x7f) return false;
  return true;
}
}  // namespace

const char* verifyStatusName(VerifyStatus s) {
  switch (s) {
    case VerifyStatus::Valid:
      return "valid";
    case VerifyStatus::Invalid:
      return "invalid";
    case VerifyStatus::Unknown:
      break;
  }
  return "unknown";
}

std::optional<VerifyStatus> verifyStatusFromName(std::string_view name) {
  for (VerifyStatus s : {VerifyStatus::Valid, VerifyStatus::Invalid, VerifyStatus::Unknown})
    if (name == verifyStatusName(s)) return s;
  return std::nullopt;
}

std::string formatVerifyLine(const VerifyAnswer& a) {
  return std::string(verifyStatusName(a.status)) + " " + a.source + " " +
         printable(a.reply, kMaxReply);
}

Result<VerifyAnswer> parseVerifyLine(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos)
    return Error{
        0, "verify answer: expected \"STATUS SOURCE REPLY\", got \"" + printable(line, 80) + "\""};
  VerifyAnswer a;
  auto st = verifyStatusFromName(line.substr(0, sp1));
  if (!st)
    return Error{0, "verify answer: expected valid, invalid or unknown, got \"" +
                        printable(line.substr(0, sp1), 40) + "\""};
  a.status = *st;
  std::string_view source = line.substr(sp1 + 1, sp2 - sp1 - 1);
  bool known = false;
  for (auto s : kSources) known = known || s == source;
  if (!known)
    return Error{
        0, "verify answer: expected cache, probe or none, got \"" + printable(source, 40) + "\""};
  a.source = std::string(source);
  std::string_view reply = line.substr(sp2 + 1);
  if (reply.size() > kMaxReply || !printableText(reply))
    return Error{0, "verify answer: the reply is not printable text of at most 512 bytes"};
  a.reply = std::string(reply);
  return a;
}

VerifyStatus verifyStatusOfRcptReply(int code, std::string_view text) {
  if (code == 250 || code == 251) return VerifyStatus::Valid;
  if (code == 550 || code == 551 || code == 553) return VerifyStatus::Invalid;
  if (code >= 500 && code < 600 && enhancedStatus(code, text).rfind("5.1.", 0) == 0)
    return VerifyStatus::Invalid;
  return VerifyStatus::Unknown;
}

}  // namespace dynmx
