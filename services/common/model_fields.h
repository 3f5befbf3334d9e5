// ModelShape fields by name: what a `model:` mapping in a service's YAML
// config (services/daemon/daemon_config.cc, services/coordinator/
// coordinator_config.cc) sets. Each config keeps its own range checks and
// messages; these are the name -> field mapping they share.
//
// Contract: pure functions over a caller-owned ModelConfig; thread-compatible.
#ifndef ASYMCACHE_SERVICES_COMMON_MODEL_FIELDS_H_
#define ASYMCACHE_SERVICES_COMMON_MODEL_FIELDS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "cachecore/model_config.h"

namespace asymcache {

// `name:` of a model mapping: a known shape name (ModelConfig::Named) starts
// *model from that shape; another name is only a label.
void ApplyModelName(absl::string_view name, ModelConfig* model);

// Whether `field` is held in an int64_t (hidden_size, intermediate_size,
// vocab_size); the other fields are int.
bool IsWideModelField(absl::string_view field);

// Sets the numeric field `field` (num_layers, num_q_heads, num_kv_heads,
// head_dim, dtype_bytes, block_tokens, hidden_size, intermediate_size,
// vocab_size) to n. Precondition: n fits the field (an int field: [0, 2^31)).
// INVALID_ARGUMENT "unknown model field 'FIELD'" (model unchanged).
absl::Status SetModelField(absl::string_view field, int64_t n, ModelConfig* model);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_MODEL_FIELDS_H_
