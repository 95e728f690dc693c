// spool.hpp: the durable dynmx spool, the one place a message lives between the MTA and the
// client's `sendmail -bs`.
//
// Directories are states (each mode 0700 under spool.dir):
//   tmp/       being written by one writer, who holds an flock on the file; never delivered
//   incoming/  committed, not yet taken by the delivery daemon (writers rename into it)
//   active/    taken by dynmx-tunneld; at its start-up everything here goes back to incoming/
//   deferred/  waiting for its next attempt
//   hold/      put aside by the administrator; never delivered until released
//   corrupt/   unreadable; kept for inspection, never delivered and never deleted
// A state change is a rename followed by fsync of the destination directory (for a batch of
// renames or removals whose undoing by a crash is harmless, one fsync after the last). Recovery
// is a scan.
//
// Commit: create tmp/ID (O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600, flock) -> write -> fsync ->
// rename to incoming/ID -> fsync(incoming) -> close (checked). A crash anywhere
// leaves no message or a whole one. Per-recipient results are appended to a journal at the end of
// the file and fsynced as they happen; a torn journal line is ignored (and cut off before the next
// append), so a restart re-sends what was in flight (a possible duplicate, never a loss).
// The file format is documented in man/dynmx-spool.5.
//
// Many writers may work at once (threads and processes); one reader/scheduler owns active/ and
// deferred/. No lock is held across the network.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/result.hpp"

namespace dynmx {

// The system calls the spool makes, behind a narrow interface so that tests can fail any one of
// them (or "crash": fail it and everything after it). Production uses realFs().
class FsOps {
 public:
  virtual ~FsOps() = default;
  virtual int open(const char* path, int flags, mode_t mode) = 0;
  virtual ssize_t write(int fd, const void* buf, size_t len) = 0;
  virtual ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) = 0;
  virtual int fsync(int fd) = 0;
  virtual int close(int fd) = 0;
  virtual int rename(const char* from, const char* to) = 0;
  virtual int unlink(const char* path) = 0;
  virtual int ftruncate(int fd, off_t len) = 0;
  virtual int mkdir(const char* path, mode_t mode) = 0;
};
FsOps& realFs();

enum class QueueState { Tmp, Incoming, Active, Deferred, Hold, Corrupt };
const char* queueStateName(QueueState s);  // "incoming", ...
std::optional<QueueState> queueStateFromName(std::string_view name);

enum class RcptState : char { Pending = 'P', Delivered = 'D', Failed = 'F' };

struct SpoolRecipient {
  std::string address;  // as the MTA gave it, without angle brackets, e.g. "bob@example.org"
  std::string notify;   // DSN NOTIFY value as given ("SUCCESS,DELAY", "NEVER"), "" when absent
  std::string orcpt;    // DSN ORCPT value as given ("rfc822;bob@example.org"), "" when absent
  RcptState state = RcptState::Pending;
  std::string reply;    // the far end's last reply for this recipient ("" before any attempt)
  int64_t updated = 0;  // unix time of the last state change
};

struct Envelope {
  std::string client;        // client name from the configuration
  std::string sender;        // without angle brackets; "" is the null sender <>
  std::string envid;         // DSN ENVID, "" when absent
  std::string ret;           // DSN RET ("FULL" or "HDRS"), "" when absent
  std::string body;          // "8BITMIME", "7BIT" or "" when the sender said nothing
  bool smtputf8 = false;
  std::string mta_queue_id;  // the MTA's queue id when known
  std::string origin;        // where it came from, for logs and bounces (e.g. "milter", client IP)
  int64_t arrival = 0;       // unix time the MTA received it
  std::vector<SpoolRecipient> rcpts;
};

// Delivery bookkeeping kept in the journal.
struct DeliveryState {
  uint32_t attempts = 0;
  int64_t last_attempt = 0;
  int64_t next_attempt = 0;  // 0: as soon as possible
  bool warned = false;       // a delay warning has been sent
};

// A committed message as read back: the envelope with the journal applied.
struct SpoolMessage {
  std::string id;
  QueueState state = QueueState::Incoming;
  Envelope env;
  DeliveryState delivery;
  uint64_t content_offset = 0;  // where the message bytes start in the file
  uint64_t content_size = 0;
  uint32_t content_crc = 0;     // CRC-32C of the content, checked while streaming
  uint64_t good_length = 0;     // file length up to the last whole journal line
};

// Parses a whole spool file held in memory. The reader of anything on disk; fuzzed.
Result<SpoolMessage> parseSpoolFile(std::string_view bytes);
// Serialises the parts of a file, for tests and golden files: the bytes commit() writes.
std::string formatSpoolFile(const Envelope& env, std::string_view content);

uint32_t crc32c(uint32_t crc, const void* data, size_t len);

class Spool;

// Writes one message into tmp/. Not thread-safe; one per message. Destroying it without commit()
// removes the temporary file.
class MessageWriter {
 public:
  MessageWriter(const MessageWriter&) = delete;
  MessageWriter& operator=(const MessageWriter&) = delete;
  ~MessageWriter();

  const std::string& id() const { return id_; }
  uint64_t size() const { return size_; }
  // Appends message bytes (already CRLF; see CrlfNormalizer). Buffered; may fail with ENOSPC etc.
  Status write(std::string_view bytes);
  // Writes the envelope and end marker, fsyncs, renames into incoming/. On failure the temporary
  // file is removed and nothing is left. Returns only when the message is durable.
  Status commit(const Envelope& env);
  // Removes the temporary file (also done by the destructor).
  void discard();

 private:
  friend class Spool;
  MessageWriter(Spool& spool, std::string id, int fd);
  Status flush();

  Spool& spool_;
  std::string id_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint32_t crc_ = 0;
  std::string buf_;
  bool done_ = false;
  std::optional<Error> failed_;
};

// Streams a message's content from the spool in chunks and checks its CRC at the end.
class ContentReader {
 public:
  ContentReader(const ContentReader&) = delete;
  ContentReader& operator=(const ContentReader&) = delete;
  ContentReader(ContentReader&& other) noexcept;
  ~ContentReader();
  // Fills up to `max` bytes; empty string_view at the end. After the end, verified() says whether
  // the CRC matched; an I/O error or CRC mismatch comes back as an Error.
  Result<std::string_view> next(size_t max = 65536);
  uint64_t remaining() const { return remaining_; }

 private:
  friend class Spool;
  ContentReader(int fd, uint64_t offset, uint64_t size, uint32_t crc, std::string path);
  int fd_ = -1;
  uint64_t offset_ = 0;
  uint64_t remaining_ = 0;
  uint32_t expect_crc_ = 0;
  uint32_t crc_ = 0;
  std::string path_;
  std::string buf_;
};

struct RecoveryReport {
  size_t tmp_removed = 0;       // orphaned temporary files (their writer is gone; never committed)
  size_t active_requeued = 0;   // active/ -> incoming/
  size_t corrupt = 0;           // moved to corrupt/
};

class Spool {
 public:
  explicit Spool(std::string dir, FsOps& fs = realFs());

  const std::string& dir() const { return dir_; }
  std::string path(QueueState st, std::string_view id) const;
  std::string stateDir(QueueState st) const;

  // Creates the state directories that are missing (mode 0700). Fails naming the directory.
  Status prepare();
  // The same, but the spool directory itself must already exist (the installer makes it, with its
  // owner): for programs that may start before dynmx-tunneld has ever run (dynmx-milter,
  // dynmx-enqueue). A failure says what to run: how to create a missing spool directory, or, when
  // this user may not create the state directories, who owns the spool and the install command.
  Status prepareExisting();
  // Checks that the spool is there and writable without creating anything (for writers).
  Status checkWritable() const;

  // A new message in tmp/ with a fresh queue id.
  Result<std::unique_ptr<MessageWriter>> create();

  // Queue ids in a state directory (no order promised). Names that are not queue ids are ignored.
  std::vector<std::string> list(QueueState st) const;
  // Reads the envelope and journal (not the content). A file that cannot be parsed is an Error
  // whose message says why; the caller moves it to corrupt/ with markCorrupt().
  Result<SpoolMessage> load(QueueState st, const std::string& id) const;
  Result<ContentReader> openContent(const SpoolMessage& msg) const;

  // rename + fsync of the destination directory; updates msg.state.
  Status move(SpoolMessage& msg, QueueState to);
  Status moveId(const std::string& id, QueueState from, QueueState to);
  // Batches: the rename alone, without the fsync of the destination directory; updates msg.state.
  // The caller calls fsyncDir(to) once after the last rename of the batch. Until then a crash may
  // undo the rename (the file is found where it was, whole), so it suits moves whose undoing is
  // harmless, such as incoming/ -> active/ (both are delivered after a restart).
  Status moveUnsynced(SpoolMessage& msg, QueueState to);
  Status markCorrupt(QueueState from, const std::string& id);
  // Journal appends (fsynced before returning); update msg in place.
  Status recordRecipient(SpoolMessage& msg, size_t index, RcptState state, std::string_view reply,
                         int64_t when);
  Status recordDelivery(SpoolMessage& msg, const DeliveryState& ds);
  // Deletes a finished message (unlink + fsync of its directory).
  Status remove(const SpoolMessage& msg);
  // Batches: the unlink of message `id` in state `st` alone; the caller calls fsyncDir(st) once
  // for many. Until then a crash may bring the file back (delivered again: a duplicate, never a
  // loss).
  Status removeUnsynced(QueueState st, const std::string& id) const;

  // Start-up scan of the delivery daemon: removes orphaned tmp files (no writer holds their lock),
  // puts active/ back into incoming/, moves unreadable files to corrupt/ (logging each).
  RecoveryReport recover();

  FsOps& fs() const { return fs_; }
  Status fsyncDir(QueueState st) const;

 private:
  Status appendJournal(SpoolMessage& msg, const std::string& line);

  std::string dir_;
  FsOps& fs_;
};

// A new queue id: 16 characters of [0-9A-Za-z] from the time, pid, a counter and randomness;
// unique across processes, sortable by time within a second.
std::string newQueueId();
bool isQueueId(std::string_view s);

}  // namespace dynmx
