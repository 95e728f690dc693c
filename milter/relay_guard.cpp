// relay_guard.cpp: relay_senders (see relay_guard.hpp).
#include "milter/relay_guard.hpp"

#include <strings.h>

#include <algorithm>
#include <cstring>

#include "shared/log.hpp"
#include "shared/socketmap_client.hpp"
#include "shared/text.hpp"

namespace dynmx::milter {

namespace {

bool anyRelaySenders(const Config& cfg) {
  return std::any_of(cfg.clients.begin(), cfg.clients.end(),
                     [](const ClientConfig& c) { return c.relay_senders.has_value(); });
}

const Reply kLookupFailed{"451", "4.3.5", "Relay lease lookup failed, try again later"};

}  // namespace

bool relaySenderAllowed(const ClientConfig& client, const Router& router, size_t index,
                        std::string_view sender) {
  if (sender.empty()) return true;  // a DSN: it has no sender to check
  std::optional<size_t> owner = router.route(sender);
  if (owner && *owner == index) return true;
  if (!client.relay_senders) return false;
  std::string s = asciiLower(sender);
  size_t at = s.rfind('@');
  std::string domain = at == std::string::npos ? std::string() : s.substr(at);  // "@example.org"
  for (const std::string& allowed : *client.relay_senders) {
    if (allowed == s || (allowed.front() == '@' && allowed == domain)) return true;
  }
  return false;
}

bool localMailer(std::string_view m) {
  for (const char* local : {"local", "prog", "*file*", "*include*", "virtual", "discard", "error"})
    if (strncasecmp(m.data(), local, m.size()) == 0 && m.size() == std::strlen(local)) return true;
  return false;
}

std::optional<RcptOutcome> RelayGuard::atRcpt(const Snapshot& snap, const Peer& peer,
                                              const std::string& sender, const std::string& rcpt,
                                              std::string_view rcpt_mailer,
                                              std::optional<std::string>& holder,
                                              const std::string& logid) {
  if (peer.addr.empty() || localMailer(rcpt_mailer) || !anyRelaySenders(snap.config))
    return std::nullopt;
  if (!holder) {
    const std::string& socket = snap.config.relay.socket;
    Result<SocketmapReply> r =
        socketmapQuery(socket, "relayclient", peer.addr, kLeaseLookupTimeout);
    if (!r || (r->status != "OK" && r->status != "NOTFOUND")) {
      std::string why = !r ? r.error().message
                           : "socketmap " + socket + " answered " + r->status + " " + r->value;
      logf(LogLevel::Warning,
           "%s: milter: tempfail: RCPT to=<%s>, addr=%s: 451 4.3.5 relay lease lookup failed: %s",
           logid.c_str(), rcpt.c_str(), peer.addr.c_str(), why.c_str());
      return RcptOutcome{Verdict::Tempfail, kLookupFailed};
    }
    holder = r->status == "OK" ? r->value : std::string();
  }
  if (holder->empty()) return std::nullopt;  // not a leased address: not ours to judge
  std::optional<size_t> index;
  for (size_t i = 0; i < snap.config.clients.size(); ++i)
    if (snap.config.clients[i].name == *holder) index = i;
  const ClientConfig* client = index ? &snap.config.clients[*index] : nullptr;
  if (client &&
      (!client->relay_senders || relaySenderAllowed(*client, snap.router, *index, sender))) {
    logf(LogLevel::Info, "%s: milter: relay: client=%s, addr=%s, from=<%s>, to=<%s>", logid.c_str(),
         holder->c_str(), peer.addr.c_str(), sender.c_str(), rcpt.c_str());
    return std::nullopt;
  }
  logf(LogLevel::Notice,
       "%s: milter: reject: RCPT from=<%s>, to=<%s>, client=%s, addr=%s: 550 5.7.1 sender not in "
       "the client's domains or relay_senders",
       logid.c_str(), sender.c_str(), rcpt.c_str(), holder->c_str(), peer.addr.c_str());
  return RcptOutcome{
      Verdict::Reject,
      {"550", "5.7.1", "Sender address rejected: not allowed to relay from this client's address"}};
}

}  // namespace dynmx::milter
