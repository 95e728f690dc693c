// http_request.hpp: the request side of the metrics endpoint's HTTP/1.1, and its replies.
//
// Contract: parseHttpRequest() reads the bytes a scraper sent so far (at most kMaxHttpRequest):
// Incomplete until the blank line that ends the head; then Complete with the method, the path
// (the target up to any '?') and the Accept header, or Bad with the status to answer (400 for a
// malformed head, 431 for a head longer than kMaxHttpRequest, 505 for a version other than
// HTTP/1.0 or 1.1). A request body is never read (a scrape has none). Lines may end in CRLF or
// LF. It is pure, total and fuzzed (tests/fuzz/http_request_fuzz.cpp): the bytes come from
// anyone who can reach metrics_listen. routeMetricsRequest() decides the answer: GET or HEAD of
// /metrics is 200, another path 404, another method 405. httpResponse() writes a whole reply
// with Content-Length and "Connection: close" (one request per connection).
// Failure behaviour: none; bad input is a Bad result, never an exception.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace dynmx::tunneld {

inline constexpr size_t kMaxHttpRequest = 8192;

struct HttpRequest {
  enum class State { Incomplete, Complete, Bad } state = State::Incomplete;
  int status = 0;  // Bad: the status to answer
  std::string method, path, accept;
};

HttpRequest parseHttpRequest(std::string_view bytes);

enum class MetricsRoute { Metrics, NotFound, MethodNotAllowed };
MetricsRoute routeMetricsRequest(const HttpRequest& r);

// A reply: status line, Content-Type, Content-Length, Connection: close, the extra header lines
// (each ending in CRLF), then the body unless head_only.
std::string httpResponse(int status, std::string_view content_type, std::string_view body,
                         bool head_only = false, std::string_view extra_headers = {});

}  // namespace dynmx::tunneld
