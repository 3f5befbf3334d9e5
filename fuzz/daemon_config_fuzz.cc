// Fuzz target: the cache daemon's YAML config parser
// (services/daemon/daemon_config.h, ApplyDaemonYamlText), read from
// asymcache-daemon --config.
//
// Input: the bytes of a YAML config file.
//
// Invariants checked (beyond "no crash, no sanitizer report", and no
// exception escaping the parser):
//   - a refusal is INVALID_ARGUMENT "fuzz.yaml:LINE: ...";
//   - an accepted config leaves a valid model shape (a named one, or a
//     `model:` mapping the parser validated), and applying the same text again
//     on the result is accepted too (deterministic, nothing half-applied);
//   - DaemonOptions::Validate() answers every accepted config with OK or
//     INVALID_ARGUMENT.
// The daemon's table prints no values (daemon_config.cc), so there is no
// print -> parse round trip here; the coordinator and worker targets have one.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_check.h"
#include "fuzz/yaml_settings_check.h"
#include "services/daemon/daemon_config.h"
#include "services/daemon/daemon_options.h"

namespace asymcache {
namespace {

void Run(absl::string_view text) {
  DaemonOptions options;
  const absl::Status status = ApplyDaemonYamlText(text, fuzz::kYamlOrigin, &options);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument &&
                   fuzz::NamesYamlLine(status.message()),
               "refusal not INVALID_ARGUMENT \"", fuzz::kYamlOrigin, ":LINE: ...\": ",
               status.ToString());
    return;
  }
  const absl::Status model = options.model.Validate();
  FUZZ_CHECK(model.ok(), "an accepted config leaves an invalid model shape: ", model.ToString());
  const absl::Status again = ApplyDaemonYamlText(text, fuzz::kYamlOrigin, &options);
  FUZZ_CHECK(again.ok(), "the same config applied twice is refused: ", again.ToString());
  const absl::Status valid = options.Validate();
  FUZZ_CHECK(valid.ok() || valid.code() == absl::StatusCode::kInvalidArgument,
             "DaemonOptions::Validate: ", valid.ToString());
}

}  // namespace
}  // namespace asymcache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::Run(asymcache::fuzz::AsText(data, size));
  return 0;
}
