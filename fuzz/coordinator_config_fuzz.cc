// Fuzz target: the coordinator's YAML config parser
// (services/coordinator/coordinator_config.h, ApplyCoordinatorYamlText), read
// from asymcache-coordinator --config.
//
// Input: the bytes of a YAML config file.
//
// Invariants checked (beyond "no crash, no sanitizer report", and no
// exception escaping the parser): those of yaml_settings_check.h (refusals
// name their line and change nothing; printed settings parse back to the same
// values, `model` compared field by field since it prints its name only;
// numbers are printed without rounding), and a `model:` the config
// accepts is a valid shape; CoordinatorOptions::Validate() answers every
// accepted config with OK or INVALID_ARGUMENT.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "cachecore/model_config.h"
#include "fuzz/fuzz_check.h"
#include "fuzz/yaml_settings_check.h"
#include "services/coordinator/coordinator_config.h"
#include "services/coordinator/coordinator_options.h"

namespace asymcache {
namespace {

std::string DescribeModel(const std::optional<ModelConfig>& model) {
  if (!model.has_value()) return "(none)";
  const ModelConfig& m = *model;
  return absl::StrCat(m.name, " L=", m.num_layers, " Hq=", m.num_q_heads, " Hkv=", m.num_kv_heads,
                      " D=", m.head_dim, " e=", m.dtype_bytes, " B=", m.block_tokens,
                      " hidden=", m.hidden_size, " mlp=", m.intermediate_size,
                      " vocab=", m.vocab_size);
}

const fuzz::YamlSettings<CoordinatorOptions>& Settings() {
  static const auto* settings = [] {
    auto* s = new fuzz::YamlSettings<CoordinatorOptions>;
    for (const CoordinatorSettingInfo& info : CoordinatorSettings()) s->names.push_back(info.name);
    s->value = CoordinatorSettingValue;
    s->apply = ApplyCoordinatorYamlText;
    // `model` prints its name only; a shape given as a mapping (or a known
    // name with fields changed) round-trips as the mapping of every field.
    s->structured = fuzz::YamlSettings<CoordinatorOptions>::Structured{
        "model",
        [](const CoordinatorOptions& o, YAML::Emitter* out) {
          if (!o.expected_model.has_value()) {
            *out << YAML::DoubleQuoted << "";
            return;
          }
          const ModelConfig& m = *o.expected_model;
          *out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << YAML::DoubleQuoted
               << m.name;
          const std::pair<const char*, int64_t> fields[] = {
              {"num_layers", m.num_layers},   {"num_q_heads", m.num_q_heads},
              {"num_kv_heads", m.num_kv_heads}, {"head_dim", m.head_dim},
              {"dtype_bytes", m.dtype_bytes}, {"block_tokens", m.block_tokens},
              {"hidden_size", m.hidden_size}, {"intermediate_size", m.intermediate_size},
              {"vocab_size", m.vocab_size}};
          for (const auto& [key, value] : fields) *out << YAML::Key << key << YAML::Value << value;
          *out << YAML::EndMap;
        },
        [](const CoordinatorOptions& o) { return DescribeModel(o.expected_model); }};
    return s;
  }();
  return *settings;
}

void Run(absl::string_view text) {
  fuzz::CheckYamlSettings(text, Settings());
  CoordinatorOptions options;
  if (!ApplyCoordinatorYamlText(text, fuzz::kYamlOrigin, &options).ok()) return;
  if (options.expected_model.has_value()) {
    const absl::Status valid = options.expected_model->Validate();
    FUZZ_CHECK(valid.ok(), "an accepted model shape is invalid: ", valid.ToString());
  }
  // Range checks are Validate()'s: it must answer OK or name a field.
  const absl::Status valid = options.Validate();
  FUZZ_CHECK(valid.ok() || valid.code() == absl::StatusCode::kInvalidArgument,
             "CoordinatorOptions::Validate: ", valid.ToString());
}

}  // namespace
}  // namespace asymcache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::Run(asymcache::fuzz::AsText(data, size));
  return 0;
}
