// config_recipients_test.cpp: the recipient keys of [[client]] (`recipients`, `recipient_file`):
// values, errors with file:line:col and key path, the file checked by the programs that read it
// (dynmx-milter, dynmx-enqueue) with file:line, and their place in a reload plan.
#include <gtest/gtest.h>
#include <string>

#include "shared/config.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

constexpr const char* kPath = "/etc/dynmx/dynmx.toml";

std::string client(const std::string& extra) {
  return "[[client]]\nname = \"alpha\"\nhost = \"127.0.0.1\"\n"
         "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n"
         "domains = [\"alpha.example\", \".lists.example\"]\n" +
         extra;
}

std::string allErrors(const LoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += e.str() + "\n";
  return s;
}

TEST(ConfigRecipients, ReadsTheListLowerCased) {
  LoadResult r = parseConfig(client("recipients = [\"Bob@Alpha.Example\", \"@a.lists.example\"]\n"
                                    "recipient_file = \"/etc/dynmx/alpha.recipients\"\n"),
                             kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  const ClientConfig& c = r.config->clients[0];
  EXPECT_EQ(c.recipients, (std::vector<std::string>{"bob@alpha.example", "@a.lists.example"}));
  EXPECT_EQ(c.recipient_file, "/etc/dynmx/alpha.recipients");
  EXPECT_TRUE(c.hasRecipientList());
  LoadResult none = parseConfig(client(""), kPath);
  ASSERT_TRUE(none.config);
  EXPECT_FALSE(none.config->clients[0].hasRecipientList()) << "no list: every address accepted";
}

TEST(ConfigRecipients, BadValuesNameLineColumnAndKey) {
  struct Case {
    std::string extra;
    std::string error;
  };
  const Case cases[] = {
      {"recipients = []\n",
       "/etc/dynmx/dynmx.toml:6:14: client[0].recipients: expected a non-empty array of addresses"},
      {"recipients = \"bob@alpha.example\"\n",
       "/etc/dynmx/dynmx.toml:6:14: client[0].recipients: expected a non-empty array"},
      {"recipients = [\"bob@alpha.example\", \"bob\"]\n",
       "/etc/dynmx/dynmx.toml:6:36: client[0].recipients[1]: expected an address \"user@domain\" "
       "or a whole domain \"@domain\", got \"bob\""},
      {"recipients = [\"bob@beta.example\"]\n",
       "/etc/dynmx/dynmx.toml:6:15: client[0].recipients[0]: domain \"beta.example\" is not one "
       "of this client's domains"},
      {"recipients = [\"x@lists.example\"]\n",  // ".lists.example" is the names below it only
       "/etc/dynmx/dynmx.toml:6:15: client[0].recipients[0]: domain \"lists.example\" is not"},
      {"recipient_file = \"alpha.recipients\"\n",
       "/etc/dynmx/dynmx.toml:6:18: client[0].recipient_file: expected an absolute path"},
      {"recipent_file = \"/x\"\n",
       "/etc/dynmx/dynmx.toml:6:1: client[0].recipent_file: unknown key \"recipent_file\" in "
       "[[client]] (did you mean \"recipient_file\"?)"},
  };
  for (const Case& c : cases) {
    LoadResult r = parseConfig(client(c.extra), kPath);
    EXPECT_FALSE(r.config) << c.extra;
    EXPECT_NE(allErrors(r).find(c.error), std::string::npos) << c.extra << allErrors(r);
  }
}

TEST(ConfigRecipients, TheMilterAndEnqueueCheckTheFileWithItsLineNumbers) {
  test::TempDir tmp("dynmx-config-rcpt");
  std::string file = tmp / "alpha.recipients";
  test::writeFile(file, "bob@alpha.example\n# fine\nbob@beta.example\n");
  std::string text = client("recipient_file = \"" + file + "\"\n");
  for (ConfigRole role : {ConfigRole::Milter, ConfigRole::Enqueue}) {
    LoadResult r = parseConfig(text, kPath, role);
    EXPECT_FALSE(r.config);
    EXPECT_NE(allErrors(r).find("/etc/dynmx/dynmx.toml:6:18: client[0].recipient_file: " + file +
                                ":3: domain \"beta.example\" is not one of this client's domains"),
              std::string::npos)
        << allErrors(r);
  }
  // Other programs (dynmx-tunneld, dynmxctl) do not read the file.
  EXPECT_TRUE(parseConfig(text, kPath, ConfigRole::Any).config);
  LoadResult missing =
      parseConfig(client("recipient_file = \"" + tmp / "none" + "\"\n"), kPath, ConfigRole::Milter);
  EXPECT_NE(allErrors(missing).find(tmp / "none" + ": cannot open the recipient file: No such"),
            std::string::npos)
      << allErrors(missing);
  test::writeFile(file, "bob@alpha.example\n");
  EXPECT_TRUE(parseConfig(text, kPath, ConfigRole::Milter).config);
}

TEST(ConfigRecipients, AReloadTakesTheListsAtOnce) {
  LoadResult a = parseConfig(client("recipients = [\"bob@alpha.example\"]\n"), kPath);
  LoadResult b = parseConfig(client("recipients = [\"carol@alpha.example\"]\n"
                                    "recipient_file = \"/etc/dynmx/alpha.recipients\"\n"),
                             kPath);
  ASSERT_TRUE(a.config && b.config);
  ReloadPlan plan = planReload(*a.config, *b.config, ConfigRole::Milter);
  EXPECT_EQ(joinKeys(plan.taken), "client alpha: recipients, recipient_file");
  EXPECT_TRUE(plan.waiting.empty());
  EXPECT_EQ(plan.config.clients[0].recipients, std::vector<std::string>{"carol@alpha.example"});
}

TEST(ConfigVerify, DefaultsValuesAndErrors) {
  LoadResult d = parseConfig(client(""), kPath);
  ASSERT_TRUE(d.config) << allErrors(d);
  const ClientConfig& c0 = d.config->clients[0];
  EXPECT_FALSE(c0.verify_recipients);
  EXPECT_EQ(c0.verify_default, OnError::Accept);
  EXPECT_EQ(c0.verify_positive_ttl, Seconds(24 * 3600));
  EXPECT_EQ(c0.verify_negative_ttl, Seconds(1800));
  EXPECT_EQ(c0.verify_timeout, Seconds(5));
  LoadResult r = parseConfig(client("verify_recipients = true\nverify_default = \"tempfail\"\n"
                                    "verify_positive_ttl = \"7d\"\nverify_negative_ttl = \"1h\"\n"
                                    "verify_timeout = \"8s\"\n"),
                             kPath);
  ASSERT_TRUE(r.config) << allErrors(r);
  const ClientConfig& c = r.config->clients[0];
  EXPECT_TRUE(c.verify_recipients);
  EXPECT_EQ(c.verify_default, OnError::Tempfail);
  EXPECT_EQ(c.verify_positive_ttl, Seconds(7 * 86400));
  EXPECT_EQ(c.verify_negative_ttl, Seconds(3600));
  EXPECT_EQ(c.verify_timeout, Seconds(8));
  struct Case {
    std::string extra, error;
  };
  const Case cases[] = {
      {"verify_recipients = \"yes\"\n",
       "dynmx.toml:6:21: client[0].verify_recipients: expected true or false"},
      {"verify_default = \"reject\"\n",
       "dynmx.toml:6:18: client[0].verify_default: expected \"accept\" or \"tempfail\", got "
       "\"reject\""},
      {"verify_timeout = \"1m\"\n",
       "dynmx.toml:6:18: client[0].verify_timeout: expected at most \"30s\""},
      {"verify_negative_ttl = \"0s\"\n",
       "dynmx.toml:6:23: client[0].verify_negative_ttl: expected a duration of more than zero"},
      {"verify_positive_ttl = 3600\n",
       "dynmx.toml:6:23: client[0].verify_positive_ttl: expected a duration"},
  };
  for (const Case& k : cases) {
    LoadResult bad = parseConfig(client(k.extra), kPath);
    EXPECT_FALSE(bad.config) << k.extra;
    EXPECT_NE(allErrors(bad).find(k.error), std::string::npos) << k.extra << allErrors(bad);
  }
  ReloadPlan plan = planReload(*d.config, *r.config, ConfigRole::Tunneld);
  EXPECT_EQ(joinKeys(plan.taken),
            "client alpha: verify_recipients, verify_default, verify_timeout, "
            "verify_positive_ttl, verify_negative_ttl");
}

}  // namespace
}  // namespace dynmx
