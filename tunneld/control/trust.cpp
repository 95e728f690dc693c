// trust.cpp: dynmxctl trust: the fingerprint check and the known_hosts rewrite (see trust.hpp).
#include "tunneld/control/trust.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "shared/fd.hpp"
#include "tunneld/control/control.hpp"
#include "tunneld/ssh/host_keys.hpp"

namespace dynmx::tunneld {

bool validFingerprint(std::string_view typed) {
  if (typed.size() != 7 + 43 || typed.substr(0, 7) != "SHA256:") return false;
  for (char c : typed.substr(7))
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
          c == '/'))
      return false;
  return true;
}

Result<KnownHostsEdit> replaceKnownHost(std::string_view text, std::string_view lookup_name,
                                        std::string_view type, std::string_view blob,
                                        std::string_view salt, const std::string& file) {
  KnownHostsEdit e;
  size_t start = 0, lineno = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    ++lineno;
    std::string why;
    auto l = parseKnownHostLine(line, &why);
    bool ours = l && !l->type.empty() && knownHostPatternMatches(l->patterns, lookup_name);
    if (ours && l->marker == KnownHostLine::Marker::Revoked && l->blob == blob)
      return Error{0, file + ":" + std::to_string(lineno) + ": that key is @revoked for " +
                          std::string(lookup_name) + "; nothing changed"};
    bool wildcard = l && l->patterns.rfind("|1|", 0) != 0 &&
                    l->patterns.find_first_of("*?") != std::string::npos;
    if (ours && wildcard && l->marker == KnownHostLine::Marker::None)
      e.wildcards.push_back(file + ":" + std::to_string(lineno));
    if (ours && !wildcard && l->marker == KnownHostLine::Marker::None) {
      ++e.removed;
      if (l->patterns.rfind("|1|", 0) == 0) e.hashed = true;
      continue;
    }
    e.text.append(line);
    e.text += '\n';
  }
  std::string name(lookup_name);
  if (e.hashed) {
    auto mac = hmacSha1(salt, lookup_name);
    name = "|1|" + base64Encode(salt) + "|" +
           base64Encode(std::string_view(reinterpret_cast<const char*>(mac.data()), mac.size()));
  }
  e.text += name + " " + std::string(type) + " " + base64Encode(blob) + "\n";
  return e;
}

Status replaceFile(const std::string& path, const std::string& text) {
  struct stat old {};
  bool existed = stat(path.c_str(), &old) == 0;
  if (!existed && errno != ENOENT) return sysError(errno, path);
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  std::string tmp = path + ".dynmxctl-tmp";
  mode_t mode = existed ? (old.st_mode & 07777) : 0644;
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return sysError(errno, tmp + " (a leftover of an interrupted dynmxctl trust?)");
  auto failed = [&](const std::string& what) {
    Error err = sysError(errno, tmp + ": " + what);
    unlink(tmp.c_str());
    return err;
  };
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd.get(), text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failed("write");
    off += static_cast<size_t>(n);
  }
  if (existed && fchown(fd.get(), old.st_uid, old.st_gid) != 0) return failed("fchown");
  if (fchmod(fd.get(), mode) != 0) return failed("fchmod");
  if (fsync(fd.get()) != 0) return failed("fsync");
  if (fd.closeChecked() != 0) return failed("close");
  if (rename(tmp.c_str(), path.c_str()) != 0) return failed("rename to " + path);
  UniqueFd d(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || fsync(d.get()) != 0) return sysError(errno, dir + ": fsync");
  return {};
}

namespace {

// The daemon's `hostkey CLIENT` record, or the exit status with the message printed.
Result<StatusRecord> fetchPresentedKey(const std::string& socket, const std::string& client,
                                       std::FILE* err, int* status) {
  auto reply = controlRequest(socket, "hostkey " + client);
  if (!reply) {
    std::fprintf(err, "dynmxctl: %s\n", reply.error().message.c_str());
    *status = reply.error().code == 0 ? EX_PROTOCOL : EX_UNAVAILABLE;
    return Error{0, ""};
  }
  if (!reply->ok) {
    std::fprintf(err, "dynmxctl: trust: %s\n", reply->error.c_str());
    *status = 1;
    return Error{0, ""};
  }
  auto rec = reply->lines.size() == 1 ? parseStatusRecord(reply->lines[0])
                                      : Result<StatusRecord>(Error{0, "expected one line"});
  if (!rec || rec->kind != "hostkey" || !rec->get("key") || !rec->get("type")) {
    std::fprintf(err, "dynmxctl: trust: the daemon's hostkey reply does not parse\n");
    *status = EX_PROTOCOL;
    return Error{0, ""};
  }
  return rec;
}

std::string readWhole(const std::string& path, bool* missing) {
  std::ifstream f(path, std::ios::binary);
  *missing = !f;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

int trustCommand(const Config& cfg, const std::string& socket, const std::string& client,
                 const std::string& typed, std::FILE* out, std::FILE* err) {
  const ClientConfig* cc = cfg.findClient(client);
  if (!cc) {
    std::fprintf(err, "dynmxctl: trust: no client named %s in %s\n", client.c_str(),
                 cfg.path.c_str());
    return 1;
  }
  if (!validFingerprint(typed)) {
    std::fprintf(err,
                 "dynmxctl: trust: \"%s\" is not a SHA256 fingerprint (as ssh-keygen -lf prints: "
                 "SHA256: and 43 characters)\n",
                 typed.c_str());
    return EX_USAGE;
  }
  int status = 0;
  auto rec = fetchPresentedKey(socket, client, err, &status);
  if (!rec) return status;
  auto blob = base64Decode(*rec->get("key"));
  const std::string& type = *rec->get("type");
  if (!blob || blobKeyType(*blob) != type) {
    std::fprintf(err, "dynmxctl: trust: the key the daemon sent for %s does not parse\n",
                 client.c_str());
    return EX_PROTOCOL;
  }
  std::string fp = fingerprint(*blob);  // computed here, from the whole key: not the daemon's word
  if (fp != typed) {
    std::fprintf(err,
                 "dynmxctl: trust: client %s presents %s %s, not the %s you typed; nothing "
                 "changed\n",
                 client.c_str(), type.c_str(), fp.c_str(), typed.c_str());
    return EX_DATAERR;
  }
  std::string key_line = type + " " + base64Encode(*blob);
  if (!cc->host_key.empty()) {
    std::fprintf(out,
                 "client %s is pinned with host_key in %s; nothing changed. Put this line in its "
                 "[[client]] block instead of the present one, then run dynmxctl reload:\n"
                 "host_key = \"%s\"\n",
                 client.c_str(), cfg.path.c_str(), key_line.c_str());
    return EX_OK;
  }
  if (geteuid() != 0) {
    std::fprintf(err, "dynmxctl: trust: must be run as root (it rewrites %s)\n",
                 cfg.tunneld.known_hosts.c_str());
    return EX_NOPERM;
  }
  const std::string& file = cfg.tunneld.known_hosts;
  bool missing = false;
  std::string text = readWhole(file, &missing);
  std::string salt(20, '\0');
  if (getrandom(salt.data(), salt.size(), 0) != static_cast<ssize_t>(salt.size())) {
    std::fprintf(err, "dynmxctl: trust: getrandom failed\n");
    return EX_OSERR;
  }
  std::string name = knownHostLookupName(cc->host, cc->port);
  auto edit = replaceKnownHost(text, name, type, *blob, salt, file);
  if (!edit) {
    std::fprintf(err, "dynmxctl: trust: %s\n", edit.error().message.c_str());
    return EX_DATAERR;
  }
  if (auto st = replaceFile(file, edit->text); !st) {
    std::fprintf(err, "dynmxctl: trust: %s; nothing changed\n", st.error().message.c_str());
    return EX_CANTCREAT;
  }
  std::fprintf(out, "%s: %zu line(s) for %s removed, %s %s added%s\n", file.c_str(), edit->removed,
               name.c_str(), type.c_str(), fp.c_str(), edit->hashed ? " (hashed)" : "");
  for (auto& w : edit->wildcards)
    std::fprintf(out,
                 "%s: covers %s through a wildcard pattern; kept (edit it by hand if it holds "
                 "the old key)\n",
                 w.c_str(), name.c_str());
  auto flush = controlRequest(socket, "flush " + client);
  if (!flush || !flush->ok)
    std::fprintf(err,
                 "dynmxctl: trust: the daemon did not take the reconnect (%s); %s connects "
                 "with the new key at its next attempt\n",
                 flush ? flush->error.c_str() : flush.error().message.c_str(), client.c_str());
  else
    std::fprintf(out, "client %s: reconnecting\n", client.c_str());
  return EX_OK;
}

}  // namespace dynmx::tunneld
