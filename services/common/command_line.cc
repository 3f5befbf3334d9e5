#include "services/common/command_line.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace asymcache {

namespace {

bool IsHelp(absl::string_view arg) { return arg == "-h" || arg == "-help" || arg == "--help"; }

}  // namespace

absl::StatusOr<ParsedCommandLine> ParseCommandLine(int argc, const char* const* argv,
                                                   const IsBoolSetting& is_bool) {
  ParsedCommandLine parsed;
  for (int i = 1; i < argc; ++i) {
    if (IsHelp(argv[i])) {
      parsed.help = true;
      return parsed;
    }
  }
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (!absl::ConsumePrefix(&arg, "--") || arg.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", argv[i], "'"));
    }
    absl::string_view name = arg;
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
      has_value = true;
    }
    std::string dashed = absl::StrReplaceAll(name, {{"_", "-"}});
    if (!has_value) {
      if (is_bool(dashed)) {
        value = "true";
      } else if (absl::StartsWith(dashed, "no-") && is_bool(absl::string_view(dashed).substr(3))) {
        dashed = dashed.substr(3);
        value = "false";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", dashed, " needs a value"));
      }
    }
    parsed.flags.push_back({std::move(dashed), std::move(value)});
  }
  return parsed;
}

absl::Status ApplyCommandLine(const std::vector<CommandLineFlag>& flags,
                              const CommandLineSettings& settings) {
  for (const CommandLineFlag& f : flags) {
    if (f.name != "config") continue;
    if (absl::Status s = settings.apply_config(f.value); !s.ok()) return s;
  }
  for (const CommandLineFlag& f : flags) {
    if (f.name == "config") continue;
    if (!settings.is_known(f.name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", f.name));
    }
    if (absl::Status s = settings.apply(f.name, f.value); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("--", s.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache
