// routing.cpp: recipient address -> client, a pure function of the configured domains.
//
// Contract: "example.org" claims exactly that domain, ".example.org" every name below it (not
// example.org itself). Lookup takes the domain after the last '@' (a quoted local part may hold an
// '@' of its own), ignores case, angle brackets, a source route and one trailing dot, and tries the
// most specific claim first: the exact domain, then the subdomain claims of its parents from the
// nearest up. An address without a domain belongs to no client; nothing here fails or logs.
#include "shared/routing.hpp"

namespace dynmx {

namespace {

std::string lowerNoTrailingDot(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

// The address without blanks around it, angle brackets and source route; no copy.
std::string_view bareView(std::string_view a) {
  while (!a.empty() && (a.front() == ' ' || a.front() == '\t')) a.remove_prefix(1);
  while (!a.empty() && (a.back() == ' ' || a.back() == '\t')) a.remove_suffix(1);
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  // RFC 5321 source route "@a,@b:user@domain": everything up to the first ':' goes.
  if (!a.empty() && a.front() == '@') {
    auto colon = a.find(':');
    a = colon == std::string_view::npos ? std::string_view() : a.substr(colon + 1);
  }
  return a;
}

}  // namespace

Router::Router(const std::vector<ClientConfig>& clients) {
  names_.reserve(clients.size());
  for (size_t i = 0; i < clients.size(); ++i) {
    names_.push_back(clients[i].name);
    for (const auto& d : clients[i].domains) {
      // The loader rejects a domain claimed twice; should one get here anyway, the first wins.
      if (!d.empty() && d[0] == '.') {
        std::string key = lowerNoTrailingDot(std::string_view(d).substr(1));
        if (!key.empty()) suffix_.emplace(std::move(key), i);
      } else {
        std::string key = lowerNoTrailingDot(d);
        if (!key.empty()) exact_.emplace(std::move(key), i);
      }
    }
  }
}

std::optional<size_t> Router::route(std::string_view address) const {
  std::string domain = addressDomain(address);  // the one copy a lookup makes
  // An empty label ("user@.example.org", "a..b") is no domain anyone claims.
  if (domain.empty() || domain.front() == '.' || domain.find("..") != std::string::npos)
    return std::nullopt;
  if (auto it = exact_.find(domain); it != exact_.end()) return it->second;
  // Walk up the labels, in place: for a.b.example.org try b.example.org, example.org, org.
  for (auto dot = domain.find('.'); dot != std::string::npos; dot = domain.find('.')) {
    domain.erase(0, dot + 1);
    if (domain.empty()) break;
    if (auto it = suffix_.find(domain); it != suffix_.end()) return it->second;
  }
  return std::nullopt;
}

std::string bareAddress(std::string_view address) { return std::string(bareView(address)); }

std::string addressDomain(std::string_view address) {
  std::string_view bare = bareView(address);
  auto at = bare.rfind('@');
  if (at == std::string_view::npos) return {};
  return lowerNoTrailingDot(bare.substr(at + 1));
}

}  // namespace dynmx
