// relay_feed.cpp: the begin/lease/end snapshot feed (see relay_feed.hpp).
//
// Strict on purpose: the feed comes from our own daemon, so anything unexpected is a bug or a
// corruption, and the safe answer to either is to stop serving (fail closed), not to guess.
#include "tunneld/relay/relay_feed.hpp"

#include <charconv>

namespace dynmx::relay {
namespace {

constexpr size_t kMaxClientName = 64;

bool parseExpiry(std::string_view s, int64_t& out) {
  if (s.empty() || s.size() > 18 || s[0] == '0') return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && out > 0;
}

// Splits "a b c" at single spaces into exactly `n` non-empty fields; false otherwise.
bool splitFields(std::string_view l, std::string_view* out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    size_t sp = l.find(' ');
    bool last = i + 1 == n;
    if (last != (sp == std::string_view::npos)) return false;
    out[i] = l.substr(0, sp);
    if (out[i].empty()) return false;
    if (!last) l.remove_prefix(sp + 1);
  }
  return true;
}

}  // namespace

bool LeaseSnapshot::leased(const InetAddr& a, int64_t now_unix) const {
  auto it = leases.find(a);
  return it != leases.end() && it->second.expires_unix > now_unix;
}

std::string LeaseSnapshot::holder(const InetAddr& a, int64_t now_unix) const {
  return leased(a, now_unix) ? leases.at(a).client : std::string();
}

bool validFeedClient(std::string_view name) {
  if (name.empty() || name.size() > kMaxClientName) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string formatSnapshot(const std::vector<FeedLease>& leases, size_t* skipped) {
  std::string out = "begin\n";
  size_t bad = 0;
  for (const FeedLease& l : leases) {
    if (!validFeedClient(l.client) || l.expires_unix <= 0) {
      ++bad;
      continue;
    }
    out += "lease " + l.addr.str() + " " + l.client + " " + std::to_string(l.expires_unix) + "\n";
  }
  out += "end\n";
  if (skipped) *skipped = bad;
  return out;
}

bool FeedParser::fail(std::string why) {
  error_ = "feed line " + std::to_string(line_no_) + ": " + why;
  building_.reset();
  partial_.clear();
  return false;
}

bool FeedParser::feed(std::string_view bytes) {
  if (failed()) return false;
  while (!bytes.empty()) {
    size_t nl = bytes.find('\n');
    std::string_view chunk = bytes.substr(0, nl);
    if (partial_.size() + chunk.size() > kMaxFeedLine) {
      ++line_no_;
      return fail("line longer than " + std::to_string(kMaxFeedLine) + " bytes");
    }
    partial_.append(chunk);
    if (nl == std::string_view::npos) break;
    bytes.remove_prefix(nl + 1);
    ++line_no_;
    std::string l = std::move(partial_);
    partial_.clear();
    if (!line(l)) return false;
  }
  return true;
}

bool FeedParser::line(std::string_view l) {
  for (char ch : l) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x21 && c != ' ') return fail("control character");
    if (c > 0x7e) return fail("non-ASCII byte");
  }
  if (l == "begin") {
    if (building_) return fail("begin inside a snapshot");
    building_.emplace();
    return true;
  }
  if (l == "end") {
    if (!building_) return fail("end outside a snapshot");
    done_ = std::move(building_);
    building_.reset();
    return true;
  }
  std::string_view f[4];
  if (!splitFields(l, f, 4) || f[0] != "lease") return fail("not begin, end or a lease line");
  if (!building_) return fail("lease outside a snapshot");
  std::optional<InetAddr> addr = InetAddr::parse(f[1]);
  if (!addr) return fail("not an address");
  if (!validFeedClient(f[2])) return fail("bad client name");
  int64_t expires = 0;
  if (!parseExpiry(f[3], expires)) return fail("bad expiry");
  auto [it, fresh] = building_->leases.try_emplace(*addr);
  if (fresh && building_->leases.size() > max_leases_) {
    return fail("more than " + std::to_string(max_leases_) + " leases in one snapshot");
  }
  if (fresh || expires > it->second.expires_unix) it->second = {std::string(f[2]), expires};
  return true;
}

std::optional<LeaseSnapshot> FeedParser::takeSnapshot() {
  std::optional<LeaseSnapshot> s = std::move(done_);
  done_.reset();
  return s;
}

}  // namespace dynmx::relay
