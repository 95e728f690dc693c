// channel.hpp: SshChannel, the owner of one LIBSSH2_CHANNEL of an SshSession.
//
// Contract: an SshChannel moves, never copies, and never converts implicitly back to the raw
// handle (get() is explicit). Its orderly teardown has three steps, EOF, CLOSE (and the wait for
// the far end's CLOSE), free, and close() runs them without blocking: each step that answers
// "wait" (per SshSession::blocked) is repeated on the next call with the same arguments; the
// caller bounds the whole with a deadline and drops the connection when it passes. A channel
// belongs to its session: before the session is freed (which frees its channels) every
// SshChannel still holding a handle is left to it with leaveToSession(). Destroying an SshChannel
// that still holds a handle makes one non-blocking libssh2_channel_free attempt; if that must
// wait, the session frees the channel later.
// Failure behaviour: an error of the EOF or CLOSE step does not stop the teardown (libssh2 itself
// goes on closing); the read/write wrappers return libssh2's codes unchanged.
#pragma once

#include <libssh2.h>
#include <string>
#include <utility>

namespace dynmx::tunneld {

class SshSession;

class SshChannel {
 public:
  SshChannel() = default;
  // Takes over a channel libssh2 opened.
  explicit SshChannel(LIBSSH2_CHANNEL* ch) : ch_(ch) {}
  ~SshChannel();
  SshChannel(SshChannel&& o) noexcept
      : ch_(std::exchange(o.ch_, nullptr)), stage_(std::exchange(o.stage_, Stage::Open)) {}
  SshChannel& operator=(SshChannel&& o) noexcept;
  SshChannel(const SshChannel&) = delete;
  SshChannel& operator=(const SshChannel&) = delete;

  LIBSSH2_CHANNEL* get() const { return ch_; }
  explicit operator bool() const { return ch_ != nullptr; }

  // Runs the teardown steps as far as they go now; true when the channel is freed (the owner is
  // then empty), false to be called again. `op` names this channel in the session's output gate.
  bool close(SshSession& session, const void* op);
  // The session is about to be freed and frees the channel with it: forget the handle.
  void leaveToSession() { ch_ = nullptr; }

  // Thin wrappers, inline: they are on the path of every packet.
  int exec(const std::string& command) {
    return libssh2_channel_process_startup(ch_, "exec", 4, command.c_str(),
                                           static_cast<unsigned>(command.size()));
  }
  ssize_t read(char* buf, size_t len) { return libssh2_channel_read(ch_, buf, len); }
  ssize_t readStderr(char* buf, size_t len) { return libssh2_channel_read_stderr(ch_, buf, len); }
  ssize_t write(const char* buf, size_t len) { return libssh2_channel_write(ch_, buf, len); }
  bool eof() const { return libssh2_channel_eof(ch_) != 0; }

 private:
  enum class Stage { Open, EofSent, Closed };
  LIBSSH2_CHANNEL* ch_ = nullptr;
  Stage stage_ = Stage::Open;
};

}  // namespace dynmx::tunneld
