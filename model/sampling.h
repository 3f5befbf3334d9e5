// Token sampling on the host: the rule both backends implement (the CUDA
// backend on the device, bit-for-bit the same choice given the same logits).
// See model/model_backend.h for the rule; these are its reference functions.
//
// Contract: pure functions; thread-safe.
#ifndef ASYMCACHE_MODEL_SAMPLING_H_
#define ASYMCACHE_MODEL_SAMPLING_H_

#include <cstdint>

#include "absl/types/span.h"
#include "model/model_backend.h"
#include "model/random_weight.h"

namespace asymcache::model {

// The uniform in [0, 1) used to sample the token at absolute `position`
// (24 random bits from SplitMix64 of (seed, position)); host and device.
ASYMCACHE_HOST_DEVICE inline float SampleUniform(uint64_t seed, int64_t position) {
  const uint64_t h = SplitMix64(SplitMix64(seed ^ 0x5A17C0DEull) ^ static_cast<uint64_t>(position));
  return static_cast<float>(static_cast<uint32_t>(h >> 40)) * (1.0f / 16777216.0f);
}

// Greedy: argmax, the lowest index among equal maxima. NaN logits are never
// chosen unless every logit is NaN (then 0).
int32_t ArgmaxToken(absl::Span<const float> logits);

// The full rule (greedy when params.temperature <= 0).
int32_t SampleToken(absl::Span<const float> logits, const SamplingParams& params,
                    int64_t position);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_SAMPLING_H_
