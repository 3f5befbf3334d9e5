// WorkerConfig: the one place where flags and the YAML config file become
// WorkerOptions (STYLE.md §7). Every setting has one name, used as the flag
// (--max-running=64) and as the YAML key (max-running: 64), and one parser
// from text, in one table. Precedence: built-in defaults < YAML file < flags
// given on the command line (services/common/command_line.h).
//
// Value syntax (as the daemon's and the coordinator's): integers; sizes with
// an optional binary suffix (KiB, MiB, GiB; K/M/G the same); durations as absl
// (250ms, 5s, 10m); strings verbatim. `role` is both, prefill or decode;
// `chunking` adaptive or fixed; `model` a named shape (tiny, llama-3-8b,
// llama-3-70b-tp); `coordinators` a comma-separated list (in YAML also a
// sequence); `seed` an unsigned 64-bit integer. A YAML key with no value
// sets the empty text.
//
// Contract: pure functions over a WorkerOptions; thread-compatible.
#ifndef ASYMCACHE_SERVICES_WORKER_WORKER_CONFIG_H_
#define ASYMCACHE_SERVICES_WORKER_WORKER_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/common/command_line.h"
#include "services/common/settings_table.h"
#include "services/worker/worker_options.h"

namespace asymcache::worker {

// One setting: its name (flag and YAML key) and a one-line description.
using WorkerSettingInfo = SettingInfo;

// Every setting, in --help order.
const std::vector<WorkerSettingInfo>& WorkerSettings();

// Sets one setting from text. INVALID_ARGUMENT "NAME: 'VALUE' is not WANT"
// (or the parser's own message naming the setting) for an unparsable value,
// "unknown setting 'NAME'" for an unknown name; options unchanged then. Range
// checks are WorkerOptions::Validate()'s.
absl::Status ApplyWorkerSetting(absl::string_view name, absl::string_view value,
                                WorkerOptions* options);

// The current value of a setting as text that ApplyWorkerSetting parses back
// to the same value (--help prints the defaults with it). NOT_FOUND for an
// unknown name.
absl::StatusOr<std::string> WorkerSettingValue(absl::string_view name,
                                               const WorkerOptions& options);

// Whether `name` is a true/false setting (a bare --name sets it).
bool IsWorkerBoolSetting(absl::string_view name);

// Applies a YAML mapping of setting names to scalars (`coordinators` and
// `trusted-peers` may also be sequences). INVALID_ARGUMENT "origin:line: ..." for a parse error, an
// unknown key or a bad value; NOT_FOUND for a missing file. On error
// `options` is unchanged.
absl::Status ApplyWorkerYaml(const std::string& path, WorkerOptions* options);
absl::Status ApplyWorkerYamlText(absl::string_view text, absl::string_view origin,
                                 WorkerOptions* options);

// What the binary starts from: WorkerOptions() with transport security
// unchosen (BinaryTransportSecurityDefaults), so that --plaintext or the
// --tls-* files are required.
WorkerOptions WorkerBinaryDefaults();

// The options a command line asks for: WorkerBinaryDefaults() < every
// --config file < the other flags (command_line.h ApplyCommandLine), then
// Validate().
absl::StatusOr<WorkerOptions> WorkerOptionsFromFlags(const std::vector<CommandLineFlag>& flags);

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_WORKER_CONFIG_H_
