// config_fuzz.cpp: the configuration loader reports errors, never crashes, on any text.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shared/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = dynmx::parseConfig(std::string_view(reinterpret_cast<const char*>(data), size),
                              "/fuzz/dynmx.toml");
  if (!r.config && r.errors.empty()) __builtin_trap();  // a refusal must say why
  for (const auto& e : r.errors) (void)e.str();
  return 0;
}
