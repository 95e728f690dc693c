// recipient_check.cpp: the per-client recipient lists at RCPT (see recipient_check.hpp).
#include "milter/recipient_check.hpp"

#include "shared/log.hpp"
#include "shared/routing.hpp"

namespace dynmx::milter {

std::string milterReplyText(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (out.size() >= 900) break;
    if (c == '%') {
      out += "%%";
    } else if (c < 0x20 || c >= 0x7f) {
      out += '?';
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

RecipientCheck::RecipientCheck(const std::vector<ClientConfig>& clients) {
  for (const ClientConfig& c : clients) {
    names_.push_back(c.name);
    tables_.push_back(makeRecipientTable(c));
  }
}

std::optional<RecipientRefusal> RecipientCheck::check(size_t client, std::string_view rcpt,
                                                      const std::string& qid) const {
  if (client >= tables_.size() || !tables_[client]) return std::nullopt;
  std::string why;
  std::string bare = bareAddress(rcpt);
  RecipientRefusal r;
  switch (tables_[client]->lookup(rcpt, &why)) {
    case RecipientTable::Answer::Listed:
      return std::nullopt;
    case RecipientTable::Answer::Unlisted:
      r = {true, "550", "5.1.1", "<" + bare + ">: Recipient address rejected: User unknown"};
      break;
    case RecipientTable::Answer::Unavailable:
      r = {false, "451", "4.3.0", "<" + bare + ">: Temporary lookup failure"};
      break;
  }
  logf(LogLevel::Notice, "%s: milter: %s: RCPT to=<%s>, client=%s: %s %s %s%s%s", qid.c_str(),
       r.permanent ? "reject" : "tempfail", bare.c_str(), names_[client].c_str(), r.code.c_str(),
       r.xcode.c_str(), r.text.c_str(), why.empty() ? "" : "; ",
       why.substr(0, why.find('\n')).c_str());
  r.text = milterReplyText(r.text);
  return r;
}

}  // namespace dynmx::milter
