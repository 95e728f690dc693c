// enqueue_recipients_test.cpp: dynmx-enqueue and a client's recipient list, the real binary: an
// unlisted address of a listed client exits 67 (EX_NOUSER) with Postfix's words and writes
// nothing; listed ones (inline, from the file, by +extension) are committed; a missing list file is
// a configuration error (78, which sendmail and Postfix's pipe treat as temporary: 4.3.5), never a
// refusal.
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "shared/spool.hpp"
#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

class EnqueueRecipients : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Spool(dir_ / "spool").prepare().ok());
    test::writeFile(dir_ / "home.recipients", "carol@home.example.org\n");
    test::writeFile(dir_ / "dynmx.toml",
                    "[spool]\ndir = \"" + dir_ / "spool" +
                        "\"\n"
                        "[[client]]\nname = \"home\"\nhost = \"home.dyn.example.net\"\n"
                        "domains = [\"home.example.org\"]\n"
                        "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n"
                        "recipients = [\"bob@home.example.org\"]\n"
                        "recipient_file = \"" +
                        dir_ / "home.recipients" +
                        "\"\n"
                        "[[client]]\nname = \"office\"\nhost = \"office.dyn.example.net\"\n"
                        "domains = [\"office.example.com\"]\n"
                        "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n");
  }

  int enqueue(const std::vector<std::string>& rcpts, std::string* err) {
    test::writeFile(dir_ / "stdin", "Subject: x\n\nbody\n");
    std::vector<std::string> argv = {
        test::binDir() + "/dynmx-enqueue", "-c", dir_ / "dynmx.toml", "-f", "s@x.example", "--"};
    argv.insert(argv.end(), rcpts.begin(), rcpts.end());
    test::SpawnOptions o;
    o.stdin_path = dir_ / "stdin";
    o.stderr_path = dir_ / "stderr";
    test::Process p(argv, o);
    auto st = p.wait(std::chrono::seconds(60));
    *err = test::readFile(dir_ / "stderr");
    return st && WIFEXITED(*st) ? WEXITSTATUS(*st) : -1;
  }
  size_t spooled() { return Spool(dir_ / "spool").list(QueueState::Incoming).size(); }

  test::TempDir dir_{"dynmx-enqueue-rcpt"};
};

TEST_F(EnqueueRecipients, UnlistedRecipientIsNoUserAndNothingIsWritten) {
  std::string err;
  EXPECT_EQ(enqueue({"bob@home.example.org", "nosuchuser@home.example.org"}, &err), EX_NOUSER);
  EXPECT_NE(err.find("<nosuchuser@home.example.org>: Recipient address rejected: User unknown"),
            std::string::npos)
      << err;
  EXPECT_EQ(spooled(), 0u);
}

TEST_F(EnqueueRecipients, ListedRecipientsAreCommitted) {
  std::string err;
  EXPECT_EQ(enqueue({"Bob+news@HOME.example.org", "carol@home.example.org", "x@office.example.com"},
                    &err),
            0)
      << err;
  EXPECT_EQ(spooled(), 2u);
}

TEST_F(EnqueueRecipients, MissingListFileIsAConfigurationErrorNotARefusal) {
  ASSERT_EQ(::unlink((dir_ / "home.recipients").c_str()), 0);
  std::string err;
  EXPECT_EQ(enqueue({"carol@home.example.org"}, &err), EX_CONFIG);
  EXPECT_NE(err.find(dir_ / "home.recipients"), std::string::npos) << err;
  EXPECT_EQ(spooled(), 0u);
}

}  // namespace
}  // namespace dynmx
