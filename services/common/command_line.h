// CommandLine: argv -> settings for the service binaries whose settings live
// in a settings table (services/common/settings_table.h): asymcache-coordinator
// and asymcache-worker. One syntax for all of them:
//
//   --name=value     the setting `name` set to `value` (may be empty)
//   --name value     the same, the value being the next argument
//   --name           a boolean setting set to true
//   --no-name        a boolean setting set to false
//   -h, -help, --help  print the settings and exit (wins over everything)
//   --config=FILE    a YAML file of settings (keys = the setting names)
//
// Names take underscores as dashes (--max_running = --max-running). Whether a
// name is a boolean setting (so that a bare --name takes no value) is the
// caller's answer (IsBoolSetting). Precedence (ApplyCommandLine): built-in
// defaults < every --config file, in order < every other flag, in order.
//
// Errors: INVALID_ARGUMENT "unexpected argument 'ARG'" for a positional
// argument (or a bare "--"), "--NAME needs a value" for a non-boolean setting
// at the end of argv, "unknown flag --NAME", and a setting's own error
// prefixed with "--".
//
// Contract: pure functions; thread-compatible. The callbacks are called on
// the calling thread, in argv order.
#ifndef ASYMCACHE_SERVICES_COMMON_COMMAND_LINE_H_
#define ASYMCACHE_SERVICES_COMMON_COMMAND_LINE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace asymcache {

// One --name=value of the command line; the name with dashes.
struct CommandLineFlag {
  std::string name;
  std::string value;
};

struct ParsedCommandLine {
  std::vector<CommandLineFlag> flags;  // argv order
  bool help = false;                   // -h, -help or --help was given
};

// Whether `name` (dashes, no leading "--") is a boolean setting.
using IsBoolSetting = std::function<bool(absl::string_view name)>;

// Parses argv[1..argc). When a help argument is present anywhere, returns
// {help = true} and no flags, whatever else argv holds (a user asking for
// help gets it even beside a mistake). Otherwise the errors above.
absl::StatusOr<ParsedCommandLine> ParseCommandLine(int argc, const char* const* argv,
                                                   const IsBoolSetting& is_bool);

// How a binary applies the settings of a parsed command line to its options.
struct CommandLineSettings {
  // Applies the YAML file at `path` (the --config flag).
  std::function<absl::Status(const std::string& path)> apply_config;
  // Whether `name` is a setting of the binary.
  std::function<bool(absl::string_view name)> is_known;
  // Sets one setting; its error (e.g. "max-running: 'x' is not an integer")
  // comes back prefixed with "--".
  std::function<absl::Status(absl::string_view name, absl::string_view value)> apply;
};

// Applies `flags` in precedence order: every --config first, then the other
// flags. Stops at and returns the first error.
absl::Status ApplyCommandLine(const std::vector<CommandLineFlag>& flags,
                              const CommandLineSettings& settings);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_COMMAND_LINE_H_
