// socketmap.hpp: the socketmap protocol (sendmail's `socket` map, Postfix's `socketmap:` table),
// sans-IO: bytes in, answers out, no sockets here.
//
// Contract: a request is a netstring `LEN:MAPNAME KEY,` of at most kMaxRequest payload bytes; an
// answer is a netstring `OK OK`, `NOTFOUND `, `TEMP reason` or `PERM reason`. SocketmapReader takes
// the bytes of one connection in any slicing and yields whole requests in order. answerRequest()
// maps one request to one answer: map `relay` (the MTA's question: `OK OK` for a leased address)
// and, with answerLeaseRequest(), map `relayclient` (dynmx-milter's question: `OK CLIENT`, the
// name of the client holding the lease, for relay_senders); a key that is an address (sendmail's
// `ipv6:2001:db8:0:0:0:0:0:1`, Postfix's `2001:db8::1`, IPv4, with or without brackets) is asked
// of the lease lookup; a key that is not an address (Postfix first asks for the client's host name)
// is NOTFOUND.
//
// Failure: a malformed or over-long request makes the reader fail for good (the connection is
// answered PERM and closed: a netstring stream cannot be resynchronised). Never OK on an error:
// the only way to OK is a lookup that says the address is leased now; a table that is not there
// yet answers TEMP.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "shared/inet_addr.hpp"

namespace dynmx::relay {

// sendmail and Postfix keys are short (an address, or a host name of at most 255 bytes): a map
// name, a space and such a key fit with room to spare.
inline constexpr size_t kMaxRequest = 512;
inline constexpr std::string_view kRelayMapName = "relay";
inline constexpr std::string_view kRelayClientMapName = "relayclient";

enum class SocketmapStatus { Ok, NotFound, Temp, Perm };

struct SocketmapAnswer {
  SocketmapStatus status = SocketmapStatus::Perm;
  std::string text;  // OK: the value; the others: the reason (may be empty)
  bool operator==(const SocketmapAnswer&) const = default;
};

// The whole netstring for an answer: "5:OK OK,", "9:NOTFOUND ,", "16:PERM bad request,".
std::string formatAnswer(const SocketmapAnswer& answer);

// Splits a connection's byte stream into request payloads.
class SocketmapReader {
 public:
  enum class State { NeedMore, Request, Error };
  explicit SocketmapReader(size_t max_request = kMaxRequest) : max_(max_request) {}

  // Appends bytes; call next() until NeedMore after each feed, so that the buffer stays bounded.
  void feed(std::string_view bytes);
  // The next request in `payload`, or NeedMore, or Error (with `error` saying why; final).
  State next(std::string& payload);
  const std::string& error() const { return error_; }
  bool failed() const { return !error_.empty(); }

 private:
  State fail(std::string why);
  size_t max_;
  std::string buf_;
  std::string error_;
};

// Whether an address is leased now; nullopt when the lease table cannot tell (not loaded yet).
using LeaseLookup = std::function<std::optional<bool>(const InetAddr&)>;

// The key's address in the forms sendmail and Postfix send, or nullopt (a host name, garbage).
std::optional<InetAddr> socketmapKeyAddress(std::string_view key);

// The answer to one request payload ("relay 192.0.2.1"); map `relay` only.
SocketmapAnswer answerRequest(std::string_view payload, const LeaseLookup& lookup);

// Who holds the lease on an address now: the client's name, "" when nobody, nullopt when the
// lease table cannot tell (not loaded yet).
using LeaseHolderLookup = std::function<std::optional<std::string>(const InetAddr&)>;

// The answer to one request payload of either map: "relay ADDR" as answerRequest(),
// "relayclient ADDR" -> `OK CLIENT` when leased, NOTFOUND when not, TEMP when the table cannot
// tell.
SocketmapAnswer answerLeaseRequest(std::string_view payload, const LeaseHolderLookup& holder);

}  // namespace dynmx::relay
