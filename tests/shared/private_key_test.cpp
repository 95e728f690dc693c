// private_key_test.cpp: privateKeyProblem() and checkPrivateKeyFile() on real files: private,
// readable by others, not a regular file, missing.
#include "shared/private_key.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

TEST(PrivateKeyProblem, NamesWhatIsWrongWithTheFile) {
  test::TempDir dir;
  std::string key = dir / "id_ed25519";
  std::ofstream(key) << "not really a key\n";

  ASSERT_EQ(chmod(key.c_str(), 0600), 0);
  EXPECT_FALSE(privateKeyProblem(key).has_value());
  EXPECT_TRUE(checkPrivateKeyFile(key).ok());

  ASSERT_EQ(chmod(key.c_str(), 0640), 0);
  auto p = privateKeyProblem(key);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, PrivateKeyProblem::Kind::NotPrivate);
  EXPECT_EQ(octalMode(p->mode), "0640");
  EXPECT_EQ(checkPrivateKeyFile(key).error().message,
            "identity " + key +
                ": mode 0640 is readable by group or others; refusing to use it (chmod 600 " +
                key + ")");

  p = privateKeyProblem(dir.path());
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, PrivateKeyProblem::Kind::NotRegular);

  p = privateKeyProblem(dir / "missing");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->kind, PrivateKeyProblem::Kind::CannotStat);
  EXPECT_EQ(p->err, ENOENT);
}

}  // namespace
}  // namespace dynmx
