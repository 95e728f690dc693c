// check_config_test.cpp: every dynmx program takes -c FILE --check-config and answers the same way:
// "config OK" and exit 0, or every error as file:line:col: key: message and exit 78 (EX_CONFIG);
// and every program answers --help and --version alike: on standard output, exit 0.
#include <sys/wait.h>
#include <sysexits.h>

#include <gtest/gtest.h>

#include "tests/harness/harness.hpp"

namespace dynmx::test {
namespace {

int runCheck(const std::string& program, const std::string& config, std::string* out,
             std::string* err, const TempDir& dir) {
  SpawnOptions o;
  o.stdout_path = dir / (program + ".out");  // the harness appends: one file per program
  o.stderr_path = dir / (program + ".err");
  Process p({binDir() + "/" + program, "-c", config, "--check-config"}, o);
  auto st = p.wait(std::chrono::seconds(60));
  *out = readFile(dir / (program + ".out"));
  *err = readFile(dir / (program + ".err"));
  return st && WIFEXITED(*st) ? WEXITSTATUS(*st) : -1;
}

TEST(CheckConfig, EveryProgramSaysOkForTheShippedSample) {
  TempDir dir("dynmx-checkconfig");
  // The shipped sample with its defaults; dynmx-tunneld is not asked: the sample's identity file
  // does not exist on a test machine.
  for (std::string prog : {"dynmx-milter", "dynmx-enqueue", "dynmxctl"}) {
    std::string out, err;
    EXPECT_EQ(runCheck(prog, std::string(DYNMX_SOURCE_DIR) + "/etc/dynmx.toml", &out, &err, dir), 0)
        << prog << ": " << err;
    EXPECT_EQ(out, "config OK\n") << prog;
  }
}

TEST(CheckConfig, EveryProgramListsEveryErrorWithItsLocation) {
  TempDir dir("dynmx-checkconfig");
  writeFile(dir / "bad.toml",
            "[spool]\ndir = \"relative\"\n[tunneld]\nkeepalive = \"30 seconds\"\n");
  for (std::string prog : {"dynmx-milter", "dynmx-enqueue", "dynmx-tunneld", "dynmxctl"}) {
    std::string out, err;
    EXPECT_EQ(runCheck(prog, dir / "bad.toml", &out, &err, dir), EX_CONFIG) << prog;
    EXPECT_NE(err.find(dir / "bad.toml:2:7: spool.dir: expected an absolute path"), std::string::npos)
        << prog << ": " << err;
    EXPECT_NE(err.find(dir / "bad.toml:4:13: tunneld.keepalive: expected a duration"),
              std::string::npos)
        << prog << ": " << err;
    EXPECT_EQ(out.find("config OK"), std::string::npos) << prog;
  }
}

// Runs `program arg` and returns its exit status, with stdout and stderr.
int runOne(const std::string& program, const std::string& arg, std::string* out,
           std::string* err, const TempDir& dir) {
  SpawnOptions o;
  std::string base = dir / (program + arg);
  o.stdout_path = base + ".out";
  o.stderr_path = base + ".err";
  Process p({binDir() + "/" + program, arg}, o);
  auto st = p.wait(std::chrono::seconds(60));
  *out = readFile(base + ".out");
  *err = readFile(base + ".err");
  return st && WIFEXITED(*st) ? WEXITSTATUS(*st) : -1;
}

TEST(CommandLine, EveryProgramAnswersHelpAndVersionOnStandardOutput) {
  TempDir dir("dynmx-cmdline");
  for (std::string prog : {"dynmx-milter", "dynmx-enqueue", "dynmx-tunneld", "dynmxctl",
                           "dynmx-checkin", "dynmx-relaymap"}) {
    std::string out, err;
    EXPECT_EQ(runOne(prog, "--help", &out, &err, dir), 0) << prog << ": " << err;
    EXPECT_EQ(out.rfind("usage: " + prog, 0), 0u) << prog << ": " << out;
    EXPECT_EQ(err, "") << prog;
    EXPECT_EQ(runOne(prog, "--version", &out, &err, dir), 0) << prog << ": " << err;
    EXPECT_EQ(out, prog + " (dynmx) " DYNMX_VERSION "\n") << prog;
    EXPECT_EQ(err, "") << prog;
  }
}

}  // namespace
}  // namespace dynmx::test
