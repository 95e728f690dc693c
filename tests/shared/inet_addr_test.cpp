// Tests of InetAddr / InetNetwork: every form the MTAs send, and everything that must not parse.
#include "shared/inet_addr.hpp"

#include <gtest/gtest.h>

#include <string>

namespace dynmx {
namespace {

struct ParseCase {
  const char* text;
  const char* canonical;  // nullptr: must not parse
};

class InetAddrParse : public ::testing::TestWithParam<ParseCase> {};

TEST_P(InetAddrParse, GivesTheCanonicalFormOrNothing) {
  const ParseCase& c = GetParam();
  auto a = InetAddr::parse(c.text);
  if (c.canonical == nullptr) {
    EXPECT_FALSE(a) << c.text << " parsed as " << a->str();
  } else {
    ASSERT_TRUE(a) << c.text;
    EXPECT_EQ(a->str(), c.canonical) << c.text;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Forms, InetAddrParse,
    ::testing::Values(
        ParseCase{"192.0.2.7", "192.0.2.7"}, ParseCase{"127.0.0.2", "127.0.0.2"},
        ParseCase{"2001:db8::1", "2001:db8::1"},                          // Postfix
        ParseCase{"ipv6:2001:db8:0:0:0:0:0:1", "2001:db8::1"},            // sendmail
        ParseCase{"IPv6:2001:DB8:0:0:0:0:0:1", "2001:db8::1"},            // sendmail, other case
        ParseCase{"[192.0.2.7]", "192.0.2.7"}, ParseCase{"[ipv6:::1]", "::1"},
        ParseCase{"::ffff:192.0.2.7", "192.0.2.7"},                       // v4-mapped is v4
        ParseCase{"ipv6:::ffff:192.0.2.7", "192.0.2.7"},
        // Not addresses: host names, ports, zones, junk, prefixes, v4 behind the v6 tag.
        ParseCase{"mail.example.org", nullptr}, ParseCase{"192.0.2.7:25", nullptr},
        ParseCase{"fe80::1%eth0", nullptr}, ParseCase{"", nullptr}, ParseCase{"ipv6:", nullptr},
        ParseCase{"192.0.2.7 ", nullptr}, ParseCase{" 192.0.2.7", nullptr},
        ParseCase{"192.0.2", nullptr}, ParseCase{"0x7f.1", nullptr},
        ParseCase{"192.0.2.256", nullptr}, ParseCase{"ipv6:192.0.2.7", nullptr},
        ParseCase{"[192.0.2.7", nullptr}, ParseCase{"2001:db8::1/64", nullptr},
        ParseCase{"1:2:3:4:5:6:7:8:9", nullptr}));

TEST(InetAddr, EmbeddedNulIsNotAnAddress) {
  EXPECT_FALSE(InetAddr::parse(std::string("192.0.2.7\0x", 11)));
}

TEST(InetAddr, ClassifiesLoopbackLinkLocalAndUnspecified) {
  EXPECT_TRUE(InetAddr::parse("127.9.9.9")->isLoopback());
  EXPECT_TRUE(InetAddr::parse("::1")->isLoopback());
  EXPECT_FALSE(InetAddr::parse("::2")->isLoopback());
  EXPECT_TRUE(InetAddr::parse("169.254.1.1")->isLinkLocal());
  EXPECT_TRUE(InetAddr::parse("fe80::1")->isLinkLocal());
  EXPECT_TRUE(InetAddr::parse("febf::1")->isLinkLocal());
  EXPECT_FALSE(InetAddr::parse("fec0::1")->isLinkLocal());
  EXPECT_TRUE(InetAddr::parse("0.0.0.0")->isUnspecified());
  EXPECT_TRUE(InetAddr::parse("::")->isUnspecified());
}

TEST(InetAddr, SameAddressInEitherFormIsEqual) {
  EXPECT_EQ(*InetAddr::parse("ipv6:2001:db8:0:0:0:0:0:1"), *InetAddr::parse("2001:db8::1"));
  EXPECT_EQ(*InetAddr::parse("::ffff:10.1.2.3"), *InetAddr::parse("10.1.2.3"));
  EXPECT_NE(*InetAddr::parse("10.1.2.3"), *InetAddr::parse("10.1.2.4"));
}

TEST(InetNetwork, ContainsByPrefix) {
  auto net = InetNetwork::parse("192.0.2.0/24");
  ASSERT_TRUE(net);
  EXPECT_TRUE(net->contains(*InetAddr::parse("192.0.2.200")));
  EXPECT_FALSE(net->contains(*InetAddr::parse("192.0.3.1")));
  EXPECT_FALSE(net->contains(*InetAddr::parse("2001:db8::1")));
  auto odd = InetNetwork::parse("2001:db8:ff00::/41");
  ASSERT_TRUE(odd);
  EXPECT_TRUE(odd->contains(*InetAddr::parse("2001:db8:ff7f::1")));
  EXPECT_FALSE(odd->contains(*InetAddr::parse("2001:db8:ff80::1")));
  EXPECT_EQ(InetNetwork::parse("192.0.2.9")->prefix_len, 32u);
  EXPECT_EQ(InetNetwork::parse("::/0")->str(), "::/0");
  EXPECT_TRUE(InetNetwork::parse("::/0")->contains(*InetAddr::parse("2001:db8::1")));
  for (const char* bad : {"192.0.2.0/33", "192.0.2.0/", "192.0.2.0/x", "host/24", "::/129",
                          "192.0.2.0/0024"})
    EXPECT_FALSE(InetNetwork::parse(bad)) << bad;
}

}  // namespace
}  // namespace dynmx
