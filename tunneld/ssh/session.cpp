// session.cpp: SshSession: creation, bounded teardown and the output gate of one libssh2 session.
//
// Failure behaviour: teardown never reports errors (the connection is going anyway) and never
// waits: a goodbye the socket does not take at once is not sent, and a session libssh2 will not
// free after kFreeTries attempts is given up rather than block the event loop.
#include "tunneld/ssh/session.hpp"

#include <sys/socket.h>

#include "tunneld/ssh/channel.hpp"

namespace dynmx::tunneld {

SshSession SshSession::create(void* abstract) {
  LIBSSH2_SESSION* s = libssh2_session_init_ex(nullptr, nullptr, nullptr, abstract);
  if (s) libssh2_session_set_blocking(s, 0);
  return SshSession(s);
}

SshSession& SshSession::operator=(SshSession&& o) noexcept {
  if (this != &o) {
    close(nullptr);
    s_ = std::exchange(o.s_, nullptr);
    owner_ = std::exchange(o.owner_, nullptr);
    want_write_ = std::exchange(o.want_write_, false);
  }
  return *this;
}

void SshSession::close(const UniqueFd* sock) {
  owner_ = nullptr;
  want_write_ = false;
  if (!s_) return;
  // Say goodbye if the socket takes it at once; then make every further send fail fast so that
  // freeing the session cannot block.
  libssh2_session_disconnect(s_, "dynmx-tunneld closing");
  if (sock && *sock) ::shutdown(sock->get(), SHUT_RDWR);
  for (int i = 0; i < kFreeTries && libssh2_session_free(s_) == LIBSSH2_ERROR_EAGAIN; ++i) {
  }
  s_ = nullptr;
}

std::string SshSession::lastError() const {
  if (!s_) return "no session";
  char* msg = nullptr;
  int len = 0;
  int rc = libssh2_session_last_error(s_, &msg, &len, 0);
  return std::string(msg ? msg : "unknown error") + " (libssh2 error " + std::to_string(rc) + ")";
}

SshChannel SshSession::openChannel() {
  return SshChannel(libssh2_channel_open_session(s_));
}

// EAGAIN: wait; when the wait is for a half-sent packet, this operation now holds the session's
// output until it completes. LIBSSH2_ERROR_BAD_USE while another operation holds the output means
// "not now" as well (libssh2 refuses a second packet while one is half sent).
bool SshSession::blocked(int rc, const void* op) {
  if (rc == LIBSSH2_ERROR_EAGAIN) {
    int dirs = libssh2_session_block_directions(s_);
    if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) {
      if (!owner_) owner_ = op;
      want_write_ = true;
    } else if (owner_ == op) {
      owner_ = nullptr;
    }
    return true;
  }
  if (rc == LIBSSH2_ERROR_BAD_USE && owner_ && owner_ != op) return true;
  return false;
}

}  // namespace dynmx::tunneld
