// LlamaConfig: the full shape of a Llama-family decoder (what the worker runs),
// as opposed to cachecore's ModelConfig (only what the KV cache needs).
//
// What: vocabulary, widths, heads, RMSNorm epsilon, rotary embedding
// parameters (including Llama-3 frequency scaling, "rope_type": "llama3"),
// tied or untied LM head, and the storage dtype of weights, activations and
// KV on the GPU backend. The CPU backend computes in fp32 whatever `dtype`
// says; its KV pool holds kv_dtype().
//
// Sources of a config:
//   Named(name)            "tiny" (2 layers, CPU tests and the demo; its
//                          attention shape equals cachecore's "tiny"),
//                          "llama-3-8b", "llama-3-70b-tp" (one GPU's slice of
//                          Llama-3-70B at tensor parallel 8: 8 q heads, 1 kv
//                          head, MLP width 28672/8; no all-reduce: a
//                          per-GPU latency shape for benchmarks).
//   FromHfConfigJson(text) a Hugging Face `config.json` (LlamaForCausalLM).
//
// Contract: a plain value type (options-struct style, public fields).
// Validate() before use; everything downstream assumes a validated config.
// Thread-safe as a value.
#ifndef ASYMCACHE_MODEL_LLAMA_CONFIG_H_
#define ASYMCACHE_MODEL_LLAMA_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachecore/model_config.h"
#include "kernels/msa.h"

namespace asymcache::model {

// Llama-3 rotary frequency scaling (HF rope_scaling with rope_type "llama3").
// Frequencies whose wavelength exceeds original_max_position_embeddings /
// low_freq_factor are divided by `factor`; those shorter than
// original_max_position_embeddings / high_freq_factor are kept; in between
// they are interpolated smoothly (the HF/Meta formula).
struct RopeScaling {
  bool enabled = false;
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string name = "llama-3-8b";
  int64_t vocab_size = 128256;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 14336;
  int32_t num_layers = 32;
  int32_t num_q_heads = 32;
  int32_t num_kv_heads = 8;
  int32_t head_dim = 128;           // q_dim = Hq * D may differ from hidden_size (TP slices)
  double rms_norm_eps = 1e-5;
  double rope_theta = 500000.0;
  RopeScaling rope_scaling;         // Llama-3.1+ scaling; off for tiny
  bool tie_word_embeddings = false; // LM head = embedding matrix
  int64_t max_position_embeddings = 131072;
  // GPU storage of weights/activations/KV: kBFloat16 (default) or kFloat16.
  // kFloat32 means "fp32 everywhere" (the tiny CPU shape; the CUDA backend
  // refuses it).
  msa::DType dtype = msa::DType::kBFloat16;
  int32_t block_tokens = 16;        // KV block (page) size; the daemon's must match

  int64_t q_dim() const { return int64_t{num_q_heads} * head_dim; }
  int64_t kv_dim() const { return int64_t{num_kv_heads} * head_dim; }
  // KV element type in the pool: dtype (fp32 for the fp32 configs).
  msa::DType kv_dtype() const { return dtype; }
  // The attention shape MSA runs with (page size = block_tokens).
  msa::AttentionShape attention_shape() const;
  // The cache's view: layers, heads, head_dim, KV dtype bytes, block tokens,
  // hidden/intermediate/vocab sizes; name = this name.
  ModelConfig ToCacheModel() const;
  // Total parameters (embedding, layers, final norm, LM head unless tied).
  int64_t ParameterCount() const;

  // INVALID_ARGUMENT naming the field: non-positive sizes, Hq % Hkv != 0,
  // Hq / Hkv not in {1, 2, 4, 8}, head_dim not in {64, 128, 256} or odd,
  // rms_norm_eps <= 0, rope_theta <= 0, bad rope_scaling factors
  // (factor < 1, low_freq_factor >= high_freq_factor, ...), block_tokens <= 0.
  absl::Status Validate() const;

  // NOT_FOUND listing the known names.
  static absl::StatusOr<LlamaConfig> Named(absl::string_view name);
  // Parses a HF config.json (model_type "llama"; architectures optional).
  // Reads vocab_size, hidden_size, intermediate_size, num_hidden_layers,
  // num_attention_heads, num_key_value_heads (default = heads), head_dim
  // (default hidden/heads), rms_norm_eps, rope_theta (default 10000),
  // rope_scaling (null or rope_type "llama3"; other types are
  // INVALID_ARGUMENT), tie_word_embeddings (default false),
  // max_position_embeddings, torch_dtype ("bfloat16", "float16", "float32").
  // INVALID_ARGUMENT "<source>: <field>: <problem>" for malformed JSON, a
  // missing required field, a wrong type or a value Validate() refuses.
  // `source` names the file in messages.
  static absl::StatusOr<LlamaConfig> FromHfConfigJson(absl::string_view json_text,
                                                      absl::string_view source);
  // The same fields as a HF config.json (round-trips through FromHfConfigJson).
  std::string ToHfConfigJson() const;
};

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_LLAMA_CONFIG_H_
