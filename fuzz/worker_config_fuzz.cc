// Fuzz target: the worker's YAML config parser (services/worker/
// worker_config.h, ApplyWorkerYamlText), read from asymcache-worker --config.
//
// Input: the bytes of a YAML config file.
//
// Invariants checked (beyond "no crash, no sanitizer report", and no
// exception escaping the parser): those of yaml_settings_check.h (refusals
// name their line and change nothing; printed settings parse back to the same
// values; numbers are printed without rounding); WorkerOptions::Validate()
// answers every accepted config with OK or INVALID_ARGUMENT.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_check.h"
#include "fuzz/yaml_settings_check.h"
#include "services/worker/worker_config.h"
#include "services/worker/worker_options.h"

namespace asymcache::worker {
namespace {

const fuzz::YamlSettings<WorkerOptions>& Settings() {
  static const auto* settings = [] {
    auto* s = new fuzz::YamlSettings<WorkerOptions>;
    for (const WorkerSettingInfo& info : WorkerSettings()) s->names.push_back(info.name);
    s->value = WorkerSettingValue;
    s->apply = ApplyWorkerYamlText;
    return s;
  }();
  return *settings;
}

void Run(absl::string_view text) {
  fuzz::CheckYamlSettings(text, Settings());
  WorkerOptions options;
  if (!ApplyWorkerYamlText(text, fuzz::kYamlOrigin, &options).ok()) return;
  // Range checks are Validate()'s: it must answer OK or name a field.
  const absl::Status valid = options.Validate();
  FUZZ_CHECK(valid.ok() || valid.code() == absl::StatusCode::kInvalidArgument,
             "WorkerOptions::Validate: ", valid.ToString());
}

}  // namespace
}  // namespace asymcache::worker

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::worker::Run(asymcache::fuzz::AsText(data, size));
  return 0;
}
