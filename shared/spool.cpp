// spool.cpp: the durable spool (see spool.hpp for the contract, man/dynmx-spool.5 for the format).
//
// File layout:
//   "DYNMX-SPOOL 1 C=<20 digits> E=<20 digits>\n"   fixed width (60 bytes), written last (pwrite)
//   <content: C bytes, the message with CRLF line ends>
//   <envelope: E bytes of "key value\n" lines, values percent-encoded>
//   "end <crc32c content, 8 hex> <crc32c envelope, 8 hex>\n"
//   journal lines, appended and fsynced as delivery proceeds, each ending in its own CRC:
//     "R <rcpt index> <P|D|F> <unix time> <reply> <crc>\n"
//     "D <attempts> <last attempt> <next attempt> <warned 0|1> <crc>\n"
// A header line of zeros (the writer died before commit) or sizes that do not fit the file make a
// file unreadable: it goes to corrupt/. A journal line that is not whole ends the journal; the next
// append cuts it off first.
//
// Failures: every system call's errno is kept and the message names the file. commit() removes its
// temporary file on any failure, so a writer that reports failure leaves nothing behind.
#include "shared/spool.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>

#include "shared/log.hpp"
#include "shared/text.hpp"

namespace dynmx {
namespace {

constexpr size_t kHeaderLen = 60;
constexpr std::string_view kMagic = "DYNMX-SPOOL 1 ";
constexpr size_t kWriteBuffer = size_t{64} * 1024;
constexpr uint64_t kMaxEnvelope = 64ull * 1024 * 1024;

class RealFs final : public FsOps {
 public:
  int open(const char* path, int flags, mode_t mode) override { return ::open(path, flags, mode); }
  ssize_t write(int fd, const void* buf, size_t len) override { return ::write(fd, buf, len); }
  ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) override {
    return ::pwrite(fd, buf, len, off);
  }
  int fsync(int fd) override { return ::fsync(fd); }
  int close(int fd) override { return ::close(fd); }
  int rename(const char* from, const char* to) override { return ::rename(from, to); }
  int unlink(const char* path) override { return ::unlink(path); }
  int ftruncate(int fd, off_t len) override { return ::ftruncate(fd, len); }
  int mkdir(const char* path, mode_t mode) override { return ::mkdir(path, mode); }
};

// CRC-32C (Castagnoli), table driven.
const std::array<uint32_t, 256>& crcTable() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// Values are percent-encoded: bytes outside '!'..'~' and '%' itself become %XX, so a value is never
// empty of meaning, holds no space or newline, and round-trips any bytes.
std::string encode(std::string_view v) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(v.size());
  for (unsigned char c : v) {
    if (c <= 0x20 || c >= 0x7f || c == '%') {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

int hexVal(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::optional<std::string> decode(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (c == '%') {
      if (i + 2 >= v.size()) return std::nullopt;
      int hi = hexVal(v[i + 1]), lo = hexVal(v[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return std::nullopt;
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<int64_t> parseInt(std::string_view s, bool allow_negative = false) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  bool neg = false;
  size_t i = 0;
  if (allow_negative && s[0] == '-') {
    neg = true;
    i = 1;
    if (s.size() == 1) return std::nullopt;
  }
  int64_t v = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    v = v * 10 + (s[i] - '0');
  }
  return neg ? -v : v;
}

std::optional<uint32_t> parseHex8(std::string_view s) {
  if (s.size() != 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    int h = hexVal(c);
    if (h < 0 || (c >= 'A' && c <= 'F')) return std::nullopt;
    v = v * 16 + static_cast<uint32_t>(h);
  }
  return v;
}

std::string headerLine(uint64_t content, uint64_t envelope) {
  char b[kHeaderLen + 1];
  (void)std::snprintf(b, sizeof b, "DYNMX-SPOOL 1 C=%020" PRIu64 " E=%020" PRIu64 "\n", content, envelope);
  return std::string(b, kHeaderLen);
}

struct HeaderInfo {
  uint64_t content = 0;
  uint64_t envelope = 0;
};

Result<HeaderInfo> parseHeader(std::string_view b) {
  if (b.size() < kHeaderLen) return Error{0, "file shorter than its header"};
  if (b.substr(0, kMagic.size()) != kMagic) return Error{0, "not a dynmx spool file (bad magic)"};
  std::string_view rest = b.substr(kMagic.size(), kHeaderLen - kMagic.size());
  if (rest.substr(0, 2) != "C=" || rest.substr(22, 3) != " E=" || rest[45] != '\n')
    return Error{0, "malformed header line"};
  // 20 digits; the sizes that matter fit in 18, so drop the two leading ones after checking them.
  if (rest[2] != '0' || rest[3] != '0' || rest[25] != '0' || rest[26] != '0')
    return Error{0, "header sizes out of range"};
  auto c = parseInt(rest.substr(4, 18));
  auto e = parseInt(rest.substr(27, 18));
  if (!c || !e) return Error{0, "malformed header sizes"};
  if (*e == 0) return Error{0, "header of an uncommitted file (no envelope)"};
  if (static_cast<uint64_t>(*e) > kMaxEnvelope) return Error{0, "envelope size out of range"};
  return HeaderInfo{static_cast<uint64_t>(*c), static_cast<uint64_t>(*e)};
}

std::string formatEnvelope(const std::string& id, const Envelope& env) {
  std::string s;
  s += "id " + encode(id) + "\n";
  s += "client " + encode(env.client) + "\n";
  s += "sender " + encode(env.sender) + "\n";
  s += "envid " + encode(env.envid) + "\n";
  s += "ret " + encode(env.ret) + "\n";
  s += "body " + encode(env.body) + "\n";
  s += std::string("smtputf8 ") + (env.smtputf8 ? "1" : "0") + "\n";
  s += "mta_queue_id " + encode(env.mta_queue_id) + "\n";
  s += "origin " + encode(env.origin) + "\n";
  s += "arrival " + std::to_string(env.arrival) + "\n";
  for (const auto& r : env.rcpts)
    s += "rcpt " + encode(r.address) + " " + encode(r.notify) + " " + encode(r.orcpt) + "\n";
  return s;
}

Status parseEnvelope(std::string_view text, SpoolMessage& m) {
  bool have_client = false, have_sender = false, have_arrival = false, have_id = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) return Error{0, "envelope line without newline"};
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos) return Error{0, "envelope line without value"};
    std::string_view key = line.substr(0, sp);
    std::string_view val = line.substr(sp + 1);
    if (key == "rcpt") {
      auto f = splitSpaces(val);
      if (f.size() != 3) return Error{0, "rcpt line needs 3 fields"};
      auto a = decode(f[0]), n = decode(f[1]), o = decode(f[2]);
      if (!a || !n || !o || a->empty()) return Error{0, "bad rcpt line"};
      SpoolRecipient r;
      r.address = std::move(*a);
      r.notify = std::move(*n);
      r.orcpt = std::move(*o);
      m.env.rcpts.push_back(std::move(r));
      continue;
    }
    if (key == "arrival") {
      auto v = parseInt(val, true);
      if (!v) return Error{0, "bad arrival"};
      m.env.arrival = *v;
      have_arrival = true;
      continue;
    }
    if (key == "smtputf8") {
      if (val != "0" && val != "1") return Error{0, "bad smtputf8"};
      m.env.smtputf8 = val == "1";
      continue;
    }
    auto v = decode(val);
    if (!v) return Error{0, "bad value for " + std::string(key)};
    if (key == "id") {
      m.id = std::move(*v);
      have_id = true;
    } else if (key == "client") {
      m.env.client = std::move(*v);
      have_client = !m.env.client.empty();
    } else if (key == "sender") {
      m.env.sender = std::move(*v);
      have_sender = true;
    } else if (key == "envid") {
      m.env.envid = std::move(*v);
    } else if (key == "ret") {
      m.env.ret = std::move(*v);
    } else if (key == "body") {
      m.env.body = std::move(*v);
    } else if (key == "mta_queue_id") {
      m.env.mta_queue_id = std::move(*v);
    } else if (key == "origin") {
      m.env.origin = std::move(*v);
    } else {
      return Error{0, "unknown envelope key " + std::string(key)};
    }
  }
  if (!have_id || !have_client || !have_sender || !have_arrival)
    return Error{0, "envelope lacks id, client, sender or arrival"};
  if (m.env.rcpts.empty()) return Error{0, "envelope has no recipients"};
  return {};
}

std::string journalLine(std::string body) {
  uint32_t c = crc32c(0, body.data(), body.size());
  body += ' ';
  body += hex8(c);
  body += '\n';
  return body;
}

// Applies journal lines from `j` (starting at file offset `base`) to m; sets m.good_length to the end
// of the last whole line.
void applyJournal(std::string_view j, uint64_t base, SpoolMessage& m) {
  size_t pos = 0;
  m.good_length = base;
  while (pos < j.size()) {
    size_t nl = j.find('\n', pos);
    if (nl == std::string_view::npos) return;  // torn tail
    std::string_view line = j.substr(pos, nl - pos);
    size_t sp = line.rfind(' ');
    if (sp == std::string_view::npos) return;
    auto crc = parseHex8(line.substr(sp + 1));
    std::string_view body = line.substr(0, sp);
    if (!crc || *crc != crc32c(0, body.data(), body.size())) return;
    auto f = splitSpaces(body);
    if (f.size() == 5 && f[0] == "R") {
      auto idx = parseInt(f[1]);
      auto when = parseInt(f[3], true);
      auto reply = decode(f[4]);
      if (!idx || !when || !reply || static_cast<uint64_t>(*idx) >= m.env.rcpts.size() ||
          f[2].size() != 1 || (f[2][0] != 'P' && f[2][0] != 'D' && f[2][0] != 'F'))
        return;
      auto& r = m.env.rcpts[static_cast<size_t>(*idx)];
      r.state = static_cast<RcptState>(f[2][0]);
      r.updated = *when;
      r.reply = std::move(*reply);
    } else if (f.size() == 5 && f[0] == "D") {
      auto a = parseInt(f[1]), l = parseInt(f[2], true), n = parseInt(f[3], true);
      if (!a || !l || !n || (f[4] != "0" && f[4] != "1") || *a > 0xffffffffLL) return;
      m.delivery.attempts = static_cast<uint32_t>(*a);
      m.delivery.last_attempt = *l;
      m.delivery.next_attempt = *n;
      m.delivery.warned = f[4] == "1";
    } else {
      return;
    }
    pos = nl + 1;
    m.good_length = base + pos;
  }
}

// Parses everything after the content: envelope, end line, journal. `tail` starts at file offset
// kHeaderLen + h.content.
Status parseTail(std::string_view tail, const HeaderInfo& h, SpoolMessage& m) {
  if (tail.size() < h.envelope) return Error{0, "file shorter than its envelope"};
  std::string_view env = tail.substr(0, h.envelope);
  std::string_view rest = tail.substr(h.envelope);
  constexpr size_t kEndLen = 4 + 8 + 1 + 8 + 1;  // "end " hex " " hex "\n"
  if (rest.size() < kEndLen || rest.substr(0, 4) != "end " || rest[12] != ' ' || rest[21] != '\n')
    return Error{0, "no end marker (torn file)"};
  auto ccrc = parseHex8(rest.substr(4, 8));
  auto ecrc = parseHex8(rest.substr(13, 8));
  if (!ccrc || !ecrc) return Error{0, "malformed end marker"};
  if (*ecrc != crc32c(0, env.data(), env.size())) return Error{0, "envelope checksum mismatch"};
  if (auto st = parseEnvelope(env, m); !st) return st;
  m.content_offset = kHeaderLen;
  m.content_size = h.content;
  m.content_crc = *ccrc;
  uint64_t journal_base = kHeaderLen + h.content + h.envelope + kEndLen;
  applyJournal(rest.substr(kEndLen), journal_base, m);
  return {};
}

std::string base62(uint64_t v, size_t width) {
  static const char* digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string s(width, '0');
  for (size_t i = width; i-- > 0;) {
    s[i] = digits[v % 62];
    v /= 62;
  }
  return s;
}

// Reads the whole of fd from `off` to EOF.
Result<std::string> readFrom(int fd, uint64_t off, const std::string& path) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(off + out.size()));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError(errno, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status writeAll(FsOps& fs, int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = fs.write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError(errno, "write " + path);
    }
    if (n == 0) return Error{EIO, "write " + path + ": wrote nothing"};
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Status pwriteAll(FsOps& fs, int fd, std::string_view data, off_t off, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = fs.pwrite(fd, data.data(), data.size(), off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError(errno, "write " + path);
    }
    if (n == 0) return Error{EIO, "write " + path + ": wrote nothing"};
    data.remove_prefix(static_cast<size_t>(n));
    off += n;
  }
  return {};
}

}  // namespace

FsOps& realFs() {
  static RealFs fs;
  return fs;
}

#if defined(__x86_64__)
// The SSE 4.2 crc32 instruction computes CRC-32C eight bytes at a time.
__attribute__((target("sse4.2"))) static uint32_t crc32cHw(uint32_t crc, const unsigned char* p,
                                                          size_t len) {
  uint64_t c = ~crc & 0xffffffffu;
  while (len >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    len -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return ~c32;
}
#endif

uint32_t crc32c(uint32_t crc, const void* data, size_t len) {
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  if (hw) return crc32cHw(crc, static_cast<const unsigned char*>(data), len);
#endif
  const auto& t = crcTable();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  while (len--) crc = t[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

const char* queueStateName(QueueState s) {
  switch (s) {
    case QueueState::Tmp: return "tmp";
    case QueueState::Incoming: return "incoming";
    case QueueState::Active: return "active";
    case QueueState::Deferred: return "deferred";
    case QueueState::Hold: return "hold";
    case QueueState::Corrupt: return "corrupt";
  }
  return "?";
}

std::optional<QueueState> queueStateFromName(std::string_view name) {
  for (auto s : {QueueState::Tmp, QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                 QueueState::Hold, QueueState::Corrupt})
    if (name == queueStateName(s)) return s;
  return std::nullopt;
}

std::string newQueueId() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t seed = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  uint64_t us = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
  uint64_t mix = seed ^ (static_cast<uint64_t>(getpid()) << 24) ^ (counter.fetch_add(1) * 0x9E3779B97F4A7C15ull);
  mix ^= mix >> 29;
  mix *= 0xBF58476D1CE4E5B9ull;
  mix ^= mix >> 32;
  return base62(us, 9) + base62(mix, 7);
}

bool isQueueId(std::string_view s) {
  if (s.size() != 16) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return false;
  return true;
}

std::string formatSpoolFile(const Envelope& env, std::string_view content) {
  // The id inside the file is informational; tests and golden files use this with a fixed id.
  std::string envtext = formatEnvelope("0000000000000000", env);
  std::string out = headerLine(content.size(), envtext.size());
  out += content;
  out += envtext;
  out += "end " + hex8(crc32c(0, content.data(), content.size())) + " " +
         hex8(crc32c(0, envtext.data(), envtext.size())) + "\n";
  return out;
}

Result<SpoolMessage> parseSpoolFile(std::string_view bytes) {
  auto h = parseHeader(bytes);
  if (!h) return h.error();
  if (h->content > bytes.size() - kHeaderLen) return Error{0, "file shorter than its content"};
  SpoolMessage m;
  std::string_view content = bytes.substr(kHeaderLen, h->content);
  if (auto st = parseTail(bytes.substr(kHeaderLen + h->content), *h, m); !st) return st.error();
  if (m.content_crc != crc32c(0, content.data(), content.size()))
    return Error{0, "content checksum mismatch"};
  return m;
}

// ---------------------------------------------------------------------------------------------
// MessageWriter

MessageWriter::MessageWriter(Spool& spool, std::string id, int fd)
    : spool_(spool), id_(std::move(id)), fd_(fd) {
  buf_.reserve(kWriteBuffer);
}

MessageWriter::~MessageWriter() { discard(); }

Status MessageWriter::flush() {
  if (buf_.empty()) return {};
  auto st = writeAll(spool_.fs(), fd_, buf_, spool_.path(QueueState::Tmp, id_));
  buf_.clear();
  return st;
}

Status MessageWriter::write(std::string_view bytes) {
  if (done_) return Error{EINVAL, "write to finished spool file " + id_};
  if (failed_) return *failed_;
  crc_ = crc32c(crc_, bytes.data(), bytes.size());
  size_ += bytes.size();
  if (buf_.size() + bytes.size() < kWriteBuffer) {
    buf_.append(bytes);
    return {};
  }
  if (auto st = flush(); !st) {
    failed_ = st.error();
    return st;
  }
  if (bytes.size() >= kWriteBuffer) {
    auto st = writeAll(spool_.fs(), fd_, bytes, spool_.path(QueueState::Tmp, id_));
    if (!st) failed_ = st.error();
    return st;
  }
  buf_.append(bytes);
  return {};
}

Status MessageWriter::commit(const Envelope& env) {
  if (done_) return Error{EINVAL, "commit of finished spool file " + id_};
  if (failed_) {
    Error e = *failed_;
    discard();
    return e;
  }
  FsOps& fs = spool_.fs();
  const std::string tmp = spool_.path(QueueState::Tmp, id_);
  auto fail = [&](Error e) -> Status {
    discard();
    return e;
  };
  if (env.rcpts.empty()) return fail(Error{EINVAL, "spool file " + id_ + " has no recipients"});
  std::string envtext = formatEnvelope(id_, env);
  buf_ += envtext;
  buf_ += "end " + hex8(crc_) + " " + hex8(crc32c(0, envtext.data(), envtext.size())) + "\n";
  if (auto st = flush(); !st) return fail(st.error());
  if (auto st = pwriteAll(fs, fd_, headerLine(size_, envtext.size()), 0, tmp); !st)
    return fail(st.error());
  if (fs.fsync(fd_) != 0) return fail(sysError(errno, "fsync " + tmp));
  // The fd (and so the writer's lock) is kept until after the rename, so that a recovery scan
  // running at this moment never takes the finished file for an orphan.
  const std::string dest = spool_.path(QueueState::Incoming, id_);
  if (fs.rename(tmp.c_str(), dest.c_str()) != 0)
    return fail(sysError(errno, "rename " + tmp + " to " + dest));
  done_ = true;
  int fd = fd_;
  fd_ = -1;
  // The rename is what makes the message exist; a failed directory fsync leaves its durability in
  // doubt, so report failure (the sender retries; at worst a duplicate) but keep the file.
  // Only the destination directory needs syncing: a rename is atomic, and the name it makes is
  // what must survive a crash.
  Status st = spool_.fsyncDir(QueueState::Incoming);
  if (fs.close(fd) != 0 && st) st = sysError(errno, "close " + dest);
  return st;
}

void MessageWriter::discard() {
  if (done_) return;
  done_ = true;
  FsOps& fs = spool_.fs();
  if (fd_ >= 0) {
    fs.close(fd_);
    fd_ = -1;
  }
  fs.unlink(spool_.path(QueueState::Tmp, id_).c_str());
}

// ---------------------------------------------------------------------------------------------
// ContentReader

ContentReader::ContentReader(int fd, uint64_t offset, uint64_t size, uint32_t crc, std::string path)
    : fd_(fd), offset_(offset), remaining_(size), expect_crc_(crc), path_(std::move(path)) {}

ContentReader::ContentReader(ContentReader&& o) noexcept
    : fd_(o.fd_),
      offset_(o.offset_),
      remaining_(o.remaining_),
      expect_crc_(o.expect_crc_),
      crc_(o.crc_),
      path_(std::move(o.path_)),
      buf_(std::move(o.buf_)) {
  o.fd_ = -1;
}

ContentReader::~ContentReader() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::string_view> ContentReader::next(size_t max) {
  if (remaining_ == 0) {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
      if (crc_ != expect_crc_) return Error{EBADMSG, path_ + ": content checksum mismatch"};
    }
    return std::string_view();
  }
  if (max == 0) max = 1;
  size_t want = static_cast<size_t>(std::min<uint64_t>(max, remaining_));
  buf_.resize(want);
  ssize_t n;
  do {
    n = ::pread(fd_, buf_.data(), want, static_cast<off_t>(offset_));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return sysError(errno, "read " + path_);
  if (n == 0) return Error{EBADMSG, path_ + ": content ends early"};
  offset_ += static_cast<uint64_t>(n);
  remaining_ -= static_cast<uint64_t>(n);
  crc_ = crc32c(crc_, buf_.data(), static_cast<size_t>(n));
  if (remaining_ == 0 && crc_ != expect_crc_) {
    ::close(fd_);
    fd_ = -1;
    return Error{EBADMSG, path_ + ": content checksum mismatch"};
  }
  return std::string_view(buf_.data(), static_cast<size_t>(n));
}

// ---------------------------------------------------------------------------------------------
// Spool

Spool::Spool(std::string dir, FsOps& fs) : dir_(std::move(dir)), fs_(fs) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
}

std::string Spool::stateDir(QueueState st) const { return dir_ + "/" + queueStateName(st); }

std::string Spool::path(QueueState st, std::string_view id) const {
  return stateDir(st) + "/" + std::string(id);
}

Status Spool::prepare() {
  if (fs_.mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST)
    return sysError(errno, "mkdir " + dir_);
  for (auto s : {QueueState::Tmp, QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                 QueueState::Hold, QueueState::Corrupt}) {
    std::string d = stateDir(s);
    if (fs_.mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return sysError(errno, "mkdir " + d);
  }
  return checkWritable();
}

namespace {

std::string userName(uid_t uid) {
  if (const passwd* pw = ::getpwuid(uid)) return pw->pw_name;
  return std::to_string(uid);
}

std::string groupName(gid_t gid) {
  if (const group* gr = ::getgrgid(gid)) return gr->gr_name;
  return std::to_string(gid);
}

}  // namespace

Status Spool::prepareExisting() {
  struct stat sb;
  if (::stat(dir_.c_str(), &sb) != 0) {
    Error e = sysError(errno, "spool directory " + dir_);
    if (e.code == ENOENT)
      e.message +=
          "; create it, owned by the user the dynmx programs run as: install -d -o dynmx"
          " -g dynmx -m 0700 " +
          dir_ + " (the Debian package does this)";
    return e;
  }
  if (!S_ISDIR(sb.st_mode)) return Error{ENOTDIR, "spool directory " + dir_ + ": not a directory"};
  Status st = prepare();
  if (!st && (st.error().code == EACCES || st.error().code == EPERM)) {
    // Not the spool's owner (an MTA's mailer run as another user): say who may, and what to run.
    std::string owner = userName(sb.st_uid), group = groupName(sb.st_gid);
    std::string dirs;
    for (auto s : {QueueState::Tmp, QueueState::Incoming, QueueState::Active, QueueState::Deferred,
                   QueueState::Hold, QueueState::Corrupt})
      dirs += " " + stateDir(s);
    Error e = st.error();
    e.message += "; running as " + userName(::geteuid()) + ", but the spool belongs to " + owner +
                 ": run this program as " + owner +
                 ", or create the state directories as root:" + " install -d -o " + owner + " -g " +
                 group + " -m 0700" + dirs;
    return e;
  }
  return st;
}

Status Spool::checkWritable() const {
  for (auto s : {QueueState::Tmp, QueueState::Incoming}) {
    std::string d = stateDir(s);
    struct stat sb;
    if (::stat(d.c_str(), &sb) != 0) return sysError(errno, "spool directory " + d);
    if (!S_ISDIR(sb.st_mode)) return Error{ENOTDIR, "spool directory " + d + ": not a directory"};
    if (::access(d.c_str(), W_OK | X_OK) != 0) return sysError(errno, "spool directory " + d);
  }
  return {};
}

Result<std::unique_ptr<MessageWriter>> Spool::create() {
  for (int tries = 0; tries < 8; ++tries) {
    std::string id = newQueueId();
    std::string p = path(QueueState::Tmp, id);
    int fd = fs_.open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return sysError(errno, "create " + p);
    }
    // The lock tells recovery that a writer is alive; it dies with the writer.
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int e = errno;
      fs_.close(fd);
      fs_.unlink(p.c_str());
      return sysError(e, "lock " + p);
    }
    auto w = std::unique_ptr<MessageWriter>(new MessageWriter(*this, id, fd));
    // Room for the header, written for real at commit; zeros mark an uncommitted file.
    std::string placeholder(kHeaderLen, '0');
    placeholder.back() = '\n';
    w->buf_ = placeholder;
    return w;
  }
  return Error{EEXIST, "create in " + stateDir(QueueState::Tmp) + ": no unique queue id"};
}

std::vector<std::string> Spool::list(QueueState st) const {
  std::vector<std::string> out;
  DIR* d = ::opendir(stateDir(st).c_str());
  if (!d) return out;
  while (struct dirent* e = ::readdir(d))
    if (isQueueId(e->d_name)) out.emplace_back(e->d_name);
  ::closedir(d);
  return out;
}

Result<SpoolMessage> Spool::load(QueueState st, const std::string& id) const {
  const std::string p = path(st, id);
  int fd = ::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return sysError(errno, "open " + p);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  char head[kHeaderLen];
  ssize_t n;
  do {
    n = ::pread(fd, head, kHeaderLen, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return sysError(errno, "read " + p);
  auto h = parseHeader(std::string_view(head, static_cast<size_t>(n)));
  if (!h) return Error{EBADMSG, p + ": " + h.error().message};
  struct stat sb;
  if (::fstat(fd, &sb) != 0) return sysError(errno, "stat " + p);
  if (static_cast<uint64_t>(sb.st_size) < kHeaderLen + h->content)
    return Error{EBADMSG, p + ": file shorter than its content"};
  auto tail = readFrom(fd, kHeaderLen + h->content, p);
  if (!tail) return tail.error();
  SpoolMessage m;
  if (auto ps = parseTail(*tail, *h, m); !ps) return Error{EBADMSG, p + ": " + ps.error().message};
  if (m.id != id) return Error{EBADMSG, p + ": file says it is " + m.id};
  m.state = st;
  return m;
}

Result<ContentReader> Spool::openContent(const SpoolMessage& msg) const {
  const std::string p = path(msg.state, msg.id);
  int fd = ::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return sysError(errno, "open " + p);
  return ContentReader(fd, msg.content_offset, msg.content_size, msg.content_crc, p);
}

Status Spool::fsyncDir(QueueState st) const {
  const std::string d = stateDir(st);
  int fd = fs_.open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return sysError(errno, "open directory " + d);
  if (fs_.fsync(fd) != 0) {
    int e = errno;
    fs_.close(fd);
    return sysError(e, "fsync directory " + d);
  }
  fs_.close(fd);
  return {};
}

Status Spool::moveId(const std::string& id, QueueState from, QueueState to) {
  const std::string a = path(from, id), b = path(to, id);
  if (fs_.rename(a.c_str(), b.c_str()) != 0) return sysError(errno, "rename " + a + " to " + b);
  return fsyncDir(to);
}

Status Spool::move(SpoolMessage& msg, QueueState to) {
  if (msg.state == to) return {};
  if (auto st = moveId(msg.id, msg.state, to); !st) return st;
  msg.state = to;
  return {};
}

Status Spool::moveUnsynced(SpoolMessage& msg, QueueState to) {
  if (msg.state == to) return {};
  const std::string a = path(msg.state, msg.id), b = path(to, msg.id);
  if (fs_.rename(a.c_str(), b.c_str()) != 0) return sysError(errno, "rename " + a + " to " + b);
  msg.state = to;
  return {};
}

Status Spool::markCorrupt(QueueState from, const std::string& id) {
  const std::string a = path(from, id);
  std::string b = path(QueueState::Corrupt, id);
  // Never overwrite an earlier corrupt file of the same name.
  for (int i = 1; ::access(b.c_str(), F_OK) == 0; ++i) b = path(QueueState::Corrupt, id) + "." + std::to_string(i);
  if (fs_.rename(a.c_str(), b.c_str()) != 0) return sysError(errno, "rename " + a + " to " + b);
  return fsyncDir(QueueState::Corrupt);
}

Status Spool::appendJournal(SpoolMessage& msg, const std::string& line) {
  const std::string p = path(msg.state, msg.id);
  int fd = fs_.open(p.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) return sysError(errno, "open " + p);
  auto fail = [&](Error e) -> Status {
    fs_.close(fd);
    return e;
  };
  struct stat sb;
  if (::fstat(fd, &sb) != 0) return fail(sysError(errno, "stat " + p));
  // Cut off a torn line left by a crash before appending after it.
  if (static_cast<uint64_t>(sb.st_size) != msg.good_length &&
      fs_.ftruncate(fd, static_cast<off_t>(msg.good_length)) != 0)
    return fail(sysError(errno, "truncate " + p));
  if (auto st = pwriteAll(fs_, fd, line, static_cast<off_t>(msg.good_length), p); !st) return fail(st.error());
  if (fs_.fsync(fd) != 0) return fail(sysError(errno, "fsync " + p));
  if (fs_.close(fd) != 0) return sysError(errno, "close " + p);
  msg.good_length += line.size();
  return {};
}

Status Spool::recordRecipient(SpoolMessage& msg, size_t index, RcptState state,
                              std::string_view reply, int64_t when) {
  if (index >= msg.env.rcpts.size()) return Error{EINVAL, msg.id + ": no recipient " + std::to_string(index)};
  std::string body = "R " + std::to_string(index) + " " + static_cast<char>(state) + " " +
                     std::to_string(when) + " " + encode(reply);
  if (auto st = appendJournal(msg, journalLine(body)); !st) return st;
  auto& r = msg.env.rcpts[index];
  r.state = state;
  r.reply = std::string(reply);
  r.updated = when;
  return {};
}

Status Spool::recordDelivery(SpoolMessage& msg, const DeliveryState& ds) {
  std::string body = "D " + std::to_string(ds.attempts) + " " + std::to_string(ds.last_attempt) +
                     " " + std::to_string(ds.next_attempt) + " " + (ds.warned ? "1" : "0");
  if (auto st = appendJournal(msg, journalLine(body)); !st) return st;
  msg.delivery = ds;
  return {};
}

Status Spool::remove(const SpoolMessage& msg) {
  const std::string p = path(msg.state, msg.id);
  if (fs_.unlink(p.c_str()) != 0) return sysError(errno, "unlink " + p);
  return fsyncDir(msg.state);
}

Status Spool::removeUnsynced(QueueState st, const std::string& id) const {
  const std::string p = path(st, id);
  if (fs_.unlink(p.c_str()) != 0) return sysError(errno, "unlink " + p);
  return {};
}

RecoveryReport Spool::recover() {
  RecoveryReport rep;
  for (const auto& id : list(QueueState::Tmp)) {
    const std::string p = path(QueueState::Tmp, id);
    int fd = ::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    bool orphan = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    ::close(fd);
    if (!orphan) continue;  // a live writer is still at work
    if (fs_.unlink(p.c_str()) == 0) {
      ++rep.tmp_removed;
      logf(LogLevel::Info, "%s: removed unfinished temporary file (its writer is gone)", id.c_str());
    }
  }
  for (const auto& id : list(QueueState::Active)) {
    if (auto st = moveId(id, QueueState::Active, QueueState::Incoming); st) {
      ++rep.active_requeued;
    } else {
      logf(LogLevel::Warning, "%s: cannot requeue: %s", id.c_str(), st.error().message.c_str());
    }
  }
  for (auto s : {QueueState::Incoming, QueueState::Deferred, QueueState::Hold}) {
    for (const auto& id : list(s)) {
      auto m = load(s, id);
      if (m) continue;
      if (m.error().code != EBADMSG) {
        logf(LogLevel::Warning, "%s: cannot read: %s", id.c_str(), m.error().message.c_str());
        continue;
      }
      logf(LogLevel::Error, "%s: unreadable spool file moved to corrupt/: %s", id.c_str(),
           m.error().message.c_str());
      if (markCorrupt(s, id)) ++rep.corrupt;
    }
  }
  return rep;
}

}  // namespace dynmx
