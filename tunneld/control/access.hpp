// access.hpp: who may do what on the admin socket of dynmx-tunneld.
//
// The socket's mode and group (control_mode, control_group) decide who may connect at all; the
// peer's credentials decide what it may do once connected (issue "the admin socket checks who
// asks", dynmxctl(8) ACCESS):
//   - commands that only look (status, queue, leases, metrics, hostkey): root, the daemon's own
//     user, and members of the control group (primary or supplementary);
//   - commands that change state (flush, hold, release, reload, revoke, delete, bounce), and
//     verify (dynmx-milter's; its answers reveal which addresses exist): root and the daemon's own
//     user;
//   - checkin: the check-in account ([relay] checkin_user), root and the daemon's own user;
//   - the check-in account may check in and nothing else, whatever groups it is in.
// controlAccess() is the policy: a pure function of the rules, the peer and the command, tested
// from a table. peerCredentials() reads a connected socket's peer (SO_PEERCRED) and that user's
// supplementary groups (getgrouplist), the only I/O here.
// Failure behaviour: a peer that cannot be identified gets nothing beyond what the group alone
// would give: peerCredentials() returns an error naming the socket, and the caller refuses.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "shared/result.hpp"
#include "tunneld/control/control.hpp"

namespace dynmx::tunneld {

struct ControlPeer {
  uid_t uid = static_cast<uid_t>(-1);
  std::vector<gid_t> gids;  // the connecting process's gid, then the user's groups
};

struct ControlAccessRules {
  uid_t daemon_uid = 0;              // the daemon's own (effective) user
  gid_t control_gid = 0;             // control_group, or the daemon's group when none is set
  std::string control_group_name;    // for messages ("" when control_group is not set)
  std::optional<uid_t> checkin_uid;  // [relay] checkin_user, when set
  std::string checkin_user;          // for messages
};

enum class CommandClass { ReadOnly, ChangesState, Checkin };
CommandClass commandClass(ControlRequest::Command c);
const char* commandName(ControlRequest::Command c);  // "status", "checkin", ...

// nullopt: allowed. Otherwise the reply's error text, "not permitted: ...", naming the command and
// who may run it.
std::optional<std::string> controlAccess(const ControlAccessRules& rules, const ControlPeer& peer,
                                         ControlRequest::Command command);

// "uid N (NAME)" (or "uid N" without a passwd entry), for the log lines of what a peer did.
std::string peerName(const ControlPeer& peer);

// SO_PEERCRED of a connected Unix socket, with the supplementary groups of that uid's user
// (getgrouplist; none when the uid has no passwd entry).
Result<ControlPeer> peerCredentials(int fd);

}  // namespace dynmx::tunneld
