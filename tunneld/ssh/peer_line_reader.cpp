// peer_line_reader.cpp: see peer_line_reader.hpp. Pure: no I/O, no failure beyond what line()
// reports.
#include "tunneld/ssh/peer_line_reader.hpp"

#include <algorithm>

namespace dynmx::tunneld {

namespace {
constexpr std::string_view kTag = "dynmx-peer";

std::string take(std::string& s) {
  std::string out;
  out.swap(s);
  return out;
}
}  // namespace

std::string PeerLineReader::feed(std::string_view bytes) {
  if (line_) return std::string(bytes);
  held_.append(bytes);
  std::string_view head(held_);
  size_t n = std::min(head.size(), kTag.size());
  bool tagged = head.substr(0, n) == kTag.substr(0, n);
  size_t nl = head.find('\n');
  // More than kMaxPeerLine bytes before the line end: too long to be one, whatever the slicing.
  bool overlong = nl == std::string_view::npos ? head.size() > kMaxPeerLine : nl > kMaxPeerLine;
  if (tagged && overlong) {
    line_ = PeerLine{PeerLine::Kind::Malformed, {}};  // the engine's, which notes it
    return take(held_);
  }
  if (tagged && nl == std::string_view::npos) return {};  // may still be a peer line: wait
  if (tagged && head.size() >= kTag.size()) {
    PeerLine l = parsePeerLine(head.substr(0, nl + 1));
    line_ = l;
    // parsePeerLine calls whatever starts with "dynmx-peer" a peer line (Malformed at worst);
    // should it ever say otherwise, the line is the engine's, which notes it before the greeting.
    if (l.kind == PeerLine::Kind::NotPeerLine) return take(held_);
    std::string rest = held_.substr(nl + 1);
    held_.clear();
    return rest;
  }
  line_ = PeerLine{};  // the greeting came first: a client without the echo
  return take(held_);
}

std::string PeerLineReader::finish() {
  if (!line_) line_ = PeerLine{};
  return take(held_);
}

}  // namespace dynmx::tunneld
