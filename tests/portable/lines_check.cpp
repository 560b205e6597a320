// Prints the lines runtime/cpp/lines.h (the C++ tool's line reader) makes of a file, one per output line,
// hex-encoded (a line's bytes are whatever the file held), for tests/portable/test_line_endings.py.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "lines.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::ifstream f(argv[1], std::ios::binary);
  const std::string input((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (const auto& line : seqship::split_lines(input)) {
    for (unsigned char c : line) std::printf("%02x", c);
    std::printf("\n");
  }
  return 0;
}
