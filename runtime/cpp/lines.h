// The line rule of every seqship reader (Python runtime/textio.py, Node runtime/js/src/lines.js, this one;
// the shared cases are tests/line_endings.py): a line ends at "\r\n", "\n" or a lone "\r", nothing else
// (U+2028, U+0085 are text); a terminator at the end of the input ends the last line without starting an
// empty one; a UTF-8 BOM at the very start is dropped.
#pragma once

#include <string>
#include <vector>

namespace seqship {

inline std::vector<std::string> split_lines(const std::string& input) {
  std::vector<std::string> lines;
  const size_t first = input.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  for (size_t start = first, i = first; i <= input.size(); ++i) {
    if (i == input.size() || input[i] == '\n' || input[i] == '\r') {
      if (i < input.size() || i > start) lines.push_back(input.substr(start, i - start));
      if (i + 1 < input.size() && input[i] == '\r' && input[i + 1] == '\n') ++i;
      start = i + 1;
    }
  }
  return lines;
}

}  // namespace seqship
