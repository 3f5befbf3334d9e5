#include "cachecore/model_config.h"

#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

absl::Status RequirePositive(absl::string_view field, int64_t value) {
  if (value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ModelConfig.", field, " must be positive, got ", value));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  const std::pair<absl::string_view, int64_t> positive[] = {
      {"num_layers", num_layers},     {"num_q_heads", num_q_heads},
      {"num_kv_heads", num_kv_heads}, {"head_dim", head_dim},
      {"block_tokens", block_tokens}, {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size}, {"vocab_size", vocab_size},
  };
  for (const auto& [field, value] : positive) {
    if (absl::Status s = RequirePositive(field, value); !s.ok()) return s;
  }
  if (num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ModelConfig.num_kv_heads (", num_kv_heads,
                                                   ") must divide num_q_heads (", num_q_heads,
                                                   ")"));
  }
  if (dtype_bytes != 1 && dtype_bytes != 2 && dtype_bytes != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("ModelConfig.dtype_bytes must be 1, 2 or 4, got ", dtype_bytes));
  }
  return absl::OkStatus();
}

int64_t ModelConfig::KvBytesPerToken() const {
  return int64_t{2} * num_layers * num_kv_heads * head_dim * dtype_bytes;
}

int64_t ModelConfig::KvBytesPerBlock() const { return KvBytesPerToken() * block_tokens; }

int64_t ModelConfig::LinearParamsPerLayer() const {
  const int64_t qkv = hidden_size * int64_t{num_q_heads + 2 * num_kv_heads} * head_dim;
  const int64_t o = int64_t{num_q_heads} * head_dim * hidden_size;
  const int64_t mlp = 3 * hidden_size * intermediate_size;  // gate, up, down
  return qkv + o + mlp;
}

absl::StatusOr<ModelConfig> ModelConfig::Named(absl::string_view name) {
  ModelConfig config;  // defaults: Llama-3-8B
  if (name == "llama-3-8b") return config;
  if (name == "llama-3-70b-tp") {
    // Llama-3-70B, one GPU's share at tensor parallel 8: heads, MLP width and
    // LM head split by 8, model width kept.
    config.name = "llama-3-70b-tp";
    config.num_layers = 80;
    config.num_q_heads = 64 / 8;
    config.num_kv_heads = 8 / 8;
    config.head_dim = 128;
    config.hidden_size = 8192;
    config.intermediate_size = 28672 / 8;
    config.vocab_size = 128256 / 8;
    return config;
  }
  if (name == "tiny") {
    config.name = "tiny";
    config.num_layers = 2;
    config.num_q_heads = 4;
    config.num_kv_heads = 2;
    config.head_dim = 64;
    config.dtype_bytes = 4;
    config.hidden_size = 256;
    config.intermediate_size = 512;
    config.vocab_size = 1024;
    return config;
  }
  return absl::NotFoundError(absl::StrCat("unknown model '", name,
                                          "'; known: llama-3-8b, llama-3-70b-tp, tiny"));
}

}  // namespace asymcache
