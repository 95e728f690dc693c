// daemon_verify.cpp: the admin socket's "verify CLIENT RECIPIENT" (dynmx-milter's question), wired
// to the Verifier and the clients' connections (see daemon.hpp and tunneld/verify/verifier.hpp).
//
// The request's connection stops reading and waits; the Verifier calls back exactly once (at once
// from the cache, after a probe, or at the deadline, the client's verify_timeout), and the answer
// line is sent then. A serial number per waiting connection makes sure an answer never reaches
// another connection that was given the same descriptor.
#include <poll.h>

#include "shared/log.hpp"
#include "tunneld/daemon.hpp"

namespace dynmx::tunneld {

namespace {
// The admin connection outlives the answer's deadline by this much at most.
constexpr auto kVerifyConnSlack = std::chrono::seconds(5);
}  // namespace

void Daemon::startVerify(int fd, const ControlRequest& req) {
  loop_.setEvents(fd, 0);  // nothing more to read; POLLOUT once the answer is there
  const ClientConfig* cc = cfg_.findClient(req.arg);
  auto deadline = time_.steady() + (cc ? cc->verify_timeout : Seconds(5));
  if (auto c = conns_.find(fd); c != conns_.end()) {
    c->second->replied = true;
    if (c->second->timer) loop_.cancelTimer(c->second->timer);
    c->second->timer = loop_.addTimer(deadline + kVerifyConnSlack, [this, fd]() {
      auto it = conns_.find(fd);
      if (it != conns_.end()) it->second->timer = 0;
      verify_waiting_.erase(fd);
      closeControl(fd);
    });
  }
  uint64_t serial = ++verify_serial_;
  verify_waiting_[fd] = serial;
  auto ce = clients_.find(req.arg);
  bool connected = ce != clients_.end() && ce->second.client->connected();
  verifier_->request(req.arg, req.rcpt, connected, deadline,
                     [this, fd, serial](const VerifyAnswer& a) { verifyAnswered(fd, serial, a); });
  if (ce != clients_.end()) service(ce->second);  // opens the probe channel, or uses it
  armVerifyTimer();
}

void Daemon::verifyAnswered(int fd, uint64_t serial, const VerifyAnswer& answer) {
  auto w = verify_waiting_.find(fd);
  if (w == verify_waiting_.end() || w->second != serial) return;  // that connection is gone
  verify_waiting_.erase(w);
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  ControlReply reply;
  reply.lines.push_back(formatVerifyLine(answer));
  it->second->out = formatControlReply(reply);
  loop_.setEvents(fd, POLLOUT);
}

void Daemon::armVerifyTimer() {
  if (verify_timer_) loop_.cancelTimer(verify_timer_);
  verify_timer_ = 0;
  auto at = verifier_->nextDeadline();
  if (!at) return;
  verify_timer_ = loop_.addTimer(*at, [this]() {
    verify_timer_ = 0;
    verifier_->expire(time_.steady());
    armVerifyTimer();
  });
}

}  // namespace dynmx::tunneld
