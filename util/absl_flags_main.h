// ParseDashedAbslFlags: the command-line front matter of the binaries built on
// absl flags (asymcache-sim, asymcache-bench, asymcache-calibrate): --help
// lists only the flags defined in `main_file` (absl matches flags to the
// binary's name by default, which hides them), `usage` is the program's usage
// message, and --flag-name is accepted as well as --flag_name. Header only;
// the binary links absl::flags_parse and absl::flags_usage.
#ifndef ASYMCACHE_UTIL_ABSL_FLAGS_MAIN_H_
#define ASYMCACHE_UTIL_ABSL_FLAGS_MAIN_H_

#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "util/dashed_flags.h"

namespace asymcache {

// Parses argv into the absl flags (exits on --help or a bad flag, as absl
// does). `main_file`: a substring of the path of the file defining the flags.
inline void ParseDashedAbslFlags(int argc, char** argv, absl::string_view main_file,
                                 absl::string_view usage) {
  absl::FlagsUsageConfig config;
  const std::string file(main_file);
  config.contains_help_flags = [file](absl::string_view path) {
    return absl::StrContains(path, file);
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage);
  std::vector<std::string> args = NormalizeDashedFlags(argc, argv);
  std::vector<char*> normalized;
  for (std::string& a : args) normalized.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized.data());
}

}  // namespace asymcache

#endif  // ASYMCACHE_UTIL_ABSL_FLAGS_MAIN_H_
