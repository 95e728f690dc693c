// add_client_test.cpp: dynmxctl add-client's parts without a daemon: the tunnel's public key read
// from the identity file's header (ssh-keygen's own file), from IDENTITY.pub when the private
// file cannot be read, an error naming both when neither; the text's authorized_keys line.
#include "tunneld/control/add_client.hpp"

#include <gtest/gtest.h>
#include <string>

#include "tests/harness/harness.hpp"
#include "tests/harness/test_sshd.hpp"
#include "tunneld/ssh/host_keys.hpp"

using namespace dynmx::test;
using namespace dynmx::tunneld;

TEST(AddClient, PublicKeyFromTheIdentityFileOrItsPub) {
  TempDir dir("dynmx-addclient");
  KeyPair k = generateKey(dir / "id_ed25519");
  auto a = tunnelPublicKey(k.private_path);
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a->type + " " + base64Encode(a->blob), k.public_line);
  EXPECT_EQ(a->source, k.private_path);
  // The private file unreadable (here: not a key file at all): the .pub beside it.
  writeFile(k.private_path, "not a key\n", 0600);
  auto b = tunnelPublicKey(k.private_path);
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(b->type + " " + base64Encode(b->blob), k.public_line);
  EXPECT_EQ(b->source, k.private_path + ".pub");
  auto c = tunnelPublicKey(dir / "none");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().message, "cannot read the tunnel's public key from " + (dir / "none") +
                                   " or " + (dir / "none") + ".pub");
}

TEST(AddClient, TextHasTheLineTheTrustedUserAndTheBlock) {
  AddClientInput in;
  in.name = "home";
  in.host = "mx.home.test";
  in.port = 2222;
  in.from = {"192.0.2.25", "2001:db8::25"};
  in.from_source = "as given with --from";
  in.key_type = "ssh-ed25519";
  in.key_base64 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
  in.key_source = "/etc/dynmx/id_ed25519";
  in.key_comment = "dynmx@mx.example.net";
  in.config_path = "/etc/dynmx/dynmx.toml";
  std::string t = addClientText(in);
  EXPECT_NE(
      t.find("\nrestrict,command=\"/usr/sbin/sendmail -bs\",from=\"192.0.2.25,2001:db8::25\" "
             "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
             "dynmx@mx.example.net\n"),
      std::string::npos)
      << t;
  EXPECT_NE(t.find("\ndefine(`confTRUSTED_USERS', `dynmx')dnl\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\n[[client]]\nname = \"home\"\nhost = \"mx.home.test\"\nport = 2222\n"
                   "user = \"dynmx\"\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("dynmxctl trust home SHA256:"), std::string::npos) << t;
}
