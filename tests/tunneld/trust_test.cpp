// trust_test.cpp: dynmxctl trust's known_hosts rewrite (control/trust.hpp) from a table of files:
// which lines go (plain, comma list, hashed, [host]:port), which stay (other hosts, wildcards,
// @revoked, @cert-authority, comments, lines that do not parse), the new line (hashed when a
// hashed one went), a key @revoked for the name refused; the fingerprint form; and the crash-safe
// file replacement keeping mode and owner.
#include "tunneld/control/trust.hpp"

#include <sys/stat.h>

#include <gtest/gtest.h>
#include <string>

#include "tests/harness/harness.hpp"
#include "tunneld/ssh/host_keys.hpp"

using namespace dynmx;
using namespace dynmx::tunneld;

namespace {

// An ed25519 key blob: string "ssh-ed25519", string of 32 octets `fill`.
std::string ed25519Blob(char fill) {
  std::string b;
  auto str = [&](const std::string& s) {
    uint32_t n = static_cast<uint32_t>(s.size());
    for (int i = 3; i >= 0; --i) b += static_cast<char>((n >> (8 * i)) & 0xff);
    b += s;
  };
  str("ssh-ed25519");
  str(std::string(32, fill));
  return b;
}

std::string line(const std::string& name, const std::string& blob) {
  return name + " ssh-ed25519 " + base64Encode(blob);
}

std::string hashedName(const std::string& salt, const std::string& name) {
  auto mac = hmacSha1(salt, name);
  return "|1|" + base64Encode(salt) + "|" +
         base64Encode(std::string(reinterpret_cast<const char*>(mac.data()), mac.size()));
}

const std::string kName = "[mx.home.test]:2222";
const std::string kSalt(20, 's');

}  // namespace

TEST(Trust, KnownHostsRewriteTable) {
  std::string oldk = ed25519Blob('o'), newk = ed25519Blob('n'), other = ed25519Blob('x');
  struct Case {
    const char* what;
    std::string in;
    std::string kept;  // the lines that stay, in order
    size_t removed;
    bool hashed;
    size_t wildcards;
  } cases[] = {
      {"empty file", "", "", 0, false, 0},
      {"plain entry, other hosts and comments stay",
       "# comment\n" + line(kName, oldk) + "\n" + line("mx.other.test", other) + "\n\n",
       "# comment\n" + line("mx.other.test", other) + "\n\n", 1, false, 0},
      {"comma list with the address goes whole", line(kName + ",[192.0.2.7]:2222", oldk) + "\n", "",
       1, false, 0},
      {"the bare name is another entry (port 22)", line("mx.home.test", other) + "\n",
       line("mx.home.test", other) + "\n", 0, false, 0},
      {"hashed entry goes, new one hashed",
       line(hashedName("0123456789abcdefghij", kName), oldk) + "\n" +
           line(hashedName("0123456789abcdefghij", "mx.other.test"), other) + "\n",
       line(hashedName("0123456789abcdefghij", "mx.other.test"), other) + "\n", 1, true, 0},
      {"wildcard stays", line("[*.home.test]:2222", oldk) + "\n",
       line("[*.home.test]:2222", oldk) + "\n", 0, false, 1},
      {"negated stays", line("!" + kName + ",*", oldk) + "\n",
       line("!" + kName + ",*", oldk) + "\n", 0, false, 0},
      {"@revoked of another key and @cert-authority stay",
       "@revoked " + line(kName, other) + "\n@cert-authority " + line(kName, other) + "\n" +
           line(kName, oldk) + "\n",
       "@revoked " + line(kName, other) + "\n@cert-authority " + line(kName, other) + "\n", 1,
       false, 0},
      {"a line that does not parse stays", "garbage here\n" + line(kName, oldk), "garbage here\n",
       1, false, 0},
  };
  for (auto& c : cases) {
    auto e = replaceKnownHost(c.in, kName, "ssh-ed25519", newk, kSalt, "kh");
    ASSERT_TRUE(e.ok()) << c.what << ": " << e.error().message;
    std::string added = line(c.hashed ? hashedName(kSalt, kName) : kName, newk) + "\n";
    EXPECT_EQ(e->text, c.kept + added) << c.what;
    EXPECT_EQ(e->removed, c.removed) << c.what;
    EXPECT_EQ(e->hashed, c.hashed) << c.what;
    EXPECT_EQ(e->wildcards.size(), c.wildcards) << c.what;
    // What the daemon reads back: the new key verifies for the name, the old one no longer.
    auto v = HostKeyVerifier::fromKnownHostsText(e->text, "kh", "mx.home.test", 2222, nullptr);
    EXPECT_EQ(v.verify(newk).verdict, HostKeyVerdict::Match) << c.what;
    if (c.wildcards == 0) {
      EXPECT_NE(v.verify(oldk).verdict, HostKeyVerdict::Match) << c.what;
    }
  }
}

TEST(Trust, KeyRevokedForTheNameIsRefused) {
  std::string newk = ed25519Blob('n');
  std::string in = "# x\n@revoked " + line(kName, newk) + "\n";
  auto e = replaceKnownHost(in, kName, "ssh-ed25519", newk, kSalt, "/etc/dynmx/known_hosts");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().message,
            "/etc/dynmx/known_hosts:2: that key is @revoked for " + kName + "; nothing changed");
}

TEST(Trust, FingerprintForm) {
  EXPECT_TRUE(validFingerprint("SHA256:OgZNzkHxdWGcFi43sTKh1j6WA8ip796uxth86P80LmY"));
  EXPECT_TRUE(validFingerprint(fingerprint(ed25519Blob('a'))));
  for (const char* bad : {"", "SHA256:", "OgZNzkHxdWGcFi43sTKh1j6WA8ip796uxth86P80LmY",
                          "SHA256:OgZNzkHxdWGcFi43sTKh1j6WA8ip796uxth86P80LmY=",
                          "SHA256:OgZNzkHxdWGcFi43sTKh1j6WA8ip796uxth86P80Lm",
                          "sha256:OgZNzkHxdWGcFi43sTKh1j6WA8ip796uxth86P80LmY", "MD5:12:34",
                          "SHA256:OgZNzkHxdWGcFi43sTKh1j6WA8ip796uxth86P80L-Y"})
    EXPECT_FALSE(validFingerprint(bad)) << bad;
}

TEST(Trust, ReplaceFileKeepsModeAndLeavesNoTemporary) {
  dynmx::test::TempDir dir("dynmx-trust");
  std::string path = dir / "known_hosts";
  ASSERT_TRUE(replaceFile(path, "one\n").ok());
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  ASSERT_EQ(chmod(path.c_str(), 0640), 0);
  ASSERT_TRUE(replaceFile(path, "two\n").ok());
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(dynmx::test::readFile(path), "two\n");
  EXPECT_EQ(dynmx::test::listDir(dir.path()).size(), 1u);
  // A leftover temporary file (an interrupted run) is not overwritten blindly: refused, named.
  dynmx::test::writeFile(path + ".dynmxctl-tmp", "x");
  auto st2 = replaceFile(path, "three\n");
  ASSERT_FALSE(st2.ok());
  EXPECT_NE(st2.error().message.find(path + ".dynmxctl-tmp"), std::string::npos);
  EXPECT_EQ(dynmx::test::readFile(path), "two\n");
}
