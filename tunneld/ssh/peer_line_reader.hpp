// peer_line_reader.hpp: the start of an SMTP session's stdout, split into the client's
// "dynmx-peer ..." line and what follows it (the SMTP engine's bytes).
//
// Contract: the client's forced command may echo `dynmx-peer $SSH_CONNECTION` before it runs
// sendmail -bs (man/dynmx-relay.7). feed() takes the bytes in any slicing and returns those that
// belong to the SMTP engine: nothing while the bytes so far could still be the start of a
// "dynmx-peer" line (at most kMaxPeerLine bytes without a line end), then everything after the
// line. A first line that starts with "dynmx-peer" and parses (Peer) or not (Malformed) is taken
// off and never reaches the engine; anything else (the greeting of a client without the echo, a
// line with more than kMaxPeerLine bytes before its end (Malformed), a stream that ended early) is
// the engine's, whole, the moment that is clear, so the absence of the echo never holds delivery
// back. line() says what the first line was, once decided() (NotPeerLine when it was not a peer
// line). finish() at EOF hands back what was held.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "tunneld/relay/peer_check.hpp"

namespace dynmx::tunneld {

class PeerLineReader {
 public:
  std::string feed(std::string_view bytes);
  std::string finish();
  bool decided() const { return line_.has_value(); }
  const std::optional<PeerLine>& line() const { return line_; }

 private:
  std::string held_;
  std::optional<PeerLine> line_;
};

}  // namespace dynmx::tunneld
