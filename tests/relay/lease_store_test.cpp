// lease_store_test.cpp: the lease file's promises: what is saved is read back; expired leases are
// dropped; a torn or damaged file grants nothing and is moved aside; a crash or an error at any
// step of a save leaves the previous file or the new one, whole.
#include "tunneld/relay/lease_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "shared/log.hpp"
#include "tests/harness/fake_fs.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx::tunneld {
namespace {

using test::FakeFs;
using test::listDir;
using test::TempDir;

namespace fs = std::filesystem;

constexpr int64_t kNow = 1'795'000'000;

InetAddr addr(const char* text) {
  return *InetAddr::parse(text);
}


std::string readFile(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void writeFile(const std::string& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
}

LeaseSnapshot sample() {
  LeaseSnapshot s;
  s.leases = {
      {"home", addr("203.0.113.7"), LeaseSource::Tunnel, kNow - 300, kNow + 120, false},
      {"home", addr("2001:db8::7"), LeaseSource::Checkin, kNow - 60, kNow + 1140, false},
      {"office.lan", addr("192.0.2.9"), LeaseSource::Checkin, kNow - 10, kNow + 1190, false},
  };
  s.holds = {{addr("198.51.100.1"), kNow + 3000}};
  return s;
}

LeaseSnapshot other() {
  LeaseSnapshot s;
  s.leases = {{"home", addr("203.0.113.9"), LeaseSource::Checkin, kNow, kNow + 1200, false}};
  return s;
}

TEST(LeaseFile, FormatIsTheDocumentedOne) {
  EXPECT_EQ(
      formatLeaseFile(sample()),
      "dynmx-leases 1\n"
      "lease home 203.0.113.7 tunnel 1794999700 1795000120\n"
      "lease home 2001:db8::7 checkin 1794999940 1795001140\n"
      "lease office.lan 192.0.2.9 checkin 1794999990 1795001190\n"
      "hold 198.51.100.1 1795003000\n"
      "end 4 " +
          [] {
            std::string body = formatLeaseFile(sample());
            return body.substr(body.rfind(' ') + 1, 8);
          }() +
          "\n");
  std::string f = formatLeaseFile(sample());
  std::string body = f.substr(0, f.find("end "));
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", crc32c(0, body.data(), body.size()));
  EXPECT_EQ(f.substr(f.size() - 9, 8), crc);
  EXPECT_EQ(
      formatLeaseFile({}), "dynmx-leases 1\nend 0 " + [] {
        std::string v = "dynmx-leases 1\n";
        char b[9];
        std::snprintf(b, sizeof b, "%08x", crc32c(0, v.data(), v.size()));
        return std::string(b);
      }() + "\n");
}

TEST(LeaseFile, ParsesWhatItFormats) {
  auto p = parseLeaseFile(formatLeaseFile(sample()));
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(*p, sample());
  auto e = parseLeaseFile(formatLeaseFile({}));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e, LeaseSnapshot{});
}

TEST(LeaseFile, EveryTruncationIsRejected) {
  const std::string whole = formatLeaseFile(sample());
  for (size_t len = 0; len < whole.size(); ++len)
    EXPECT_FALSE(parseLeaseFile(whole.substr(0, len)).ok()) << "truncated at " << len;
}

TEST(LeaseFile, EveryChangedByteIsRejected) {
  const std::string whole = formatLeaseFile(sample());
  for (size_t i = 0; i < whole.size(); ++i) {
    for (unsigned char flip : {0x01, 0x20, 0x80}) {
      std::string bad = whole;
      bad[i] = static_cast<char>(bad[i] ^ flip);
      EXPECT_FALSE(parseLeaseFile(bad).ok()) << "byte " << i << " ^ " << int(flip);
    }
  }
}

// Records that a correct checksum does not make acceptable.
TEST(LeaseFile, RejectsBadRecordsEvenWithAGoodChecksum) {
  auto withCrc = [](std::string body, size_t records) {
    char b[9];
    std::snprintf(b, sizeof b, "%08x", crc32c(0, body.data(), body.size()));
    return body + "end " + std::to_string(records) + " " + b + "\n";
  };
  const std::string v = "dynmx-leases 1\n";
  struct Case {
    std::string file;
    const char* why;
  } cases[] = {
      {withCrc(v + "lease home 203.0.113.7 tunnel 1 2\n", 1), ""},  // the good one
      {withCrc(v + "lease home 203.0.113.7 tunnel 1 2\n", 2), "record count mismatch"},
      {withCrc(v + "lease home 203.0.113.7 tunnel 1 2\n", 0), "record count mismatch"},
      {withCrc(v + "lease home 203.0.113.7 relay 1 2\n", 1), "bad source"},
      {withCrc(v + "lease home 203.0.113.07 tunnel 1 2\n", 1), "bad address"},
      {withCrc(v + "lease home 2001:DB8::1 tunnel 1 2\n", 1), "bad address"},
      {withCrc(v + "lease home ipv6:2001:db8::1 tunnel 1 2\n", 1), "bad address"},
      {withCrc(v + "lease home 192.0.2.0/24 tunnel 1 2\n", 1), "bad address"},
      {withCrc(v + "lease .home 203.0.113.7 tunnel 1 2\n", 1), "bad client name"},
      {withCrc(v + "lease ho/me 203.0.113.7 tunnel 1 2\n", 1), "bad client name"},
      {withCrc(v + "lease home 203.0.113.7 tunnel 3 2\n", 1), "bad times"},
      {withCrc(v + "lease home 203.0.113.7 tunnel -1 2\n", 1), "bad times"},
      {withCrc(v + "lease home 203.0.113.7 tunnel 01 2\n", 1), "bad times"},
      {withCrc(v + "lease home 203.0.113.7 tunnel 1 2 x\n", 1), "unknown record"},
      {withCrc(v + "lease home 203.0.113.7  tunnel 1 2\n", 1), "unknown record"},
      {withCrc(v + "lease home 203.0.113.7 tunnel 1 2\r\n", 1), "bad times"},
      {withCrc(v + "\n", 0), "unknown record"},
      {withCrc(v + "hold 203.0.113.7\n", 1), "unknown record"},
      {withCrc(v + "hold 203.0.113.7 x\n", 1), "bad hold record"},
      {withCrc("dynmx-leases 2\n", 0), "not a lease file of version 1"},
      {withCrc(v, 0) + "lease home 203.0.113.7 tunnel 1 2\n", "torn: no end line"},
      {withCrc(v, 0) + withCrc(v, 0), "unknown record"},
      {v + "lease home 203.0.113.7 tunnel 1 2\nend 1 00000000\n", "checksum mismatch"},
  };
  for (const auto& c : cases) {
    auto p = parseLeaseFile(c.file);
    if (!*c.why) {
      EXPECT_TRUE(p.ok()) << c.file << (p.ok() ? "" : p.error().message);
      continue;
    }
    ASSERT_FALSE(p.ok()) << c.file;
    EXPECT_NE(p.error().message.find(c.why), std::string::npos) << c.file << p.error().message;
  }
}

// The example in dynmx-relay(7), "THE LEASE FILE", is a file the reader accepts, byte for byte.
TEST(LeaseFile, TheManPageExampleIsAValidFile) {
  std::string page = readFile(std::string(DYNMX_SOURCE_DIR) + "/man/dynmx-relay.7");
  ASSERT_FALSE(page.empty());
  size_t begin = page.find("\ndynmx\\-leases 1\n");
  ASSERT_NE(begin, std::string::npos);
  size_t end = page.find("\n.fi", begin);
  std::string example;
  for (size_t i = begin + 1; i <= end; ++i) {
    if (page.compare(i, 2, "\\-") == 0) continue;  // roff's "\-" is a plain hyphen
    example += page[i];
  }
  auto p = parseLeaseFile(example);
  ASSERT_TRUE(p.ok()) << p.error().message << "\n" << example;
  EXPECT_EQ(p->leases.size(), 2u);
  EXPECT_EQ(p->holds.size(), 1u);
  EXPECT_EQ(formatLeaseFile(*p), example);
}

TEST(LeaseStore, SavedLeasesComeBackAfterARestart) {
  TempDir d;
  LeaseStore store((d / "leases"));
  ASSERT_TRUE(store.save(sample()).ok());
  struct stat st {};
  ASSERT_EQ(::stat((d / "leases").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(listDir(d.path()), std::vector<std::string>{"leases"});
  auto l = LeaseStore((d / "leases")).load(kNow);
  ASSERT_TRUE(l.ok()) << l.error().message;
  EXPECT_EQ(l->snapshot, sample());
  EXPECT_EQ(l->set_aside, "");
}

TEST(LeaseStore, ExpiredLeasesAndHoldsAreDroppedAtLoad) {
  TempDir d;
  LeaseStore store((d / "leases"));
  ASSERT_TRUE(store.save(sample()).ok());
  auto l = store.load(kNow + 120);  // the tunnel lease ends at kNow + 120
  ASSERT_TRUE(l.ok());
  ASSERT_EQ(l->snapshot.leases.size(), 2u);
  EXPECT_EQ(l->snapshot.leases[0].addr, addr("2001:db8::7"));
  EXPECT_EQ(l->snapshot.holds.size(), 1u);
  l = store.load(kNow + 3000);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->snapshot, LeaseSnapshot{});
}

TEST(LeaseStore, MissingFileIsNoLeasesAndNoError) {
  TempDir d;
  auto l = LeaseStore((d / "leases")).load(kNow);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->snapshot, LeaseSnapshot{});
}

TEST(LeaseStore, UnreadableFileIsAnErrorNamingIt) {
  TempDir d;
  ASSERT_EQ(::mkdir((d / "leases").c_str(), 0700), 0);
  auto l = LeaseStore((d / "leases")).load(kNow);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.error().message.find((d / "leases")), std::string::npos) << l.error().message;
}

std::mutex g_mu;
std::vector<std::string> g_lines;
void capture(LogLevel, std::string_view line) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_lines.emplace_back(line);
}

TEST(LeaseStore, TruncatedFileAtEveryLengthGrantsNothingAndIsMovedAside) {
  const std::string whole = formatLeaseFile(sample());
  for (size_t len = 0; len < whole.size(); ++len) {
    TempDir d;
    writeFile((d / "leases"), whole.substr(0, len));
    g_lines.clear();
    logCaptureForTest(capture);
    auto l = LeaseStore((d / "leases")).load(kNow);
    logCaptureForTest(nullptr);
    ASSERT_TRUE(l.ok()) << len;
    EXPECT_EQ(l->snapshot, LeaseSnapshot{}) << "truncated at " << len;
    const std::string aside = d / ("leases.bad-" + std::to_string(kNow));
    EXPECT_EQ(l->set_aside, aside);
    EXPECT_EQ(listDir(d.path()), std::vector<std::string>{"leases.bad-" + std::to_string(kNow)});
    EXPECT_EQ(readFile(aside), whole.substr(0, len));
    ASSERT_EQ(g_lines.size(), 1u);
    EXPECT_EQ(g_lines[0].rfind("lease file " + (d / "leases") + " is damaged (", 0), 0u)
        << g_lines[0];
    EXPECT_NE(g_lines[0].find("; moved to " + aside + "; no lease from it is granted"),
              std::string::npos)
        << g_lines[0];
  }
}

int countSaveCalls() {
  TempDir d;
  FakeFs never;
  EXPECT_TRUE(LeaseStore((d / "leases"), never).save(other()).ok());
  return never.calls();
}

TEST(LeaseStore, CrashAtEveryStepOfASaveLeavesTheOldFileOrTheNewOneWhole) {
  const int total = countSaveCalls();
  ASSERT_GE(total, 8);  // unlink, open, write, fsync, close, rename, open dir, fsync dir, close
  for (auto mode : {FakeFs::Fault::Crash, FakeFs::Fault::TornWrite}) {
    for (int at = 0; at < total; ++at) {
      TempDir d;
      ASSERT_TRUE(LeaseStore((d / "leases")).save(sample()).ok());
      FakeFs f;
      f.failAtCall(at, mode);
      bool ok = LeaseStore((d / "leases"), f).save(other()).ok();
      ASSERT_TRUE(f.triggered());
      const std::string label = "crash at call " + std::to_string(at);
      // The next process reads the file: the old leases or the new ones, never a mix or nothing.
      auto l = LeaseStore((d / "leases")).load(kNow);
      ASSERT_TRUE(l.ok()) << label;
      EXPECT_EQ(l->set_aside, "") << label;
      if (ok)
        EXPECT_EQ(l->snapshot, other()) << label;
      else
        EXPECT_TRUE(l->snapshot == sample() || l->snapshot == other()) << label;
      // ... and saves again over whatever temporary file the crash left.
      ASSERT_TRUE(LeaseStore((d / "leases")).save(other()).ok()) << label;
      EXPECT_EQ(listDir(d.path()), std::vector<std::string>{"leases"}) << label;
    }
  }
}

TEST(LeaseStore, FailureAtEveryStepOfASaveIsReportedAndLeavesNoTemporaryFile) {
  const int total = countSaveCalls();
  for (int err : {EIO, ENOSPC}) {
    for (int at = 0; at < total; ++at) {
      TempDir d;
      ASSERT_TRUE(LeaseStore((d / "leases")).save(sample()).ok());
      FakeFs f;
      f.failAtCall(at, FakeFs::Fault::Fail, err);
      auto st = LeaseStore((d / "leases"), f).save(other());
      ASSERT_TRUE(f.triggered());
      const std::string label = "failure at call " + std::to_string(at);
      auto l = LeaseStore((d / "leases")).load(kNow);
      ASSERT_TRUE(l.ok()) << label;
      if (st.ok()) {
        EXPECT_EQ(l->snapshot, other()) << label;
      } else {
        EXPECT_NE(st.error().message.find(d.path()), std::string::npos)
            << label << ": " << st.error().message;
        // Before the rename the old file stands; after it (a directory fsync) the new one.
        EXPECT_TRUE(l->snapshot == sample() || l->snapshot == other()) << label;
      }
      // The first call removes a stale temporary file: its failure leaves nothing new either.
      EXPECT_EQ(listDir(d.path()), std::vector<std::string>{"leases"}) << label;
    }
  }
}

TEST(LeaseStore, StaleTemporaryFileOrSymlinkIsReplacedNotFollowed) {
  TempDir d;
  writeFile((d / "victim"), "keep me");
  ASSERT_EQ(::symlink((d / "victim").c_str(), (d / "leases.tmp").c_str()), 0);
  ASSERT_TRUE(LeaseStore((d / "leases")).save(sample()).ok());
  EXPECT_EQ(readFile((d / "victim")), "keep me");
  EXPECT_EQ(listDir(d.path()), (std::vector<std::string>{"leases", "victim"}));
}

}  // namespace
}  // namespace dynmx::tunneld
