// routing_test.cpp: recipient address -> client, from a table of addresses.
//
// The router is a pure function of the configured domains, so every rule (exact, subdomain, case,
// trailing dot, source route, quoted local part, most specific claim) is one row of a table.
#include "shared/routing.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "shared/config.hpp"

namespace dynmx {
namespace {

ClientConfig makeClient(const std::string& name, std::vector<std::string> domains) {
  ClientConfig c;
  c.name = name;
  c.host = name + ".dyn.example";
  c.domains = std::move(domains);
  return c;
}

TEST(BareAddress, StripsBracketsAndSourceRoutes) {
  struct Case {
    const char* in;
    const char* out;
  } cases[] = {
      {"<user@example.org>", "user@example.org"},
      {"user@example.org", "user@example.org"},
      {"<>", ""},
      {"", ""},
      {"<@a.example,@b.example:u@d.example>", "u@d.example"},
      {"<@a.example:u@d.example>", "u@d.example"},
      {"@a.example:u@d.example", "u@d.example"},
      {"<\"a@b\"@c.org>", "\"a@b\"@c.org"},
      {"<\"a:b\"@c.org>", "\"a:b\"@c.org"},
      {"  <user@example.org>  ", "user@example.org"},
      {"<postmaster>", "postmaster"},
  };
  for (const auto& c : cases) EXPECT_EQ(bareAddress(c.in), c.out) << c.in;
}

TEST(AddressDomain, LowerCasedAfterTheLastAt) {
  struct Case {
    const char* in;
    const char* domain;
  } cases[] = {
      {"<a@B.Org.>", "b.org"},
      {"user@Example.ORG", "example.org"},
      {"\"a@b\"@c.org", "c.org"},
      {"<\"a@b\"@C.Org>", "c.org"},
      {"<@relay.example:u@Dest.Example>", "dest.example"},
      {"postmaster", ""},
      {"<postmaster>", ""},
      {"user@", ""},
      {"<user@>", ""},
      {"user@.", ""},
      {"<>", ""},
      {"", ""},
      {"user@[192.0.2.1]", "[192.0.2.1]"},
  };
  for (const auto& c : cases) EXPECT_EQ(addressDomain(c.in), c.domain) << c.in;
}

TEST(Router, RoutesFromATable) {
  std::vector<ClientConfig> clients = {
      makeClient("home", {"example.org", ".example.org"}),
      makeClient("lab", {".lab.example.org"}),
      makeClient("office", {"office.example.com", "Upper.Example.NET."}),
      makeClient("exact-only", {"b.example.org"}),
      makeClient("deep", {".c.b.example.org"}),
  };
  Router router(clients);
  struct Case {
    const char* address;
    std::optional<const char*> client;  // nullopt: no client
  } cases[] = {
      // exact and subdomain claims
      {"<user@example.org>", "home"},
      {"user@a.example.org", "home"},
      {"user@a.b.c.d.example.org", "home"},
      {"user@office.example.com", "office"},
      {"user@sub.office.example.com", std::nullopt},  // an exact claim covers no subdomain
      {"user@example.com", std::nullopt},             // nor its parent
      // most specific wins
      {"user@lab.example.org", "home"},  // ".lab.example.org" does not claim lab.example.org
      {"user@pc.lab.example.org", "lab"},
      {"user@x.pc.lab.example.org", "lab"},
      {"user@b.example.org", "exact-only"},  // exact beats home's ".example.org"
      {"user@x.b.example.org", "home"},      // exact-only claims no subdomain; home's suffix does
      {"user@x.c.b.example.org", "deep"},
      {"user@c.b.example.org", "home"},
      // case and trailing dot, on both sides
      {"<User@EXAMPLE.Org>", "home"},
      {"user@example.org.", "home"},
      {"user@PC.Lab.Example.Org.", "lab"},
      {"user@upper.example.net", "office"},
      {"user@UPPER.EXAMPLE.NET.", "office"},
      // source route and quoted local part
      {"<@mx.example.net,@relay.example:user@pc.lab.example.org>", "lab"},
      {"<@office.example.com:user@elsewhere.example>", std::nullopt},
      {"<\"a@office.example.com\"@example.org>", "home"},
      {"\"x@example.org\"@nobody.example", std::nullopt},
      // no domain, or someone else's
      {"postmaster", std::nullopt},
      {"<>", std::nullopt},
      {"user@", std::nullopt},
      {"user@example.net", std::nullopt},
      {"user@org", std::nullopt},
      {"user@notexample.org", std::nullopt},
      {"user@example.org.evil.example", std::nullopt},
      {"user@.example.org", std::nullopt},
  };
  for (const auto& c : cases) {
    auto got = router.route(c.address);
    if (!c.client) {
      EXPECT_FALSE(got.has_value()) << c.address << " went to " << clients[*got].name;
    } else {
      ASSERT_TRUE(got.has_value()) << c.address;
      EXPECT_EQ(router.clientName(*got), *c.client) << c.address;
    }
  }
}

TEST(Router, EmptyRouterRoutesNothing) {
  Router router;
  EXPECT_FALSE(router.route("user@example.org").has_value());
  Router none(std::vector<ClientConfig>{});
  EXPECT_FALSE(none.route("user@example.org").has_value());
}

TEST(Router, IndexesAreThoseOfTheClientsVector) {
  std::vector<ClientConfig> clients = {makeClient("a", {"a.example"}),
                                       makeClient("b", {"b.example"})};
  Router router(clients);
  EXPECT_EQ(router.route("x@b.example"), std::optional<size_t>(1));
  EXPECT_EQ(router.route("x@a.example"), std::optional<size_t>(0));
  EXPECT_EQ(router.clientName(1), "b");
}

TEST(Router, BuiltFromALoadedConfiguration) {
  auto r = parseConfig(R"([[client]]
name = "home"
host = "home.dyn.example"
domains = ["Example.ORG", ".example.org"]
host_key = "SHA256:OAVr3k7KEr7rtB4zvmG8/y2H4AA6uge9uwDz+eJAZak"
)",
                       "/etc/dynmx/dynmx.toml");
  ASSERT_TRUE(r.config.has_value());
  Router router(r.config->clients);
  EXPECT_EQ(router.route("<u@EXAMPLE.org>"), std::optional<size_t>(0));
  EXPECT_EQ(router.route("<u@www.example.org>"), std::optional<size_t>(0));
  EXPECT_FALSE(router.route("<u@example.com>").has_value());
}

}  // namespace
}  // namespace dynmx
