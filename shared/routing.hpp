// routing.hpp: which client, if any, a recipient address belongs to.
//
// A pure function of the configured domains: the domain part of the address (after the last '@',
// angle brackets, a source route and a trailing dot removed) is compared case-insensitively with
// each client's domains; "example.org" matches only itself, ".example.org" every subdomain of it
// (not example.org itself). The most specific match wins. An address with no domain belongs to no
// client. Built once per configuration load; lookups do not allocate beyond the domain copy.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shared/config.hpp"

namespace dynmx {

class Router {
 public:
  Router() = default;
  explicit Router(const std::vector<ClientConfig>& clients);

  // Index into the clients vector given to the constructor, or nullopt.
  std::optional<size_t> route(std::string_view address) const;
  const std::string& clientName(size_t index) const { return names_[index]; }

 private:
  std::unordered_map<std::string, size_t> exact_;
  std::unordered_map<std::string, size_t> suffix_;  // key without the leading dot
  std::vector<std::string> names_;
};

// The domain of an address, lower-cased, or "" when it has none: "<a@B.Org.>" -> "b.org".
std::string addressDomain(std::string_view address);
// The address without angle brackets and source route: "<@a,@b:u@d>" -> "u@d", "<>" -> "".
std::string bareAddress(std::string_view address);

}  // namespace dynmx
