// recipient_list_test.cpp: the per-client recipient list: entries, lookups (case, +extension,
// @domain), the file format with its line-numbered errors, and the table that re-reads a changed
// file and keeps the last good entries when the new file is bad.
#include "shared/recipient_list.hpp"

#include <unistd.h>

#include <cstdio>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "tests/harness/harness.hpp"

namespace dynmx {
namespace {

TEST(RecipientEntry, NormalizesOrSaysWhatWasExpected) {
  struct Case {
    std::string in;
    std::optional<std::string> out;
    std::string why_contains;
  };
  const std::vector<Case> cases = {
      {"Bob@Alpha.Example", "bob@alpha.example", ""},
      {"@Alpha.Example", "@alpha.example", ""},
      {"bob@alpha.example.", "bob@alpha.example", ""},
      {"first.last+tag@alpha.example", "first.last+tag@alpha.example", ""},
      {"bob", std::nullopt, "expected an address \"user@domain\" or a whole domain"},
      {"bob@", std::nullopt, "expected a domain name after '@'"},
      {"bob@a..example", std::nullopt, "expected a domain name"},
      {"b ob@alpha.example", std::nullopt, "expected a local part"},
      {"<bob@alpha.example>", std::nullopt, "expected a domain name"},
      {"bob@other.example", std::nullopt, "is not one of this client's domains"},
      {"bob@sub.alpha.example", "bob@sub.alpha.example", ""},
  };
  auto domain_ok = clientDomainPredicate({"alpha.example", ".alpha.example"});
  for (const Case& c : cases) {
    std::string why;
    auto got = normalizeRecipientEntry(c.in, &why, domain_ok);
    EXPECT_EQ(got, c.out) << c.in;
    if (!c.out) {
      EXPECT_NE(why.find(c.why_contains), std::string::npos) << c.in << ": " << why;
    }
  }
}

TEST(RecipientList, LooksUpLikePostfixRecipientTables) {
  RecipientList list;
  for (const char* e : {"bob@alpha.example", "carol+lists@alpha.example", "@catchall.example"})
    list.add(*normalizeRecipientEntry(e, nullptr));
  struct Case {
    const char* address;
    bool listed;
  };
  const Case cases[] = {
      {"bob@alpha.example", true},
      {"<BOB@Alpha.EXAMPLE>", true},        // case-insensitive, brackets as the MTA sends them
      {"bob@alpha.example.", true},         // trailing dot of the domain
      {"bob+news@alpha.example", true},     // recipient_delimiter "+": found as bob@
      {"bob+a+b@alpha.example", true},      // from the first '+'
      {"carol+lists@alpha.example", true},  // the whole address first
      {"carol@alpha.example", false},       // an extension entry lists only that extension
      {"carol+other@alpha.example", false},
      {"alice@alpha.example", false},
      {"+bob@alpha.example", false},      // no base address before the '+'
      {"anyone@catchall.example", true},  // @domain
      {"x+y@catchall.example", true},
      {"anyone@sub.catchall.example", false},        // @domain is that domain only
      {"<@relay.example:bob@alpha.example>", true},  // source route dropped
      {"bob", false},
      {"", false},
  };
  for (const Case& c : cases) EXPECT_EQ(list.contains(c.address), c.listed) << c.address;
}

TEST(RecipientListFile, ParsesEntriesCommentsAndPostfixTableLines) {
  RecipientListParse p = parseRecipientList(
      "# the users of alpha\n"
      "bob@alpha.example\n"
      "   \n"
      "  Carol@Alpha.Example   # the boss\n"
      "dave#1@alpha.example\n"
      "erin@alpha.example\tOK\r\n"
      "@lists.alpha.example");
  EXPECT_TRUE(p.errors.empty());
  EXPECT_EQ(p.list.size(), 5u);
  for (const char* a : {"bob@alpha.example", "carol@alpha.example", "dave#1@alpha.example",
                        "erin@alpha.example", "x@lists.alpha.example"})
    EXPECT_TRUE(p.list.contains(a)) << a;
}

TEST(RecipientListFile, ReportsEveryBadLineByNumberAndKeepsTheGoodOnes) {
  RecipientListParse p = parseRecipientList(
      "bob@alpha.example\n"
      "nobody\n"
      "# comment\n"
      "frank@alpha.example REJECT\n"
      "gina@beta.example\n"
      "hank@alpha.example\n",
      clientDomainPredicate({"alpha.example"}));
  ASSERT_EQ(p.errors.size(), 3u);
  EXPECT_EQ(p.errors[0].first, 2u);
  EXPECT_EQ(p.errors[1].first, 4u);
  EXPECT_NE(p.errors[1].second.find("optionally followed by OK"), std::string::npos);
  EXPECT_EQ(p.errors[2].first, 5u);
  EXPECT_NE(p.errors[2].second.find("not one of this client's domains"), std::string::npos);
  EXPECT_EQ(p.list.size(), 2u);
}

TEST(RecipientListFile, LoadNamesFileAndLine) {
  test::TempDir tmp("dynmx-rcptlist");
  std::string path = tmp / "alpha.recipients";
  test::writeFile(path, "bob@alpha.example\nbad entry here\n");
  Result<RecipientList> r = loadRecipientFile(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message.rfind(path + ":2: expected one address", 0), 0u) << r.error().message;
  Result<RecipientList> missing = loadRecipientFile(tmp / "none");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find(tmp / "none"), std::string::npos);
  EXPECT_NE(missing.error().message.find("No such file"), std::string::npos);
}

TEST(RecipientTable, ReReadsAChangedFileAndKeepsTheLastGoodEntriesOfABadOne) {
  test::TempDir tmp("dynmx-rcpttable");
  std::string path = tmp / "alpha.recipients";
  RecipientList inline_entries;
  inline_entries.add("postmaster@alpha.example");
  RecipientTable table(std::move(inline_entries), path, clientDomainPredicate({"alpha.example"}));
  using A = RecipientTable::Answer;
  std::string why;
  // No file yet: the inline entries still answer; everything else is unavailable.
  EXPECT_EQ(table.lookup("postmaster@alpha.example"), A::Listed);
  EXPECT_EQ(table.lookup("bob@alpha.example", &why), A::Unavailable);
  EXPECT_NE(why.find(path), std::string::npos) << why;

  test::writeFile(path, "bob@alpha.example\n");
  EXPECT_EQ(table.lookup("bob@alpha.example"), A::Listed);
  EXPECT_EQ(table.lookup("carol@alpha.example"), A::Unlisted);

  // A change of content is noticed at the next lookup (new inode from the rename).
  test::writeFile(path + ".new", "carol@alpha.example\n");
  ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
  EXPECT_EQ(table.lookup("carol@alpha.example"), A::Listed);
  EXPECT_EQ(table.lookup("bob@alpha.example"), A::Unlisted);

  // A bad new file: the entries read before stay in force.
  test::writeFile(path + ".new", "carol@alpha.example\nnot-an-address\n");
  ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
  EXPECT_EQ(table.lookup("carol@alpha.example"), A::Listed);
  EXPECT_EQ(table.lookup("dave@alpha.example"), A::Unlisted);

  // Removed: the last good entries stay too.
  ASSERT_EQ(::unlink(path.c_str()), 0);
  EXPECT_EQ(table.lookup("carol@alpha.example"), A::Listed);
}

}  // namespace
}  // namespace dynmx
