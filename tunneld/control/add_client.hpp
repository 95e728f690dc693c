// add_client.hpp: `dynmxctl add-client NAME HOST`: everything the client's administrator does to
// receive mail through this MX, and the [[client]] block to add here.
//
// Contract: addClientText() is pure: from the client's name, host, account, sendmail path, the
// MX's addresses (and where they came from) and the tunnel's public key it makes the text:
//   1. the authorized_keys line for the client's account: restrict, the forced
//      command="SENDMAIL -bs", from="..." with the MX's addresses, the tunnel's public key;
//   2. the sendmail line that makes the account trusted, so that -bs adds no
//      X-Authentication-Warning (define(`confTRUSTED_USERS', ...) in submit.mc and sendmail.mc,
//      as cf/m4/proto.m4 turns it into a T line of both .cf files); for Postfix: nothing (its
//      sendmail -bs adds no such warning);
//   3. the command with which the client's administrator reads the host key's fingerprint;
//   4. the [[client]] block, and the dynmxctl trust step that follows (never on first use).
// tunnelPublicKey() reads the public key out of the identity file's unencrypted header (OpenSSH's
// "openssh-key-v1" format), or, when that cannot be read, the IDENTITY.pub beside it; it never
// reads or prints anything of the private part. mxAddresses() lists this host's addresses
// (getifaddrs), leaving out loopback, link-local and unspecified ones.
// Failure behaviour: errors name the file or what was expected; addClientCommand() prints them
// and returns a sysexits code (64 usage, 66 no key, 78 configuration).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "shared/config.hpp"
#include "shared/result.hpp"

namespace dynmx::tunneld {

struct AddClientInput {
  std::string name, host, user = "dynmx";
  uint16_t port = 22;
  std::string sendmail = "/usr/sbin/sendmail";
  std::vector<std::string> from;  // the MX's addresses
  std::string from_source;        // where they came from, said in the text
  std::string key_type, key_base64, key_source;
  std::string key_comment;  // "dynmx@MXHOST"
  std::string config_path;
};
std::string addClientText(const AddClientInput& in);

struct PublicKey {
  std::string type, blob, source;  // source: the file it was read from
};
Result<PublicKey> tunnelPublicKey(const std::string& identity);
std::vector<std::string> mxAddresses();

// The whole command: args are what follows "add-client". Returns the exit status.
int addClientCommand(const Config& cfg, const std::vector<std::string>& args, std::FILE* out,
                     std::FILE* err);

}  // namespace dynmx::tunneld
