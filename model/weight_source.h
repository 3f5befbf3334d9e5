// WeightSource: where a model backend gets the value of every Llama tensor:
// either stored tensors read from a Hugging Face style directory (config.json
// + *.safetensors, memory-mapped, zero copy) or seeded random values.
//
// Tensors (Hugging Face names and [rows, cols] shapes, row-major; a linear
// layer y = x W^T stores W as [out, in]):
//   model.embed_tokens.weight                       [vocab, hidden]
//   model.layers.{i}.input_layernorm.weight         [hidden]
//   model.layers.{i}.self_attn.q_proj.weight        [q_dim, hidden]
//   model.layers.{i}.self_attn.k_proj.weight        [kv_dim, hidden]
//   model.layers.{i}.self_attn.v_proj.weight        [kv_dim, hidden]
//   model.layers.{i}.self_attn.o_proj.weight        [hidden, q_dim]
//   model.layers.{i}.post_attention_layernorm.weight [hidden]
//   model.layers.{i}.mlp.gate_proj.weight           [intermediate, hidden]
//   model.layers.{i}.mlp.up_proj.weight             [intermediate, hidden]
//   model.layers.{i}.mlp.down_proj.weight           [hidden, intermediate]
//   model.norm.weight                               [hidden]
//   lm_head.weight                                  [vocab, hidden] (absent when tied)
//
// Random weights: element e of tensor spec k (index in LlamaTensorSpecs) is
// RandomWeightValue(seed, k, e) (model/random_weight.h), a pure function, so
// the CPU and CUDA backends generate bit-identical fp32 values without a host
// copy of an 8B model. Latency does not depend on the values; exactness tests
// do not either.
//
// Contract: immutable after creation; thread-safe. Stored tensors point into
// read-only file mappings owned by the WeightSource (valid while it lives).
// Errors: INVALID_ARGUMENT / NOT_FOUND naming the file (and tensor) at fault.
#ifndef ASYMCACHE_MODEL_WEIGHT_SOURCE_H_
#define ASYMCACHE_MODEL_WEIGHT_SOURCE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/msa.h"
#include "model/llama_config.h"

namespace asymcache::model {

enum class TensorRole : int32_t {
  kEmbedding = 0,
  kAttnNorm,
  kQProj,
  kKProj,
  kVProj,
  kOProj,
  kMlpNorm,
  kGateProj,
  kUpProj,
  kDownProj,
  kFinalNorm,
  kLmHead,
};

struct TensorSpec {
  std::string name;            // Hugging Face name
  TensorRole role = TensorRole::kEmbedding;
  int32_t layer = -1;          // -1 for embedding, final norm, LM head
  std::vector<int64_t> shape;  // [rows, cols] or [n] for norms
  int64_t elements() const;
};

// Every tensor of the model in a fixed order: embedding; per layer attn norm,
// q, k, v, o, mlp norm, gate, up, down; final norm; LM head unless tied. The
// index in this list is the random-weight tensor id.
std::vector<TensorSpec> LlamaTensorSpecs(const LlamaConfig& config);

// How RandomWeightValue draws tensor `spec` (model/random_weight.h): kind 0 =
// norm (scale unused), kind 1 = uniform in [-scale, scale).
struct RandomWeightParams {
  int kind = 1;
  float scale = 1.0f;
};
RandomWeightParams RandomParamsFor(const TensorSpec& spec);

// A tensor as stored: its dtype and bytes (little-endian, row-major).
struct StoredTensor {
  msa::DType dtype = msa::DType::kFloat32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> bytes;
};

class WeightSource {
 public:
  ~WeightSource();
  WeightSource(WeightSource&&) noexcept;
  WeightSource& operator=(WeightSource&&) noexcept;

  // Seeded random weights for `config` (validated: INVALID_ARGUMENT otherwise).
  static absl::StatusOr<WeightSource> Random(const LlamaConfig& config, uint64_t seed);
  // config.json + every *.safetensors file of `directory`. Every tensor of
  // LlamaTensorSpecs must be present exactly once with its shape (NOT_FOUND /
  // INVALID_ARGUMENT naming the tensor and file); extra tensors (e.g.
  // rotary_emb.inv_freq) are ignored. dtypes BF16, F16 and F32.
  static absl::StatusOr<WeightSource> FromDirectory(absl::string_view directory);

  const LlamaConfig& config() const;
  bool is_random() const;
  uint64_t seed() const;  // random: the seed; stored: 0
  const std::vector<TensorSpec>& specs() const;

  // The stored tensor for spec `index` (nullopt for random weights).
  std::optional<StoredTensor> stored(size_t index) const;
  // Tensor `index` as fp32 into dst (exactly specs()[index].elements()
  // floats; INVALID_ARGUMENT otherwise). Random: RandomWeightValue; stored:
  // converted from its dtype.
  absl::Status ReadFloat32(size_t index, absl::Span<float> dst) const;

 private:
  struct State;
  explicit WeightSource(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Writes `source`'s tensors as a HF directory: config.json and one
// model.safetensors with every tensor in `dtype` (kFloat32, kBFloat16 or
// kFloat16; bf16/fp16 round to nearest even). For tests and tools; the
// directory is created if missing. INVALID_ARGUMENT / INTERNAL naming the path.
absl::Status WriteHfDirectory(const WeightSource& source, msa::DType dtype,
                              absl::string_view directory);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_WEIGHT_SOURCE_H_
