#include "services/common/model_fields.h"

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace asymcache {

void ApplyModelName(absl::string_view name, ModelConfig* model) {
  absl::StatusOr<ModelConfig> named = ModelConfig::Named(name);
  if (named.ok()) {
    *model = *named;
  } else {
    model->name = std::string(name);
  }
}

bool IsWideModelField(absl::string_view field) {
  return field == "hidden_size" || field == "intermediate_size" || field == "vocab_size";
}

absl::Status SetModelField(absl::string_view field, int64_t n, ModelConfig* model) {
  const int narrow = static_cast<int>(n);
  if (field == "num_layers")
    model->num_layers = narrow;
  else if (field == "num_q_heads")
    model->num_q_heads = narrow;
  else if (field == "num_kv_heads")
    model->num_kv_heads = narrow;
  else if (field == "head_dim")
    model->head_dim = narrow;
  else if (field == "dtype_bytes")
    model->dtype_bytes = narrow;
  else if (field == "block_tokens")
    model->block_tokens = narrow;
  else if (field == "hidden_size")
    model->hidden_size = n;
  else if (field == "intermediate_size")
    model->intermediate_size = n;
  else if (field == "vocab_size")
    model->vocab_size = n;
  else
    return absl::InvalidArgumentError(absl::StrCat("unknown model field '", field, "'"));
  return absl::OkStatus();
}

}  // namespace asymcache
