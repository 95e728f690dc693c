// address_fuzz.cpp: recipient addresses come from SMTP clients; routing them must never crash and
// must only ever answer with a configured client.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shared/routing.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dynmx::Router router = [] {
    std::vector<dynmx::ClientConfig> clients(2);
    clients[0].name = "home";
    clients[0].domains = {"home.example.org", ".lan.example.org"};
    clients[1].name = "office";
    clients[1].domains = {"office.example.com"};
    return dynmx::Router(clients);
  }();
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto idx = router.route(in);
  if (idx && *idx > 1) __builtin_trap();
  std::string bare = dynmx::bareAddress(in);
  std::string dom = dynmx::addressDomain(in);
  if (bare.size() > in.size() || dom.size() > in.size()) __builtin_trap();
  return 0;
}
