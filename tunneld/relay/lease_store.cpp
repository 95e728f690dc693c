// lease_store.cpp: the crash-safe lease file (see lease_store.hpp for the contract and format).
//
// The reader trusts nothing it has not checked: the version line, the end line, every field of
// every record (client names as the configuration allows them, addresses through inet_pton, times
// as plain decimal), the end line's record count and the CRC over everything before it. Only then
// are the records used; one bad byte anywhere makes the whole file bad.
#include "tunneld/relay/lease_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>

#include "shared/atomic_file.hpp"
#include "shared/fd.hpp"
#include "shared/log.hpp"
#include "shared/text.hpp"

namespace dynmx::tunneld {
namespace {

constexpr std::string_view kVersionLine = "dynmx-leases 1";
constexpr size_t kMaxClientName = 64;

std::optional<int64_t> parseTime(std::string_view s) {
  if (s.empty() || s.size() > 18 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

std::optional<uint32_t> parseHex8(std::string_view s) {
  if (s.size() != 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    uint32_t d;
    if (c >= '0' && c <= '9')
      d = static_cast<uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f')
      d = static_cast<uint32_t>(c - 'a' + 10);
    else
      return std::nullopt;
    v = v * 16 + d;
  }
  return v;
}

bool isClientName(std::string_view s) {
  if (s.empty() || s.size() > kMaxClientName || s[0] == '.') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

// An address exactly as formatLeaseFile writes it (canonical inet_ntop text).
std::optional<InetAddr> parseAddr(std::string_view s) {
  auto a = InetAddr::parse(s);
  if (!a || a->str() != s) return std::nullopt;
  return a;
}

Status parseRecord(std::string_view line, LeaseSnapshot& s) {
  auto f = splitSpaces(line);
  if (f[0] == "lease" && f.size() == 6) {
    auto addr = parseAddr(f[2]);
    auto source = leaseSourceFromName(f[3]);
    auto granted = parseTime(f[4]), expires = parseTime(f[5]);
    if (!isClientName(f[1])) return Error{0, "bad client name"};
    if (!addr) return Error{0, "bad address"};
    if (!source) return Error{0, "bad source"};
    if (!granted || !expires || *expires < *granted) return Error{0, "bad times"};
    s.leases.push_back(Lease{std::string(f[1]), *addr, *source, *granted, *expires, false});
    return {};
  }
  if (f[0] == "hold" && f.size() == 3) {
    auto addr = parseAddr(f[1]);
    auto until = parseTime(f[2]);
    if (!addr || !until) return Error{0, "bad hold record"};
    s.holds.push_back(Hold{*addr, *until});
    return {};
  }
  return Error{0, "unknown record"};
}

}  // namespace

std::string formatLeaseFile(const LeaseSnapshot& s) {
  std::string out = std::string(kVersionLine) + "\n";
  for (const auto& l : s.leases)
    out += "lease " + l.client + " " + l.addr.str() + " " + leaseSourceName(l.source) + " " +
           std::to_string(l.granted) + " " + std::to_string(l.expires) + "\n";
  for (const auto& h : s.holds)
    out += "hold " + h.addr.str() + " " + std::to_string(h.until) + "\n";
  uint32_t crc = crc32c(0, out.data(), out.size());
  out += "end " + std::to_string(s.leases.size() + s.holds.size()) + " " + hex8(crc) + "\n";
  return out;
}

Result<LeaseSnapshot> parseLeaseFile(std::string_view bytes) {
  if (bytes.size() > kMaxLeaseFile) return Error{0, "larger than any lease file"};
  if (!bytes.starts_with(std::string(kVersionLine) + "\n"))
    return Error{0, "not a lease file of version 1 (first line)"};
  if (bytes.empty() || bytes.back() != '\n') return Error{0, "torn: no end line"};
  // The end line is the last line.
  size_t end_at = bytes.rfind('\n', bytes.size() - 2) + 1;
  std::string_view end_line = bytes.substr(end_at, bytes.size() - 1 - end_at);
  auto ef = splitSpaces(end_line);
  if (ef.size() != 3 || ef[0] != "end") return Error{0, "torn: no end line"};
  auto count = parseTime(ef[1]);
  auto crc = parseHex8(ef[2]);
  if (!count || !crc) return Error{0, "malformed end line"};
  std::string_view body = bytes.substr(0, end_at);
  // Records first, then the count and the checksum: all must hold, and in this order the fuzzer
  // reaches the record parser without having to forge a CRC.
  LeaseSnapshot s;
  size_t pos = kVersionLine.size() + 1, lineno = 1;
  while (pos < body.size()) {
    size_t nl = body.find('\n', pos);
    std::string_view line = body.substr(pos, nl - pos);
    pos = nl + 1;
    ++lineno;
    if (auto st = parseRecord(line, s); !st)
      return Error{0, st.error().message + " on line " + std::to_string(lineno)};
  }
  if (static_cast<uint64_t>(*count) != s.leases.size() + s.holds.size())
    return Error{0, "record count mismatch"};
  if (crc32c(0, body.data(), body.size()) != *crc) return Error{0, "checksum mismatch"};
  return s;
}

LeaseStore::LeaseStore(std::string path, FsOps& fs) : path_(std::move(path)), fs_(fs) {}

Status LeaseStore::save(const LeaseSnapshot& s) {
  return writeFileAtomically(path_, formatLeaseFile(s), fs_);
}

Result<LeaseStore::Loaded> LeaseStore::load(int64_t now) {
  Loaded out;
  UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) return out;
    return sysError(errno, "open lease file " + path_);
  }
  std::string bytes;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError(errno, "read lease file " + path_);
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
    if (bytes.size() > kMaxLeaseFile) break;  // the parser calls it damaged
  }
  auto parsed = parseLeaseFile(bytes);
  if (!parsed) {
    out.set_aside = path_ + ".bad-" + std::to_string(now);
    if (fs_.rename(path_.c_str(), out.set_aside.c_str()) != 0) {
      logf(LogLevel::Error,
           "lease file %s is damaged (%s) and cannot be moved aside: %s; "
           "no lease from it is granted",
           path_.c_str(), parsed.error().message.c_str(), errnoText(errno).c_str());
      out.set_aside.clear();
      return out;
    }
    logf(LogLevel::Warning,
         "lease file %s is damaged (%s); moved to %s; no lease from it is granted", path_.c_str(),
         parsed.error().message.c_str(), out.set_aside.c_str());
    return out;
  }
  for (auto& l : parsed->leases)
    if (l.liveAt(now)) out.snapshot.leases.push_back(std::move(l));
  for (auto& h : parsed->holds)
    if (h.until > now) out.snapshot.holds.push_back(h);
  return out;
}

}  // namespace dynmx::tunneld
