// test_sshd.hpp: a real OpenSSH sshd on 127.0.0.1 (or ::1) for integration tests.
//
// Runs /usr/sbin/sshd -D -f <cfg> -E <log> in a private directory on a port chosen at run time,
// with its own ed25519 host key (ssh-keygen) and an AuthorizedKeysFile whose lines force a command
// (`command="...",restrict ssh-ed25519 ...`). Can generate further host keys and restart on the
// same port with another one (host-key mismatch tests). stop() and the destructor stop sshd and
// its per-connection children by pid. Setup failures throw std::runtime_error naming the cause
// (with the tail of sshd's log).
#pragma once

#include <memory>
#include <string>

#include "tests/harness/harness.hpp"

namespace dynmx::test {

struct KeyPair {
  std::string private_path;
  std::string public_line;  // "ssh-ed25519 AAAA..." (no comment)
};

// ssh-keygen -t TYPE -N "" -f PATH; type "ed25519" or "ecdsa".
KeyPair generateKey(const std::string& path, const std::string& type = "ed25519");

class TestSshd {
 public:
  explicit TestSshd(const std::string& dir);  // dir: an existing private directory
  ~TestSshd();

  // Adds `command="COMMAND",restrict KEY` to authorized_keys (takes effect on the next login).
  void authorize(const KeyPair& key, const std::string& command);
  // Empties authorized_keys: no key logs in until authorize() adds one again (next login).
  void revokeAll();
  // Adds a whole authorized_keys line as given (dynmxctl add-client's, say).
  void authorizeLine(const std::string& line);
  // A new client key pair in dir, authorized with `command`.
  KeyPair newClientKey(const std::string& name, const std::string& command,
                       const std::string& type = "ed25519");

  // The loopback address to listen on, "127.0.0.1" (the default) or "::1"; before start().
  void setAddress(const std::string& address) { address_ = address; }
  const std::string& address() const { return address_; }
  // sshd's MaxSessions (default here 64; OpenSSH's own default is 10); before start().
  void setMaxSessions(int n) { max_sessions_ = n; }
  void start();
  void stop();
  // Restarts on the same port presenting `host_key` (a KeyPair from generateKey) instead.
  void restartWithHostKey(const KeyPair& host_key);
  bool running();

  uint16_t port() const { return port_; }
  const std::string& user() const { return user_; }
  const KeyPair& hostKey() const { return host_key_; }  // the one presented now
  const KeyPair& originalHostKey() const { return original_host_key_; }
  // "[ADDRESS]:PORT ssh-ed25519 AAAA..." for a known_hosts file.
  std::string knownHostsLine() const;
  std::string logPath() const { return dir_ + "/sshd.log"; }
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return proc_ ? proc_->pid() : -1; }

 private:
  void writeConfig();
  bool accepting();
  std::string hostPort() const;  // "[ADDRESS]:PORT"

  std::string dir_;
  std::string address_ = "127.0.0.1";
  int max_sessions_ = 64;
  std::string user_;
  uint16_t port_ = 0;
  KeyPair host_key_;
  KeyPair original_host_key_;
  std::string authorized_;
  std::unique_ptr<Process> proc_;
};

}  // namespace dynmx::test
