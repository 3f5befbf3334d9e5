// CheckYamlSettings: the checks the YAML config fuzz targets share
// (coordinator_config_fuzz.cc, worker_config_fuzz.cc), over any settings
// table that can print its values (services/common/settings_table.h).
//
// For a config text applied to default options:
//   - a refusal is INVALID_ARGUMENT "fuzz.yaml:LINE: ..." (LINE a number)
//     and leaves every setting as it was (all or nothing);
//   - after success, printing every setting and applying that as YAML to
//     default options gives the same settings (print -> parse round trip:
//     "text that Apply parses back to the same value"). A printed value with
//     a byte outside ASCII is left out of the round trip: YAML text is UTF-8,
//     and yaml-cpp reads stray bytes that no YAML writer reproduces;
//   - a setting the file gave as a number prints back as the same number (the
//     printed text must not round it).
//
// Contract: header-only; thread-compatible.
#ifndef ASYMCACHE_FUZZ_YAML_SETTINGS_CHECK_H_
#define ASYMCACHE_FUZZ_YAML_SETTINGS_CHECK_H_

#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "fuzz/fuzz_check.h"
#include "yaml-cpp/yaml.h"

namespace asymcache::fuzz {

inline constexpr absl::string_view kYamlOrigin = "fuzz.yaml";

// One service's settings: its setting names, how to print one, how to apply
// a YAML text, and optionally a setting whose printed scalar does not carry
// its whole value (e.g. a model shape given as a mapping prints its name).
template <typename Options>
struct YamlSettings {
  std::vector<std::string> names;
  std::function<absl::StatusOr<std::string>(absl::string_view name, const Options&)> value;
  std::function<absl::Status(absl::string_view text, absl::string_view origin, Options*)> apply;
  // Optional. When set: `structured` is that setting's name; `write` emits
  // its whole value (after the key) for the round trip, and `describe` is its
  // whole value as text, compared after the round trip.
  struct Structured {
    std::string name;
    std::function<void(const Options&, YAML::Emitter*)> write;
    std::function<std::string(const Options&)> describe;
  };
  std::optional<Structured> structured;
};

// "ORIGIN:LINE: " with LINE one or more digits.
inline bool NamesYamlLine(absl::string_view message) {
  if (!absl::ConsumePrefix(&message, kYamlOrigin) || !absl::ConsumePrefix(&message, ":")) {
    return false;
  }
  size_t digits = 0;
  while (digits < message.size() && absl::ascii_isdigit(message[digits])) ++digits;
  return digits > 0 && absl::StartsWith(message.substr(digits), ": ");
}

// Every printable setting's text (settings without a text form are left out).
template <typename Options>
std::map<std::string, std::string> PrintSettings(const YamlSettings<Options>& settings,
                                                 const Options& options) {
  std::map<std::string, std::string> printed;
  for (const std::string& name : settings.names) {
    absl::StatusOr<std::string> text = settings.value(name, options);
    if (text.ok()) printed[name] = *text;
  }
  return printed;
}

// The last top-level scalar given for each key of `text` (empty when the
// text is not a YAML mapping).
inline std::map<std::string, std::string> TopLevelScalars(absl::string_view text) {
  std::map<std::string, std::string> scalars;
  try {
    const YAML::Node root = YAML::Load(std::string(text));
    if (!root.IsMap()) return scalars;
    for (const auto& kv : root) {
      if (kv.first.IsScalar() && kv.second.IsScalar()) {
        scalars[kv.first.as<std::string>()] =
            std::string(absl::StripAsciiWhitespace(kv.second.as<std::string>()));
      }
    }
  } catch (const YAML::Exception&) {
    scalars.clear();
  }
  return scalars;
}

inline bool IsAscii(absl::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

inline bool SameNumber(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

template <typename Options>
void CheckYamlSettings(absl::string_view text, const YamlSettings<Options>& settings) {
  Options options;
  const std::map<std::string, std::string> defaults = PrintSettings(settings, options);
  const absl::Status status = settings.apply(text, kYamlOrigin, &options);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument && NamesYamlLine(status.message()),
               "refusal not INVALID_ARGUMENT \"", kYamlOrigin, ":LINE: ...\": ", status.ToString());
    FUZZ_CHECK(PrintSettings(settings, options) == defaults, "a refused config changed settings");
    return;
  }
  const std::map<std::string, std::string> printed = PrintSettings(settings, options);

  // Print -> parse: the printed settings, applied to defaults, are the same.
  std::map<std::string, std::string> round_trip;  // what the YAML below carries
  YAML::Emitter emitter;
  emitter << YAML::BeginMap;
  for (const auto& [name, value] : printed) {
    if (!IsAscii(value)) continue;
    emitter << YAML::Key << name << YAML::Value;
    if (settings.structured && name == settings.structured->name) {
      settings.structured->write(options, &emitter);
    } else {
      emitter << YAML::DoubleQuoted << value;
    }
    round_trip[name] = value;
  }
  emitter << YAML::EndMap;
  FUZZ_CHECK(emitter.good(), "cannot write the printed settings as YAML: ", emitter.GetLastError());
  Options again;
  const absl::Status reapplied = settings.apply(emitter.c_str(), kYamlOrigin, &again);
  FUZZ_CHECK(reapplied.ok(), "the printed settings are refused: ", reapplied.ToString(),
             "\n--- printed:\n", emitter.c_str());
  const std::map<std::string, std::string> reprinted = PrintSettings(settings, again);
  for (const auto& [name, value] : round_trip) {
    FUZZ_CHECK(reprinted.at(name) == value, name, ": printed '", value, "', parsed back as '",
               reprinted.at(name), "'");
  }
  if (settings.structured && round_trip.count(settings.structured->name) > 0) {
    const std::string before = settings.structured->describe(options);
    const std::string after = settings.structured->describe(again);
    FUZZ_CHECK(before == after, settings.structured->name, ": ", before, " parsed back as ",
               after);
  }

  // A number given in the file prints back as that number.
  for (const auto& [name, given] : TopLevelScalars(text)) {
    auto it = printed.find(name);
    double given_number = 0;
    double printed_number = 0;
    if (it == printed.end() || !absl::SimpleAtod(given, &given_number) ||
        !absl::SimpleAtod(it->second, &printed_number)) {
      continue;
    }
    FUZZ_CHECK(SameNumber(given_number, printed_number), name, ": the file says ", given,
               " but it prints back as ", it->second);
  }
}

}  // namespace asymcache::fuzz

#endif  // ASYMCACHE_FUZZ_YAML_SETTINGS_CHECK_H_
