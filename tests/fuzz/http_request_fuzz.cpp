// http_request_fuzz.cpp: the metrics endpoint's HTTP request parser must survive any bytes (they
// come from anyone who can reach [tunneld] metrics_listen).
//
// Invariants: parseHttpRequest never throws or crashes; a Complete request has a token method and
// a path that starts with '/' and holds no space, '?' or control byte; a Bad one answers 400, 431
// or 505; Incomplete only while the input is shorter than kMaxHttpRequest; a Complete request
// stays Complete, with the same fields, when more bytes follow it (a body or pipelined junk is
// never read); negotiateFormat and the reply builder take any Accept value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "tunneld/metrics/exposition.hpp"
#include "tunneld/metrics/http_request.hpp"

using dynmx::tunneld::HttpRequest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  HttpRequest r = dynmx::tunneld::parseHttpRequest(in);
  switch (r.state) {
    case HttpRequest::State::Incomplete:
      if (in.size() >= dynmx::tunneld::kMaxHttpRequest) std::abort();
      break;
    case HttpRequest::State::Bad:
      if (r.status != 400 && r.status != 431 && r.status != 505) std::abort();
      break;
    case HttpRequest::State::Complete: {
      if (r.method.empty() || r.path.empty() || r.path[0] != '/') std::abort();
      for (char c : r.path) {
        unsigned char u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f || c == '?') std::abort();
      }
      std::string more(in);
      more += "GET /x HTTP/1.1\r\n\r\n";
      HttpRequest again = dynmx::tunneld::parseHttpRequest(more);
      if (again.state != HttpRequest::State::Complete || again.method != r.method ||
          again.path != r.path || again.accept != r.accept)
        std::abort();
      auto f = dynmx::tunneld::negotiateFormat(r.accept);
      std::string reply = dynmx::tunneld::httpResponse(200, dynmx::tunneld::contentType(f), r.path);
      if (reply.compare(0, 13, "HTTP/1.1 200 ") != 0) std::abort();
      break;
    }
  }
  (void)dynmx::tunneld::routeMetricsRequest(r);
  return 0;
}
