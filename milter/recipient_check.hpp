// recipient_check.hpp: whether dynmx-milter takes a recipient of a client domain at RCPT.
//
// Contract: built once per configuration snapshot, one RecipientTable per client that has a
// `recipients` list or a `recipient_file` (shared/recipient_list.hpp). check() answers nothing
// (accept: no list, or the address is listed) or the refusal the MTA gives the sender while it is
// still connected, in Postfix's words:
//   550 5.1.1 <addr>: Recipient address rejected: User unknown
// and logs it in Postfix's shape ("QID: milter: reject: RCPT to=<addr>, client=NAME: 550 ...").
// The file is re-read when a lookup finds it changed, and again on every reload (a new snapshot
// builds new tables). Safe to call from many milter threads at once.
//
// With verify_recipients = true, an address the list lets through (or every address, without a
// list) is then verified through the tunnel: dynmx-tunneld is asked (verify_client.hpp, at most
// verify_timeout), and answers from its cache or from a probe of the client's own MTA:
//   valid   -> accepted;
//   invalid -> 550 5.1.1 <addr>: Recipient address rejected: undeliverable address: REPLY
//              (Postfix's words; REPLY is what the client's MTA said);
//   unknown (client not connected, too slow, a 4xx, no daemon) -> verify_default: "accept" takes
//              the mail as without verification, "tempfail" answers
//              450 4.1.1 <addr>: Recipient address rejected: unverified address: WHY
//              (Postfix's unverified_recipient_tempfail_action wording), and the sender retries.
// Failure behaviour: when the client's file has never been read successfully (missing, unreadable,
// bad lines), the recipient is tempfailed with 451 4.3.0 Temporary lookup failure, as Postfix does
// when a recipient table is unavailable, so that nothing is refused or bounced on a broken list.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/config.hpp"
#include "shared/recipient_list.hpp"

namespace dynmx::milter {

struct RecipientRefusal {
  bool permanent = false;  // 5xx (reject) or 4xx (tempfail)
  std::string code;        // "550"
  std::string xcode;       // "5.1.1"
  std::string text;        // "<addr>: Recipient address rejected: User unknown" ('%' doubled)
};

class RecipientCheck {
 public:
  explicit RecipientCheck(const Config& config);

  // `client` indexes the clients given to the constructor; `rcpt` is the address as the MTA gave
  // it; `qid` is for the log line.
  std::optional<RecipientRefusal> check(size_t client, std::string_view rcpt,
                                        const std::string& qid) const;

 private:
  std::optional<RecipientRefusal> verify(size_t client, const std::string& bare,
                                         const std::string& qid) const;

  std::vector<ClientConfig> clients_;
  std::string control_socket_;
  std::vector<std::unique_ptr<RecipientTable>> tables_;  // null: no list, every address accepted
};

// What a reply text may carry through smfi_setreply: printable ASCII with '%' doubled (libmilter
// treats the text as a format), anything else as '?', at most 900 bytes.
std::string milterReplyText(std::string_view text);

}  // namespace dynmx::milter
