// http_request.cpp: the metrics endpoint's HTTP request parser and replies (see http_request.hpp).
#include "tunneld/metrics/http_request.hpp"

#include <cctype>

namespace dynmx::tunneld {

namespace {

// RFC 9110 tchar.
bool tokenChar(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  if (std::isalnum(u)) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!tokenChar(c)) return false;
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The next line of `head` (without its CRLF or LF), taken off its front.
std::string_view takeLine(std::string_view& head) {
  size_t nl = head.find('\n');
  std::string_view line = head.substr(0, nl);
  head.remove_prefix(nl == std::string_view::npos ? head.size() : nl + 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

HttpRequest bad(int status) {
  HttpRequest r;
  r.state = HttpRequest::State::Bad;
  r.status = status;
  return r;
}

// "METHOD SP TARGET SP HTTP/1.x": the method and path into r; 0 or the status to answer.
int requestLine(std::string_view line, HttpRequest& r) {
  size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return 400;
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return 400;
  std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                   version = line.substr(sp2 + 1);
  if (!token(method) || target.empty() || target[0] != '/') return 400;
  for (char c : target) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return 400;
  }
  if (version.substr(0, 5) != "HTTP/") return 400;
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return 505;
  r.method = std::string(method);
  r.path = std::string(target.substr(0, target.find('?')));
  return 0;
}

}  // namespace

HttpRequest parseHttpRequest(std::string_view bytes) {
  // Blank lines before the request line are allowed (RFC 9112, 2.2).
  while (!bytes.empty() && (bytes.front() == '\r' || bytes.front() == '\n')) bytes.remove_prefix(1);
  size_t end = std::string_view::npos;
  for (size_t i = 0; i < bytes.size() && end == std::string_view::npos; ++i) {
    if (bytes[i] != '\n') continue;
    if (i + 1 < bytes.size() && bytes[i + 1] == '\n') end = i + 2;
    if (i + 2 < bytes.size() && bytes[i + 1] == '\r' && bytes[i + 2] == '\n') end = i + 3;
  }
  if (end == std::string_view::npos)
    return bytes.size() >= kMaxHttpRequest ? bad(431) : HttpRequest{};
  if (end > kMaxHttpRequest) return bad(431);
  std::string_view head = bytes.substr(0, end);
  HttpRequest r;
  if (int st = requestLine(takeLine(head), r)) return bad(st);
  for (std::string_view line = takeLine(head); !line.empty(); line = takeLine(head)) {
    size_t colon = line.find(':');
    // No folded lines (obs-fold) and no space before the colon: both are refused (RFC 9112).
    if (colon == std::string_view::npos || !token(line.substr(0, colon))) return bad(400);
    std::string_view value = trim(line.substr(colon + 1));
    for (char c : value)
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t') return bad(400);
    if (iequals(line.substr(0, colon), "accept")) {
      if (!r.accept.empty()) r.accept += ", ";
      r.accept += std::string(value);
    }
  }
  r.state = HttpRequest::State::Complete;
  return r;
}

MetricsRoute routeMetricsRequest(const HttpRequest& r) {
  if (r.path != "/metrics") return MetricsRoute::NotFound;
  if (r.method != "GET" && r.method != "HEAD") return MetricsRoute::MethodNotAllowed;
  return MetricsRoute::Metrics;
}

namespace {
const char* reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
  }
  return "Error";
}
}  // namespace

std::string httpResponse(int status, std::string_view content_type, std::string_view body,
                         bool head_only, std::string_view extra_headers) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) + "\r\n";
  out += "Content-Type: " + std::string(content_type) + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += "Connection: close\r\n";
  out += extra_headers;
  out += "\r\n";
  if (!head_only) out += body;
  return out;
}

}  // namespace dynmx::tunneld
