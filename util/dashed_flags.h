// Command-line helper shared by the binaries: accept --flag-name as well as
// --flag_name (absl flag names are identifiers, users type dashes). Header
// only, standard library only.
#ifndef ASYMCACHE_UTIL_DASHED_FLAGS_H_
#define ASYMCACHE_UTIL_DASHED_FLAGS_H_

#include <algorithm>
#include <string>
#include <vector>

namespace asymcache {

// Returns argv with '-' inside flag names turned into '_' (values untouched;
// everything after a bare "--" untouched). `names`, when given, receives the
// normalized names of the flags present (without "--", "no" prefix kept).
inline std::vector<std::string> NormalizeDashedFlags(int argc, char** argv,
                                                     std::vector<std::string>* names = nullptr) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    const size_t end = std::min(a.find('='), a.size());
    for (size_t c = 2; c < end; ++c) {
      if (a[c] == '-') a[c] = '_';
    }
    if (names != nullptr) names->push_back(a.substr(2, end - 2));
  }
  return args;
}

}  // namespace asymcache

#endif  // ASYMCACHE_UTIL_DASHED_FLAGS_H_
