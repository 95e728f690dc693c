// checkin_test.cpp: dynmx-checkin as the forced command of a check-in key in a real sshd, handing
// check-ins to a running dynmx-tunneld; and the admin socket's access rules with real
// unprivileged users (created here with useradd, removed at the end) running dynmxctl and
// dynmx-checkin.
//
// Where a check-in "comes from": dynmx-checkin refuses loopback (all of 127.0.0.0/8 and ::1),
// link-local, unspecified and this MX's own addresses, with no switch to turn that off. So the
// client that must be leased sits in a network namespace of its own, joined to this one by a veth
// pair with addresses from 198.18.0.0/15 (RFC 2544, never routed): sshd listens on the host side,
// the client's ssh runs in the namespace and arrives from the other side, a real non-loopback TCP
// peer (IPv4, and IPv6 from 2001:db8::/32 where the machine has IPv6). A second sshd on 127.0.0.1
// shows that check-ins over loopback (from 127.0.0.1 and from 127.0.0.2) are refused, and one from
// the host side to itself that this MX's own address is. Waiting is always for an event with a
// generous deadline; nothing asserts on elapsed time.
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <memory>
#include <sstream>
#include <string>

#include "tests/harness/test_sshd.hpp"

using namespace dynmx;
using namespace dynmx::test;

namespace {

constexpr auto kLong = std::chrono::seconds(120);

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// A network namespace joined to this one by a veth pair: host_addr here, peer_addr in there.
class VethNamespace {
 public:
  VethNamespace() {
    unsigned p = static_cast<unsigned>(getpid());
    std::string tag = std::to_string(p % 100000);
    ns_ = "dxci" + tag;
    host_if_ = "dxh" + tag;
    std::string peer_if = "dxp" + tag;
    peer_if_ = peer_if;
    std::string net = "198.18." + std::to_string(p % 250) + ".";
    unsigned base = ((p / 250) % 60) * 4;
    host_addr_ = net + std::to_string(base + 1);
    peer_addr_ = net + std::to_string(base + 2);
    // IPv6: a /64 of the documentation prefix per test process; nodad, so usable at once.
    std::string net6 = "2001:db8:" + std::to_string(p % 10000) + ":" + std::to_string(base) + "::";
    host_addr6_ = net6 + "1";
    peer_addr6_ = net6 + "2";
    ok_ = run({"/usr/sbin/ip", "netns", "add", ns_}) &&
          run({"/usr/sbin/ip", "link", "add", host_if_, "type", "veth", "peer", "name", peer_if}) &&
          run({"/usr/sbin/ip", "link", "set", peer_if, "netns", ns_}) &&
          run({"/usr/sbin/ip", "addr", "add", host_addr_ + "/30", "dev", host_if_}) &&
          run({"/usr/sbin/ip", "link", "set", host_if_, "up"}) &&
          run({"/usr/sbin/ip", "netns", "exec", ns_, "ip", "addr", "add", peer_addr_ + "/30", "dev",
               peer_if}) &&
          run({"/usr/sbin/ip", "netns", "exec", ns_, "ip", "link", "set", peer_if, "up"}) &&
          run({"/usr/sbin/ip", "netns", "exec", ns_, "ip", "link", "set", "lo", "up"});
    ok6_ =
        ok_ &&
        run({"/usr/sbin/ip", "-6", "addr", "add", host_addr6_ + "/64", "dev", host_if_, "nodad"}) &&
        run({"/usr/sbin/ip", "netns", "exec", ns_, "ip", "-6", "addr", "add", peer_addr6_ + "/64",
             "dev", peer_if, "nodad"});
  }
  ~VethNamespace() {
    (void)runCommand({"/usr/sbin/ip", "link", "del", host_if_});
    (void)runCommand({"/usr/sbin/ip", "netns", "del", ns_});
  }
  bool ok() const { return ok_; }
  bool ok6() const { return ok6_; }  // IPv6 addresses too (not where IPv6 is off)
  const std::string& name() const { return ns_; }
  const std::string& hostAddr() const { return host_addr_; }
  const std::string& peerAddr() const { return peer_addr_; }
  const std::string& hostAddr6() const { return host_addr6_; }
  const std::string& peerAddr6() const { return peer_addr6_; }
  const std::string& hostIf() const { return host_if_; }
  const std::string& peerIf() const { return peer_if_; }  // its name inside the namespace

 private:
  static bool run(const std::vector<std::string>& argv) { return runCommand(argv) == 0; }
  std::string ns_, host_if_, peer_if_, host_addr_, peer_addr_, host_addr6_, peer_addr6_;
  bool ok_ = false, ok6_ = false;
};

void quietly(const std::string& program, const std::string& arg) {
  (void)runCommand({"/bin/sh", "-c", "exec \"$0\" \"$1\" 2>/dev/null", program, arg});
}

// A user that exists for the life of the object.
class TempAccount {
 public:
  TempAccount(std::string name, const std::string& groups) : name_(std::move(name)) {
    std::vector<std::string> argv{"/usr/sbin/useradd", "-M", "-N", "-s", "/usr/sbin/nologin"};
    if (!groups.empty()) {
      argv.push_back("-G");
      argv.push_back(groups);
    }
    argv.push_back(name_);
    quietly("/usr/sbin/userdel", name_);  // left over by a test that was killed
    ok_ = runCommand(argv) == 0;
  }
  ~TempAccount() {
    if (ok_) (void)runCommand({"/usr/sbin/userdel", name_});
  }
  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  bool ok_ = false;
};

class TempGroup {
 public:
  explicit TempGroup(std::string name) : name_(std::move(name)) {
    quietly("/usr/sbin/groupdel", name_);  // left over by a test that was killed
    ok_ = runCommand({"/usr/sbin/groupadd", name_}) == 0;
  }
  ~TempGroup() {
    if (ok_) (void)runCommand({"/usr/sbin/groupdel", name_});
  }
  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  bool ok_ = false;
};

class CheckinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (sshd, network namespaces, useradd)";
    bin = binDir();
    tunnel_key = generateKey(dir / "id_ed25519");
    writeFile(dir / "known_hosts", "");
  }

  std::string conf() { return dir / "dynmx.toml"; }
  std::string sock() { return dir / "ctl.sock"; }
  std::string checkinCommand(const std::string& client) {
    return bin + "/dynmx-checkin -c " + conf() + " " + client;
  }

  // Clients: home (relay = true), office (relay = false); neither is reachable (port 1 on
  // 127.0.0.9), so the daemon stays in backoff and a check-in's hint shows in its log.
  void writeConfig(const std::string& tunneld_extra = "", const std::string& relay_extra = "",
                   const std::string& lease_lifetime = "20m") {
    std::string c;
    c += "[spool]\ndir = \"" + (dir / "spool") + "\"\n\n";
    c += "[tunneld]\ncontrol_socket = \"" + sock() + "\"\n";
    c += "identity = \"" + tunnel_key.private_path + "\"\nknown_hosts = \"" +
         (dir / "known_hosts") + "\"\n";
    c += "reconnect_min = \"1m\"\nreconnect_max = \"10m\"\nconnect_timeout = \"5s\"\n";
    c += tunneld_extra + "\n";
    // The lease server's socket and the lease file in the test's directory, never the system's.
    c += "[relay]\nlease_lifetime = \"" + lease_lifetime + "\"\nsocket = \"" +
         (dir / "relay.sock") + "\"\nlease_file = \"" + (dir / "leases/leases") + "\"\n" +
         relay_extra + "\n";
    for (const char* name : {"home", "office"}) {
      c += "[[client]]\nname = \"" + std::string(name) +
           "\"\nhost = \"127.0.0.9\"\nport = 1\nhost_key = \"" + tunnel_key.public_line +
           "\"\ndomains = [\"" + name +
           ".test\"]\nrelay = " + (std::string(name) == "home" ? "true" : "false") + "\n\n";
    }
    writeFile(conf(), c, 0644);
  }

  void startDaemon() {
    daemon = std::make_unique<Process>(
        std::vector<std::string>{bin + "/dynmx-tunneld", "-f", "-c", conf()},
        SpawnOptions{"", "", dir / "daemon.log", {}, true});
    ASSERT_TRUE(waitFor([&] { return !daemon->running() || ctl({"status"}).first == 0; }, kLong));
    ASSERT_TRUE(daemon->running()) << log();
  }

  std::pair<int, std::string> ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{bin + "/dynmxctl", "-s", sock()};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    int rc = runCommand(argv, &out);
    return {rc, out};
  }

  // ssh into `sshd` with `key` (BatchMode, no known_hosts); `prefix` runs ssh (ip netns exec).
  struct Ssh {
    int rc;
    std::string out;  // stdout and stderr
  };
  Ssh ssh(const TestSshd& sshd, const KeyPair& key, std::vector<std::string> prefix = {},
          const std::string& bind = "", const std::vector<std::string>& remote = {},
          const std::string& stdin_data = "") {
    std::vector<std::string> argv = std::move(prefix);
    for (auto a : {"/usr/bin/ssh", "-i"}) argv.push_back(a);
    argv.push_back(key.private_path);
    for (auto a :
         {"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
          "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-p"})
      argv.push_back(a);
    argv.push_back(std::to_string(sshd.port()));
    if (!bind.empty()) {
      argv.push_back("-b");
      argv.push_back(bind);
    }
    argv.push_back(sshd.user() + "@" + sshd.address());
    argv.insert(argv.end(), remote.begin(), remote.end());
    // Both streams into one file: the client's cron log sees both.
    std::string script = "exec \"$@\" 2>&1";
    std::vector<std::string> sh{"/bin/sh", "-c", script, "ssh"};
    sh.insert(sh.end(), argv.begin(), argv.end());
    Ssh r;
    r.rc = runCommand(sh, &r.out, stdin_data);
    return r;
  }

  std::string log() { return readFile(dir / "daemon.log"); }

  void TearDown() override {
    if (HasFailure() && daemon) std::cerr << "---- daemon log ----\n" << log();
    daemon.reset();
  }

  TempDir dir{"dynmx-checkin"};
  std::string bin;
  KeyPair tunnel_key;
  std::unique_ptr<Process> daemon;
};

}  // namespace

TEST_F(CheckinTest, ThroughSshdLeasesTheTcpPeerAndNothingTheClientSays) {
  VethNamespace ns;
  ASSERT_TRUE(ns.ok()) << "cannot create a network namespace with a veth pair (ip netns)";
  TempDir sd("dynmx-checkin-sshd");
  ASSERT_EQ(chmod(sd.path().c_str(), 0700), 0);
  TestSshd sshd(sd.path());
  sshd.setAddress(ns.hostAddr());
  KeyPair home = sshd.newClientKey("home_checkin", checkinCommand("home"));
  KeyPair office = sshd.newClientKey("office_checkin", checkinCommand("office"));
  KeyPair stranger = sshd.newClientKey("stranger_checkin", checkinCommand("stranger"));
  sshd.start();
  writeConfig();
  startDaemon();
  std::vector<std::string> in_ns{"/usr/sbin/ip", "netns", "exec", ns.name()};

  // The address written on the command line and on stdin is not the one leased.
  Ssh r = ssh(sshd, home, in_ns, "", {"checkin", "203.0.113.99"}, "203.0.113.99\n");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(
      r.out, "dynmx-checkin: client home from " + ns.peerAddr() + ": relay lease until 20"))
      << r.out;
  ASSERT_TRUE(waitFor([&] {
    return contains(log(), "lease: client=home addr=" + ns.peerAddr() + " source=checkin expires=");
  }));
  EXPECT_FALSE(contains(log(), "203.0.113.99")) << log();
  EXPECT_FALSE(contains(r.out, "203.0.113.99")) << r.out;
  // The check-in was a hint: the client's connection was tried at once (it is in backoff).
  EXPECT_TRUE(contains(log(), "client home checked in: connecting now")) << log();
  // A second check-in renews the lease; within the minute it is no second hint.
  r = ssh(sshd, home, in_ns);
  EXPECT_EQ(r.rc, 0) << r.out;
  ASSERT_TRUE(waitFor([&] {
    return contains(log(),
                    "lease: client=home addr=" + ns.peerAddr() + " source=checkin expires=") &&
           contains(log(), " (renewed)");
  })) << log();
  size_t hints = 0;
  for (size_t p = 0; (p = log().find("checked in: connecting now", p)) != std::string::npos; ++p)
    ++hints;
  EXPECT_EQ(hints, 1u) << log();

  // Unknown client: 67. Relay off: 77. Both decided before the daemon is asked.
  r = ssh(sshd, stranger, in_ns);
  EXPECT_EQ(r.rc, 67) << r.out;
  EXPECT_TRUE(contains(r.out, "client stranger from " + ns.peerAddr() +
                                  ": refused (no client of that name is configured)"))
      << r.out;
  r = ssh(sshd, office, in_ns);
  EXPECT_EQ(r.rc, 77) << r.out;
  EXPECT_TRUE(contains(r.out, "refused (relay is off for this client)")) << r.out;

  // From this host to its own address: the MX's own address (a proxy would lease itself).
  r = ssh(sshd, home, {}, ns.hostAddr());
  EXPECT_EQ(r.rc, 77) << r.out;
  EXPECT_TRUE(contains(r.out, "refused (this MX's own address)")) << r.out;

  // The daemon down: 75, try again later.
  daemon->signal(SIGTERM);
  ASSERT_TRUE(daemon->wait().has_value());
  r = ssh(sshd, home, in_ns);
  EXPECT_EQ(r.rc, 75) << r.out;
  EXPECT_TRUE(contains(r.out, "dynmx-tunneld cannot be reached")) << r.out;
}

// A check-in from a new address ends the client's check-in lease at its old one at once (the
// address moved); the new lease, never renewed, ends by itself after lease_lifetime. The client's
// second address B is from 198.19.0.0/16 (in 198.18.0.0/15 as well), added to its side of the veth
// pair, with a host route to it on this side so that sshd's answers find it.
TEST_F(CheckinTest, CheckinFromANewAddressEndsTheLeaseAtTheOldOneAndLeasesExpire) {
  VethNamespace ns;
  ASSERT_TRUE(ns.ok()) << "cannot create a network namespace with a veth pair (ip netns)";
  unsigned p = static_cast<unsigned>(getpid());
  const std::string a = ns.peerAddr();
  const std::string b =
      "198.19." + std::to_string(p % 250) + "." + std::to_string(p / 250 % 250 + 1);
  TempDir sd("dynmx-checkin-sshd");
  ASSERT_EQ(chmod(sd.path().c_str(), 0700), 0);
  TestSshd sshd(sd.path());
  sshd.setAddress(ns.hostAddr());
  KeyPair home = sshd.newClientKey("home_checkin", checkinCommand("home"));
  sshd.start();
  // Short enough to watch a lease end, long enough that the lease at A is still live when the
  // check-in from B comes (else A would have expired, not been superseded).
  writeConfig("", "", "20s");
  startDaemon();
  std::vector<std::string> in_ns{"/usr/sbin/ip", "netns", "exec", ns.name()};

  // `dynmxctl leases` (as root) has a line ADDRESS CLIENT SOURCE GRANTED EXPIRES per lease.
  auto leased = [&](const std::string& addr) {
    auto [rc, out] = ctl({"leases"});
    EXPECT_EQ(rc, 0) << out;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      std::istringstream f(line);
      std::string address, client, source;
      if (f >> address >> client >> source && address == addr && client == "home" &&
          source == "checkin")
        return true;
    }
    return false;
  };

  Ssh r = ssh(sshd, home, in_ns);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "dynmx-checkin: client home from " + a + ": relay lease until 20"))
      << r.out;
  EXPECT_TRUE(leased(a)) << ctl({"leases"}).second;

  ASSERT_EQ(runCommand({"/usr/sbin/ip", "netns", "exec", ns.name(), "ip", "addr", "add", b + "/32",
                        "dev", ns.peerIf()}),
            0);
  ASSERT_EQ(runCommand({"/usr/sbin/ip", "route", "add", b + "/32", "dev", ns.hostIf()}), 0);
  r = ssh(sshd, home, in_ns, b);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "dynmx-checkin: client home from " + b + ": relay lease until 20"))
      << r.out;
  EXPECT_TRUE(waitFor([&] {
    return contains(
        log(), "lease: client=home addr=" + a + " source=checkin ended (superseded by " + b + ")");
  })) << log();
  std::string listed = ctl({"leases"}).second;
  EXPECT_TRUE(leased(b)) << listed;
  EXPECT_FALSE(leased(a)) << listed;

  // Nothing renews the lease at B: it ends, and the log says so.
  EXPECT_TRUE(waitFor([&] { return !leased(b); }, kLong)) << ctl({"leases"}).second;
  EXPECT_TRUE(waitFor(
      [&] { return contains(log(), "lease: client=home addr=" + b + " source=checkin expired"); },
      kLong))
      << log();
  // The lease at A ended by supersession, not by running out.
  EXPECT_FALSE(contains(log(), "addr=" + a + " source=checkin expired")) << log();
}

TEST_F(CheckinTest, OverIPv6LeasesTheTcpPeer) {
  VethNamespace ns;
  ASSERT_TRUE(ns.ok()) << "cannot create a network namespace with a veth pair (ip netns)";
  if (!ns.ok6()) GTEST_SKIP() << "no IPv6 on this machine";
  TempDir sd("dynmx-checkin-sshd");
  ASSERT_EQ(chmod(sd.path().c_str(), 0700), 0);
  TestSshd sshd(sd.path());
  sshd.setAddress(ns.hostAddr6());
  KeyPair home = sshd.newClientKey("home_checkin", checkinCommand("home"));
  sshd.start();
  writeConfig();
  startDaemon();
  Ssh r = ssh(sshd, home, {"/usr/sbin/ip", "netns", "exec", ns.name()});
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(contains(
      r.out, "dynmx-checkin: client home from " + ns.peerAddr6() + ": relay lease until 20"))
      << r.out;
  EXPECT_TRUE(waitFor([&] {
    return contains(log(), "lease: client=home addr=" + ns.peerAddr6() + " source=checkin");
  })) << log();
}

TEST_F(CheckinTest, OverLoopbackIsRefused) {
  TempDir sd("dynmx-checkin-sshd");
  ASSERT_EQ(chmod(sd.path().c_str(), 0700), 0);
  TestSshd sshd(sd.path());  // on 127.0.0.1
  KeyPair home = sshd.newClientKey("home_checkin", checkinCommand("home"));
  sshd.start();
  writeConfig();
  startDaemon();
  for (const std::string from : {"127.0.0.2", "127.0.0.1"}) {
    Ssh r = ssh(sshd, home, {}, from);
    EXPECT_EQ(r.rc, 77) << r.out;
    EXPECT_TRUE(
        contains(r.out, "dynmx-checkin: client home from " + from + ": refused (loopback address)"))
        << r.out;
  }
  EXPECT_FALSE(contains(log(), "lease: client=home")) << log();
}

// The admin socket with real users: the socket's mode lets everyone connect (0666), so what each
// may do is decided by its credentials alone.
TEST_F(CheckinTest, AdminSocketChecksWhoAsks) {
  std::string tag = std::to_string(getpid() % 100000);
  TempGroup group("dxctl" + tag);
  ASSERT_TRUE(group.ok());
  TempAccount reader("dxrd" + tag, group.name());
  TempAccount other("dxot" + tag, "");
  TempAccount checkin("dxci" + tag, group.name());
  ASSERT_TRUE(reader.ok() && other.ok() && checkin.ok());
  writeConfig("control_group = \"" + group.name() + "\"\ncontrol_mode = \"0666\"\n",
              "checkin_user = \"" + checkin.name() + "\"\n");
  startDaemon();
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);

  auto as = [&](const std::string& user, std::vector<std::string> argv,
                std::vector<std::string> env = {}) {
    std::vector<std::string> cmd{"/usr/sbin/runuser", "-u", user, "--", "/usr/bin/env"};
    cmd.insert(cmd.end(), env.begin(), env.end());
    cmd.insert(cmd.end(), argv.begin(), argv.end());
    std::vector<std::string> sh{"/bin/sh", "-c", "exec \"$@\" 2>&1", "as"};
    sh.insert(sh.end(), cmd.begin(), cmd.end());
    std::string out;
    int rc = runCommand(sh, &out);
    return std::make_pair(rc, out);
  };
  auto dynmxctl = [&](const std::string& user, std::vector<std::string> args) {
    std::vector<std::string> argv{bin + "/dynmxctl", "-s", sock()};
    argv.insert(argv.end(), args.begin(), args.end());
    return as(user, argv);
  };
  struct Case {
    std::string user;
    std::vector<std::string> args;
    bool allowed;
  } cases[] = {
      {reader.name(), {"status"}, true},
      {reader.name(), {"queue"}, true},
      {reader.name(), {"flush"}, false},
      {reader.name(), {"reload"}, false},
      {reader.name(), {"checkin", "home", "198.51.100.7"}, false},
      {reader.name(), {"status", "--json"}, true},
      {reader.name(), {"delete", "0123456789AB"}, false},
      {reader.name(), {"delete", "ALL", "home"}, false},
      {reader.name(), {"bounce", "ALL", "home"}, false},
      {checkin.name(), {"bounce", "0123456789AB"}, false},
      {other.name(), {"delete", "ALL", "home"}, false},
      {other.name(), {"status"}, false},
      {other.name(), {"queue"}, false},
      {checkin.name(), {"status"}, false},
      {checkin.name(), {"hold", "0123456789AB"}, false},
      {"root", {"flush"}, true},
      {"root", {"reload"}, true},
      {"root", {"delete", "ALL", "home"}, true},
      {"root", {"bounce", "ALL", "home"}, true},
  };
  for (const auto& c : cases) {
    auto [rc, out] = dynmxctl(c.user, c.args);
    std::string what = c.user + " " + c.args[0];
    if (c.allowed) {
      EXPECT_EQ(rc, 0) << what << ": " << out;
    } else {
      EXPECT_EQ(rc, 1) << what << ": " << out;
      EXPECT_TRUE(contains(out, "dynmxctl: not permitted: " + c.args[0])) << what << ": " << out;
    }
  }
  EXPECT_TRUE(contains(log(), "not permitted: flush changes state")) << log();
  EXPECT_TRUE(contains(log(), "not permitted: delete changes state")) << log();
  // hostkey only looks: the control group may ask (the daemon then says there is nothing in
  // question), others may not.
  {
    auto [rc, out] = dynmxctl(reader.name(), {"hostkey", "home"});
    EXPECT_EQ(rc, 1) << out;
    EXPECT_FALSE(contains(out, "not permitted")) << out;
    EXPECT_TRUE(contains(out, "dynmxctl: client home is ")) << out;
    auto [rc2, out2] = dynmxctl(other.name(), {"hostkey", "home"});
    EXPECT_EQ(rc2, 1) << out2;
    EXPECT_TRUE(contains(out2, "dynmxctl: not permitted: hostkey")) << out2;
  }

  // The check-in account checks in with dynmx-checkin (as sshd would run it) and nothing else.
  auto r = as(checkin.name(), {bin + "/dynmx-checkin", "-c", conf(), "home"},
              {"SSH_CONNECTION=198.51.100.7 40000 203.0.113.25 22"});
  EXPECT_EQ(r.first, 0) << r.second;
  EXPECT_TRUE(
      contains(r.second, "dynmx-checkin: client home from 198.51.100.7: relay lease until 20"))
      << r.second;
  EXPECT_TRUE(contains(log(), "lease: client=home addr=198.51.100.7 source=checkin expires="))
      << log();
  // Another account in the same group may not check in: 77, and it says why.
  r = as(reader.name(), {bin + "/dynmx-checkin", "-c", conf(), "home"},
         {"SSH_CONNECTION=198.51.100.8 40000 203.0.113.25 22"});
  EXPECT_EQ(r.first, 77) << r.second;
  EXPECT_TRUE(contains(r.second, "not permitted: checkin is for the check-in account")) << r.second;
  EXPECT_FALSE(contains(log(), "addr=198.51.100.8")) << log();
}

TEST_F(CheckinTest, UsageAndConfigErrors) {
  writeConfig();
  auto run = [&](std::vector<std::string> argv, std::vector<std::string> env = {}) {
    std::vector<std::string> sh{"/bin/sh", "-c", "exec \"$@\" 2>&1", "run", "/usr/bin/env"};
    sh.insert(sh.end(), env.begin(), env.end());
    sh.insert(sh.end(), argv.begin(), argv.end());
    std::string out;
    int rc = runCommand(sh, &out);
    return std::make_pair(rc, out);
  };
  std::string ci = bin + "/dynmx-checkin";
  std::string conn = "SSH_CONNECTION=198.51.100.7 40000 203.0.113.25 22";
  EXPECT_EQ(run({ci, "-c", conf()}, {conn}).first, 64);
  EXPECT_EQ(run({ci, "-c", conf(), "home", "198.51.100.9"}, {conn}).first, 64);
  EXPECT_EQ(run({"-u", "SSH_CONNECTION", ci, "-c", conf(), "home"}).first, 64);
  EXPECT_EQ(run({ci, "-c", dir / "missing.toml", "home"}, {conn}).first, 78);
  auto help = run({ci, "--help"});
  EXPECT_EQ(help.first, 0);
  EXPECT_TRUE(contains(help.second, "usage: dynmx-checkin [-c FILE] NAME")) << help.second;
  auto check = run({ci, "-c", conf(), "--check-config"});
  EXPECT_EQ(check.first, 0) << check.second;
  EXPECT_TRUE(contains(check.second, "config OK")) << check.second;
  // No daemon: 75.
  auto down = run({ci, "-c", conf(), "home"}, {conn});
  EXPECT_EQ(down.first, 75) << down.second;
}

// The check-in account may do nothing but check in: root (or the daemon's own user) cannot be it.
TEST_F(CheckinTest, DaemonRefusesRootAsTheCheckinAccount) {
  writeConfig("", "checkin_user = \"root\"\n");
  std::string out;
  int rc = runCommand(
      {"/bin/sh", "-c", "exec \"$@\" 2>&1", "run", bin + "/dynmx-tunneld", "-f", "-c", conf()},
      &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_TRUE(contains(out, "relay.checkin_user root is root; expected a dedicated account"))
      << out;
}
