// SettingsTable: the machinery behind a service binary's settings (STYLE.md
// §7). A table lists every setting once: its name (the flag --NAME=VALUE and
// the YAML key NAME: VALUE), an optional one-line help, its parser from text
// and an optional printer back to text. Beside it: the YAML config-file walk
// over a table, and the value parsers every table shares (integers, numbers,
// durations, booleans, byte sizes). services/daemon/daemon_config.cc,
// services/coordinator/coordinator_config.cc and
// services/worker/worker_config.cc are tables of this.
//
// Errors (absl::Status): INVALID_ARGUMENT "NAME: 'VALUE' is not WANT" for a
// bad value, "unknown setting 'NAME'" for an unknown name, and
// "ORIGIN:LINE: ..." for anything found in a YAML file; NOT_FOUND for a
// config file that cannot be opened. Applying is all or nothing: on error the
// options are unchanged.
//
// Contract: a SettingsTable is immutable after construction and safe to read
// from any thread; it applies settings to options the caller owns
// (thread-compatible). The free functions are pure.
#ifndef ASYMCACHE_SERVICES_COMMON_SETTINGS_TABLE_H_
#define ASYMCACHE_SERVICES_COMMON_SETTINGS_TABLE_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "yaml-cpp/yaml.h"

namespace asymcache {

// INVALID_ARGUMENT "NAME: 'VALUE' is not WANT".
absl::Status SettingValueError(absl::string_view name, absl::string_view value,
                               absl::string_view want);

// Value parsers of a setting `name` (errors by SettingValueError):
// an integer in [min, max] ("an integer"), a number ("a number"), an absl
// duration ("a duration (e.g. EXAMPLES)"), true/false ("true or false").
absl::StatusOr<int64_t> ParseIntSetting(absl::string_view name, absl::string_view value,
                                        int64_t min, int64_t max);
absl::StatusOr<double> ParseNumberSetting(absl::string_view name, absl::string_view value);
// The shortest text of `v` that ParseNumberSetting reads back as exactly `v`
// (15 significant digits when they suffice, else 17): a printed config parses
// back to the same settings.
std::string FormatNumberSetting(double v);
absl::StatusOr<absl::Duration> ParseDurationSetting(absl::string_view name, absl::string_view value,
                                                    absl::string_view examples);
absl::StatusOr<bool> ParseBoolSetting(absl::string_view name, absl::string_view value);

// "A", "A or B", "A, B or C": the names of a choice, as an error lists them.
std::string ChoiceList(const std::vector<std::string>& names);

// Parses "256MiB", "1G", "4096" into bytes (suffixes KiB, MiB, GiB, TiB; K, M,
// G, T the same). INVALID_ARGUMENT otherwise.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

// `status` (its code kept) with "ORIGIN:LINE: " prepended, LINE being the
// 1-based line of `node`.
absl::Status AtYamlLine(absl::string_view origin, const YAML::Node& node,
                        const absl::Status& status);

// The whole file at `path`. NOT_FOUND "--config: cannot open 'PATH'".
absl::StatusOr<std::string> ReadConfigFile(const std::string& path);

// Parses `text` as YAML and calls `entry` with each top-level key (as text and
// as its node) and value of the mapping, in file order; stops at and returns
// the first error. An empty document has no entries. INVALID_ARGUMENT
// "ORIGIN:LINE: YAML parse error: ...", "...: the config must be a mapping of
// settings", "...: setting names must be scalars".
using YamlEntryVisitor = std::function<absl::Status(
    const std::string& key, const YAML::Node& key_node, const YAML::Node& value)>;
absl::Status ForEachYamlSetting(absl::string_view text, absl::string_view origin,
                                const YamlEntryVisitor& entry);

// One setting as --help lists it: its name (flag and YAML key) and a one-line
// description.
struct SettingInfo {
  std::string name;
  std::string help;
};

template <typename Options>
class SettingsTable {
 public:
  // Sets the setting from its text (white space around it already stripped).
  using Setter = std::function<absl::Status(absl::string_view value, Options* options)>;
  // The setting's current value as text the setter parses back.
  using Printer = std::function<std::string(const Options& options)>;
  struct Setting {
    std::string name;
    std::string help;  // may be empty (e.g. the help lives with an ABSL_FLAG)
    Setter set;
    Printer print;  // may be empty: the setting has no text form
  };
  // A YAML value the table does not take as a plain scalar (a mapping, a
  // sequence, null): returns nullopt to leave it to the table (a scalar is
  // applied; anything else is "KEY: expected a scalar value"), or the status
  // of applying it itself (errors with their ORIGIN:LINE).
  using YamlValueHook = std::function<std::optional<absl::Status>(
      const std::string& key, const YAML::Node& key_node, const YAML::Node& value,
      absl::string_view origin, Options* options)>;

  explicit SettingsTable(std::vector<Setting> settings, YamlValueHook yaml_hook = nullptr)
      : settings_(std::move(settings)), yaml_hook_(std::move(yaml_hook)) {}

  // Every setting, in table (--help) order.
  const std::vector<Setting>& settings() const { return settings_; }
  // The same as names and help texts.
  std::vector<SettingInfo> Infos() const {
    std::vector<SettingInfo> infos;
    for (const Setting& s : settings_) infos.push_back({s.name, s.help});
    return infos;
  }
  // nullptr for an unknown name.
  const Setting* Find(absl::string_view name) const {
    for (const Setting& s : settings_) {
      if (name == s.name) return &s;
    }
    return nullptr;
  }

  // Sets one setting from text. INVALID_ARGUMENT for an unknown name or a bad
  // value (the setter's message).
  absl::Status Apply(absl::string_view name, absl::string_view value, Options* options) const {
    const Setting* setting = Find(name);
    if (setting == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown setting '", name, "'"));
    }
    Options updated = *options;
    if (absl::Status s = setting->set(absl::StripAsciiWhitespace(value), &updated); !s.ok()) {
      return s;
    }
    *options = std::move(updated);
    return absl::OkStatus();
  }

  // The setting's value as text. NOT_FOUND for an unknown name,
  // FAILED_PRECONDITION for a setting without a printer.
  absl::StatusOr<std::string> Value(absl::string_view name, const Options& options) const {
    const Setting* setting = Find(name);
    if (setting == nullptr) {
      return absl::NotFoundError(absl::StrCat("unknown setting '", name, "'"));
    }
    if (!setting->print) {
      return absl::FailedPreconditionError(absl::StrCat("setting '", name, "' has no text form"));
    }
    return setting->print(options);
  }

  // Applies a YAML mapping of setting names to values (ForEachYamlSetting's
  // errors; a setting's error at the line of its key).
  absl::Status ApplyYamlText(absl::string_view text, absl::string_view origin,
                             Options* options) const {
    Options updated = *options;
    absl::Status walked = ForEachYamlSetting(
        text, origin,
        [&](const std::string& key, const YAML::Node& key_node,
            const YAML::Node& value) -> absl::Status {
          if (yaml_hook_) {
            if (std::optional<absl::Status> taken =
                    yaml_hook_(key, key_node, value, origin, &updated)) {
              return *taken;
            }
          }
          if (!value.IsScalar()) {
            return AtYamlLine(
                origin, value,
                absl::InvalidArgumentError(absl::StrCat(key, ": expected a scalar value")));
          }
          if (absl::Status s = Apply(key, value.as<std::string>(), &updated); !s.ok()) {
            return AtYamlLine(origin, key_node, s);
          }
          return absl::OkStatus();
        });
    if (!walked.ok()) return walked;
    *options = std::move(updated);
    return absl::OkStatus();
  }
  // Pieces of a YamlValueHook (both return errors with their ORIGIN:LINE).
  // A YAML sequence of scalars applied to setting `key` as its
  // comma-separated text (a CommaList setting): INVALID_ARGUMENT "KEY:
  // entries must be scalars" at a non-scalar entry, the setting's own error
  // at the key.
  absl::Status ApplyYamlSequence(const std::string& key, const YAML::Node& key_node,
                                 const YAML::Node& sequence, absl::string_view origin,
                                 Options* options) const {
    std::vector<std::string> entries;
    for (const YAML::Node& entry : sequence) {
      if (!entry.IsScalar()) {
        return AtYamlLine(
            origin, entry,
            absl::InvalidArgumentError(absl::StrCat(key, ": entries must be scalars")));
      }
      entries.push_back(entry.as<std::string>());
    }
    return ApplyAtYamlLine(key, key_node, absl::StrJoin(entries, ","), origin, options);
  }
  // A null value (`key:` with nothing after it) applied as the empty text.
  absl::Status ApplyYamlNull(const std::string& key, const YAML::Node& key_node,
                             absl::string_view origin, Options* options) const {
    return ApplyAtYamlLine(key, key_node, "", origin, options);
  }

  // ApplyYamlText of the file at `path` (origin = path); ReadConfigFile's errors.
  absl::Status ApplyYamlFile(const std::string& path, Options* options) const {
    absl::StatusOr<std::string> text = ReadConfigFile(path);
    if (!text.ok()) return text.status();
    return ApplyYamlText(*text, path, options);
  }

  // Typed settings of one field. `field` maps an Options* (and a const
  // Options*) to a pointer to the field: [](auto* o) { return &o->listen; }.
  template <typename Field>
  static Setting String(const char* name, const char* help, Field field) {
    return {name, help,
            [field](absl::string_view v, Options* o) {
              *field(o) = std::string(v);
              return absl::OkStatus();
            },
            [field](const Options& o) { return std::string(*field(&o)); }};
  }
  // An integer field of type Int (range-checked against Int).
  template <typename Int, typename Field>
  static Setting Integer(const char* name, const char* help, Field field) {
    return {name, help,
            [name, field](absl::string_view v, Options* o) {
              absl::StatusOr<int64_t> parsed = ParseIntSetting(
                  name, v, std::numeric_limits<Int>::min(), std::numeric_limits<Int>::max());
              if (!parsed.ok()) return parsed.status();
              *field(o) = static_cast<Int>(*parsed);
              return absl::OkStatus();
            },
            [field](const Options& o) { return absl::StrCat(*field(&o)); }};
  }
  template <typename Field>
  static Setting Number(const char* name, const char* help, Field field) {
    return {name, help,
            [name, field](absl::string_view v, Options* o) {
              absl::StatusOr<double> parsed = ParseNumberSetting(name, v);
              if (!parsed.ok()) return parsed.status();
              *field(o) = *parsed;
              return absl::OkStatus();
            },
            [field](const Options& o) { return FormatNumberSetting(*field(&o)); }};
  }
  // `examples` completes the error "a duration (e.g. EXAMPLES)".
  template <typename Field>
  static Setting Duration(const char* name, const char* help, const char* examples, Field field) {
    return {name, help,
            [name, examples, field](absl::string_view v, Options* o) {
              absl::StatusOr<absl::Duration> parsed = ParseDurationSetting(name, v, examples);
              if (!parsed.ok()) return parsed.status();
              *field(o) = *parsed;
              return absl::OkStatus();
            },
            [field](const Options& o) { return absl::FormatDuration(*field(&o)); }};
  }
  // A std::vector<std::string> field as comma-separated text: each entry
  // with its white space stripped, "" the empty list.
  template <typename Field>
  static Setting CommaList(const char* name, const char* help, Field field) {
    return {name, help,
            [field](absl::string_view v, Options* o) {
              std::vector<std::string>& list = *field(o);
              list.clear();
              if (v.empty()) return absl::OkStatus();
              for (absl::string_view part : absl::StrSplit(v, ',')) {
                list.emplace_back(absl::StripAsciiWhitespace(part));
              }
              return absl::OkStatus();
            },
            [field](const Options& o) { return absl::StrJoin(*field(&o), ","); }};
  }
  // An int field holding a byte size (ParseByteSize) below 2 GiB, e.g. a gRPC
  // message limit ("a size below 2 GiB"); printed as NMiB when a whole number
  // of MiB.
  template <typename Field>
  static Setting IntByteSize(const char* name, const char* help, Field field) {
    return {name, help,
            [name, field](absl::string_view v, Options* o) {
              absl::StatusOr<int64_t> bytes = ParseByteSize(v);
              if (!bytes.ok() || *bytes > std::numeric_limits<int>::max()) {
                return SettingValueError(name, v, "a size below 2 GiB");
              }
              *field(o) = static_cast<int>(*bytes);
              return absl::OkStatus();
            },
            [field](const Options& o) {
              const int bytes = *field(&o);
              return bytes % (1 << 20) == 0 ? absl::StrCat(bytes >> 20, "MiB")
                                            : absl::StrCat(bytes);
            }};
  }
  // An int64_t field holding a byte size (ParseByteSize), e.g. a memory
  // bound; printed as NMiB or NKiB when a whole number of them, else bytes.
  // Range checks (e.g. > 0) are the options' Validate()'s.
  template <typename Field>
  static Setting ByteSize(const char* name, const char* help, Field field) {
    return {name, help,
            [name, field](absl::string_view v, Options* o) {
              absl::StatusOr<int64_t> bytes = ParseByteSize(v);
              if (!bytes.ok()) {
                return SettingValueError(name, v, "a byte size (e.g. 262144, 256KiB, 8MiB)");
              }
              *field(o) = *bytes;
              return absl::OkStatus();
            },
            [field](const Options& o) {
              const int64_t bytes = *field(&o);
              if (bytes != 0 && bytes % (int64_t{1} << 20) == 0) {
                return absl::StrCat(bytes >> 20, "MiB");
              }
              if (bytes != 0 && bytes % 1024 == 0) return absl::StrCat(bytes >> 10, "KiB");
              return absl::StrCat(bytes);
            }};
  }
  // A field that takes one of `choices` (text, value) by its text; a bad
  // value is "NAME: 'VALUE' is not A, B or C" (ChoiceList, in the order
  // given). Printed as the text of the field's value.
  template <typename Value, typename Field>
  static Setting Choice(const char* name, const char* help,
                        std::vector<std::pair<std::string, Value>> choices, Field field) {
    std::vector<std::string> names;
    for (const auto& choice : choices) names.push_back(choice.first);
    return {name, help,
            [name, choices, want = ChoiceList(names), field](absl::string_view v, Options* o) {
              for (const auto& [text, value] : choices) {
                if (v == text) {
                  *field(o) = value;
                  return absl::OkStatus();
                }
              }
              return SettingValueError(name, v, want);
            },
            [choices, field](const Options& o) {
              for (const auto& [text, value] : choices) {
                if (*field(&o) == value) return text;
              }
              return std::string();
            }};
  }
  template <typename Field>
  static Setting Bool(const char* name, const char* help, Field field) {
    return {name, help,
            [name, field](absl::string_view v, Options* o) {
              absl::StatusOr<bool> parsed = ParseBoolSetting(name, v);
              if (!parsed.ok()) return parsed.status();
              *field(o) = *parsed;
              return absl::OkStatus();
            },
            [field](const Options& o) { return std::string(*field(&o) ? "true" : "false"); }};
  }

 private:
  // Apply, an error placed at the line of `key_node`.
  absl::Status ApplyAtYamlLine(const std::string& key, const YAML::Node& key_node,
                               absl::string_view value, absl::string_view origin,
                               Options* options) const {
    if (absl::Status s = Apply(key, value, options); !s.ok()) {
      return AtYamlLine(origin, key_node, s);
    }
    return absl::OkStatus();
  }

  const std::vector<Setting> settings_;
  const YamlValueHook yaml_hook_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_SETTINGS_TABLE_H_
