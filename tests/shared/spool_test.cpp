// spool_test.cpp: the spool's promises — a crash at any step of a commit or of a journal append
// leaves no message or a whole one; torn and corrupt files are set aside, never delivered and never
// deleted; many writers at once each get their own whole file; the format matches its golden file.
#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "shared/spool.hpp"
#include "tests/harness/fake_fs.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

namespace fs = std::filesystem;

using test::FakeFs;
using test::TempDir;

std::string readFile(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string& p, std::string_view data) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

Envelope sampleEnvelope() {
  Envelope e;
  e.client = "home";
  e.sender = "alice@example.net";
  e.envid = "QQ314159";
  e.ret = "HDRS";
  e.body = "8BITMIME";
  e.smtputf8 = false;
  e.mta_queue_id = "4AB2C3D4E5";
  e.origin = "127.0.0.1";
  e.arrival = 1790000000;
  SpoolRecipient a;
  a.address = "bob@home.example.org";
  a.notify = "SUCCESS,DELAY";
  a.orcpt = "rfc822;Bob@home.example.org";
  SpoolRecipient b;
  b.address = "carol with space@home.example.org";
  e.rcpts = {a, b};
  return e;
}

std::string contentAll(const Spool& spool, const SpoolMessage& m) {
  auto r = spool.openContent(m);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  if (!r.ok()) return {};
  std::string out;
  for (;;) {
    auto chunk = r->next(7);  // small chunks on purpose
    EXPECT_TRUE(chunk.ok()) << (chunk.ok() ? "" : chunk.error().message);
    if (!chunk.ok() || chunk->empty()) break;
    out.append(*chunk);
  }
  return out;
}

std::string commitOne(Spool& spool, const Envelope& env, std::string_view content) {
  auto w = spool.create();
  EXPECT_TRUE(w.ok()) << (w.ok() ? "" : w.error().message);
  if (!w.ok()) return {};
  EXPECT_TRUE((*w)->write(content).ok());
  std::string id = (*w)->id();
  auto st = (*w)->commit(env);
  EXPECT_TRUE(st.ok()) << (st.ok() ? "" : st.error().message);
  return id;
}

TEST(Spool, CommitsAndReadsBackEnvelopeAndContent) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::string content = "Subject: hi\r\n\r\nline one\r\n.leading dot\r\n";
  content.push_back('\0');
  content += "nul above\r\n";
  Envelope env = sampleEnvelope();
  std::string id = commitOne(spool, env, content);
  ASSERT_TRUE(isQueueId(id));
  EXPECT_TRUE(spool.list(QueueState::Tmp).empty());
  ASSERT_EQ(spool.list(QueueState::Incoming), std::vector<std::string>{id});

  auto m = spool.load(QueueState::Incoming, id);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->id, id);
  EXPECT_EQ(m->env.client, "home");
  EXPECT_EQ(m->env.sender, "alice@example.net");
  EXPECT_EQ(m->env.envid, "QQ314159");
  EXPECT_EQ(m->env.ret, "HDRS");
  EXPECT_EQ(m->env.body, "8BITMIME");
  EXPECT_EQ(m->env.mta_queue_id, "4AB2C3D4E5");
  EXPECT_EQ(m->env.arrival, 1790000000);
  ASSERT_EQ(m->env.rcpts.size(), 2u);
  EXPECT_EQ(m->env.rcpts[0].address, "bob@home.example.org");
  EXPECT_EQ(m->env.rcpts[0].notify, "SUCCESS,DELAY");
  EXPECT_EQ(m->env.rcpts[0].orcpt, "rfc822;Bob@home.example.org");
  EXPECT_EQ(m->env.rcpts[1].address, "carol with space@home.example.org");
  EXPECT_EQ(m->env.rcpts[1].state, RcptState::Pending);
  EXPECT_EQ(m->content_size, content.size());
  EXPECT_EQ(contentAll(spool, *m), content);

  struct stat sb;
  ASSERT_EQ(::stat(spool.path(QueueState::Incoming, id).c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
}

TEST(Spool, NullSenderAndLargeContentRoundTrip) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  Envelope env = sampleEnvelope();
  env.sender = "";
  auto w = spool.create();
  ASSERT_TRUE(w.ok());
  std::string expect;
  for (int i = 0; i < 3000; ++i) {
    std::string line = "line " + std::to_string(i) + std::string(static_cast<size_t>(i % 500), 'x') + "\r\n";
    expect += line;
    ASSERT_TRUE((*w)->write(line).ok());
  }
  std::string id = (*w)->id();
  ASSERT_TRUE((*w)->commit(env).ok());
  auto m = spool.load(QueueState::Incoming, id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->env.sender, "");
  EXPECT_EQ(contentAll(spool, *m), expect);
}

TEST(Spool, FormatMatchesGoldenFile) {
  Envelope env = sampleEnvelope();
  std::string got = formatSpoolFile(env, "Subject: golden\r\n\r\nbody\r\n");
  const std::string golden_path = std::string(DYNMX_TEST_SOURCE_DIR) + "/golden/spool_v1.golden";
  if (std::getenv("DYNMX_UPDATE_GOLDEN")) writeFile(golden_path, got);
  EXPECT_EQ(got, readFile(golden_path)) << "format changed: update man/dynmx-spool.5 and the golden file";
  auto m = parseSpoolFile(got);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->env.rcpts.size(), 2u);
}

TEST(Spool, DiscardedWriterLeavesNothing) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  {
    auto w = spool.create();
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->write("partial").ok());
  }
  EXPECT_TRUE(spool.list(QueueState::Tmp).empty());
  EXPECT_TRUE(spool.list(QueueState::Incoming).empty());
}

TEST(Spool, CommitWithoutRecipientsFailsAndLeavesNothing) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  auto w = spool.create();
  ASSERT_TRUE(w.ok());
  Envelope env = sampleEnvelope();
  env.rcpts.clear();
  EXPECT_FALSE((*w)->commit(env).ok());
  EXPECT_TRUE(spool.list(QueueState::Tmp).empty());
  EXPECT_TRUE(spool.list(QueueState::Incoming).empty());
}

TEST(Spool, UnwritableSpoolIsReportedNamingTheDirectory) {
  TempDir t;
  Spool missing(t.path() + "/nonexistent");
  auto st = missing.checkWritable();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(t.path() + "/nonexistent/tmp"), std::string::npos);
  auto w = missing.create();
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.error().message.find("nonexistent/tmp/"), std::string::npos);
}

// A writer that may not create the state directories (another user than the spool's owner):
// the error names the owner and the command that creates them.
TEST(Spool, PrepareExistingSaysWhoOwnsTheSpoolWhenItMayNotCreateStateDirectories) {
  TempDir t;
  FakeFs fs;
  fs.failNth(FakeFs::Op::Mkdir, 0, EACCES);  // the spool's owner is someone else
  Spool spool(t.path(), fs);
  auto st = spool.prepareExisting();
  ASSERT_FALSE(st.ok());
  const std::string& m = st.error().message;
  struct stat sb {};
  ASSERT_EQ(::stat(t.path().c_str(), &sb), 0);
  const passwd* pw = ::getpwuid(sb.st_uid);
  ASSERT_NE(pw, nullptr);
  const std::string owner = pw->pw_name;
  EXPECT_NE(m.find("Permission denied"), std::string::npos) << m;
  EXPECT_NE(m.find("the spool belongs to " + owner), std::string::npos) << m;
  EXPECT_NE(m.find("install -d -o " + owner + " -g "), std::string::npos) << m;
  EXPECT_NE(m.find(t.path() + "/tmp " + t.path() + "/incoming"), std::string::npos) << m;
  EXPECT_NE(m.find(t.path() + "/corrupt"), std::string::npos) << m;
}

TEST(Spool, PrepareExistingNeverCreatesTheSpoolDirectory) {
  TempDir t;
  Spool spool(t.path() + "/spool");
  auto st = spool.prepareExisting();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ENOENT);
  EXPECT_NE(st.error().message.find("install -d -o dynmx -g dynmx -m 0700 " + t.path() + "/spool"),
            std::string::npos)
      << st.error().message;
  struct stat sb {};
  EXPECT_NE(::stat((t.path() + "/spool").c_str(), &sb), 0);
}

// ---------------------------------------------------------------------------------------------
// Fault injection with FakeFs::failAtCall: fail the Nth system call (Fail: it fails, later ones
// work) or crash at it (Crash: it and every later call fail, but fds are really closed, as death
// would; TornWrite: a crash whose failing writes leave half their bytes).

struct CommitOutcome {
  bool ok = false;
  bool triggered = false;
};

// Writes a ~200 KB message through `fsops` (so write() is called several times).
CommitOutcome commitThrough(const std::string& dir, FsOps& fsops, const std::string& content) {
  Spool spool(dir, fsops);
  auto w = spool.create();
  if (!w.ok()) return {};
  for (size_t off = 0; off < content.size(); off += 50000) {
    if (!(*w)->write(std::string_view(content).substr(off, 50000)).ok()) break;
  }
  bool ok = (*w)->commit(sampleEnvelope()).ok();
  return {ok, false};
}

std::string bigContent() {
  std::string s;
  for (int i = 0; s.size() < 200000; ++i) s += "body line " + std::to_string(i) + "\r\n";
  return s;
}

int countCommitCalls(const std::string& content) {
  TempDir t;
  EXPECT_TRUE(Spool(t.path()).prepare().ok());
  FakeFs never;
  auto r = commitThrough(t.path(), never, content);
  EXPECT_TRUE(r.ok);
  return never.calls();
}

// After the "crash", a fresh Spool (as the next process would) recovers and must find either
// nothing or the whole message; tmp/ must be clean.
void expectNothingOrWhole(const std::string& dir, const std::string& content, bool committed_ok,
                          const std::string& label) {
  Spool spool(dir);
  spool.recover();
  EXPECT_TRUE(spool.list(QueueState::Tmp).empty()) << label;
  EXPECT_TRUE(spool.list(QueueState::Corrupt).empty()) << label;
  auto ids = spool.list(QueueState::Incoming);
  ASSERT_LE(ids.size(), 1u) << label;
  if (committed_ok) {
    ASSERT_EQ(ids.size(), 1u) << label << ": commit said OK but no message";
  }
  for (const auto& id : ids) {
    auto m = spool.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok()) << label << ": " << m.error().message;
    EXPECT_EQ(contentAll(spool, *m), content) << label;
    EXPECT_EQ(m->env.rcpts.size(), 2u) << label;
  }
}

TEST(SpoolCrash, CrashAtEveryStepOfCommitLeavesNothingOrWholeMessage) {
  const std::string content = bigContent();
  const int total = countCommitCalls(content);
  ASSERT_GE(total, 8);  // open, writes, pwrite, fsync, close, rename, dir fsyncs
  for (auto mode : {FakeFs::Fault::Crash, FakeFs::Fault::TornWrite}) {
    for (int at = 0; at < total; ++at) {
      TempDir t;
      ASSERT_TRUE(Spool(t.path()).prepare().ok());
      FakeFs f;
      f.failAtCall(at, mode);
      auto r = commitThrough(t.path(), f, content);
      ASSERT_TRUE(f.triggered());
      expectNothingOrWhole(t.path(), content, r.ok,
                           "crash at call " + std::to_string(at) + " of " + std::to_string(total));
    }
  }
}

TEST(SpoolCrash, FailureAtEveryStepOfCommitReportsErrorAndLeavesNoTemporaryFile) {
  const std::string content = bigContent();
  const int total = countCommitCalls(content);
  for (int err : {EIO, ENOSPC}) {
    for (int at = 0; at < total; ++at) {
      TempDir t;
      ASSERT_TRUE(Spool(t.path()).prepare().ok());
      FakeFs f;
      f.failAtCall(at, FakeFs::Fault::Fail, err);
      auto r = commitThrough(t.path(), f, content);
      ASSERT_TRUE(f.triggered());
      Spool spool(t.path());
      // No recovery here: the writer itself must have cleaned up its temporary file.
      EXPECT_TRUE(spool.list(QueueState::Tmp).empty()) << "failure at call " << at;
      auto ids = spool.list(QueueState::Incoming);
      if (!r.ok) {
        // Failing after the rename (a directory fsync) leaves the message in place: the caller
        // reports failure and the sender retries — a possible duplicate, never a loss.
        for (const auto& id : ids) {
          auto m = spool.load(QueueState::Incoming, id);
          ASSERT_TRUE(m.ok());
          EXPECT_EQ(contentAll(spool, *m), content);
        }
      } else {
        EXPECT_EQ(ids.size(), 1u);
      }
    }
  }
}

// Journal appends: crash at every step of recording a recipient result: the state read back is
// either the old one or the new one, and the next append works.
TEST(SpoolCrash, CrashAtEveryStepOfJournalAppendKeepsOldOrNewState) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::string id = commitOne(spool, sampleEnvelope(), "x\r\n");
  auto base = spool.load(QueueState::Incoming, id);
  ASSERT_TRUE(base.ok());
  const std::string file = spool.path(QueueState::Incoming, id);
  const std::string pristine = readFile(file);

  FakeFs count;
  {
    Spool s(t.path(), count);
    SpoolMessage m = *base;
    ASSERT_TRUE(s.recordRecipient(m, 0, RcptState::Delivered, "250 2.0.0 Ok", 1790000100).ok());
  }
  const int total = count.calls();
  for (auto mode : {FakeFs::Fault::Crash, FakeFs::Fault::TornWrite}) {
    for (int at = 0; at < total; ++at) {
      writeFile(file, pristine);
      FakeFs f;
      f.failAtCall(at, mode);
      Spool s(t.path(), f);
      SpoolMessage m = *base;
      bool ok = s.recordRecipient(m, 0, RcptState::Delivered, "250 2.0.0 Ok", 1790000100).ok();
      auto back = spool.load(QueueState::Incoming, id);
      ASSERT_TRUE(back.ok()) << back.error().message;
      auto st = back->env.rcpts[0].state;
      EXPECT_TRUE(st == RcptState::Pending || st == RcptState::Delivered) << at;
      if (ok) {
        EXPECT_EQ(st, RcptState::Delivered);
      }
      // The next writer (a restarted daemon) appends after the last whole line.
      SpoolMessage again = *back;
      ASSERT_TRUE(spool.recordRecipient(again, 1, RcptState::Failed, "550 5.1.1 no", 1790000200).ok());
      auto last = spool.load(QueueState::Incoming, id);
      ASSERT_TRUE(last.ok());
      EXPECT_EQ(last->env.rcpts[1].state, RcptState::Failed) << "append after torn line, at " << at;
      EXPECT_EQ(last->env.rcpts[0].state, st);
      EXPECT_EQ(contentAll(spool, *last), "x\r\n");
    }
  }
}

TEST(Spool, JournalRecordsRecipientResultsAndDeliveryState) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::string id = commitOne(spool, sampleEnvelope(), "x\r\n");
  auto m = spool.load(QueueState::Incoming, id);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(spool.move(*m, QueueState::Active).ok());
  ASSERT_TRUE(spool.recordRecipient(*m, 1, RcptState::Failed, "550 5.1.1 <carol>: unknown\r\nuser", 1790000100).ok());
  DeliveryState ds;
  ds.attempts = 3;
  ds.last_attempt = 1790000100;
  ds.next_attempt = 1790000700;
  ds.warned = true;
  ASSERT_TRUE(spool.recordDelivery(*m, ds).ok());
  ASSERT_TRUE(spool.move(*m, QueueState::Deferred).ok());
  auto back = spool.load(QueueState::Deferred, id);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->env.rcpts[0].state, RcptState::Pending);
  EXPECT_EQ(back->env.rcpts[1].state, RcptState::Failed);
  EXPECT_EQ(back->env.rcpts[1].reply, "550 5.1.1 <carol>: unknown\r\nuser");
  EXPECT_EQ(back->env.rcpts[1].updated, 1790000100);
  EXPECT_EQ(back->delivery.attempts, 3u);
  EXPECT_EQ(back->delivery.next_attempt, 1790000700);
  EXPECT_TRUE(back->delivery.warned);
  ASSERT_TRUE(spool.remove(*back).ok());
  EXPECT_TRUE(spool.list(QueueState::Deferred).empty());
}

// ---------------------------------------------------------------------------------------------
// Torn and corrupt files found by the start-up scan go to corrupt/ and stay there.

TEST(SpoolRecovery, UnreadableFilesGoToCorruptAndAreNeverDeleted) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  const std::string good = formatSpoolFile(sampleEnvelope(), "Subject: x\r\n\r\nbody\r\n");
  struct Case {
    const char* name;
    std::string bytes;
  };
  std::string flipped_env = good;
  flipped_env[good.find("client home") + 8] = 'X';
  std::string zero_header = good;
  for (size_t i = 14; i < 59; ++i) zero_header[i] = '0';
  std::vector<Case> cases = {
      {"garbage", "hello world\n"},
      {"empty", ""},
      {"header only", good.substr(0, 60)},
      {"cut before end marker", good.substr(0, good.size() - 10)},
      {"envelope bit flip", flipped_env},
      {"uncommitted header", zero_header},
  };
  std::vector<std::string> ids;
  for (const auto& c : cases) {
    std::string id = newQueueId();
    // the id inside must match the file name for a good file; these are bad anyway
    writeFile(spool.path(QueueState::Incoming, id), c.bytes);
    ids.push_back(id);
  }
  // One good file that must survive.
  std::string good_id = commitOne(spool, sampleEnvelope(), "fine\r\n");
  auto rep = spool.recover();
  EXPECT_EQ(rep.corrupt, cases.size());
  auto corrupt = spool.list(QueueState::Corrupt);
  EXPECT_EQ(corrupt.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(readFile(spool.path(QueueState::Corrupt, ids[i])), cases[i].bytes) << cases[i].name;
  }
  EXPECT_EQ(spool.list(QueueState::Incoming), std::vector<std::string>{good_id});
}

TEST(SpoolRecovery, ContentBitFlipIsCaughtWhileStreaming) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::string id = commitOne(spool, sampleEnvelope(), "Subject: x\r\n\r\nbody\r\n");
  const std::string file = spool.path(QueueState::Incoming, id);
  std::string bytes = readFile(file);
  bytes[65] ^= 0x20;
  writeFile(file, bytes);
  auto m = spool.load(QueueState::Incoming, id);
  ASSERT_TRUE(m.ok());  // the envelope is intact
  auto r = spool.openContent(*m);
  ASSERT_TRUE(r.ok());
  bool failed = false;
  for (;;) {
    auto c = r->next(4096);
    if (!c.ok()) {
      failed = true;
      EXPECT_NE(c.error().message.find("checksum"), std::string::npos);
      break;
    }
    if (c->empty()) break;
  }
  EXPECT_TRUE(failed);
}

TEST(SpoolRecovery, RequeuesActiveAndRemovesOnlyOrphanedTemporaryFiles) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::string id = commitOne(spool, sampleEnvelope(), "a\r\n");
  ASSERT_TRUE(spool.moveId(id, QueueState::Incoming, QueueState::Active).ok());
  // A live writer (lock held) and an orphan (no lock).
  auto live = spool.create();
  ASSERT_TRUE(live.ok());
  ASSERT_TRUE((*live)->write("in progress").ok());
  std::string orphan = newQueueId();
  writeFile(spool.path(QueueState::Tmp, orphan), "half a message");
  auto rep = spool.recover();
  EXPECT_EQ(rep.tmp_removed, 1u);
  EXPECT_EQ(rep.active_requeued, 1u);
  EXPECT_EQ(spool.list(QueueState::Tmp), std::vector<std::string>{(*live)->id()});
  EXPECT_EQ(spool.list(QueueState::Incoming), std::vector<std::string>{id});
  ASSERT_TRUE((*live)->commit(sampleEnvelope()).ok());
  EXPECT_EQ(spool.list(QueueState::Incoming).size(), 2u);
}

// ---------------------------------------------------------------------------------------------
// Batches: renames and removals without the directory fsync, then one fsyncDir.

TEST(SpoolBatch, MoveUnsyncedRenamesAndLeavesTheFsyncToTheCaller) {
  TempDir t;
  FakeFs tfs;  // its trace(): renames, unlinks and fsyncs (of directories by name)
  Spool spool(t.path(), tfs);
  ASSERT_TRUE(spool.prepare().ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(commitOne(spool, sampleEnvelope(), "m\r\n"));
  tfs.clearTrace();
  for (const auto& id : ids) {
    auto m = spool.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(spool.moveUnsynced(*m, QueueState::Active).ok());
    EXPECT_EQ(m->state, QueueState::Active);
    ASSERT_TRUE(spool.moveUnsynced(*m, QueueState::Active).ok());  // already there: nothing
  }
  EXPECT_EQ(tfs.trace(), std::vector<std::string>(3, "rename incoming active"));
  ASSERT_TRUE(spool.fsyncDir(QueueState::Active).ok());
  EXPECT_EQ(tfs.trace().back(), "fsync dir active");
  EXPECT_EQ(tfs.trace().size(), 4u);
  auto active = spool.list(QueueState::Active);
  EXPECT_EQ(std::set<std::string>(active.begin(), active.end()),
            std::set<std::string>(ids.begin(), ids.end()));
  EXPECT_TRUE(spool.list(QueueState::Incoming).empty());
  // Read back from its new place, whole.
  auto m = spool.load(QueueState::Active, ids[0]);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(contentAll(spool, *m), "m\r\n");
}

TEST(SpoolBatch, MoveUnsyncedOfAMissingFileFailsNamingItAndKeepsTheState) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::string id = commitOne(spool, sampleEnvelope(), "m\r\n");
  auto m = spool.load(QueueState::Incoming, id);
  ASSERT_TRUE(m.ok());
  fs::remove(spool.path(QueueState::Incoming, id));
  auto st = spool.moveUnsynced(*m, QueueState::Active);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ENOENT);
  EXPECT_NE(st.error().message.find(spool.path(QueueState::Incoming, id)), std::string::npos);
  EXPECT_EQ(m->state, QueueState::Incoming);
}

TEST(SpoolBatch, RemoveUnsyncedUnlinksAndLeavesTheFsyncToTheCaller) {
  TempDir t;
  FakeFs tfs;  // its trace(): renames, unlinks and fsyncs (of directories by name)
  Spool spool(t.path(), tfs);
  ASSERT_TRUE(spool.prepare().ok());
  std::vector<SpoolMessage> msgs;
  for (int i = 0; i < 2; ++i) {
    std::string id = commitOne(spool, sampleEnvelope(), "m\r\n");
    auto m = spool.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok());
    msgs.push_back(*m);
  }
  tfs.clearTrace();
  for (const auto& m : msgs) ASSERT_TRUE(spool.removeUnsynced(m.state, m.id).ok());
  EXPECT_EQ(tfs.trace(), std::vector<std::string>(2, "unlink incoming"));
  EXPECT_TRUE(spool.list(QueueState::Incoming).empty());
  ASSERT_TRUE(spool.fsyncDir(QueueState::Incoming).ok());
  EXPECT_EQ(tfs.trace().back(), "fsync dir incoming");
  // Gone already: the second removal fails, naming the file.
  auto st = spool.removeUnsynced(msgs[0].state, msgs[0].id);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ENOENT);
  EXPECT_NE(st.error().message.find(msgs[0].id), std::string::npos);
}

TEST(SpoolBatch, RenamesUndoneByACrashLeaveEveryMessageRecoverable) {
  // Before the fsync of active/ a crash may keep any subset of the renames: whatever the disk
  // keeps, recovery puts every message in incoming/, whole.
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(commitOne(spool, sampleEnvelope(), "m\r\n"));
  for (const auto& id : ids) {
    auto m = spool.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(spool.moveUnsynced(*m, QueueState::Active).ok());
  }
  for (size_t i = 0; i < 2; ++i)  // these two renames did not reach the disk
    fs::rename(spool.path(QueueState::Active, ids[i]), spool.path(QueueState::Incoming, ids[i]));
  Spool after(t.path());
  auto rep = after.recover();
  EXPECT_EQ(rep.active_requeued, 2u);
  auto in = after.list(QueueState::Incoming);
  EXPECT_EQ(std::set<std::string>(in.begin(), in.end()),
            std::set<std::string>(ids.begin(), ids.end()));
  for (const auto& id : ids) {
    auto m = after.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(contentAll(after, *m), "m\r\n");
  }
}

// ---------------------------------------------------------------------------------------------
// Many writers at once: threads in this process and other processes.

TEST(SpoolConcurrency, ManyThreadsAndProcessesCommitWholeDistinctMessages) {
  TempDir t;
  Spool spool(t.path());
  ASSERT_TRUE(spool.prepare().ok());
  constexpr int kThreads = 6, kProcs = 3, kEach = 40;
  auto work = [&](int who) {
    Spool s(t.path());
    for (int i = 0; i < kEach; ++i) {
      auto w = s.create();
      if (!w.ok()) std::abort();
      std::string body = "writer " + std::to_string(who) + " message " + std::to_string(i) + "\r\n";
      for (int k = 0; k < 50; ++k) (void)(*w)->write(body);
      Envelope e = sampleEnvelope();
      e.mta_queue_id = std::to_string(who) + "-" + std::to_string(i);
      if (!(*w)->commit(e).ok()) std::abort();
    }
  };
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      work(100 + p);
      ::_exit(0);
    }
    pids.push_back(pid);
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) threads.emplace_back(work, i);
  for (auto& th : threads) th.join();
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  auto ids = spool.list(QueueState::Incoming);
  EXPECT_EQ(ids.size(), static_cast<size_t>((kThreads + kProcs) * kEach));
  std::set<std::string> seen;
  for (const auto& id : ids) {
    auto m = spool.load(QueueState::Incoming, id);
    ASSERT_TRUE(m.ok()) << m.error().message;
    EXPECT_TRUE(seen.insert(m->env.mta_queue_id).second);
    std::string c = contentAll(spool, *m);
    std::string who = m->env.mta_queue_id;
    std::string line = "writer " + who.substr(0, who.find('-')) + " message " + who.substr(who.find('-') + 1) + "\r\n";
    std::string expect;
    for (int k = 0; k < 50; ++k) expect += line;
    EXPECT_EQ(c, expect);
  }
  EXPECT_TRUE(spool.list(QueueState::Tmp).empty());
}

TEST(QueueId, IsSixteenAlphanumericsAndUnique) {
  std::set<std::string> ids;
  for (int i = 0; i < 10000; ++i) {
    std::string id = newQueueId();
    ASSERT_TRUE(isQueueId(id)) << id;
    ASSERT_TRUE(ids.insert(id).second) << "duplicate " << id;
  }
  EXPECT_FALSE(isQueueId("short"));
  EXPECT_FALSE(isQueueId("0123456789abcde/"));
  EXPECT_FALSE(isQueueId("../../etc/passwd"));
}

}  // namespace
}  // namespace dynmx
