// delivery.hpp: the contract between the queue manager and the transports that deliver its mail
// (in the spirit of Postfix's deliver_request between qmgr and its delivery agents).
//
// Owned by neither side: the queue (tunneld/queue/) implements JobSource, a transport
// (tunneld/ssh/, which drives the SMTP engine of tunneld/smtp/) pulls Jobs from it and hands
// back one TransactionResult per Job, or abandons the Job. The wire never includes the queue.
//
// Contract:
//  - A Job is in flight from nextJob() until finish() or abandon(): exactly one of them, once.
//    It owns its spool message and the stream of its content.
//  - finish() carries one RcptResult per attempted recipient, in rcpt_indexes order. Delivered and
//    Failed are final; Deferred is tried again later by the queue.
//  - abandon() means that the transport could not learn the outcome (a session or connection
//    lost before the reply): every attempted recipient stays pending. Nothing is ever counted as
//    delivered without the far end's reply.
//  - possible_duplicate says the connection was lost after the final dot was sent and before its
//    reply: the queue logs it and retries (duplicates over loss).
// Failure behaviour: a ContentSource that fails (a damaged spool file) aborts the transaction
// without the final dot, so the far end discards the message; content_error tells the queue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/result.hpp"
#include "shared/spool.hpp"

namespace dynmx::tunneld {

// Message bytes as stored in the spool (CRLF already, but the engine does not rely on it).
class ContentSource {
 public:
  virtual ~ContentSource() = default;
  // Up to max bytes; an empty view means the end. An Error aborts the transaction: the engine
  // closes the session without sending the final dot, so the far end discards the message.
  virtual Result<std::string_view> next(size_t max) = 0;
};

enum class Outcome { Delivered, Deferred, Failed };

struct RcptResult {
  size_t index = 0;  // into env->rcpts
  Outcome outcome = Outcome::Deferred;
  std::string reply;  // the far end's reply, single line ("250 2.1.5 Ok"), or our own reason
};

struct TransactionResult {
  std::vector<RcptResult> rcpts;  // one per rcpt_indexes entry, same order
  bool possible_duplicate = false;
  bool content_error = false;  // the ContentSource failed (spool file damaged)
};

// A message handed to a transport. Owns the spool message and its content stream; a transport
// keeps it at a stable address while views into it are in use.
struct Job {
  SpoolMessage msg;
  std::vector<size_t> rcpt_indexes;  // pending recipients attempted in this job
  std::unique_ptr<ContentSource> content;
};

// Where a transport takes jobs from and returns their results (the queue manager in production).
// `now` is unix time in seconds.
class JobSource {
 public:
  virtual ~JobSource() = default;
  virtual bool hasDue(const std::string& client, int64_t now) = 0;
  // The next message due for the client, or nullopt. The job is in flight until finish/abandon.
  virtual std::optional<Job> nextJob(const std::string& client, int64_t now) = 0;
  // `relay` is "HOST[IP]:PORT" for the log.
  virtual void finish(Job job, const TransactionResult& r, const std::string& relay,
                      int64_t now) = 0;
  virtual void abandon(Job job, const std::string& reason, int64_t now) = 0;
  // The client's connection came (back) up: its deferred mail becomes due now.
  virtual void clientUp(const std::string& client, int64_t now) = 0;
};

}  // namespace dynmx::tunneld
