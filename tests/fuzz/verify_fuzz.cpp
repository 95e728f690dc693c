// verify_fuzz.cpp: what recipient verification reads from outside: the admin socket's verify
// answer line (dynmx-milter reads it), the verify cache file (read back at start), and the far
// end's replies to a probe. None may crash; a parsed answer or file must format back to itself;
// the probe engine never sends anything but EHLO/HELO, MAIL FROM:<>, RCPT TO, RSET and QUIT.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "shared/verify_reply.hpp"
#include "tunneld/verify/probe_engine.hpp"
#include "tunneld/verify/verify_cache.hpp"

namespace {

void probe(std::string_view in, size_t step) {
  using namespace dynmx::tunneld;
  dynmx::SteadyClock::time_point now{};
  ProbeEngine e("mx.example", std::chrono::seconds(30), now);
  std::string sent;
  for (size_t i = 0; i < in.size() && !e.ended(); i += step) {
    e.onInput(in.substr(i, step), now);
    if (e.ready()) e.start("bob@example.org", now);
    (void)e.takeResult();
    sent += e.output();
    e.consumed(e.output().size());
  }
  for (size_t p = 0; p < sent.size();) {
    size_t nl = sent.find("\r\n", p);
    if (nl == std::string::npos) __builtin_trap();
    std::string_view line = std::string_view(sent).substr(p, nl - p);
    if (line.rfind("EHLO ", 0) != 0 && line.rfind("HELO ", 0) != 0 && line != "MAIL FROM:<>" &&
        line != "RCPT TO:<bob@example.org>" && line != "RSET" && line != "QUIT")
      __builtin_trap();
    p = nl + 2;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (in.empty()) return 0;
  unsigned char sel = static_cast<unsigned char>(in[0]);
  in.remove_prefix(1);
  if (sel % 3 == 0) {
    auto a = dynmx::parseVerifyLine(in);
    if (a && dynmx::formatVerifyLine(*a) != in && dynmx::formatVerifyLine(*a) + "\r" != in)
      __builtin_trap();
  } else if (sel % 3 == 1) {
    auto f = dynmx::tunneld::parseVerifyCacheFile(in);
    if (f && dynmx::tunneld::formatVerifyCacheFile(*f) != in) {
      // Addresses are read back lower-cased: compare the re-read entries instead.
      auto again = dynmx::tunneld::parseVerifyCacheFile(dynmx::tunneld::formatVerifyCacheFile(*f));
      if (!again || *again != *f) __builtin_trap();
    }
  } else {
    probe(in, 1 + sel / 3 % 64);
  }
  return 0;
}
