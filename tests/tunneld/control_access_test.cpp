// control_access_test.cpp: who may do what on the admin socket (control/access.hpp), from a
// table of peers (uid, groups) and commands: read-only commands for the control group, commands
// that change state for root and the daemon's user, checkin for the check-in account, which may
// do nothing else.
#include <algorithm>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "tunneld/control/access.hpp"

using namespace dynmx::tunneld;
using C = ControlRequest::Command;

namespace {

constexpr uid_t kDaemon = 110, kCheckin = 120, kAdmin = 1000, kOther = 1001;
constexpr gid_t kControl = 115, kUsers = 100;

ControlAccessRules rules() {
  ControlAccessRules r;
  r.daemon_uid = kDaemon;
  r.control_gid = kControl;
  r.control_group_name = "dynmxctl";
  r.checkin_uid = kCheckin;
  r.checkin_user = "dynmx-checkin";
  return r;
}

const std::vector<C> kAll = {C::Status,  C::Queue,  C::Flush,  C::Hold,   C::Release,
                             C::Reload,  C::Leases, C::Revoke, C::Checkin, C::Metrics,
                             C::Delete,  C::Bounce, C::Hostkey, C::Verify};

}  // namespace

TEST(ControlAccess, PolicyTable) {
  struct Case {
    const char* who;
    ControlPeer peer;
    std::vector<C> allowed;
  } cases[] = {
      {"root", {0, {0}}, kAll},
      {"the daemon's user", {kDaemon, {kDaemon}}, kAll},
      {"a member of control_group (primary)",
       {kAdmin, {kControl}},
       {C::Status, C::Queue, C::Leases, C::Metrics, C::Hostkey}},
      {"a member of control_group (supplementary)",
       {kAdmin, {kUsers, kUsers, kControl}},
       {C::Status, C::Queue, C::Leases, C::Metrics, C::Hostkey}},
      {"anyone else", {kOther, {kUsers}}, {}},
      {"a peer without credentials", {}, {}},
      {"the check-in account", {kCheckin, {kCheckin}}, {C::Checkin}},
      {"the check-in account in control_group", {kCheckin, {kControl}}, {C::Checkin}},
  };
  for (const auto& c : cases) {
    for (C cmd : kAll) {
      bool want = std::find(c.allowed.begin(), c.allowed.end(), cmd) != c.allowed.end();
      auto got = controlAccess(rules(), c.peer, cmd);
      EXPECT_EQ(!got.has_value(), want) << c.who << ", " << commandName(cmd);
      if (got) {
        EXPECT_TRUE(got->starts_with("not permitted: ")) << *got;
      }
    }
  }
}

TEST(ControlAccess, CheckinAccountCannotBeRootEvenByMistake) {
  // Should the configuration name root, the uid gets nothing but checkin (the daemon also refuses
  // such a configuration at start).
  ControlAccessRules r = rules();
  r.checkin_uid = 0;
  EXPECT_TRUE(controlAccess(r, {0, {0}}, C::Reload).has_value());
  EXPECT_FALSE(controlAccess(r, {0, {0}}, C::Checkin).has_value());
}

TEST(ControlAccess, NoCheckinAccountConfigured) {
  ControlAccessRules r = rules();
  r.checkin_uid.reset();
  r.checkin_user.clear();
  EXPECT_EQ(controlAccess(r, {kCheckin, {kControl}}, C::Checkin),
            "not permitted: checkin is for the check-in account (relay.checkin_user is not set), "
            "root or the daemon's user");
  EXPECT_FALSE(controlAccess(r, {kCheckin, {kControl}}, C::Status).has_value());
}

TEST(ControlAccess, MessagesNameWhoMay) {
  ControlAccessRules r = rules();
  EXPECT_EQ(controlAccess(r, {kOther, {kUsers}}, C::Status),
            "not permitted: status needs membership of group dynmxctl, root or the daemon's user");
  EXPECT_EQ(controlAccess(r, {kAdmin, {kControl}}, C::Flush),
            "not permitted: flush changes state: root or the daemon's user only");
  EXPECT_EQ(controlAccess(r, {kCheckin, {kCheckin}}, C::Queue),
            "not permitted: queue (user dynmx-checkin is the check-in account; it may only check "
            "in)");
  EXPECT_EQ(controlAccess(r, {kAdmin, {kControl}}, C::Delete),
            "not permitted: delete changes state: root or the daemon's user only");
  EXPECT_EQ(controlAccess(r, {kAdmin, {kControl}}, C::Bounce),
            "not permitted: bounce changes state: root or the daemon's user only");
  EXPECT_EQ(controlAccess(r, {kAdmin, {kControl}}, C::Checkin),
            "not permitted: checkin is for the check-in account dynmx-checkin, root or the "
            "daemon's user");
}

// The log lines of delete and bounce name who asked.
TEST(ControlAccess, PeerNameForTheLog) {
  EXPECT_EQ(peerName({0, {0}}), "uid 0 (root)");
  EXPECT_EQ(peerName({4000000000u, {}}), "uid 4000000000");
}
