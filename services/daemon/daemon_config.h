// DaemonConfig: the one place where flags and the YAML config file become
// DaemonOptions (STYLE.md §7). Every setting has one name, used as the flag
// (--lease-timeout) and as the YAML key (lease-timeout: 30s), and one parser
// from text. Precedence: built-in defaults < YAML file < flags given on the
// command line.
//
// Value syntax: integers; sizes with an optional binary suffix (KiB, MiB,
// GiB, TiB; K/M/G/T mean the same); durations as absl (250ms, 30s, 2m);
// booleans true/false; strings verbatim.
//
// The table machinery (YAML walk, value parsers) is services/common/
// settings_table.h.
//
// Contract: pure functions over a DaemonOptions; thread-compatible.
#ifndef ASYMCACHE_SERVICES_DAEMON_DAEMON_CONFIG_H_
#define ASYMCACHE_SERVICES_DAEMON_DAEMON_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "services/common/settings_table.h"  // ParseByteSize, the value syntax
#include "services/daemon/daemon_options.h"

namespace asymcache {

// The setting names, in --help order.
std::vector<std::string> DaemonSettingNames();

// Sets one setting from text. INVALID_ARGUMENT naming the setting and the
// value for an unknown name or an unparsable value (options unchanged then).
absl::Status ApplyDaemonSetting(absl::string_view name, absl::string_view value,
                                DaemonOptions* options);

// Applies a YAML mapping of setting names to scalars (the key `model` may
// also be a mapping of ModelShape fields: name, num_layers, num_q_heads,
// num_kv_heads, head_dim, dtype_bytes, block_tokens, hidden_size,
// intermediate_size, vocab_size). INVALID_ARGUMENT "file:line: ..." for a
// parse error, an unknown key or a bad value; NOT_FOUND for a missing file.
// On error `options` is unchanged.
absl::Status ApplyDaemonYaml(const std::string& path, DaemonOptions* options);
absl::Status ApplyDaemonYamlText(absl::string_view text, absl::string_view origin,
                                 DaemonOptions* options);

// ParseByteSize ("256MiB", "1G", "4096" -> bytes) is declared in
// services/common/settings_table.h, included above.

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_DAEMON_CONFIG_H_
