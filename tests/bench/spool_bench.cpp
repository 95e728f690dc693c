// spool_bench.cpp: messages/s committed to the spool by the library and by dynmx-enqueue, beside a
// baseline measured in the same run: the same bytes written to new files with one fsync each.
// Usage: spool_bench DYNMX_ENQUEUE_BINARY [WORKDIR]. Prints figures; asserts nothing.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "shared/spool.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

std::string makeMessage(size_t size) {
  std::string m = "From: bench@example.net\r\nTo: user@home.example.org\r\nSubject: bench\r\n\r\n";
  while (m.size() < size) m += "The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
  m.resize(size - 2);
  m += "\r\n";
  return m;
}

void prepareOrDie(dynmx::Spool& spool) {
  fs::create_directories(fs::path(spool.dir()).parent_path());
  if (auto st = spool.prepare(); !st) {
    std::fprintf(stderr, "spool_bench: %s\n", st.error().message.c_str());
    std::exit(1);
  }
}

double baseline(const std::string& dir, const std::string& msg, int n) {
  fs::create_directories(dir);
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    std::string p = dir + "/" + std::to_string(i);
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, msg.data(), msg.size()) != static_cast<ssize_t>(msg.size()) ||
        ::fsync(fd) != 0 || ::close(fd) != 0) {
      std::perror(p.c_str());
      std::exit(1);
    }
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return n / s;
}

double library(const std::string& dir, const std::string& msg, int n) {
  dynmx::Spool spool(dir);
  prepareOrDie(spool);
  dynmx::Envelope env;
  env.client = "home";
  env.sender = "bench@example.net";
  env.rcpts.push_back({});
  env.rcpts[0].address = "user@home.example.org";
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    auto w = spool.create();
    if (!w || !(*w)->write(msg) || !(*w)->commit(env)) {
      std::fprintf(stderr, "library commit failed\n");
      std::exit(1);
    }
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return n / s;
}

double enqueue(const std::string& bin, const std::string& dir, const std::string& msg, int n) {
  fs::create_directories(dir);
  dynmx::Spool spool(dir + "/spool");
  prepareOrDie(spool);
  std::string cfg = dir + "/dynmx.toml";
  FILE* f = std::fopen(cfg.c_str(), "w");
  std::fprintf(f,
               "[spool]\ndir = \"%s/spool\"\nmax_message_size = \"50M\"\n[[client]]\nname = \"home\"\n"
               "host = \"home.dyn.example.net\"\ndomains = [\"home.example.org\"]\n"
               "host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n",
               dir.c_str());
  std::fclose(f);
  std::string input = dir + "/message";
  f = std::fopen(input.c_str(), "w");
  std::fwrite(msg.data(), 1, msg.size(), f);
  std::fclose(f);
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int in = ::open(input.c_str(), O_RDONLY);
      ::dup2(in, 0);
      ::execl(bin.c_str(), "dynmx-enqueue", "-c", cfg.c_str(), "-f", "bench@example.net", "--",
              "user@home.example.org", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "dynmx-enqueue failed (status %d)\n", st);
      std::exit(1);
    }
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return n / s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: spool_bench DYNMX_ENQUEUE [WORKDIR]\n");
    return 64;
  }
  std::string bin = argv[1];
  std::string work = argc > 2 ? argv[2] : "/var/tmp/dynmx-spool-bench";
  fs::remove_all(work);
  std::printf("%-8s %-22s %10s %10s\n", "size", "writer", "msgs/s", "vs base");
  struct Size {
    const char* name;
    size_t bytes;
    int n;
  };
  for (Size sz : {Size{"4 KB", 4096, 2000}, Size{"1 MB", 1 << 20, 100}}) {
    std::string msg = makeMessage(sz.bytes);
    std::string d = work + "/" + std::to_string(sz.bytes);
    double base = baseline(d + "/base", msg, sz.n);
    double lib = library(d + "/lib", msg, sz.n);
    double enq = enqueue(bin, d + "/enq", msg, sz.n);
    std::printf("%-8s %-22s %10.0f %10s\n", sz.name, "baseline write+fsync", base, "1.00x");
    std::printf("%-8s %-22s %10.0f %9.2fx\n", sz.name, "spool library", lib, lib / base);
    std::printf("%-8s %-22s %10.0f %9.2fx\n", sz.name, "dynmx-enqueue process", enq, enq / base);
  }
  fs::remove_all(work);
  return 0;
}
