#include "services/common/settings_table.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace asymcache {

absl::Status SettingValueError(absl::string_view name, absl::string_view value,
                               absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": '", value, "' is not ", want));
}

std::string ChoiceList(const std::vector<std::string>& names) {
  if (names.size() <= 1) return absl::StrJoin(names, "");
  return absl::StrCat(absl::StrJoin(names.begin(), names.end() - 1, ", "), " or ", names.back());
}

absl::StatusOr<int64_t> ParseIntSetting(absl::string_view name, absl::string_view value,
                                        int64_t min, int64_t max) {
  int64_t parsed = 0;
  if (!absl::SimpleAtoi(value, &parsed) || parsed < min || parsed > max) {
    return SettingValueError(name, value, "an integer");
  }
  return parsed;
}

std::string FormatNumberSetting(double v) {
  std::string text = absl::StrFormat("%.15g", v);
  double back = 0;
  if (!absl::SimpleAtod(text, &back) || back != v) text = absl::StrFormat("%.17g", v);
  return text;
}

absl::StatusOr<double> ParseNumberSetting(absl::string_view name, absl::string_view value) {
  double parsed = 0;
  if (!absl::SimpleAtod(value, &parsed)) return SettingValueError(name, value, "a number");
  return parsed;
}

absl::StatusOr<absl::Duration> ParseDurationSetting(absl::string_view name, absl::string_view value,
                                                    absl::string_view examples) {
  absl::Duration parsed;
  if (!absl::ParseDuration(value, &parsed)) {
    return SettingValueError(name, value, absl::StrCat("a duration (e.g. ", examples, ")"));
  }
  return parsed;
}

absl::StatusOr<bool> ParseBoolSetting(absl::string_view name, absl::string_view value) {
  bool parsed = false;
  if (!absl::SimpleAtob(value, &parsed)) return SettingValueError(name, value, "true or false");
  return parsed;
}

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  struct Suffix {
    absl::string_view text;
    int shift;
  };
  static constexpr Suffix kSuffixes[] = {{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
                                         {"K", 10},   {"M", 20},   {"G", 30},   {"T", 40}};
  int shift = 0;
  for (const Suffix& suffix : kSuffixes) {
    if (absl::EndsWith(t, suffix.text)) {
      shift = suffix.shift;
      t.remove_suffix(suffix.text.size());
      break;
    }
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(t, &n) || n < 0 ||
      (shift > 0 && n > (std::numeric_limits<int64_t>::max() >> shift))) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a byte size (e.g. 268435456, 256MiB, 1GiB)"));
  }
  return n << shift;
}

absl::Status AtYamlLine(absl::string_view origin, const YAML::Node& node,
                        const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrCat(origin, ":", node.Mark().line + 1, ": ", status.message()));
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--config: cannot open '", path, "'"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::Status ForEachYamlSetting(absl::string_view text, absl::string_view origin,
                                const YamlEntryVisitor& entry) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ":", e.mark.line + 1, ": YAML parse error: ", e.msg));
  }
  if (root.IsNull()) return absl::OkStatus();  // an empty file sets nothing
  if (!root.IsMap()) {
    return AtYamlLine(origin, root,
                      absl::InvalidArgumentError("the config must be a mapping of settings"));
  }
  for (const auto& kv : root) {
    if (!kv.first.IsScalar()) {
      return AtYamlLine(origin, kv.first,
                        absl::InvalidArgumentError("setting names must be scalars"));
    }
    if (absl::Status s = entry(kv.first.as<std::string>(), kv.first, kv.second); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache
