// smtp_client_fuzz.cpp: the SMTP engine must survive any bytes from the far end.
//
// The input is what the far end says, cut into chunks at 0xff bytes; after each chunk the engine's
// output is drained (as an always-writable channel would) and a transaction is started whenever
// it is Ready (with Options::overlap for inputs of even length). Invariants checked: the output
// never exceeds max_output plus command lines, a result has one entry per recipient tried, every
// transaction started gets exactly one result, and a session that ended stays ended.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tunneld/smtp/smtp_client.hpp"

namespace {

using dynmx::SteadyClock;
using dynmx::tunneld::ContentSource;
using dynmx::tunneld::SmtpClient;
using dynmx::tunneld::SmtpJob;

class Body : public ContentSource {
 public:
  dynmx::Result<std::string_view> next(size_t max) override {
    static const std::string kText = "Subject: x\r\n\r\n.dot\nbare\rcr\r\nend";
    size_t n = std::min(max, kText.size() - pos_);
    std::string_view v(kText.data() + pos_, n);
    pos_ += n;
    return v;
  }
  size_t pos_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  dynmx::Envelope env;
  env.sender = "a@example.org";
  env.envid = "e+1";
  for (const char* r : {"b@example.org", "c@example.org"}) {
    dynmx::SpoolRecipient sr;
    sr.address = r;
    sr.notify = "FAILURE";
    sr.orcpt = "rfc822;b@example.org";
    env.rcpts.push_back(sr);
  }
  SmtpClient::Options o;
  o.max_output = 1024;
  o.overlap = size % 2 == 0;  // both ways of pipelining transactions
  SteadyClock::time_point now{};
  SmtpClient c(o, now);
  Body body;
  int started = 0, results = 0;
  auto drain = [&] {
    for (int guard = 0; guard < 1000; ++guard) {
      auto out = c.output();
      if (out.size() > o.max_output + 4096) __builtin_trap();
      if (out.empty()) break;
      c.consumed(out.size(), now);
    }
  };
  size_t pos = 0;
  while (pos <= in.size()) {
    size_t cut = in.find('\xff', pos);
    if (cut == std::string_view::npos) cut = in.size();
    now += std::chrono::seconds(1);
    c.onInput(in.substr(pos, cut - pos), now);
    drain();
    while (auto r = c.takeResult()) {
      if (r->rcpts.size() != 2) __builtin_trap();
      ++results;
    }
    if (c.state() == SmtpClient::State::Ready && started < 3) {
      body = Body{};
      SmtpJob j;
      j.env = &env;
      j.rcpt_indexes = {0, 1};
      j.content = &body;
      j.size_hint = 40;
      c.start(j, now);
      ++started;
      drain();
    }
    if (auto d = c.deadline(); d && (cut % 7 == 0)) c.onTimeout(*d);
    pos = cut + 1;
  }
  c.onEof(now);
  while (auto r = c.takeResult()) ++results;
  if (results != started) __builtin_trap();
  auto st = c.state();
  if (st != SmtpClient::State::Closed && st != SmtpClient::State::Failed) __builtin_trap();
  c.onInput("250 ok\r\n", now);
  if (c.state() != st) __builtin_trap();
  return 0;
}
