// enqueue.hpp: dynmx-enqueue, the mailer / pipe-program way into the spool.
//
// Contract: reads one message from a file descriptor, normalises line ends to CRLF and commits it
// to the spool, one file per client when the recipients belong to several. Returns only once every
// file is committed (exit 0), or a sysexits code with a one-line reason: 75 EX_TEMPFAIL (spool
// missing, unwritable, disk full; temporary files removed), 67 EX_NOUSER (a recipient no client
// claims, or one its client's recipient list does not name), 65 EX_DATAERR (over
// max_message_size, malformed arguments), 78 EX_CONFIG, 64 EX_USAGE.
// Every file is fully written before the first is committed, so a failure part-way leaves at most
// the files already committed (logged as possible duplicates when the MTA retries).
#pragma once

#include <string>
#include <vector>

#include "shared/config.hpp"

namespace dynmx {

struct EnqueueRequest {
  std::string sender;                  // as given to -f; "", "<>" mean the null sender
  std::string client;                  // --client: every recipient goes to this client
  std::string queue_id;                // --queue-id: the MTA's queue id, for the record and logs
  std::vector<std::string> recipients;
};

struct EnqueueResult {
  int exit_code = 0;
  std::string reason;                  // one line, for stderr, when exit_code != 0
  std::vector<std::string> spool_ids;  // committed files
};

EnqueueResult enqueueMessage(const Config& cfg, const EnqueueRequest& req, int input_fd);

// Parses argv (after the program name was used for messages). On a usage error, exit_code is
// EX_USAGE and reason says why; config_path defaults to kDefaultConfigPath.
struct EnqueueArgs {
  std::string config_path = kDefaultConfigPath;
  bool check_config = false;
  bool help = false;     // -h, --help: usage on stdout, exit 0
  bool version = false;  // --version
  EnqueueRequest req;
  int exit_code = 0;
  std::string reason;
};
EnqueueArgs parseEnqueueArgs(const std::vector<std::string>& args);
inline constexpr const char* kEnqueueUsage =
    "dynmx-enqueue [-c FILE] -f SENDER [--client NAME] [--queue-id ID] -- RCPT...";

}  // namespace dynmx
