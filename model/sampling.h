// Token sampling on the host: the rule both backends implement (the CUDA
// backend on the device, the same choice given the same logits except where
// exp/log rounding decides, model/cuda_sampling.cuh).
// See model/model_backend.h for the rule; these are its reference functions.
//
// Contract: pure functions; thread-safe.
#ifndef ASYMCACHE_MODEL_SAMPLING_H_
#define ASYMCACHE_MODEL_SAMPLING_H_

#include <cmath>
#include <cstdint>

#include "absl/types/span.h"
#include "model/model_backend.h"
#include "model/random_weight.h"

namespace asymcache::model {

// The standard Gumbel noise -log(-log(u)) of `token` for the sample at
// absolute `position`, u = (k + 0.5) / 2^52 with k the top 52 bits of
// SplitMix64 of (seed, position, token): exact in double, so u lies in
// [2^-53, 1 - 2^-53] and the noise is finite (about -3.6 to 36.7); in double
// on host and device (their log may differ in the last bit).
ASYMCACHE_HOST_DEVICE inline double SampleGumbel(uint64_t seed, int64_t position, int32_t token) {
  const uint64_t h = SplitMix64(SplitMix64(SplitMix64(seed ^ 0x5A17C0DEull) ^
                                           static_cast<uint64_t>(position)) ^
                                static_cast<uint64_t>(static_cast<uint32_t>(token)));
  const double u = (static_cast<double>(h >> 12) + 0.5) * (1.0 / 4503599627370496.0);
  return -log(-log(u));
}

// Greedy: argmax, the lowest index among equal maxima. NaN logits are never
// chosen unless every logit is NaN (then 0).
int32_t ArgmaxToken(absl::Span<const float> logits);

// The full rule (greedy when params.temperature <= 0).
int32_t SampleToken(absl::Span<const float> logits, const SamplingParams& params,
                    int64_t position);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_SAMPLING_H_
