// SampleOnDevice: the CUDA backend's sampler (DeviceSampler,
// model/cuda_sampling.cuh) run on caller-given logits, so that tests and tools
// can hold it against the host rule (SampleToken, model/sampling.h) on rows no
// model produces: NaN and infinite logits, ties, underflowing weights, a
// one-token nucleus, top_p = 1 over a large vocabulary.
//
// Contract: `logits` holds params.size() rows of `vocab` fp32 logits, row i
// sampled with params[i] for the token at absolute position positions[i].
// INVALID_ARGUMENT (nothing run) when the sizes disagree, vocab or the row
// count is not positive, a temperature is not finite or a top_p is outside
// (0, 1] (the backends' own checks); FAILED_PRECONDITION in builds without
// CUDA; INTERNAL (or the CUDA error) when the device fails. Synchronous:
// allocates, copies, samples on the default stream and waits. Thread-safe.
#ifndef ASYMCACHE_MODEL_DEVICE_SAMPLING_H_
#define ASYMCACHE_MODEL_DEVICE_SAMPLING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/model_backend.h"

namespace asymcache::model {

absl::StatusOr<std::vector<int32_t>> SampleOnDevice(absl::Span<const float> logits,
                                                    int64_t vocab,
                                                    absl::Span<const SamplingParams> params,
                                                    absl::Span<const int64_t> positions);

// The argument checks of SampleOnDevice (both builds run them first).
absl::Status CheckSampleOnDeviceArgs(absl::Span<const float> logits, int64_t vocab,
                                     absl::Span<const SamplingParams> params,
                                     absl::Span<const int64_t> positions);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_DEVICE_SAMPLING_H_
