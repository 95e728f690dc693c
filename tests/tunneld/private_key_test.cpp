// private_key_test.cpp: the identity file check made before connecting (checkPrivateKeyFile): a
// key made by the real ssh-keygen passes at 0600, and one readable by group or others, or missing,
// is refused with an error naming the file and its mode.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include "tests/harness/test_sshd.hpp"
#include "shared/private_key.hpp"

using namespace dynmx;
using namespace dynmx::test;

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
