// control_fuzz.cpp: the admin socket's request parser and reply framing must survive any bytes.
//
// Invariants: parseControlRequest never throws or crashes; an accepted request has a known command
// and an argument only where the command takes one; a reply built from any lines parses back to
// the same lines (framing is lossless), and parseControlReply survives the raw input too; a
// `leases` reply line and a `status fields` record that parse format back to the same values.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shared/inet_addr.hpp"
#include "tunneld/control/control.hpp"

using dynmx::tunneld::ControlReply;
using dynmx::tunneld::ControlRequest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = dynmx::tunneld::parseControlRequest(in);
  if (r.ok()) {
    using C = ControlRequest::Command;
    C c = r->command;
    bool takes_arg = c == C::Flush || c == C::Hold || c == C::Release || c == C::Revoke ||
                     c == C::Checkin || c == C::Delete || c == C::Bounce || c == C::Hostkey ||
                     c == C::Verify;
    if (c == C::Status && !r->arg.empty() && r->arg != "fields") std::abort();
    if (!takes_arg && c != C::Status && !r->arg.empty()) std::abort();
    if ((c == C::Hold || c == C::Release || c == C::Revoke || c == C::Checkin || c == C::Delete ||
         c == C::Bounce || c == C::Hostkey || c == C::Verify) &&
        r->arg.empty())
      std::abort();
    // verify names a client and a recipient; nothing else has a recipient.
    if ((c == C::Verify) == r->rcpt.empty()) std::abort();
    // delete/bounce name a client only after ALL, and ALL always with a client.
    if (!r->client.empty() && (r->arg != "ALL" || (c != C::Delete && c != C::Bounce))) std::abort();
    if ((c == C::Delete || c == C::Bounce) && r->arg == "ALL" && r->client.empty()) std::abort();
    // revoke's argument is an address, written back in its one canonical form.
    if (c == C::Revoke) {
      auto a = dynmx::InetAddr::parse(r->arg);
      if (!a || a->str() != r->arg) std::abort();
    }
    // A check-in's address is an address: its canonical text parses back to itself.
    if (c == C::Checkin && dynmx::InetAddr::parse(r->address.str()) != r->address) std::abort();
  }
  (void)dynmx::tunneld::parseControlReply(in);
  // A status record that parses formats back to the same text's values.
  if (auto s = dynmx::tunneld::parseStatusRecord(in); s.ok()) {
    auto again = dynmx::tunneld::parseStatusRecord(dynmx::tunneld::formatStatusRecord(*s));
    if (!again.ok() || !(*again == *s)) std::abort();
  }
  // A lease line that parses formats back to the same values.
  if (auto l = dynmx::tunneld::parseLeaseLine(in); l.ok()) {
    auto again = dynmx::tunneld::parseLeaseLine(dynmx::tunneld::formatLeaseLine(*l));
    if (!again.ok() || !(*again == *l)) std::abort();
  }
  ControlReply rep;
  size_t start = 0;
  while (start <= in.size()) {
    size_t nl = in.find('\n', start);
    rep.lines.emplace_back(
        in.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start));
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  auto back = dynmx::tunneld::parseControlReply(dynmx::tunneld::formatControlReply(rep));
  if (!back.ok() || !back->ok || back->lines != rep.lines) std::abort();
  return 0;
}
