// CoordinatorConfig: the one place where flags and the YAML config file
// become CoordinatorOptions (STYLE.md §7). Every setting has one name, used
// as the flag (--member-timeout) and as the YAML key (member-timeout: 5s),
// and one parser from text, in one table. Precedence: built-in defaults <
// YAML file < flags given on the command line.
//
// Value syntax (as the daemon's, services/daemon/daemon_config.h): integers;
// sizes with an optional binary suffix (KiB, MiB, GiB; K/M/G the same);
// durations as absl (250ms, 5s, 10m); booleans true/false; numbers; strings
// verbatim. `model` is a named shape (tiny, llama-3-8b, llama-3-70b-tp), ""
// for "the first daemon's", or in YAML a mapping of ModelShape fields.
//
// Contract: pure functions over a CoordinatorOptions; thread-compatible.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_CONFIG_H_
#define ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "services/common/settings_table.h"
#include "services/coordinator/coordinator_options.h"

namespace asymcache {

// One setting: its name (flag and YAML key) and a one-line description.
using CoordinatorSettingInfo = SettingInfo;

// Every setting, in --help order.
const std::vector<CoordinatorSettingInfo>& CoordinatorSettings();

// Sets one setting from text. INVALID_ARGUMENT naming the setting and the
// value for an unknown name or an unparsable value (options unchanged then).
// Range checks are CoordinatorOptions::Validate()'s.
absl::Status ApplyCoordinatorSetting(absl::string_view name, absl::string_view value,
                                     CoordinatorOptions* options);

// The current value of a setting as text that ApplyCoordinatorSetting
// parses back to the same value (--help prints the defaults with it).
// NOT_FOUND for an unknown name.
absl::StatusOr<std::string> CoordinatorSettingValue(absl::string_view name,
                                                    const CoordinatorOptions& options);

// Applies a YAML mapping of setting names to scalars (`model` may also be a
// mapping of ModelShape fields: name, num_layers, num_q_heads, num_kv_heads,
// head_dim, dtype_bytes, block_tokens, hidden_size, intermediate_size,
// vocab_size). INVALID_ARGUMENT "origin:line: ..." for a parse error, an
// unknown key or a bad value; NOT_FOUND for a missing file. On error
// `options` is unchanged.
absl::Status ApplyCoordinatorYaml(const std::string& path, CoordinatorOptions* options);
absl::Status ApplyCoordinatorYamlText(absl::string_view text, absl::string_view origin,
                                      CoordinatorOptions* options);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_CONFIG_H_
