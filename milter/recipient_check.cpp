// recipient_check.cpp: the per-client recipient lists at RCPT (see recipient_check.hpp).
#include "milter/recipient_check.hpp"

#include "milter/verify_client.hpp"
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

RecipientCheck::RecipientCheck(const Config& config)
    : clients_(config.clients), control_socket_(config.tunneld.control_socket) {
  for (const ClientConfig& c : clients_) tables_.push_back(makeRecipientTable(c));
}

std::optional<RecipientRefusal> RecipientCheck::verify(size_t client, const std::string& bare,
                                                       const std::string& qid) const {
  const ClientConfig& c = clients_[client];
  VerifyAnswer a =
      askTunneld(control_socket_, c.name, bare,
                 std::chrono::duration_cast<std::chrono::milliseconds>(c.verify_timeout));
  RecipientRefusal r;
  if (a.status == VerifyStatus::Valid) return std::nullopt;
  if (a.status == VerifyStatus::Invalid) {
    r = {true, "550", "5.1.1",
         "<" + bare + ">: Recipient address rejected: undeliverable address: " + a.reply};
  } else if (c.verify_default == OnError::Accept) {
    logf(LogLevel::Info,
         "%s: milter: verify: RCPT to=<%s>, client=%s: unverified (%s), accepted "
         "(verify_default = accept)",
         qid.c_str(), bare.c_str(), c.name.c_str(), a.reply.c_str());
    return std::nullopt;
  } else {
    r = {false, "450", "4.1.1",
         "<" + bare + ">: Recipient address rejected: unverified address: " + a.reply};
  }
  logf(LogLevel::Notice, "%s: milter: %s: RCPT to=<%s>, client=%s: %s %s %s (%s)", qid.c_str(),
       r.permanent ? "reject" : "tempfail", bare.c_str(), c.name.c_str(), r.code.c_str(),
       r.xcode.c_str(), r.text.c_str(), a.source.c_str());
  r.text = milterReplyText(r.text);
  return r;
}

std::optional<RecipientRefusal> RecipientCheck::check(size_t client, std::string_view rcpt,
                                                      const std::string& qid) const {
  if (client >= tables_.size()) return std::nullopt;
  std::string bare = bareAddress(rcpt);
  bool verify_it = clients_[client].verify_recipients;
  if (!tables_[client]) return verify_it ? verify(client, bare, qid) : std::nullopt;
  std::string why;
  RecipientRefusal r;
  switch (tables_[client]->lookup(rcpt, &why)) {
    case RecipientTable::Answer::Listed:
      return verify_it ? verify(client, bare, qid) : std::nullopt;
    case RecipientTable::Answer::Unlisted:
      r = {true, "550", "5.1.1", "<" + bare + ">: Recipient address rejected: User unknown"};
      break;
    case RecipientTable::Answer::Unavailable:
      r = {false, "451", "4.3.0", "<" + bare + ">: Temporary lookup failure"};
      break;
  }
  logf(LogLevel::Notice, "%s: milter: %s: RCPT to=<%s>, client=%s: %s %s %s%s%s", qid.c_str(),
       r.permanent ? "reject" : "tempfail", bare.c_str(), clients_[client].name.c_str(),
       r.code.c_str(), r.xcode.c_str(), r.text.c_str(), why.empty() ? "" : "; ",
       why.substr(0, why.find('\n')).c_str());
  r.text = milterReplyText(r.text);
  return r;
}

}  // namespace dynmx::milter
