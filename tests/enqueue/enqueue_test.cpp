// enqueue_test.cpp: dynmx-enqueue as sendmail's mailer or Postfix's pipe runs it — the real binary,
// its exit codes, its one-line reasons, and what it leaves in the spool (everything or nothing).
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include <gtest/gtest.h>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"
#include "tests/harness/small_fs.hpp"

namespace dynmx {
namespace {

using test::TempDir;

struct RunResult {
  int exit = -1;
  std::string err;
};

class Enqueue : public ::testing::Test {
 protected:
  void SetUp() override {
    spool_dir_ = dir_ / "spool";
    ASSERT_TRUE(Spool(spool_dir_).prepare().ok());
    writeConfig("");
  }

  void writeConfig(const std::string& extra_spool) {
    test::writeFile(dir_ / "dynmx.toml",
                    "[spool]\ndir = \"" + spool_dir_ + "\"\nmax_message_size = \"64K\"\n" + extra_spool +
                        "\n[[client]]\nname = \"home\"\nhost = \"home.dyn.example.net\"\n"
                        "domains = [\"home.example.org\", \".lan.example.org\"]\n"
                        "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n"
                        "\n[[client]]\nname = \"office\"\nhost = \"office.dyn.example.net\"\n"
                        "domains = [\"office.example.com\"]\n"
                        "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n");
  }

  RunResult enqueue(const std::vector<std::string>& args, const std::string& input) {
    test::writeFile(dir_ / "stdin", input);
    std::vector<std::string> argv = {test::binDir() + "/dynmx-enqueue", "-c", dir_ / "dynmx.toml"};
    argv.insert(argv.end(), args.begin(), args.end());
    test::SpawnOptions o;
    o.stdin_path = dir_ / "stdin";
    o.stderr_path = dir_ / "stderr";
    test::Process p(argv, o);
    auto st = p.wait(std::chrono::seconds(60));
    RunResult r;
    if (st && WIFEXITED(*st)) r.exit = WEXITSTATUS(*st);
    r.err = test::readFile(dir_ / "stderr");
    return r;
  }

  std::vector<SpoolMessage> incoming() {
    Spool s(spool_dir_);
    std::vector<SpoolMessage> out;
    for (const auto& id : s.list(QueueState::Incoming)) {
      auto m = s.load(QueueState::Incoming, id);
      EXPECT_TRUE(m.ok()) << m.error().message;
      if (m.ok()) out.push_back(*m);
    }
    return out;
  }

  std::string content(const SpoolMessage& m) {
    Spool s(spool_dir_);
    auto r = s.openContent(m);
    std::string out;
    for (;;) {
      auto c = r->next(4096);
      EXPECT_TRUE(c.ok());
      if (!c.ok() || c->empty()) break;
      out.append(*c);
    }
    return out;
  }

  void expectSpoolEmpty() {
    Spool s(spool_dir_);
    EXPECT_TRUE(s.list(QueueState::Incoming).empty());
    EXPECT_TRUE(s.list(QueueState::Tmp).empty());
  }

  TempDir dir_{"dynmx-enqueue"};
  std::string spool_dir_;
};

TEST_F(Enqueue, CommitsWithCrlfLineEndsAndExitsZero) {
  RunResult r = enqueue({"-f", "alice@example.net", "--queue-id", "4ABC123", "--", "Bob@Home.Example.ORG"},
                  "Subject: hi\n\nbare lf\nbare cr\rcrlf\r\n.dot\nno final newline");
  EXPECT_EQ(r.exit, 0) << r.err;
  EXPECT_EQ(r.err, "");
  auto msgs = incoming();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].env.client, "home");
  EXPECT_EQ(msgs[0].env.sender, "alice@example.net");
  EXPECT_EQ(msgs[0].env.mta_queue_id, "4ABC123");
  ASSERT_EQ(msgs[0].env.rcpts.size(), 1u);
  EXPECT_EQ(msgs[0].env.rcpts[0].address, "Bob@Home.Example.ORG");
  EXPECT_EQ(content(msgs[0]),
            "Subject: hi\r\n\r\nbare lf\r\nbare cr\r\ncrlf\r\n.dot\r\nno final newline\r\n");
}

TEST_F(Enqueue, NullSenderInEitherSpelling) {
  for (const std::string sender : {"<>", ""}) {
    RunResult r = enqueue({"-f", sender, "--", "bob@home.example.org"}, "x\n");
    EXPECT_EQ(r.exit, 0) << r.err;
  }
  auto msgs = incoming();
  ASSERT_EQ(msgs.size(), 2u);
  for (const auto& m : msgs) EXPECT_EQ(m.env.sender, "");
}

TEST_F(Enqueue, OneFilePerClientWhenRecipientsBelongToSeveral) {
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org", "pc@x.lan.example.org",
                   "carol@office.example.com"},
                  "Subject: both\n\nhello\n");
  EXPECT_EQ(r.exit, 0) << r.err;
  auto msgs = incoming();
  ASSERT_EQ(msgs.size(), 2u);
  std::map<std::string, size_t> rcpts;
  for (const auto& m : msgs) {
    rcpts[m.env.client] = m.env.rcpts.size();
    EXPECT_EQ(content(m), "Subject: both\r\n\r\nhello\r\n");
  }
  EXPECT_EQ(rcpts["home"], 2u);
  EXPECT_EQ(rcpts["office"], 1u);
}

TEST_F(Enqueue, ClientOptionOverridesRouting) {
  RunResult r = enqueue({"-f", "a@example.net", "--client", "office", "--", "someone@elsewhere.example"}, "x\n");
  EXPECT_EQ(r.exit, 0) << r.err;
  auto msgs = incoming();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].env.client, "office");
  r = enqueue({"-f", "a@example.net", "--client", "nosuch", "--", "someone@elsewhere.example"}, "x\n");
  EXPECT_EQ(r.exit, EX_CONFIG);
  EXPECT_NE(r.err.find("nosuch"), std::string::npos);
}

TEST_F(Enqueue, RecipientOfNoClientIsNoUserAndNothingIsWritten) {
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org", "eve@stranger.example"}, "x\n");
  EXPECT_EQ(r.exit, EX_NOUSER);
  EXPECT_NE(r.err.find("<eve@stranger.example>: no client claims domain stranger.example"),
            std::string::npos)
      << r.err;
  expectSpoolEmpty();
}

TEST_F(Enqueue, OversizeIsDataErrorAndNothingIsWritten) {
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, std::string(70 * 1024, 'x'));
  EXPECT_EQ(r.exit, EX_DATAERR);
  EXPECT_NE(r.err.find("max_message_size"), std::string::npos) << r.err;
  expectSpoolEmpty();
}

// The spool directory's owner decides who may write, so dynmx-enqueue never creates it; it says
// how to (issue 12).
TEST_F(Enqueue, MissingSpoolIsTempfailNamingTheDirectoryAndHowToCreateIt) {
  std::filesystem::remove_all(spool_dir_);
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "x\n");
  EXPECT_EQ(r.exit, EX_TEMPFAIL);
  EXPECT_NE(r.err.find("spool directory " + spool_dir_ + ": No such file or directory"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("install -d -o dynmx -g dynmx -m 0700 " + spool_dir_), std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(spool_dir_));
}

// Before any daemon ran, only the spool directory exists (issue 12: this used to tempfail with
// "spool directory .../tmp: No such file or directory").
TEST_F(Enqueue, CreatesMissingStateDirectoriesAndCommits) {
  std::filesystem::remove_all(spool_dir_);
  ASSERT_EQ(::mkdir(spool_dir_.c_str(), 0700), 0);
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "hello\n");
  EXPECT_EQ(r.exit, 0) << r.err;
  for (const char* state : {"tmp", "incoming", "active", "deferred", "hold", "corrupt"}) {
    struct stat sb {};
    ASSERT_EQ(::stat((spool_dir_ + "/" + state).c_str(), &sb), 0) << state;
    EXPECT_TRUE(S_ISDIR(sb.st_mode)) << state;
    EXPECT_EQ(sb.st_mode & 07777, 0700u) << state;
  }
  EXPECT_EQ(incoming().size(), 1u);
}

TEST_F(Enqueue, SpoolStateThatIsNotADirectoryIsTempfail) {
  std::filesystem::remove_all(spool_dir_ + "/incoming");
  test::writeFile(spool_dir_ + "/incoming", "not a directory");
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "x\n");
  EXPECT_EQ(r.exit, EX_TEMPFAIL);
  EXPECT_NE(r.err.find("incoming"), std::string::npos) << r.err;
  EXPECT_TRUE(Spool(spool_dir_).list(QueueState::Tmp).empty());
}

// A full disk: the spool on a tiny tmpfs. Root is needed to mount; CI runs as root.
TEST_F(Enqueue, FullDiskIsTempfailAndLeavesNoTemporaryFile) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  std::string mnt = dir_ / "small";
  ASSERT_EQ(::mkdir(mnt.c_str(), 0700), 0);
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k"), 0) << strerror(errno);
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{mnt};
  spool_dir_ = mnt + "/spool";
  ASSERT_TRUE(Spool(spool_dir_).prepare().ok());
  writeConfig("");
  test::writeFile(dir_ / "dynmx.toml",
                  "[spool]\ndir = \"" + spool_dir_ + "\"\nmax_message_size = \"10M\"\n"
                  // The write itself must meet the full disk: no spool.min_free refusal first.
                  "min_free = 0\n"
                  "[[client]]\nname = \"home\"\nhost = \"h\"\ndomains = [\"home.example.org\"]\n"
                  "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n");
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, std::string(256 * 1024, 'x'));
  EXPECT_EQ(r.exit, EX_TEMPFAIL);
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  expectSpoolEmpty();
  // The disk has room again once the failed message was removed: the next one goes through.
  r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "small\n");
  EXPECT_EQ(r.exit, 0) << r.err;
}

std::map<std::string, std::string> spoolFiles(const std::string& spool_dir) {
  std::map<std::string, std::string> out;
  for (const char* st : {"incoming", "tmp"})
    for (const auto& name : test::listDir(spool_dir + "/" + st))
      out[std::string(st) + "/" + name] = test::readFile(spool_dir + "/" + st + "/" + name);
  return out;
}

// spool.min_free: below it dynmx-enqueue exits 75 before writing anything, what is spooled stays
// whole, and mail goes through again once there is room.
TEST_F(Enqueue, BelowMinFreeExitsTempfailAndResumesWhenSpaceReturns) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  test::SmallFs fs(dir_ / "small", "4m");
  spool_dir_ = (dir_ / "small") + "/spool";
  ASSERT_TRUE(Spool(spool_dir_).prepare().ok());
  writeConfig("min_free = \"1M\"\n");
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "first\n");
  ASSERT_EQ(r.exit, 0) << r.err;
  auto before = spoolFiles(spool_dir_);
  ASSERT_EQ(before.size(), 1u);

  fs.fillLeaving((dir_ / "small") + "/filler", 512 * 1024);
  r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "second\n");
  EXPECT_EQ(r.exit, EX_TEMPFAIL);
  EXPECT_NE(r.err.find("452 4.3.1 Insufficient system storage"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("spool.min_free needs 1048576"), std::string::npos) << r.err;
  EXPECT_EQ(spoolFiles(spool_dir_), before) << "what was spooled is untouched, nothing added";

  ASSERT_EQ(::unlink(((dir_ / "small") + "/filler").c_str()), 0);
  r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "third\n");
  EXPECT_EQ(r.exit, 0) << r.err;
  EXPECT_EQ(incoming().size(), 2u);
}

// max_queue_messages: the client at its limit waits (75, 4.2.2); another client is not affected.
TEST_F(Enqueue, ClientOverQueueLimitExitsTempfailOthersGoThrough) {
  test::writeFile(dir_ / "dynmx.toml",
                  "[spool]\ndir = \"" + spool_dir_ + "\"\n"
                  "[[client]]\nname = \"home\"\nhost = \"h\"\ndomains = [\"home.example.org\"]\n"
                  "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n"
                  "max_queue_messages = 2\n"
                  "[[client]]\nname = \"office\"\nhost = \"o\"\ndomains = [\"office.example.com\"]\n"
                  "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n"
                  "max_queue_messages = 2\n");
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "x\n").exit, 0);
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "x\n");
  EXPECT_EQ(r.exit, EX_TEMPFAIL);
  EXPECT_NE(r.err.find("452 4.2.2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("client home has 2 messages queued, max_queue_messages 2"),
            std::string::npos)
      << r.err;
  r = enqueue({"-f", "a@example.net", "--", "carol@office.example.com"}, "x\n");
  EXPECT_EQ(r.exit, 0) << r.err;
  EXPECT_EQ(incoming().size(), 3u);
}

TEST_F(Enqueue, BadConfigIsConfigErrorWithLocation) {
  test::writeFile(dir_ / "dynmx.toml", "[spool]\ndir = \"" + spool_dir_ + "\"\nmax_mesage_size = \"1M\"\n");
  RunResult r = enqueue({"-f", "a@example.net", "--", "bob@home.example.org"}, "x\n");
  EXPECT_EQ(r.exit, EX_CONFIG);
  EXPECT_NE(r.err.find(dir_ / "dynmx.toml:3:1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("max_mesage_size"), std::string::npos) << r.err;
}

TEST_F(Enqueue, UsageErrors) {
  EXPECT_EQ(enqueue({"--", "bob@home.example.org"}, "x\n").exit, EX_USAGE);  // no -f
  EXPECT_EQ(enqueue({"-f", "a@example.net", "--"}, "x\n").exit, EX_USAGE);   // no rcpt
  RunResult r = enqueue({"-x", "-f", "a@b", "--", "bob@home.example.org"}, "x\n");
  EXPECT_EQ(r.exit, EX_USAGE);
  EXPECT_NE(r.err.find("unknown option -x"), std::string::npos);
  expectSpoolEmpty();
}

TEST_F(Enqueue, CheckConfigSaysOk) {
  std::string out;
  int st = test::runCommand({test::binDir() + "/dynmx-enqueue", "-c", dir_ / "dynmx.toml", "--check-config"}, &out);
  EXPECT_EQ(st, 0);
  EXPECT_EQ(out, "config OK\n");
}

}  // namespace
}  // namespace dynmx
