// log.hpp: log lines for administrators, in Postfix's shape ("QUEUEID: to=<...>, status=...").
//
// Lines go to syslog (facility mail) or, in the foreground, to stderr with a time stamp. Callers
// put the queue id first and never pass secrets. Thread-safe; a failing log write is ignored.
#pragma once

#include <string>
#include <string_view>

namespace dynmx {

enum class LogLevel { Debug = 0, Info, Notice, Warning, Error, Critical };

// ident: program name for syslog; to_stderr: foreground mode.
void logInit(const std::string& ident, bool to_stderr, LogLevel min_level = LogLevel::Info);
void logLine(LogLevel level, std::string_view line);
void logf(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// For tests: capture every line logged from now on (empty function: stop capturing).
void logCaptureForTest(void (*sink)(LogLevel, std::string_view));

}  // namespace dynmx
