// bounce.hpp: delivery status notifications (RFC 3464) for failed, expired and delayed mail, and
// the hand-off of a notification to the local MTA.
//
// Notifications come from the null sender <>, carry "Auto-Submitted: auto-replied" and the
// original's headers (RET=HDRS, or over a size cap) or whole message. A message from <> is never
// bounced. Hand-off spawns `sendmail... -oi -f <> -- SENDER` with Boost.Process: argv only, no
// shell, a timeout, exit status checked; a failure is returned and the caller retries later.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "shared/clock.hpp"
#include "shared/config.hpp"
#include "shared/date.hpp"
#include "shared/result.hpp"
#include "shared/spool.hpp"

namespace dynmx::tunneld {

enum class DsnKind { Failure, Delay };

struct DsnInput {
  DsnKind kind = DsnKind::Failure;
  const SpoolMessage* msg = nullptr;
  std::vector<size_t> rcpt_indexes;  // which recipients the report is about
  std::string reporting_host;        // our host name (Reporting-MTA)
  std::string from_header;           // e.g. "MAILER-DAEMON@mx.example.net"
  int64_t now = 0;
  // Added for the delivery core:
  std::string remote_mta;        // the client's host, for Remote-MTA ("" leaves it out)
  int64_t will_retry_until = 0;  // Delay: arrival + queue_lifetime (0 leaves it out)
  std::string boundary;          // "" : derived from the queue id, time and host
  std::string message_id;        // without <>; "" : derived likewise (tests fix both)
  // Status: of a recipient whose reply is not an SMTP reply ("" : 4.4.7 for a failure, as for
  // expiry; 4.0.0 for a delay). A message returned by the administrator says 5.0.0.
  std::string fallback_status;
};

// The original goes back whole (message/rfc822) in a failure report unless RET=HDRS or it is
// larger than this (then only its headers, text/rfc822-headers, as Postfix's bounce_size_limit).
// Delay warnings always carry the headers only.
inline constexpr uint64_t kDsnFullLimit = 50000;
using dynmx::rfc5322Date;  // shared/date.hpp

// Builds the whole notification (headers + multipart/report body, CRLF) from the spool message,
// reading the original from `spool`. Pure apart from reading the spool file.
Result<std::string> buildDsn(const DsnInput& in, const Spool& spool);

class BounceSender {
 public:
  virtual ~BounceSender() = default;
  // Hands `message` to the MTA for delivery to `recipient` with envelope sender <>.
  virtual Status send(const std::string& recipient, const std::string& message) = 0;
};

// Spawns argv_prefix + {"-oi", "-f", "<>", "--", recipient}, writes the message to its stdin with
// LF line ends (the local submission convention), closes it and waits for the exit status; a
// child still running at the timeout is killed (SIGKILL) and reaped. Blocks the caller meanwhile.
// stderr is captured for the error message. (bp::limit_handles is not used: in Boost 1.74 it
// closes the stderr pipe too; descriptors of the daemon must be O_CLOEXEC instead.)
class SendmailBounceSender : public BounceSender {
 public:
  // `time` measures the timeout (the poll() waits in between are real time).
  SendmailBounceSender(std::vector<std::string> argv_prefix, std::chrono::seconds timeout,
                       const TimeSource& time = systemTime());
  Status send(const std::string& recipient, const std::string& message) override;
  // For a daemon that stops: a send under way (on another thread) kills its sendmail within a
  // second and fails, as does every later one. The notification stays spooled.
  void cancel() { cancelled_ = true; }

 private:
  std::vector<std::string> argv_;
  std::chrono::seconds timeout_;
  const TimeSource& time_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace dynmx::tunneld
