// session.hpp: SshSession, the owner of one non-blocking LIBSSH2_SESSION, and the session's
// output gate.
//
// Contract: an SshSession frees its session once, when it is closed, reset by a move or
// destroyed; it moves, never copies, and never converts implicitly back to the raw handle (get()
// is explicit). Teardown has steps and never blocks: one disconnect attempt (sent only if the
// socket takes it at once), shutdown(2) of the socket so that every further send fails fast, then
// libssh2_session_free, repeated at most kFreeTries times while it answers EAGAIN (libssh2 1.10
// may: REFERENCE.md). libssh2_session_free also frees every channel still open on the session,
// so SshChannel owners are left to it (SshChannel::leaveToSession) before the session closes.
//
// The output gate follows libssh2's non-blocking rules: after EAGAIN the same call is repeated
// with the same arguments, and a packet that is half sent blocks every other sender of the
// session until it is done. blocked() records which operation (any stable address naming it)
// holds the output; a second sender is told "not now" until released() by the holder.
// Failure behaviour: init failure is an empty SshSession; errors of calls made through get() are
// read back with lastErrno()/lastError(), which name the libssh2 error code.
#pragma once

#include <libssh2.h>
#include <string>
#include <utility>

#include "shared/fd.hpp"

namespace dynmx::tunneld {

class SshChannel;

class SshSession {
 public:
  // EAGAIN answers of libssh2_session_free accepted before the session is given up (leaked
  // rather than spin the event loop).
  static constexpr int kFreeTries = 100;

  SshSession() = default;
  // A new non-blocking session; `abstract` is handed to libssh2 callbacks. Empty on failure.
  static SshSession create(void* abstract);
  ~SshSession() { close(nullptr); }
  SshSession(SshSession&& o) noexcept
      : s_(std::exchange(o.s_, nullptr)),
        owner_(std::exchange(o.owner_, nullptr)),
        want_write_(std::exchange(o.want_write_, false)) {}
  SshSession& operator=(SshSession&& o) noexcept;
  SshSession(const SshSession&) = delete;
  SshSession& operator=(const SshSession&) = delete;

  LIBSSH2_SESSION* get() const { return s_; }
  explicit operator bool() const { return s_ != nullptr; }

  // Disconnect, shutdown(sock) when given, free (bounded; see above). Leaves the owner empty.
  void close(const UniqueFd* sock);

  int lastErrno() const { return s_ ? libssh2_session_last_errno(s_) : 0; }
  // "MESSAGE (libssh2 error N)", for log lines and status.
  std::string lastError() const;
  // libssh2_channel_open_session: an empty SshChannel when it did not open (see lastErrno()).
  SshChannel openChannel();

  // Output gate. blocked(): rc means "wait and call again" (EAGAIN, or BAD_USE while another
  // operation holds the output); on EAGAIN with the outbound direction blocked, `op` now holds it.
  bool blocked(int rc, const void* op);
  void released(const void* op) {
    if (owner_ == op) owner_ = nullptr;
  }
  // The handshake ends every half-sent packet of its own.
  void releaseAll() { owner_ = nullptr; }
  bool outputHeld() const { return owner_ != nullptr; }
  // A send is waiting for the socket to take more (ask poll() for POLLOUT).
  bool wantsWrite() const { return want_write_ || owner_ != nullptr; }
  // poll() reported the socket writable.
  void writable() { want_write_ = false; }

 private:
  explicit SshSession(LIBSSH2_SESSION* s) : s_(s) {}

  LIBSSH2_SESSION* s_ = nullptr;
  const void* owner_ = nullptr;  // the operation whose half-sent packet blocks other senders
  bool want_write_ = false;
};

}  // namespace dynmx::tunneld
