// socketmap.cpp: netstring requests in, socketmap answers out (see socketmap.hpp).
//
// Netstrings are read strictly (RFC-less but djb's definition): decimal length without leading
// zeros, a colon, exactly that many bytes, a comma. A length over the bound fails as soon as its
// digits show it, before the bytes arrive, so that a peer cannot make us buffer more than a
// request.
#include "tunneld/relay/socketmap.hpp"

#include <cctype>

namespace dynmx::relay {
namespace {

constexpr size_t kMaxLengthDigits = 7;

const char* statusWord(SocketmapStatus s) {
  switch (s) {
    case SocketmapStatus::Ok:
      return "OK";
    case SocketmapStatus::NotFound:
      return "NOTFOUND";
    case SocketmapStatus::Temp:
      return "TEMP";
    case SocketmapStatus::Perm:
      return "PERM";
  }
  return "PERM";
}

SocketmapAnswer perm(std::string why) {
  return {SocketmapStatus::Perm, std::move(why)};
}

}  // namespace

std::string formatAnswer(const SocketmapAnswer& answer) {
  std::string body = statusWord(answer.status);
  body += ' ';
  body += answer.text;
  return std::to_string(body.size()) + ":" + body + ",";
}

SocketmapReader::State SocketmapReader::fail(std::string why) {
  error_ = std::move(why);
  buf_.clear();
  return State::Error;
}

void SocketmapReader::feed(std::string_view bytes) {
  // No cap here: next() fails a request whose length is over the bound as soon as its digits
  // show it, so what stays buffered after the requests are taken out is less than one request;
  // the caller bounds each feed by its read size.
  if (!failed()) buf_.append(bytes);
}

SocketmapReader::State SocketmapReader::next(std::string& payload) {
  if (failed()) return State::Error;
  size_t i = 0;
  size_t len = 0;
  while (i < buf_.size() && std::isdigit(static_cast<unsigned char>(buf_[i]))) {
    if (i == 1 && buf_[0] == '0') return fail("netstring length with a leading zero");
    len = len * 10 + static_cast<size_t>(buf_[i] - '0');
    ++i;
    if (len > max_ || i > kMaxLengthDigits) {
      return fail("request longer than " + std::to_string(max_) + " bytes");
    }
  }
  if (i == buf_.size()) return State::NeedMore;
  if (i == 0 || buf_[i] != ':') return fail("malformed netstring length");
  size_t end = i + 1 + len;  // index of the ','
  if (buf_.size() <= end) return State::NeedMore;
  if (buf_[end] != ',') return fail("netstring not terminated by ','");
  payload.assign(buf_, i + 1, len);
  buf_.erase(0, end + 1);
  return State::Request;
}

std::optional<InetAddr> socketmapKeyAddress(std::string_view key) {
  // InetAddr::parse takes the plain forms, sendmail's (any-case) "IPv6:" tag and brackets.
  return InetAddr::parse(key);
}

SocketmapAnswer answerLeaseRequest(std::string_view payload, const LeaseHolderLookup& holder) {
  size_t sp = payload.find(' ');
  if (sp == std::string_view::npos || sp == 0) return perm("malformed request");
  std::string_view map = payload.substr(0, sp);
  std::string_view key = payload.substr(sp + 1);
  if (map != kRelayMapName && map != kRelayClientMapName) return perm("unknown map");
  if (key.empty()) return perm("empty key");
  std::optional<InetAddr> addr = socketmapKeyAddress(key);
  if (!addr) return {SocketmapStatus::NotFound, ""};  // a host name: leases are by address
  std::optional<std::string> client = holder(*addr);
  if (!client) return {SocketmapStatus::Temp, "lease table not loaded"};
  if (client->empty()) return {SocketmapStatus::NotFound, ""};
  // The MTA's map answers "OK" alone: its rules compare the value with OK.
  return {SocketmapStatus::Ok, map == kRelayMapName ? std::string("OK") : *client};
}

SocketmapAnswer answerRequest(std::string_view payload, const LeaseLookup& lookup) {
  size_t sp = payload.find(' ');
  if (sp != std::string_view::npos && sp != 0 && payload.substr(0, sp) != kRelayMapName)
    return perm("unknown map");
  return answerLeaseRequest(payload, [&](const InetAddr& a) -> std::optional<std::string> {
    std::optional<bool> leased = lookup(a);
    if (!leased) return std::nullopt;
    return *leased ? std::string("?") : std::string();
  });
}

}  // namespace dynmx::relay
