// Dense reference generation: the "no cache at all" run that exactness tests
// compare the engine against. An independent code path: contiguous per-layer
// K/V buffers, naive fp32 attention over the whole context (no pages, no MSA,
// no daemon), the prompt processed in one pass, then one token per step.
//
// Contract: pure function of (weights, prompt, options); single-threaded;
// thread-safe (no shared state). Slow by design (tiny/test shapes).
#ifndef ASYMCACHE_MODEL_DENSE_REFERENCE_H_
#define ASYMCACHE_MODEL_DENSE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/model_backend.h"
#include "model/weight_source.h"

namespace asymcache::model {

struct DenseGenerateOptions {
  int32_t max_new_tokens = 16;            // >= 1
  SamplingParams sampling;                // model/sampling.h rule
  std::vector<int32_t> stop_tokens;       // generation ends after emitting one
  bool keep_logits = true;                // record the logits of every sampled token
};

struct DenseGeneration {
  std::vector<int32_t> tokens;              // generated tokens (stop token included)
  std::vector<std::vector<float>> logits;   // per generated token [vocab] (when kept)
};

// INVALID_ARGUMENT for an empty prompt, a token outside [0, vocab), or
// options out of range.
absl::StatusOr<DenseGeneration> GenerateDense(const WeightSource& weights,
                                              absl::Span<const int32_t> prompt,
                                              const DenseGenerateOptions& options);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_DENSE_REFERENCE_H_
