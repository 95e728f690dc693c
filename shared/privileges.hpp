// privileges.hpp: the switch from root to the configured user, for every dynmx daemon.
//
// Contract: dropPrivileges(user, key) does initgroups, setgid, setuid to `user` (nothing when
// `user` is empty or already the effective user), then checks that root cannot be regained.
// `key` is the configuration key that named the user ("milter.user"), for messages.
// Failure behaviour: returns why, naming the user and the failing call; the caller stops.
#pragma once

#include <optional>
#include <string>

namespace dynmx {

struct PrivilegeError {
  bool unknown_user = false;  // no such user: a configuration error, not a system failure
  std::string message;
};

std::optional<PrivilegeError> dropPrivileges(const std::string& user, const std::string& key);

}  // namespace dynmx
