// known_hosts_fuzz.cpp: the known_hosts reader (a file an administrator edits, sometimes from
// ssh-keyscan output) must survive any bytes: bad lines become warnings, never a crash, and the
// verdict for any presented key is one of the three values.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tunneld/ssh/host_keys.hpp"

using namespace dynmx::tunneld;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> warnings;
  auto v = HostKeyVerifier::fromKnownHostsText(in, "fuzz", "host.example", 2222, &warnings);
  (void)v.methodPref();
  (void)v.expectedFingerprints();
  // Use the first 64 bytes as a presented key blob.
  auto r = v.verify(in.substr(0, 64));
  if (r.verdict != HostKeyVerdict::Match && r.verdict != HostKeyVerdict::Mismatch &&
      r.verdict != HostKeyVerdict::Unknown)
    std::abort();
  std::string why;
  (void)HostKeyVerifier::fromPin(in, &why);
  (void)knownHostPatternMatches(in, "[host.example]:2222");
  if (auto d = base64Decode(in)) {
    if (*base64Decode(base64Encode(*d)) != *d) std::abort();
  }
  return 0;
}
