// channel.cpp: SshChannel's teardown: EOF, CLOSE, free, one step at a time.
//
// Failure behaviour: a step that must wait returns to the caller (who holds the deadline); an
// error of the EOF or CLOSE step moves on to the next step, as libssh2's own close does; an error
// of the free step drops the handle (the session frees what is left of it).
#include "tunneld/ssh/channel.hpp"

#include "tunneld/ssh/session.hpp"

namespace dynmx::tunneld {

SshChannel::~SshChannel() {
  if (ch_) (void)libssh2_channel_free(ch_);  // one try; on EAGAIN the session frees it
}

SshChannel& SshChannel::operator=(SshChannel&& o) noexcept {
  if (this != &o) {
    if (ch_) (void)libssh2_channel_free(ch_);
    ch_ = std::exchange(o.ch_, nullptr);
    stage_ = std::exchange(o.stage_, Stage::Open);
  }
  return *this;
}

bool SshChannel::close(SshSession& session, const void* op) {
  while (ch_) {
    int rc = 0;
    switch (stage_) {
      case Stage::Open:
        rc = libssh2_channel_send_eof(ch_);
        break;
      case Stage::EofSent:
        rc = libssh2_channel_close(ch_);  // also waits for the far end's CLOSE
        break;
      case Stage::Closed:
        rc = libssh2_channel_free(ch_);
        break;
    }
    if (session.blocked(rc, op)) return false;
    session.released(op);
    switch (stage_) {
      case Stage::Open:
        stage_ = Stage::EofSent;
        break;
      case Stage::EofSent:
        stage_ = Stage::Closed;
        break;
      case Stage::Closed:
        ch_ = nullptr;
        stage_ = Stage::Open;
        break;
    }
  }
  return true;
}

}  // namespace dynmx::tunneld
