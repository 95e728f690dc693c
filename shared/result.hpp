// result.hpp: the value-or-error type for expected runtime failures.
//
// Expected failures (a full disk, a refused connection, a bad reply) are returned as values that the
// caller must look at; configuration errors stop the program; broken invariants abort. An Error
// carries the errno (or 0) and a message that already names the file or peer concerned.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace dynmx {

struct Error {
  int code = 0;         // errno value when the failure came from the system, else 0
  std::string message;  // names what failed and where, e.g. "fsync /var/spool/dynmx/tmp/X: EIO"
};

// errnoText: strerror that is safe on many threads (milter callbacks): the GNU strerror_r.
// sysError: "what: strerror(err)"; call with errno saved immediately after the failing call.
inline std::string errnoText(int err) {
  char buf[256];
  return ::strerror_r(err, buf, sizeof buf);
}
inline Error sysError(int err, const std::string& what) { return Error{err, what + ": " + errnoText(err)}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : e_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return !e_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *e_; }

 private:
  std::optional<Error> e_;
};

using Status = Result<void>;

}  // namespace dynmx
