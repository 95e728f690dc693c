// version.hpp: the version every dynmx program prints with --version (the CMake project version).
//
// Contract: `PROGRAM (dynmx) VERSION` on one line of standard output; the caller exits 0.
#pragma once

#include <cstdio>

#ifndef DYNMX_VERSION
#error "DYNMX_VERSION comes from shared/CMakeLists.txt"
#endif

namespace dynmx {

inline constexpr const char* kVersion = DYNMX_VERSION;

inline void printVersion(const char* program) {
  std::printf("%s (dynmx) %s\n", program, kVersion);
}

}  // namespace dynmx
