// recipient_list.hpp: the recipients a client accepts, from `recipients` and `recipient_file`.
//
// Contract: an entry is "user@domain" (one address) or "@domain" (every address of that domain),
// compared case-insensitively as a whole, as Postfix compares the keys of its recipient tables.
// A lookup tries, like Postfix's relay_recipient_maps with recipient_delimiter = "+": the whole
// address, then the address without its "+extension" ("user+ext@d" -> "user@d"), then "@domain".
// The file has one entry per line; blank lines and lines starting with '#' (after blanks) are
// ignored, as is anything after a '#' that follows a blank. parseRecipientList() reports every bad
// line, by line number, and keeps the good ones.
//
// RecipientTable is one client's list as the milter and dynmx-enqueue consult it: the entries of
// `recipients` plus those of `recipient_file`, which it reads once and then again whenever a
// lookup finds the file changed (inode, size or mtime differ from the copy it holds). Thread-safe.
//
// Failure behaviour: a file that cannot be read or has a bad line is an error with "file:line";
// when a changed file is bad, the table keeps the entries it had (logged once per change); when it
// never read the file, a lookup answers Unavailable (the caller tempfails, as Postfix does with
// "451 4.3.0 Temporary lookup failure").
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "shared/config.hpp"
#include "shared/result.hpp"

namespace dynmx {

// The entry in its compared form (lower case), or nullopt with *why saying what was expected.
// `domain_ok`, when given, says whether a (lower-case) domain belongs to the client.
std::optional<std::string> normalizeRecipientEntry(
    std::string_view entry, std::string* why,
    const std::function<bool(std::string_view)>& domain_ok = {});

// Whether a lower-case domain is one of `domains` as [[client]] domains spells them ("example.org"
// itself; ".example.org" every name below it).
std::function<bool(std::string_view)> clientDomainPredicate(std::vector<std::string> domains);

class RecipientList {
 public:
  void add(std::string normalized) { entries_.insert(std::move(normalized)); }
  size_t size() const { return entries_.size(); }
  // `address` as the MTA gives it ("<User+x@Example.ORG>" is fine).
  bool contains(std::string_view address) const;
  void merge(const RecipientList& other) {
    entries_.insert(other.entries_.begin(), other.entries_.end());
  }

 private:
  std::unordered_set<std::string> entries_;
};

struct RecipientListParse {
  RecipientList list;
  std::vector<std::pair<uint32_t, std::string>> errors;  // line number, message
};
RecipientListParse parseRecipientList(std::string_view text,
                                      const std::function<bool(std::string_view)>& domain_ok = {});

// Reads and parses a file; every error is "file:line: message" (or "file: ..." when unreadable),
// one per line of the message.
Result<RecipientList> loadRecipientFile(
    const std::string& path, const std::function<bool(std::string_view)>& domain_ok = {});

class RecipientTable {
 public:
  enum class Answer { Listed, Unlisted, Unavailable };

  RecipientTable(RecipientList inline_entries, std::string file,
                 std::function<bool(std::string_view)> domain_ok = {});
  RecipientTable(const RecipientTable&) = delete;
  RecipientTable& operator=(const RecipientTable&) = delete;

  // Looks the address up, re-reading the file first when it changed. `why`, on Unavailable, says
  // what is wrong with the file.
  Answer lookup(std::string_view address, std::string* why = nullptr);
  const std::string& file() const { return file_; }

 private:
  struct Stamp {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = -1;
    int64_t mtime_ns = 0;
    bool operator==(const Stamp&) const = default;
  };
  void refresh();  // with mu_ held

  const RecipientList inline_;
  const std::string file_;
  const std::function<bool(std::string_view)> domain_ok_;
  std::mutex mu_;
  std::optional<RecipientList> from_file_;  // the last good read
  std::optional<Stamp> stamp_;              // of the last read, good or bad
  std::string problem_;                     // why the last read failed; empty when it did not
};

// The table of a client's `recipients` and `recipient_file`; null when it has neither (every
// address of its domains is accepted). Nothing is read until the first lookup.
std::unique_ptr<RecipientTable> makeRecipientTable(const ClientConfig& client);

}  // namespace dynmx
