// ModelConfig: the attention shape of the served model and the KV bytes it implies.
//
// Contract: a plain options struct. Defaults are the Llama-3-8B attention shape
// in bf16 with 16-token blocks. Validate() before use; every other component
// assumes a validated config. Thread-safe as a value.
#ifndef ASYMCACHE_CACHECORE_MODEL_CONFIG_H_
#define ASYMCACHE_CACHECORE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace asymcache {

struct ModelConfig {
  std::string name = "llama-3-8b";  // free-form label used in reports
  int num_layers = 32;              // transformer layers (L)
  int num_q_heads = 32;             // query heads (Hq)
  int num_kv_heads = 8;             // key/value heads (Hkv); must divide Hq
  int head_dim = 128;               // D
  int dtype_bytes = 2;              // bytes per KV element (e): 2 = bf16/fp16, 4 = fp32
  int block_tokens = 16;            // B: tokens per KV block
  int64_t hidden_size = 4096;       // model width (linear-layer FLOPs, cost model)
  int64_t intermediate_size = 14336;  // MLP width (linear-layer FLOPs, cost model)
  int64_t vocab_size = 128256;      // LM head size (cost model)

  // INVALID_ARGUMENT naming the field when a value is out of range
  // (non-positive sizes, Hq % Hkv != 0, dtype_bytes not in {1,2,4}, ...).
  absl::Status Validate() const;

  // K and V of one token over all layers: 2 * L * Hkv * D * e.
  int64_t KvBytesPerToken() const;
  // KvBytesPerToken() * block_tokens.
  int64_t KvBytesPerBlock() const;
  // Dense weight parameters of one layer's linear projections (QKV, O, MLP).
  int64_t LinearParamsPerLayer() const;

  // Named shapes: "llama-3-8b", "llama-3-70b-tp" (70B attention per GPU at
  // tensor parallel 8: 64/8 q heads, 8/8 kv heads), "tiny" (a 2-layer CPU shape
  // for tests and the demo). NOT_FOUND for other names.
  static absl::StatusOr<ModelConfig> Named(absl::string_view name);
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_MODEL_CONFIG_H_
