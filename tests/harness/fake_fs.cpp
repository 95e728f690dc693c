// fake_fs.cpp: FakeFs, the tests' FsOps (see fake_fs.hpp). The decision whether a call fails is
// taken under the lock; the system call itself runs outside it, so that a thread blocked in fsync
// does not hold up the others.
#include "tests/harness/fake_fs.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string_view>

namespace dynmx::test {

namespace {

std::string lastComponent(const char* path) {
  return std::filesystem::path(path).filename().string();
}

std::string parentName(const char* path) {
  return std::filesystem::path(path).parent_path().filename().string();
}

bool contains(const std::string& part, const char* path) {
  return !part.empty() && std::string_view(path).find(part) != std::string_view::npos;
}

template <class T>
T failWith(int err) {
  errno = err;
  return static_cast<T>(-1);
}

}  // namespace

FakeFs::Verdict FakeFs::decide(Op op, int rule_err) {
  const int n = calls_++;
  const int k = op_calls_[static_cast<size_t>(op)]++;
  const NthRule& nth = nth_[static_cast<size_t>(op)];
  Verdict v;
  if (fault_at_ >= 0 && (fault_ == Fault::Fail ? n == fault_at_ : n >= fault_at_))
    v = {fault_err_, fault_ == Fault::TornWrite};
  else if (nth.n >= 0 && k == nth.n)
    v = {nth.err, false};
  else if (rule_err != 0)
    v = {rule_err, false};
  if (v.err != 0) triggered_ = true;
  return v;
}

int FakeFs::open(const char* path, int flags, mode_t mode) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    bool writing = (flags & (O_WRONLY | O_RDWR)) != 0;
    Verdict v = decide(Op::Open, writing && contains(fail_open_, path) ? EIO : 0);
    if (v.err != 0) return failWith<int>(v.err);
  }
  int fd = ::open(path, flags, mode);
  if (fd >= 0 && (flags & O_DIRECTORY)) {
    std::lock_guard<std::mutex> lk(mu_);
    dirs_[fd] = lastComponent(path);
  }
  return fd;
}

ssize_t FakeFs::write(int fd, const void* buf, size_t len) {
  Verdict v;
  {
    std::lock_guard<std::mutex> lk(mu_);
    bool over = write_budget_ && written_ + len > *write_budget_;
    v = decide(Op::Write, over ? budget_err_ : 0);
    if (v.err == 0) written_ += len;
  }
  if (v.err == 0) return ::write(fd, buf, len);
  if (v.torn && len > 1) {
    ssize_t half = ::write(fd, buf, len / 2);
    (void)half;
  }
  return failWith<ssize_t>(v.err);
}

ssize_t FakeFs::pwrite(int fd, const void* buf, size_t len, off_t off) {
  Verdict v;
  {
    std::lock_guard<std::mutex> lk(mu_);
    v = decide(Op::Pwrite, 0);
  }
  if (v.err == 0) return ::pwrite(fd, buf, len, off);
  if (v.torn && len > 1) {
    ssize_t half = ::pwrite(fd, buf, len / 2, off);
    (void)half;
  }
  return failWith<ssize_t>(v.err);
}

int FakeFs::fsync(int fd) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    int rule = 0;
    if (auto it = dirs_.find(fd); it != dirs_.end()) {
      trace_.push_back("fsync dir " + it->second);
      ++dir_syncs_[it->second];
      if (!fail_dir_sync_.empty() && it->second == fail_dir_sync_) rule = EIO;
    } else {
      trace_.push_back("fsync file");
    }
    Verdict v = decide(Op::Fsync, rule);
    if (v.err != 0) return failWith<int>(v.err);
  }
  return ::fsync(fd);
}

int FakeFs::close(int fd) {
  Verdict v;
  {
    std::lock_guard<std::mutex> lk(mu_);
    dirs_.erase(fd);  // before the close: the number may be reused at once by another thread
    v = decide(Op::Close, 0);
  }
  int rc = ::close(fd);
  return v.err != 0 ? failWith<int>(v.err) : rc;
}

int FakeFs::rename(const char* from, const char* to) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    trace_.push_back("rename " + parentName(from) + " " + parentName(to));
    Verdict v = decide(Op::Rename, 0);
    if (v.err != 0) return failWith<int>(v.err);
  }
  return ::rename(from, to);
}

int FakeFs::unlink(const char* path) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    trace_.push_back("unlink " + parentName(path));
    ++unlinks_;
    Verdict v = decide(Op::Unlink, contains(fail_unlink_, path) ? EIO : 0);
    if (v.err != 0) return failWith<int>(v.err);
  }
  return ::unlink(path);
}

int FakeFs::ftruncate(int fd, off_t len) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    Verdict v = decide(Op::Ftruncate, 0);
    if (v.err != 0) return failWith<int>(v.err);
  }
  return ::ftruncate(fd, len);
}

int FakeFs::mkdir(const char* path, mode_t mode) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    Verdict v = decide(Op::Mkdir, 0);
    if (v.err != 0) return failWith<int>(v.err);
  }
  return ::mkdir(path, mode);
}

void FakeFs::failAtCall(int n, Fault fault, int err) {
  std::lock_guard<std::mutex> lk(mu_);
  fault_at_ = n;
  fault_ = fault;
  fault_err_ = err;
}

void FakeFs::failNth(Op op, int n, int err) {
  std::lock_guard<std::mutex> lk(mu_);
  nth_[static_cast<size_t>(op)] = {n, err};
}

void FakeFs::failWritesAfter(size_t bytes, int err) {
  std::lock_guard<std::mutex> lk(mu_);
  write_budget_ = bytes;
  budget_err_ = err;
}

void FakeFs::failOpensFor(const std::string& path_part) {
  std::lock_guard<std::mutex> lk(mu_);
  fail_open_ = path_part;
}

void FakeFs::failUnlinksFor(const std::string& path_part) {
  std::lock_guard<std::mutex> lk(mu_);
  fail_unlink_ = path_part;
}

void FakeFs::failDirSyncsOf(const std::string& dir_name) {
  std::lock_guard<std::mutex> lk(mu_);
  fail_dir_sync_ = dir_name;
}

int FakeFs::calls() const {
  std::lock_guard<std::mutex> lk(mu_);
  return calls_;
}

bool FakeFs::triggered() const {
  std::lock_guard<std::mutex> lk(mu_);
  return triggered_;
}

int FakeFs::dirSyncs(const std::string& dir_name) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = dir_syncs_.find(dir_name);
  return it == dir_syncs_.end() ? 0 : it->second;
}

int FakeFs::unlinks() const {
  std::lock_guard<std::mutex> lk(mu_);
  return unlinks_;
}

std::vector<std::string> FakeFs::trace() const {
  std::lock_guard<std::mutex> lk(mu_);
  return trace_;
}

void FakeFs::clearTrace() {
  std::lock_guard<std::mutex> lk(mu_);
  trace_.clear();
}

void FakeFs::clearCounts() {
  std::lock_guard<std::mutex> lk(mu_);
  dir_syncs_.clear();
  unlinks_ = 0;
}

}  // namespace dynmx::test
