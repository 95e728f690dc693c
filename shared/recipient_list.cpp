// recipient_list.cpp: a client's list of recipients, and the table that re-reads its file on
// change (see recipient_list.hpp for the contract).
//
// The file is read through one descriptor (open, fstat, read) and its stamp taken from that
// fstat, so a file replaced between a lookup's stat and the read is read again at the next lookup
// rather than taken for the old one. Symbolic links are followed: administrators link such files.
#include "shared/recipient_list.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "shared/fd.hpp"
#include "shared/log.hpp"
#include "shared/routing.hpp"
#include "shared/text.hpp"

namespace dynmx {

namespace {

bool isDomainChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

// Lower-case letters, digits, '-' in dot-separated non-empty labels.
bool isDomain(std::string_view d) {
  if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.') return false;
  if (d.find("..") != std::string_view::npos) return false;
  for (char c : d)
    if (!isDomainChar(c)) return false;
  return true;
}

// A local part as SMTP carries it unquoted: printable, no blank, no brackets, no '@' or ','.
// Bytes >= 0x80 are allowed (SMTPUTF8 addresses).
bool isLocalPart(std::string_view l) {
  if (l.empty() || l.size() > 64) return false;
  for (unsigned char c : l)
    if (c <= 0x20 || c == 0x7f || c == '<' || c == '>' || c == ',' || c == '@' || c == '"')
      return false;
  return true;
}

std::string_view trimBlanks(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<std::string> normalizeRecipientEntry(
    std::string_view entry, std::string* why,
    const std::function<bool(std::string_view)>& domain_ok) {
  auto bad = [&](std::string message) -> std::optional<std::string> {
    if (why) *why = std::move(message);
    return std::nullopt;
  };
  std::string e = asciiLower(entry);
  if (!e.empty() && e.back() == '.') e.pop_back();  // "user@example.org." is the same address
  size_t at = e.rfind('@');
  if (at == std::string::npos)
    return bad("expected an address \"user@domain\" or a whole domain \"@domain\", got \"" +
               std::string(entry) + "\"");
  std::string_view local = std::string_view(e).substr(0, at);
  std::string_view domain = std::string_view(e).substr(at + 1);
  if (!isDomain(domain))
    return bad("expected a domain name after '@' (letters, digits, '-' and '.'), got \"" +
               std::string(entry) + "\"");
  if (!local.empty() && !isLocalPart(local))
    return bad(
        "expected a local part of 1 to 64 printable characters without blanks, quotes, "
        "'<', '>', ',' or '@' before the domain, got \"" +
        std::string(entry) + "\"");
  if (domain_ok && !domain_ok(domain))
    return bad("domain \"" + std::string(domain) +
               "\" is not one of this client's domains, so the entry \"" + std::string(entry) +
               "\" would never be consulted");
  return e;
}

std::function<bool(std::string_view)> clientDomainPredicate(std::vector<std::string> domains) {
  return [domains = std::move(domains)](std::string_view d) {
    for (const std::string& c : domains) {
      if (c == d) return true;
      if (!c.empty() && c.front() == '.' && d.size() > c.size() && d.ends_with(c)) return true;
    }
    return false;
  };
}

bool RecipientList::contains(std::string_view address) const {
  std::string a = asciiLower(bareAddress(address));
  if (!a.empty() && a.back() == '.') a.pop_back();
  size_t at = a.rfind('@');
  if (at == std::string::npos || at == 0) return false;
  if (entries_.count(a)) return true;
  // recipient_delimiter "+": "user+ext@domain" is also found as "user@domain".
  size_t plus = a.find('+');
  if (plus != std::string::npos && plus < at && plus > 0) {
    std::string base = a.substr(0, plus) + a.substr(at);
    if (entries_.count(base)) return true;
  }
  return entries_.count(a.substr(at)) > 0;
}

RecipientListParse parseRecipientList(std::string_view text,
                                      const std::function<bool(std::string_view)>& domain_ok) {
  RecipientListParse out;
  uint32_t lineno = 0;
  while (!text.empty() || lineno == 0) {
    ++lineno;
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    line = trimBlanks(line);
    // A comment starts a line, or follows a blank ('#' is valid inside a local part).
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '#' && (i == 0 || line[i - 1] == ' ' || line[i - 1] == '\t')) {
        line = trimBlanks(line.substr(0, i));
        break;
      }
    }
    if (line.empty()) {
      if (text.empty()) break;
      continue;
    }
    size_t blank = line.find_first_of(" \t");
    std::string_view entry = line.substr(0, blank);
    if (blank != std::string_view::npos) {
      // A Postfix recipient table line "user@domain OK" reads the same.
      std::string_view value = trimBlanks(line.substr(blank));
      if (asciiLower(value) != "ok") {
        out.errors.emplace_back(lineno,
                                "expected one address or @domain per line (optionally "
                                "followed by OK, as in a Postfix table), got \"" +
                                    std::string(line) + "\"");
        continue;
      }
    }
    std::string why;
    if (auto e = normalizeRecipientEntry(entry, &why, domain_ok))
      out.list.add(std::move(*e));
    else
      out.errors.emplace_back(lineno, std::move(why));
  }
  return out;
}

namespace {

struct FileRead {
  std::string text;
  struct stat st {};
};

Result<FileRead> readWhole(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return sysError(errno, path + ": cannot open the recipient file");
  FileRead r;
  if (::fstat(fd.get(), &r.st) != 0) return sysError(errno, path + ": cannot stat");
  if (!S_ISREG(r.st.st_mode)) return Error{0, path + ": the recipient file is not a regular file"};
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sysError(errno, path + ": cannot read the recipient file");
    if (n == 0) break;
    r.text.append(buf, static_cast<size_t>(n));
  }
  return r;
}

Result<RecipientList> parseFile(const std::string& path, const FileRead& r,
                                const std::function<bool(std::string_view)>& domain_ok) {
  RecipientListParse p = parseRecipientList(r.text, domain_ok);
  if (p.errors.empty()) return std::move(p.list);
  std::string msg;
  for (const auto& [line, why] : p.errors)
    msg += (msg.empty() ? "" : "\n") + path + ":" + std::to_string(line) + ": " + why;
  return Error{0, msg};
}

}  // namespace

Result<RecipientList> loadRecipientFile(const std::string& path,
                                        const std::function<bool(std::string_view)>& domain_ok) {
  Result<FileRead> r = readWhole(path);
  if (!r) return r.error();
  return parseFile(path, *r, domain_ok);
}

RecipientTable::RecipientTable(RecipientList inline_entries, std::string file,
                               std::function<bool(std::string_view)> domain_ok)
    : inline_(std::move(inline_entries)),
      file_(std::move(file)),
      domain_ok_(std::move(domain_ok)) {}

void RecipientTable::refresh() {
  struct stat st {};
  if (::stat(file_.c_str(), &st) == 0 && stamp_) {
    Stamp now{st.st_dev, st.st_ino, st.st_size,
              static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
    if (now == *stamp_) return;  // unchanged since the last read, good or bad
  }
  Result<FileRead> r = readWhole(file_);
  if (!r) {
    // Unreadable now: keep what we have; try again at the next lookup.
    if (problem_ != r.error().message)
      logf(LogLevel::Error, "recipient file: %s%s", r.error().message.c_str(),
           from_file_ ? "; keeping the entries read before" : "");
    problem_ = r.error().message;
    stamp_.reset();
    return;
  }
  stamp_ = Stamp{r->st.st_dev, r->st.st_ino, r->st.st_size,
                 static_cast<int64_t>(r->st.st_mtim.tv_sec) * 1000000000 + r->st.st_mtim.tv_nsec};
  Result<RecipientList> parsed = parseFile(file_, *r, domain_ok_);
  if (!parsed) {
    if (problem_ != parsed.error().message) {
      std::string_view all = parsed.error().message;
      while (!all.empty()) {
        std::string_view one = all.substr(0, all.find('\n'));
        all.remove_prefix(std::min(all.size(), one.size() + 1));
        logf(LogLevel::Error, "recipient file: %.*s%s", static_cast<int>(one.size()), one.data(),
             from_file_ ? "; keeping the entries read before" : "");
      }
    }
    problem_ = parsed.error().message;
    return;
  }
  if (from_file_)
    logf(LogLevel::Notice, "recipient file %s changed: %zu entries", file_.c_str(), parsed->size());
  from_file_ = std::move(*parsed);
  problem_.clear();
}

RecipientTable::Answer RecipientTable::lookup(std::string_view address, std::string* why) {
  if (inline_.contains(address)) return Answer::Listed;
  if (file_.empty()) return Answer::Unlisted;
  std::lock_guard<std::mutex> lock(mu_);
  refresh();
  if (!from_file_) {
    if (why) *why = problem_;
    return Answer::Unavailable;
  }
  return from_file_->contains(address) ? Answer::Listed : Answer::Unlisted;
}

std::unique_ptr<RecipientTable> makeRecipientTable(const ClientConfig& client) {
  if (!client.hasRecipientList()) return nullptr;
  RecipientList inline_entries;
  for (const std::string& r : client.recipients) inline_entries.add(r);
  return std::make_unique<RecipientTable>(std::move(inline_entries), client.recipient_file,
                                          clientDomainPredicate(client.domains));
}

}  // namespace dynmx
