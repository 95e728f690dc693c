// host_name_test.cpp: hostNameOr() prefers the given name and otherwise gives the system's.
#include "shared/host_name.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

namespace dynmx {
namespace {

TEST(HostNameOr, PrefersTheGivenNameElseTheSystems) {
  EXPECT_EQ(hostNameOr("mx.example.org"), "mx.example.org");
  char buf[256] = {};
  ASSERT_EQ(gethostname(buf, sizeof buf - 1), 0);
  EXPECT_EQ(hostNameOr(""), buf[0] ? std::string(buf) : std::string("localhost"));
}

}  // namespace
}  // namespace dynmx
