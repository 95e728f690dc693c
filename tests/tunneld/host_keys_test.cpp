// host_keys_test.cpp: known_hosts parsing and matching, fingerprints, pins, and the libcrypto
// digests, HMAC and base64 under them: from tables, from published test vectors, and against the
// real OpenSSH tools run here in a temp dir (keys made by ssh-keygen, fingerprints printed by
// `ssh-keygen -lf`, files hashed by `ssh-keygen -H`, entries looked up by `ssh-keygen -F`).
#include "tunneld/ssh/host_keys.hpp"

#include <gtest/gtest.h>
#include <sstream>

#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::tunneld;
using namespace dynmx::test;

namespace {

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

std::string blobOf(const KeyPair& k) {
  auto sp = k.public_line.find(' ');
  return *base64Decode(k.public_line.substr(sp + 1));
}

// What `ssh-keygen -l -E sha256 -f KEY.pub` prints as the fingerprint.
std::string keygenFingerprint(const std::string& pub_path) {
  std::string out;
  runCommand({"/usr/bin/ssh-keygen", "-l", "-E", "sha256", "-f", pub_path}, &out);
  auto a = out.find("SHA256:");
  auto b = out.find(' ', a);
  return out.substr(a, b - a);
}

}  // namespace

TEST(Digest, Sha256KnownVectors) {
  auto a = sha256("abc");
  EXPECT_EQ(hex(a.data(), a.size()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto e = sha256("");
  EXPECT_EQ(hex(e.data(), e.size()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  auto l = sha256(std::string(1000, 'a'));
  EXPECT_EQ(hex(l.data(), l.size()),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

TEST(Digest, Sha1AndHmacKnownVectors) {
  auto s = sha1("abc");
  EXPECT_EQ(hex(s.data(), s.size()), "a9993e364706816aba3e25717850c26c9cd0d89d");
  // RFC 2202 test case 2.
  auto h = hmacSha1("Jefe", "what do ya want for nothing?");
  EXPECT_EQ(hex(h.data(), h.size()), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
}

TEST(Base64, RoundTripsAndRejectsGarbage) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    EXPECT_EQ(*base64Decode(base64Encode(s)), s);
    EXPECT_EQ(*base64Decode(base64Encode(s, false)), s);
  }
  EXPECT_EQ(base64Encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64Encode("fo", false), "Zm8");
  EXPECT_FALSE(base64Decode("Zm9v!"));
  EXPECT_FALSE(base64Decode("Z"));
}

TEST(Fingerprint, MatchesSshKeygen) {
  TempDir dir;
  for (std::string type : {"ed25519", "ecdsa"}) {
    KeyPair k = generateKey(dir / ("k_" + type), type);
    EXPECT_EQ(fingerprint(blobOf(k)), keygenFingerprint(k.private_path + ".pub")) << type;
  }
}

TEST(KnownHosts, LookupName) {
  EXPECT_EQ(knownHostLookupName("mx.example.org", 22), "mx.example.org");
  EXPECT_EQ(knownHostLookupName("mx.example.org", 2222), "[mx.example.org]:2222");
}

TEST(KnownHosts, PatternTable) {
  struct Case {
    const char* patterns;
    const char* name;
    bool match;
  } cases[] = {
      {"a.example.org", "a.example.org", true},
      {"A.Example.ORG", "a.example.org", true},
      {"a.example.org", "b.example.org", false},
      {"b.example.org,a.example.org", "a.example.org", true},
      {"*.example.org", "a.example.org", true},
      {"*.example.org,!bad.example.org", "bad.example.org", false},
      {"?.example.org", "ab.example.org", false},
      {"[a.example.org]:2222", "[a.example.org]:2222", true},
      {"a.example.org", "[a.example.org]:2222", false},
      {"", "a", false},
  };
  for (auto& c : cases)
    EXPECT_EQ(knownHostPatternMatches(c.patterns, c.name), c.match) << c.patterns << " " << c.name;
}

TEST(KnownHosts, HashedEntriesFromSshKeygenMatch) {
  TempDir dir;
  KeyPair k = generateKey(dir / "hk");
  std::string kh = dir / "known_hosts";
  writeFile(kh, "[127.0.0.1]:2200 " + k.public_line + "\nmx.example.org " + k.public_line + "\n");
  ASSERT_EQ(runCommand({"/usr/bin/ssh-keygen", "-H", "-f", kh}), 0);
  std::string text = readFile(kh);
  ASSERT_EQ(text.find("127.0.0.1"), std::string::npos) << "ssh-keygen -H did not hash: " << text;
  std::vector<std::string> warnings;
  auto v = HostKeyVerifier::fromKnownHostsText(text, kh, "127.0.0.1", 2200, &warnings);
  EXPECT_TRUE(warnings.empty());
  EXPECT_EQ(v.verify(blobOf(k)).verdict, HostKeyVerdict::Match);
  auto other = HostKeyVerifier::fromKnownHostsText(text, kh, "127.0.0.1", 2201, &warnings);
  EXPECT_EQ(other.verify(blobOf(k)).verdict, HostKeyVerdict::Unknown);
  auto named = HostKeyVerifier::fromKnownHostsText(text, kh, "mx.example.org", 22, &warnings);
  EXPECT_EQ(named.verify(blobOf(k)).verdict, HostKeyVerdict::Match);
}

TEST(KnownHosts, BadLinesAreSkippedWithWarningsAndTheRestCounts) {
  TempDir dir;
  KeyPair good = generateKey(dir / "good");
  std::string text =
      "# comment\n\nthis line is garbage\nhost ssh-ed25519 !!!notbase64\n"
      "host ssh-rsa " +
      good.public_line.substr(good.public_line.find(' ') + 1) + "\n@cert-authority *.example.org " +
      good.public_line + "\nhost " + good.public_line + "\n";
  std::vector<std::string> warnings;
  auto v =
      HostKeyVerifier::fromKnownHostsText(text, "/etc/dynmx/known_hosts", "host", 22, &warnings);
  ASSERT_EQ(warnings.size(), 4u);
  EXPECT_EQ(warnings[0].rfind("/etc/dynmx/known_hosts:3: ", 0), 0u) << warnings[0];
  EXPECT_NE(warnings[1].find(":4: key is not valid base64"), std::string::npos) << warnings[1];
  EXPECT_NE(warnings[2].find(":5: key type ssh-rsa does not match"), std::string::npos);
  EXPECT_NE(warnings[3].find(":6: @cert-authority"), std::string::npos);
  auto r = v.verify(blobOf(good));
  EXPECT_EQ(r.verdict, HostKeyVerdict::Match);
  EXPECT_NE(r.detail.find("line 7"), std::string::npos);
}

TEST(KnownHosts, MismatchNamesBothFingerprintsAndRestrictsTheType) {
  TempDir dir;
  KeyPair stored = generateKey(dir / "stored");
  KeyPair other = generateKey(dir / "other");
  KeyPair ecdsa = generateKey(dir / "ecdsa", "ecdsa");
  auto v = HostKeyVerifier::fromKnownHostsText("host " + stored.public_line + "\n", "kh", "host",
                                               22, nullptr);
  EXPECT_EQ(v.acceptedTypes(), std::vector<std::string>{"ssh-ed25519"});
  EXPECT_EQ(v.methodPref(), "ssh-ed25519");
  auto r = v.verify(blobOf(other));
  EXPECT_EQ(r.verdict, HostKeyVerdict::Mismatch);
  EXPECT_EQ(r.presented_fp, fingerprint(blobOf(other)));
  EXPECT_EQ(r.expected_fp, fingerprint(blobOf(stored)));
  EXPECT_EQ(v.verify(blobOf(ecdsa)).verdict, HostKeyVerdict::Mismatch);
  // Both types stored: both offered, ed25519 first.
  auto both = HostKeyVerifier::fromKnownHostsText(
      "host " + ecdsa.public_line + "\nhost " + stored.public_line + "\n", "kh", "host", 22,
      nullptr);
  EXPECT_EQ(both.methodPref(), "ssh-ed25519,ecdsa-sha2-nistp256");
}

TEST(KnownHosts, RevokedKeyIsRefusedEvenIfAlsoListed) {
  TempDir dir;
  KeyPair k = generateKey(dir / "k");
  auto v = HostKeyVerifier::fromKnownHostsText(
      "@revoked * " + k.public_line + "\nhost " + k.public_line + "\n", "kh", "host", 22, nullptr);
  auto r = v.verify(blobOf(k));
  EXPECT_EQ(r.verdict, HostKeyVerdict::Mismatch);
  EXPECT_NE(r.detail.find("@revoked"), std::string::npos);
}

TEST(KnownHosts, UnknownHostIsNeverTrusted) {
  TempDir dir;
  KeyPair k = generateKey(dir / "k");
  auto v = HostKeyVerifier::fromKnownHostsText("elsewhere " + k.public_line + "\n", "kh", "host",
                                               22, nullptr);
  EXPECT_TRUE(v.acceptedTypes().empty());
  EXPECT_EQ(v.verify(blobOf(k)).verdict, HostKeyVerdict::Unknown);
}

TEST(Pin, LineAndFingerprintForms) {
  TempDir dir;
  KeyPair k = generateKey(dir / "k");
  KeyPair o = generateKey(dir / "o");
  std::string why;
  auto line = HostKeyVerifier::fromPin(k.public_line, &why);
  EXPECT_TRUE(line.usable());
  EXPECT_EQ(line.verify(blobOf(k)).verdict, HostKeyVerdict::Match);
  EXPECT_EQ(line.verify(blobOf(o)).verdict, HostKeyVerdict::Mismatch);
  EXPECT_EQ(line.methodPref(), "ssh-ed25519");
  auto fp = HostKeyVerifier::fromPin(fingerprint(blobOf(k)), &why);
  EXPECT_EQ(fp.verify(blobOf(k)).verdict, HostKeyVerdict::Match);
  auto r = fp.verify(blobOf(o));
  EXPECT_EQ(r.verdict, HostKeyVerdict::Mismatch);
  EXPECT_EQ(r.expected_fp, fingerprint(blobOf(k)));
  auto bad = HostKeyVerifier::fromPin("ssh-ed25519 notbase64!", &why);
  EXPECT_FALSE(bad.usable());
  EXPECT_NE(bad.verify(blobOf(k)).verdict, HostKeyVerdict::Match);
}

// ---------------------------------------------------------------------------------------------
// Against the OpenSSH tools: what we compute is what they print and what they find.

namespace {

// The fingerprints in `ssh-keygen -lf FILE` output, one per key line ("256 SHA256:... comment
// (ED25519)"), in order. The default hash of ssh-keygen is SHA-256.
std::vector<std::string> keygenListFingerprints(const std::string& file) {
  std::string out;
  EXPECT_EQ(runCommand({"/usr/bin/ssh-keygen", "-lf", file}, &out), 0) << file;
  std::vector<std::string> fps;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::string bits, fp;
    fields >> bits >> fp;
    fps.push_back(fp);
  }
  return fps;
}

// A "|1|salt|hash" host field made with our HMAC-SHA1 and base64, as `ssh-keygen -H` would.
std::string hashedHostField(std::string_view salt, std::string_view name) {
  auto mac = hmacSha1(salt, name);
  return "|1|" + base64Encode(salt) + "|" +
         base64Encode(std::string_view(reinterpret_cast<const char*>(mac.data()), mac.size()));
}

}  // namespace

TEST(Fingerprint, HostKeyFingerprintIsWhatSshKeygenLfPrints) {
  TempDir dir;
  KeyPair k = generateKey(dir / "ssh_host_ed25519_key");
  std::string ours = fingerprint(blobOf(k));
  ASSERT_EQ(ours.rfind("SHA256:", 0), 0u) << ours;
  EXPECT_EQ(ours.size(), 7u + 43u) << ours;  // 32 bytes, base64 without padding
  // On the private key file itself, as an administrator pins it from the server.
  EXPECT_EQ(keygenListFingerprints(k.private_path), std::vector<std::string>{ours});
  EXPECT_EQ(keygenListFingerprints(k.private_path + ".pub"), std::vector<std::string>{ours});
}

TEST(Fingerprint, KnownHostsFingerprintsAreWhatSshKeygenLfPrints) {
  TempDir dir;
  KeyPair ed = generateKey(dir / "ed");
  KeyPair ec = generateKey(dir / "ec", "ecdsa");
  std::string kh = dir / "known_hosts";
  writeFile(kh, "mx.example.org " + ed.public_line + "\nmx.example.org " + ec.public_line + "\n");
  auto v = HostKeyVerifier::fromKnownHostsText(readFile(kh), kh, "mx.example.org", 22, nullptr);
  EXPECT_EQ(v.expectedFingerprints(), keygenListFingerprints(kh));
}

TEST(KnownHosts, FileHashedBySshKeygenMatchesOnlyTheRightHost) {
  TempDir dir;
  KeyPair named = generateKey(dir / "named");
  KeyPair ported = generateKey(dir / "ported");
  std::string kh = dir / "known_hosts";
  writeFile(kh, "mx.example.org " + named.public_line + "\n[192.0.2.7]:2200 " + ported.public_line +
                    "\n");
  ASSERT_EQ(runCommand({"/usr/bin/ssh-keygen", "-q", "-H", "-f", kh}), 0);
  std::string text = readFile(kh);
  ASSERT_EQ(text.find("mx.example.org"), std::string::npos) << text;
  ASSERT_EQ(text.find("192.0.2.7"), std::string::npos) << text;

  // Line by line: each hashed field matches its own name and no other.
  std::vector<std::string> fields;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::string why;
    auto l = parseKnownHostLine(line, &why);
    ASSERT_TRUE(l && !l->type.empty()) << line << ": " << why;
    ASSERT_EQ(l->patterns.rfind("|1|", 0), 0u) << l->patterns;
    fields.push_back(l->patterns);
  }
  ASSERT_EQ(fields.size(), 2u);
  EXPECT_TRUE(knownHostPatternMatches(fields[0], "mx.example.org"));
  EXPECT_FALSE(knownHostPatternMatches(fields[0], "mx.example.com"));
  EXPECT_FALSE(knownHostPatternMatches(fields[0], "[mx.example.org]:2200"));
  EXPECT_FALSE(knownHostPatternMatches(fields[0], "[192.0.2.7]:2200"));
  EXPECT_TRUE(knownHostPatternMatches(fields[1], "[192.0.2.7]:2200"));
  EXPECT_FALSE(knownHostPatternMatches(fields[1], "192.0.2.7"));
  EXPECT_FALSE(knownHostPatternMatches(fields[1], "[192.0.2.7]:2201"));
  EXPECT_FALSE(knownHostPatternMatches(fields[1], "[192.0.2.8]:2200"));

  // The whole file: each host gets its own key, another host gets none.
  std::vector<std::string> warnings;
  auto v = HostKeyVerifier::fromKnownHostsText(text, kh, "mx.example.org", 22, &warnings);
  EXPECT_EQ(v.verify(blobOf(named)).verdict, HostKeyVerdict::Match);
  EXPECT_EQ(v.verify(blobOf(ported)).verdict, HostKeyVerdict::Mismatch);
  auto p = HostKeyVerifier::fromKnownHostsText(text, kh, "192.0.2.7", 2200, &warnings);
  EXPECT_EQ(p.verify(blobOf(ported)).verdict, HostKeyVerdict::Match);
  EXPECT_EQ(p.verify(blobOf(named)).verdict, HostKeyVerdict::Mismatch);
  for (auto [host, port] : {std::pair<const char*, uint16_t>{"192.0.2.7", 22},
                            {"192.0.2.7", 2201},
                            {"mx.example.com", 22},
                            {"mx.example.org", 2200}}) {
    auto o = HostKeyVerifier::fromKnownHostsText(text, kh, host, port, &warnings);
    EXPECT_EQ(o.verify(blobOf(named)).verdict, HostKeyVerdict::Unknown) << host << ":" << port;
    EXPECT_EQ(o.verify(blobOf(ported)).verdict, HostKeyVerdict::Unknown) << host << ":" << port;
  }
  EXPECT_TRUE(warnings.empty());
}

TEST(KnownHosts, EntriesWeHashAreFoundBySshKeygenF) {
  TempDir dir;
  KeyPair k = generateKey(dir / "k");
  std::string kh = dir / "known_hosts";
  // Salts of 20 bytes, as OpenSSH wants them, with bytes that base64 turns into '+' and '/'.
  std::string salt = {'\xfb', '\xff', '\xbf', '\x00', '\x10', 'S', 'a', 'l', 't', '\x3e',
                      '\xfe', '\x01', '\x80', '\x7f', 'x',    'y', 'z', '0', '1', '\x3f'};
  writeFile(kh, hashedHostField(salt, "mx.example.org") + " " + k.public_line + "\n" +
                    hashedHostField(std::string(salt.rbegin(), salt.rend()), "[192.0.2.7]:2200") +
                    " " + k.public_line + "\n");
  auto found = [&](const std::string& name) {
    std::string out;
    int rc = runCommand({"/usr/bin/ssh-keygen", "-F", name, "-f", kh}, &out);
    return rc == 0 && out.find(k.public_line) != std::string::npos;
  };
  EXPECT_TRUE(found("mx.example.org"));
  EXPECT_TRUE(found("[192.0.2.7]:2200"));
  EXPECT_FALSE(found("mx.example.com"));
  EXPECT_FALSE(found("192.0.2.7"));
  EXPECT_FALSE(found("[192.0.2.7]:2201"));
}
