// log.cpp: syslog (facility mail) or stderr lines for administrators.
//
// One mutex serialises writers so that lines from threads never interleave on stderr. A failing
// write to stderr is ignored: logging must never take the mail path down.
#include "shared/log.hpp"

#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace dynmx {
namespace {

std::mutex g_mu;
std::string g_ident = "dynmx";
bool g_stderr = true;
LogLevel g_min = LogLevel::Info;
std::atomic<void (*)(LogLevel, std::string_view)> g_capture{nullptr};

int syslogPriority(LogLevel l) {
  switch (l) {
    case LogLevel::Debug: return LOG_DEBUG;
    case LogLevel::Info: return LOG_INFO;
    case LogLevel::Notice: return LOG_NOTICE;
    case LogLevel::Warning: return LOG_WARNING;
    case LogLevel::Error: return LOG_ERR;
    case LogLevel::Critical: return LOG_CRIT;
  }
  return LOG_INFO;
}

const char* levelPrefix(LogLevel l) {
  switch (l) {
    case LogLevel::Warning: return "warning: ";
    case LogLevel::Error: return "error: ";
    case LogLevel::Critical: return "fatal: ";
    default: return "";
  }
}

}  // namespace

void logInit(const std::string& ident, bool to_stderr, LogLevel min_level) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_ident = ident;
  g_stderr = to_stderr;
  g_min = min_level;
  if (!to_stderr) openlog(g_ident.c_str(), LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void logLine(LogLevel level, std::string_view line) {
  if (auto* sink = g_capture.load()) sink(level, line);
  if (level < g_min) return;
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_stderr) {
    syslog(syslogPriority(level), "%s%.*s", levelPrefix(level), static_cast<int>(line.size()),
           line.data());
    return;
  }
  char stamp[32];
  std::time_t now = std::time(nullptr);
  struct tm tm;
  localtime_r(&now, &tm);
  std::strftime(stamp, sizeof stamp, "%b %e %H:%M:%S", &tm);
  std::string out;
  out.reserve(line.size() + 64);
  out += stamp;
  out += ' ';
  out += g_ident;
  out += '[';
  out += std::to_string(getpid());
  out += "]: ";
  out += levelPrefix(level);
  out += line;
  out += '\n';
  ssize_t ignored = ::write(STDERR_FILENO, out.data(), out.size());
  (void)ignored;
}

void logf(LogLevel level, const char* fmt, ...) {
  char small[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (static_cast<size_t>(n) < sizeof small) {
    logLine(level, std::string_view(small, static_cast<size_t>(n)));
    return;
  }
  std::string big(static_cast<size_t>(n) + 1, '\0');
  va_start(ap, fmt);
  std::vsnprintf(big.data(), big.size(), fmt, ap);
  va_end(ap);
  big.resize(static_cast<size_t>(n));
  logLine(level, big);
}

void logCaptureForTest(void (*sink)(LogLevel, std::string_view)) { g_capture.store(sink); }

}  // namespace dynmx
