// socketmap_fuzz.cpp: socketmap requests come from any program on the MX host that can reach the
// socket. Reading them in any slicing must never crash, never buffer more than a request, and
// never answer OK but for a key that is a leased address.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tunneld/relay/socketmap.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dynmx::relay;
  static const dynmx::InetAddr leased4 = *dynmx::InetAddr::parse("192.0.2.7");
  static const dynmx::InetAddr leased6 = *dynmx::InetAddr::parse("2001:db8::1");
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // The first byte picks the slice size, so that the fuzzer explores partial reads too.
  if (in.empty()) return 0;
  size_t step = 1 + static_cast<unsigned char>(in[0]) % 64;
  in.remove_prefix(1);
  LeaseLookup lookup = [](const dynmx::InetAddr& a) -> std::optional<bool> {
    return a == leased4 || a == leased6;
  };
  SocketmapReader reader;
  std::string payload;
  for (size_t i = 0; i < in.size(); i += step) {
    reader.feed(in.substr(i, step));
    SocketmapReader::State st;
    while ((st = reader.next(payload)) == SocketmapReader::State::Request) {
      if (payload.size() > kMaxRequest) __builtin_trap();
      SocketmapAnswer a = answerRequest(payload, lookup);
      if (a.status == SocketmapStatus::Ok) {
        auto addr = socketmapKeyAddress(payload.substr(kRelayMapName.size() + 1));
        if (payload.rfind("relay ", 0) != 0 || !addr || !(*addr == leased4 || *addr == leased6)) {
          __builtin_trap();
        }
      }
      std::string wire = formatAnswer(a);
      if (wire.empty() || wire.back() != ',') __builtin_trap();
    }
    if (st == SocketmapReader::State::Error) break;
  }
  return 0;
}
