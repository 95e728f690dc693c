// add_client.cpp: dynmxctl add-client: the client administrator's instructions (add_client.hpp).
#include "tunneld/control/add_client.hpp"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <sysexits.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "shared/host_name.hpp"
#include "shared/inet_addr.hpp"
#include "tunneld/ssh/host_keys.hpp"

namespace dynmx::tunneld {

std::string addClientText(const AddClientInput& in) {
  std::string from;
  for (auto& a : in.from) from += (from.empty() ? "" : ",") + a;
  std::string t;
  t += "# dynmx client " + in.name + " at " + in.host +
       ": what its administrator does there, and "
       "what you do here.\n\n";
  t += "# 1. On " + in.host + ", in ~" + in.user + "/.ssh/authorized_keys (" + in.user +
       ": the account the tunnel logs in as).\n"
       "#    The key: the tunnel's public key, read from " +
       in.key_source +
       ".\n"
       "#    from=: this MX's addresses, from " +
       in.from_source + ".\n";
  t += "restrict,command=\"" + in.sendmail + " -bs\",from=\"" + from + "\" " + in.key_type + " " +
       in.key_base64 + " " + in.key_comment + "\n\n";
  t += "# 2. If " + in.host + " runs sendmail: make " + in.user +
       " a trusted user, else sendmail -bs adds an\n"
       "#    X-Authentication-Warning to every message. In both submit.mc (-bs run by " +
       in.user +
       " goes\n"
       "#    through it) and sendmail.mc, then rebuild the .cf files and restart sendmail:\n";
  t += "define(`confTRUSTED_USERS', `" + in.user + "')dnl\n";
  t += "#    (the line \"T" + in.user +
       "\" in submit.cf and sendmail.cf does the same.)\n"
       "#    If it runs Postfix: nothing to do; Postfix's sendmail -bs adds no such warning.\n\n";
  t += "# 3. On " + in.host +
       ", its administrator reads the host key's fingerprint and sends it to you by another\n"
       "#    way than this network (telephone, signed mail):\n";
  t += "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub\n\n";
  t += "# 4. Here: add this block to " + in.config_path +
       " and run dynmxctl reload. The client shows\n"
       "#    host-key-unknown until you run dynmxctl trust " +
       in.name +
       " SHA256:... with the fingerprint you\n"
       "#    were sent (the key is never trusted on first use).\n";
  t += "[[client]]\nname = \"" + in.name + "\"\nhost = \"" + in.host + "\"\n";
  if (in.port != 22) t += "port = " + std::to_string(in.port) + "\n";
  t += "user = \"" + in.user + "\"\n";
  t += "domains = [\"example.org\"]  # the mail domains " + in.host + " receives\n";
  return t;
}

namespace {

// An SSH "string" (uint32 length, then the octets) at `pos` of `b`.
std::optional<std::string> sshString(const std::string& b, size_t& pos) {
  if (pos > b.size() || b.size() - pos < 4) return std::nullopt;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<unsigned char>(b[pos + i]);
  pos += 4;
  if (b.size() - pos < n) return std::nullopt;
  std::string s = b.substr(pos, n);
  pos += n;
  return s;
}

std::optional<std::string> readText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The first public key of an "openssh-key-v1" private key file: its header is not encrypted.
std::optional<std::string> publicBlobOfPrivateKey(const std::string& text) {
  const std::string begin = "-----BEGIN OPENSSH PRIVATE KEY-----";
  const std::string end = "-----END OPENSSH PRIVATE KEY-----";
  size_t b = text.find(begin), e = text.find(end);
  if (b == std::string::npos || e == std::string::npos || e < b) return std::nullopt;
  std::string b64;
  for (size_t i = b + begin.size(); i < e; ++i)
    if (text[i] != '\n' && text[i] != '\r' && text[i] != ' ') b64 += text[i];
  auto raw = base64Decode(b64);
  const std::string magic("openssh-key-v1\0", 15);
  if (!raw || raw->compare(0, magic.size(), magic) != 0) return std::nullopt;
  size_t pos = magic.size();
  for (int i = 0; i < 3; ++i)  // cipher, kdf name, kdf options
    if (!sshString(*raw, pos)) return std::nullopt;
  if (raw->size() - pos < 4) return std::nullopt;
  pos += 4;  // the number of keys
  return sshString(*raw, pos);
}

}  // namespace

Result<PublicKey> tunnelPublicKey(const std::string& identity) {
  if (auto text = readText(identity)) {
    auto blob = publicBlobOfPrivateKey(*text);
    if (blob && !blobKeyType(*blob).empty()) return PublicKey{blobKeyType(*blob), *blob, identity};
  }
  std::string pub = identity + ".pub";
  auto text = readText(pub);
  if (!text) return Error{0, "cannot read the tunnel's public key from " + identity + " or " + pub};
  std::string why;
  auto l = parseKnownHostLine("x " + text->substr(0, text->find('\n')), &why);
  if (!l || l->type.empty()) return Error{0, pub + ": not an OpenSSH public key: " + why};
  return PublicKey{l->type, l->blob, pub};
}

std::vector<std::string> mxAddresses() {
  std::vector<std::string> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr) continue;
    socklen_t len = i->ifa_addr->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    auto a = InetAddr::fromSockaddr(i->ifa_addr, len);
    if (!a || a->isLoopback() || a->isLinkLocal() || a->isUnspecified()) continue;
    if (std::find(out.begin(), out.end(), a->str()) == out.end()) out.push_back(a->str());
  }
  freeifaddrs(list);
  return out;
}

namespace {

bool validWord(const std::string& s, const char* extra) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          std::string(extra).find(c) != std::string::npos))
      return false;
  return true;
}

// Options after NAME HOST; an error message, or "" when they parse.
std::string parseOptions(const std::vector<std::string>& args, AddClientInput& in) {
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (i + 1 >= args.size()) return "add-client: " + a + ": expected a value";
    const std::string& v = args[++i];
    if (a == "--from") {
      in.from.clear();
      size_t start = 0;
      while (start <= v.size()) {
        size_t comma = v.find(',', start);
        std::string one = v.substr(start, comma == std::string::npos ? comma : comma - start);
        auto addr = InetAddr::parse(one);
        if (!addr) return "add-client: --from: \"" + one + "\" is not an IPv4 or IPv6 address";
        in.from.push_back(addr->str());
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      in.from_source = "as given with --from";
    } else if (a == "--user" && validWord(v, "._-")) {
      in.user = v;
    } else if (a == "--sendmail" && !v.empty() && v[0] == '/' && validWord(v, "/._-+")) {
      in.sendmail = v;
    } else if (a == "--port" && v.size() <= 5 && validWord(v, "") &&
               v.find_first_not_of("0123456789") == std::string::npos && std::stoi(v) > 0 &&
               std::stoi(v) < 65536) {
      in.port = static_cast<uint16_t>(std::stoi(v));
    } else {
      return "add-client: bad option " + a + " " + v;
    }
  }
  return "";
}

}  // namespace

int addClientCommand(const Config& cfg, const std::vector<std::string>& args, std::FILE* out,
                     std::FILE* err) {
  if (args.size() < 2) {
    std::fprintf(err,
                 "usage: dynmxctl add-client NAME HOST [--from ADDR[,ADDR...]] [--user USER] "
                 "[--port PORT] [--sendmail PATH]\n");
    return EX_USAGE;
  }
  AddClientInput in;
  in.name = args[0];
  in.host = args[1];
  in.config_path = cfg.path;
  if (!validWord(in.name, "._-") || !validWord(in.host, ".-:")) {
    std::fprintf(err,
                 "dynmxctl: add-client: expected a client name (letters, digits, '.', '_', "
                 "'-') and a host name or address\n");
    return EX_USAGE;
  }
  if (cfg.findClient(in.name))
    std::fprintf(err, "dynmxctl: add-client: note: %s already has a client named %s\n",
                 cfg.path.c_str(), in.name.c_str());
  in.from = cfg.relay.mx_addresses.empty() ? mxAddresses() : std::vector<std::string>{};
  for (auto& a : cfg.relay.mx_addresses) in.from.push_back(a.str());
  in.from_source = cfg.relay.mx_addresses.empty()
                       ? "this host's interfaces, loopback and link-local left out; behind NAT, "
                         "give the public ones with --from"
                       : "relay.mx_addresses in " + cfg.path;
  if (std::string e = parseOptions(args, in); !e.empty()) {
    std::fprintf(err, "dynmxctl: %s\n", e.c_str());
    return EX_USAGE;
  }
  if (in.from.empty()) {
    std::fprintf(err,
                 "dynmxctl: add-client: no address of this host found for from=; give them "
                 "with --from\n");
    return EX_USAGE;
  }
  const ClientConfig* cc = cfg.findClient(in.name);
  auto key = tunnelPublicKey(cc ? cc->identityFile(cfg.tunneld) : cfg.tunneld.identity);
  if (!key) {
    std::fprintf(err, "dynmxctl: add-client: %s\n", key.error().message.c_str());
    return EX_NOINPUT;
  }
  in.key_type = key->type;
  in.key_base64 = base64Encode(key->blob);
  in.key_source = key->source;
  in.key_comment = "dynmx@" + hostNameOr(cfg.tunneld.hostname);
  std::fputs(addClientText(in).c_str(), out);
  return EX_OK;
}

}  // namespace dynmx::tunneld
