// access.cpp: the admin socket's access policy and the peer's credentials (see access.hpp).
#include "tunneld/control/access.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace dynmx::tunneld {

CommandClass commandClass(ControlRequest::Command c) {
  using C = ControlRequest::Command;
  switch (c) {
    case C::Status:
    case C::Queue:
    case C::Leases:
    case C::Metrics:
    case C::Hostkey:
      return CommandClass::ReadOnly;
    case C::Flush:
    case C::Hold:
    case C::Release:
    case C::Reload:
    case C::Revoke:
    case C::Delete:
    case C::Bounce:
    // verify changes nothing, but its answers tell which addresses exist at a client (and make the
    // daemon probe it): dynmx-milter's question (it runs as the daemon's user), not
    // control_group's.
    case C::Verify:
      return CommandClass::ChangesState;
    case C::Checkin:
      return CommandClass::Checkin;
  }
  return CommandClass::ChangesState;  // not reached; the strictest class
}

const char* commandName(ControlRequest::Command c) {
  using C = ControlRequest::Command;
  switch (c) {
    case C::Status:
      return "status";
    case C::Queue:
      return "queue";
    case C::Flush:
      return "flush";
    case C::Hold:
      return "hold";
    case C::Release:
      return "release";
    case C::Reload:
      return "reload";
    case C::Leases:
      return "leases";
    case C::Revoke:
      return "revoke";
    case C::Checkin:
      return "checkin";
    case C::Metrics:
      return "metrics";
    case C::Delete:
      return "delete";
    case C::Bounce:
      return "bounce";
    case C::Hostkey:
      return "hostkey";
    case C::Verify:
      return "verify";
  }
  return "?";
}

std::optional<std::string> controlAccess(const ControlAccessRules& rules, const ControlPeer& peer,
                                         ControlRequest::Command command) {
  std::string cmd = commandName(command);
  CommandClass cls = commandClass(command);
  bool is_checkin_account = rules.checkin_uid && peer.uid == *rules.checkin_uid;
  // The check-in account is checked first: even if it is root's or the daemon's uid by mistake,
  // it gets nothing beyond checkin (the daemon refuses such a configuration at start anyway).
  if (is_checkin_account) {
    if (cls == CommandClass::Checkin) return std::nullopt;
    return "not permitted: " + cmd + " (user " + rules.checkin_user +
           " is the check-in account; it may only check in)";
  }
  if (peer.uid == 0 || peer.uid == rules.daemon_uid) return std::nullopt;
  if (cls == CommandClass::ReadOnly) {
    if (std::find(peer.gids.begin(), peer.gids.end(), rules.control_gid) != peer.gids.end())
      return std::nullopt;
    return "not permitted: " + cmd + " needs membership of group " +
           (rules.control_group_name.empty() ? "of the daemon (tunneld.control_group is not set)"
                                             : rules.control_group_name) +
           ", root or the daemon's user";
  }
  if (cls == CommandClass::Checkin)
    return "not permitted: checkin is for the check-in account" +
           (rules.checkin_user.empty() ? std::string(" (relay.checkin_user is not set)")
                                       : " " + rules.checkin_user) +
           ", root or the daemon's user";
  return "not permitted: " + cmd + " changes state: root or the daemon's user only";
}

std::string peerName(const ControlPeer& peer) {
  std::string s = "uid " + std::to_string(static_cast<long>(peer.uid));
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(peer.uid, &pw, buf.data(), buf.size(), &found) == 0 && found)
    s += std::string(" (") + pw.pw_name + ")";
  return s;
}

Result<ControlPeer> peerCredentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return sysError(errno, "control socket: SO_PEERCRED");
  ControlPeer p;
  p.uid = cred.uid;
  p.gids.push_back(cred.gid);
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(cred.uid, &pw, buf.data(), buf.size(), &found) == 0 && found) {
    int n = 64;
    std::vector<gid_t> groups(static_cast<size_t>(n));
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) {
      groups.resize(static_cast<size_t>(n));
      if (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) n = 0;
    }
    groups.resize(static_cast<size_t>(std::max(n, 0)));
    p.gids.insert(p.gids.end(), groups.begin(), groups.end());
  }
  return p;
}

}  // namespace dynmx::tunneld
