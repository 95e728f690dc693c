// control.hpp: the admin socket of dynmx-tunneld and its line protocol (dynmxctl is the client).
//
// Protocol: one request per connection, one line (at most kMaxRequest octets, LF or CRLF):
//   status [fields] | queue | flush [CLIENT] | hold ID | release ID | reload | leases
//   | revoke ADDRESS | checkin CLIENT ADDRESS | metrics | delete ID | delete ALL CLIENT | bounce ID
//   | bounce ALL CLIENT | hostkey CLIENT | verify CLIENT RECIPIENT
// `status` answers text for people; `status fields` the same facts as one StatusRecord per line
// (dynmxctl status --json). `delete` removes messages from the spool without a notification,
// `bounce` returns them to their sender now (an RFC 3464 report); ALL CLIENT means every message
// of that client (see dynmxctl(8) for a message in flight). `hostkey CLIENT` answers one
// StatusRecord "hostkey client= state= type= key=BASE64 fingerprint= expected= address=" with the
// whole key the client presented while its state is host-key-mismatch or host-key-unknown, else
// ERR (dynmxctl trust checks it against the fingerprint the administrator typed).
// `leases` answers one body line per live relay lease, "ADDRESS CLIENT SOURCE GRANTED EXPIRES"
// (times in unix seconds; dynmxctl shows them), then one "hold ADDRESS UNTIL" per hold-down;
// `revoke` takes an IPv4 or IPv6 address (inet_pton forms only). `checkin` is dynmx-checkin's: a
// client checked in over SSH from ADDRESS (see dynmx-checkin(8)). `metrics` answers the metrics
// in OpenMetrics text, one body line per line (tunneld/metrics/exposition.hpp). `verify` is
// dynmx-milter's: is RECIPIENT an address the client's own MTA takes? Its one body line is
// shared/verify_reply.hpp's; it may come only after a probe through the client's tunnel (at most
// verify_timeout later).
// Who may send what is access.hpp's (the peer's credentials), not the parser's.
// The reply is a status line "OK" or "ERR <reason>", then zero or more text lines, then a line
// holding a single "." (body lines that begin with "." get another "." in front, as in SMTP).
// The socket is created under umask 077, then chmod control_mode and chgrp control_group. A stale
// socket (connect refused) is removed; a live one means another daemon runs: refuse to start.
// parseControlRequest() reads outside input: it is pure, total, and fuzzed.
// Failure behaviour: every failure is a Result error naming the socket path or what was expected.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shared/fd.hpp"
#include "shared/inet_addr.hpp"
#include "shared/result.hpp"

namespace dynmx::tunneld {

inline constexpr size_t kMaxRequest = 1024;

struct ControlRequest {
  enum class Command {
    Status,
    Queue,
    Flush,
    Hold,
    Release,
    Reload,
    Leases,
    Revoke,
    Checkin,
    Metrics,
    Delete,
    Bounce,
    Hostkey,
    Verify
  } command = Command::Status;
  // client name (flush, may be empty; checkin), queue id (hold, release) or address (revoke, as
  // parsed by InetAddr::parse and written back by InetAddr::str)
  std::string arg;
  InetAddr address;  // checkin: the client's address (InetAddr::parse, inet_pton only)
  // delete, bounce: arg is a queue id, or "ALL" and `client` names whose messages. status: arg is
  // "" or "fields".
  std::string client;
  std::string rcpt;  // verify: the recipient address, as given (printable, no blanks)
};

// Parses one request line (without or with its line end). Errors name what was expected.
Result<ControlRequest> parseControlRequest(std::string_view line);

struct ControlReply {
  bool ok = true;
  std::string error;               // when !ok
  std::vector<std::string> lines;  // body
};
std::string formatControlReply(const ControlReply& r);

// One body line of the `leases` reply, and its reader (dynmxctl); the reader refuses anything
// else with an error naming the line.
struct LeaseLine {
  bool hold = false;  // a hold-down: only address and expires (its end) are set
  std::string address, client, source;
  int64_t granted = 0, expires = 0;
  bool operator==(const LeaseLine&) const = default;
};
std::string formatLeaseLine(const LeaseLine& l);
Result<LeaseLine> parseLeaseLine(std::string_view line);
// One body line of the `queue` reply (QueueManager::listQueue), and its reader (dynmxctl):
//   ID STATE client=CLIENT size=OCTETS arrival=UNIX from=<SENDER> to=<RCPT>[,<RCPT>...]
//   [ attempts=N]
// Sender and recipients are printable() copies (no spaces or control bytes are added; an address
// holding "> to=" or ">,<" itself is read at its first such mark). Errors name the line.
struct QueueLine {
  std::string id, state, client, sender;
  std::vector<std::string> rcpts;
  int64_t size = 0, arrival = 0, attempts = 0;
  bool operator==(const QueueLine&) const = default;
};
std::string formatQueueLine(const QueueLine& q);
Result<QueueLine> parseQueueLine(std::string_view line);
// One body line of the `status fields` reply: a kind, then KEY=VALUE fields separated by single
// spaces, e.g. "client name=alpha state=connected channels=2 last_error=connect%20to...". Values
// are percent-encoded: '%', bytes up to 0x20 and 0x7f become %HH (so a value never holds a space);
// an empty value is written "KEY=". Kinds and keys are letters, digits and '_' (dynmxctl(8) lists
// them). The reader refuses anything else with an error naming the line.
struct StatusRecord {
  std::string kind;
  std::vector<std::pair<std::string, std::string>> fields;
  // The value of `key`, or nullptr when the record has no such field.
  const std::string* get(std::string_view key) const;
  bool operator==(const StatusRecord&) const = default;
};
std::string formatStatusRecord(const StatusRecord& r);
Result<StatusRecord> parseStatusRecord(std::string_view line);
// Parses a whole reply as read from the socket (for dynmxctl and tests).
Result<ControlReply> parseControlReply(std::string_view text);

// Creates the listening socket (stale-socket handling as described above), non-blocking.
Result<UniqueFd> openControlSocket(const std::string& path, mode_t mode, const std::string& group);
// Client side: connects, sends `request` + "\n", reads the reply until "." (or EOF).
Result<ControlReply> controlRequest(const std::string& path, const std::string& request,
                                    int timeout_ms = 30000);

}  // namespace dynmx::tunneld
