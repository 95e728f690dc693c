// verify_cache.cpp: the probe cache and its file (see verify_cache.hpp for contract and format).
#include "tunneld/verify/verify_cache.hpp"

#include <cerrno>

#include "shared/atomic_file.hpp"
#include "shared/log.hpp"
#include "shared/smtp_reply.hpp"
#include "shared/text.hpp"

namespace dynmx::tunneld {

namespace {

bool word(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f) return false;
  return true;
}

Result<VerifyEntry> parseEntry(std::string_view line) {
  // "entry CLIENT ADDRESS STATUS EXPIRES REPLY..." (the reply may hold spaces).
  std::vector<std::string_view> f;
  size_t pos = 0;
  for (int i = 0; i < 5; ++i) {
    size_t sp = line.find(' ', pos);
    if (sp == std::string_view::npos) return Error{0, "too few fields"};
    f.push_back(line.substr(pos, sp - pos));
    pos = sp + 1;
  }
  std::string_view reply = line.substr(pos);
  VerifyEntry e;
  if (f[0] != "entry") return Error{0, "expected \"entry\""};
  if (!word(f[1], 64) || !word(f[2], 320)) return Error{0, "bad client or address"};
  auto st = verifyStatusFromName(f[3]);
  if (!st || *st == VerifyStatus::Unknown) return Error{0, "expected valid or invalid"};
  if (!parseDecimal(f[4], e.expires)) return Error{0, "bad expiry time"};
  for (unsigned char c : reply)
    if (c < 0x20 || c >= 0x7f) return Error{0, "reply is not printable"};
  e.client = std::string(f[1]);
  e.address = asciiLower(f[2]);
  e.status = *st;
  e.reply = std::string(reply);
  return e;
}

}  // namespace

std::optional<VerifyEntry> VerifyCache::find(const std::string& client, std::string_view address,
                                             int64_t now) const {
  auto it = map_.find({client, asciiLower(address)});
  if (it == map_.end() || it->second.expires <= now) return std::nullopt;
  return it->second;
}

void VerifyCache::put(VerifyEntry e) {
  if (e.status == VerifyStatus::Unknown) return;
  e.address = asciiLower(e.address);
  auto key = std::make_pair(e.client, e.address);
  map_[key] = std::move(e);
}

size_t VerifyCache::expire(int64_t now) {
  size_t n = 0;
  for (auto it = map_.begin(); it != map_.end();) {
    if (it->second.expires <= now) {
      it = map_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

void VerifyCache::forgetClientsExcept(const std::vector<std::string>& clients) {
  for (auto it = map_.begin(); it != map_.end();) {
    bool keep = false;
    for (const auto& c : clients) keep = keep || c == it->first.first;
    it = keep ? std::next(it) : map_.erase(it);
  }
}

std::vector<VerifyEntry> VerifyCache::entries() const {
  std::vector<VerifyEntry> out;
  for (const auto& [k, e] : map_) out.push_back(e);
  return out;
}

std::string formatVerifyCacheFile(const std::vector<VerifyEntry>& entries) {
  std::string s = "dynmx-verify 1\n";
  for (const VerifyEntry& e : entries)
    s += "entry " + e.client + " " + e.address + " " + verifyStatusName(e.status) + " " +
         std::to_string(e.expires) + " " + printable(e.reply, 512) + "\n";
  uint32_t crc = crc32c(0, s.data(), s.size());
  return s + "end " + std::to_string(entries.size()) + " " + hex8(crc) + "\n";
}

Result<std::vector<VerifyEntry>> parseVerifyCacheFile(std::string_view bytes) {
  constexpr std::string_view kHead = "dynmx-verify 1\n";
  if (bytes.substr(0, kHead.size()) != kHead)
    return Error{0, "line 1: expected \"dynmx-verify 1\""};
  if (bytes.empty() || bytes.back() != '\n') return Error{0, "no end line (torn file)"};
  size_t last = bytes.rfind('\n', bytes.size() - 2);
  std::string_view end = bytes.substr(last + 1, bytes.size() - last - 2);
  std::string_view body = bytes.substr(0, last + 1);
  std::vector<std::string_view> ef = splitSpaces(end);
  int64_t count = 0;
  if (ef.size() != 3 || ef[0] != "end" || !parseDecimal(ef[1], count))
    return Error{0, "no end line (torn file)"};
  if (ef[2] != hex8(crc32c(0, body.data(), body.size()))) return Error{0, "CRC mismatch"};
  std::vector<VerifyEntry> out;
  size_t pos = kHead.size();
  for (size_t lineno = 2; pos < body.size(); ++lineno) {
    size_t nl = body.find('\n', pos);
    auto e = parseEntry(body.substr(pos, nl - pos));
    if (!e) return Error{0, "line " + std::to_string(lineno) + ": " + e.error().message};
    out.push_back(std::move(*e));
    pos = nl + 1;
  }
  if (static_cast<int64_t>(out.size()) != count) return Error{0, "record count mismatch"};
  return out;
}

Status VerifyCacheStore::save(const VerifyCache& cache) {
  return writeFileAtomically(path_, formatVerifyCacheFile(cache.entries()), fs_);
}

Result<VerifyCache> VerifyCacheStore::load(int64_t now) {
  auto bytes = readSmallFile(path_, kMaxVerifyCacheFile);
  if (!bytes) return bytes.error();
  VerifyCache cache;
  if (!bytes->has_value()) return cache;
  auto parsed = parseVerifyCacheFile(**bytes);
  if (!parsed) {
    std::string aside = path_ + ".bad-" + std::to_string(now);
    if (fs_.rename(path_.c_str(), aside.c_str()) != 0)
      aside = "left in place (" + errnoText(errno) + ")";
    logf(LogLevel::Warning, "verify cache %s is damaged (%s); %s; starting with an empty cache",
         path_.c_str(), parsed.error().message.c_str(), aside.c_str());
    return cache;
  }
  for (VerifyEntry& e : *parsed)
    if (e.expires > now) cache.put(std::move(e));
  return cache;
}

}  // namespace dynmx::tunneld
