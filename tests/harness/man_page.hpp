// man_page.hpp: the configuration examples of our man pages, as the tests run them.
//
// Every sendmail m4 line and every Postfix line that a man page shows an administrator is taken
// from the page source by the test that proves it works, so that the page cannot drift from what
// was tested. manPageExample() returns the lines of the n-th `.nf` ... `.fi` block after the first
// line containing `marker`, with the roff escapes our pages use turned back into the characters
// an administrator types (\- -> -, \(aq -> ', \(lq \(rq -> ", \e -> \). Throws std::runtime_error
// naming the page and marker when there is no such block.
#pragma once

#include <string>
#include <vector>

namespace dynmx::test {

// Path of man/NAME in the source tree.
std::string manPagePath(const std::string& name);

std::vector<std::string> manPageExample(const std::string& page, const std::string& marker,
                                        int nth = 0);

// The lines joined with "\n" (and a final "\n"), with every `from` replaced by `to`.
std::string joinReplacing(const std::vector<std::string>& lines,
                          const std::vector<std::pair<std::string, std::string>>& replace = {});

}  // namespace dynmx::test
