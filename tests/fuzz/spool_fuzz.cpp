// spool_fuzz.cpp: the spool reader must reject, never crash on, any bytes found in a spool file.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shared/spool.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto m = dynmx::parseSpoolFile(std::string_view(reinterpret_cast<const char*>(data), size));
  if (m.ok()) {
    // A file that parses must describe itself consistently.
    if (m->content_offset + m->content_size > size) __builtin_trap();
    if (m->env.rcpts.empty() || m->env.client.empty()) __builtin_trap();
    if (m->good_length > size) __builtin_trap();
  }
  return 0;
}
