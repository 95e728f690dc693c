// host_keys_test.cpp: known_hosts parsing and matching, fingerprints, pins, and the other pure
// policies of the SSH layer (reconnect backoff, admin requests), from tables and from keys made
// by the real ssh-keygen.
#include "tunneld/ssh/host_keys.hpp"

#include <gtest/gtest.h>

#include "tests/harness/test_sshd.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/ssh/ssh_client.hpp"

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

TEST(ReconnectDelay, Table) {
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  struct Case {
    int min, max;
    uint32_t failures;
    double u;
    int64_t want_ms;
  } cases[] = {
      {5, 600, 1, 0.0, 5000},    {5, 600, 1, 0.99, 5000},       // first failure: the floor
      {5, 600, 2, 0.0, 5000},    {5, 600, 2, 0.5, 7500},        // [5, 10]
      {5, 600, 3, 0.5, 12500},   {5, 600, 4, 0.999999, 39999},  // [5, 20], [5, 40]
      {5, 600, 10, 0.5, 302500}, {5, 600, 50, 0.5, 302500},     // capped at 600
      {5, 600, 1000, 0.0, 5000}, {10, 5, 3, 0.5, 10000},        // max below min: min
      {1, 2, 5, 1.5, 1999},      {1, 2, 5, -1.0, 1000},         // u clamped into [0,1)
  };
  for (auto& c : cases) {
    EXPECT_EQ(reconnectDelay(seconds(c.min), seconds(c.max), c.failures, c.u).count(), c.want_ms)
        << c.min << " " << c.max << " " << c.failures << " " << c.u;
  }
}

TEST(ControlRequest, ParserTable) {
  struct Case {
    const char* line;
    bool ok;
    ControlRequest::Command cmd;
    const char* arg;
  } cases[] = {
      {"status", true, ControlRequest::Command::Status, ""},
      {"status\r\n", true, ControlRequest::Command::Status, ""},
      {"  queue  ", true, ControlRequest::Command::Queue, ""},
      {"flush", true, ControlRequest::Command::Flush, ""},
      {"flush alpha", true, ControlRequest::Command::Flush, "alpha"},
      {"hold 0123456789abcdef", true, ControlRequest::Command::Hold, "0123456789abcdef"},
      {"release X1", true, ControlRequest::Command::Release, "X1"},
      {"reload", true, ControlRequest::Command::Reload, ""},
      {"", false, {}, ""},
      {"status now", false, {}, ""},
      {"hold", false, {}, ""},
      {"hold a b", false, {}, ""},
      {"flush a b", false, {}, ""},
      {"STATUS", false, {}, ""},
      {"shutdown", false, {}, ""},
      {"hold a\x01", false, {}, ""},
  };
  for (auto& c : cases) {
    auto r = parseControlRequest(c.line);
    EXPECT_EQ(r.ok(), c.ok) << c.line;
    if (r.ok() && c.ok) {
      EXPECT_EQ(r->command, c.cmd) << c.line;
      EXPECT_EQ(r->arg, c.arg) << c.line;
    }
  }
  EXPECT_FALSE(parseControlRequest(std::string(kMaxRequest + 1, 'a')).ok());
}

TEST(ControlReply, FramingRoundTrips) {
  ControlReply r;
  r.lines = {"client a: connected", ".hidden", "", ".", "x\ny"};
  auto text = formatControlReply(r);
  auto back = parseControlReply(text);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->ok);
  EXPECT_EQ(back->lines,
            (std::vector<std::string>{"client a: connected", ".hidden", "", ".", "x", "y"}));
  ControlReply e;
  e.ok = false;
  e.error = "no client named z";
  auto eb = parseControlReply(formatControlReply(e));
  ASSERT_TRUE(eb.ok());
  EXPECT_FALSE(eb->ok);
  EXPECT_EQ(eb->error, "no client named z");
  EXPECT_FALSE(parseControlReply("OK\nline\n").ok());
  EXPECT_FALSE(parseControlReply("HELLO\n.\n").ok());
}

TEST(PrivateKeyFile, GroupOrOtherReadableIsRefusedNamingFileAndMode) {
  TempDir dir;
  KeyPair k = generateKey(dir / "id");
  EXPECT_TRUE(checkPrivateKeyFile(k.private_path).ok());
  chmod(k.private_path.c_str(), 0640);
  auto st = checkPrivateKeyFile(k.private_path);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(k.private_path), std::string::npos);
  EXPECT_NE(st.error().message.find("0640"), std::string::npos);
  EXPECT_FALSE(checkPrivateKeyFile(dir / "missing").ok());
}
