// DeviceSampler: the sampling rule of model/model_backend.h on the GPU, step
// for step the host reference of model/sampling.cc:
//   greedy (temperature <= 0 or NaN): argmax, lowest index among equal maxima,
//     NaN never chosen unless every logit is NaN (then 0);
//   temperature > 0: m = the argmax logit; m NaN -> 0, m infinite -> argmax;
//     w_i = exp((double(l_i) - double(m)) / double(temperature)) (NaN -> 0);
//     tokens ordered by w descending, ties by lower index (a stable radix sort
//     of the double keys); cumulative sums c_k in that order; the nucleus is
//     the shortest prefix with c_k >= top_p * c_(V-1); among its tokens with
//     w > 0, the largest score (double(l_i) - double(m)) / temperature +
//     SampleGumbel(seed, position, i), ties to the lower id (Gumbel-max).
// The cumulative sums are computed by a block-wide scan in double rather than
// the host's left-to-right sum, and the device exp/log may differ from the
// host's in the last bit: choices agree except when the nucleus edge or the
// two best scores are within double rounding (~1e-16 relative) of each other.
//
// Ownership: owns its device buffers (sort keys/values for up to
// sort_rows rows of the vocabulary, cub's temporary storage, per-row argmax).
// Pointers passed to Sample are borrowed for the asynchronous call.
// Thread-safety: one thread at a time; Sample enqueues on the stream, never
// synchronizes and never allocates.
//
// Included only by .cu files (CUDA headers).
#ifndef ASYMCACHE_MODEL_CUDA_SAMPLING_CUH_
#define ASYMCACHE_MODEL_CUDA_SAMPLING_CUH_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/msa_cuda.h"

namespace asymcache::model::cuda {

// One sample row's parameters, as staged on the device (24 bytes).
struct SampleRowParams {
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  int64_t position = 0;  // absolute position of the sampled token (query position + 1)
};
static_assert(sizeof(SampleRowParams) == 24, "SampleRowParams is a device layout");

class DeviceSampler {
 public:
  // Rows sorted at once for top-p (bounds the sort buffers: 32 rows of a
  // 128k vocabulary are ~100 MiB of keys and values).
  static constexpr int32_t kSortRows = 32;

  DeviceSampler() = default;
  // Buffers for logits rows of `vocab` entries, at most `max_rows` per Sample
  // call. INVALID_ARGUMENT for non-positive sizes; INTERNAL on CUDA errors.
  static absl::StatusOr<DeviceSampler> Create(int64_t vocab, int32_t max_rows);

  // tokens[r] for r < rows from logits [rows][vocab] (fp32, device) and
  // params [rows] (device). top_p_rows: device list of the rows with
  // temperature > 0 (num_top_p of them, known on the host); the others are
  // greedy.
  absl::Status Sample(const float* logits, int32_t rows, const SampleRowParams* params,
                      const int32_t* top_p_rows, int32_t num_top_p, int32_t* tokens,
                      cudaStream_t stream);

 private:
  int64_t vocab_ = 0;
  int32_t max_rows_ = 0;
  int32_t sort_rows_ = 0;
  size_t sort_temp_bytes_ = 0;
  msa::DeviceBuffer argmax_;      // int32 [max_rows]
  msa::DeviceBuffer keys_in_;     // double [sort_rows][vocab]
  msa::DeviceBuffer keys_out_;    // double [sort_rows][vocab]
  msa::DeviceBuffer values_in_;   // int32 [sort_rows][vocab]
  msa::DeviceBuffer values_out_;  // int32 [sort_rows][vocab]
  msa::DeviceBuffer offsets_;     // int32 [sort_rows + 1]: r * vocab
  msa::DeviceBuffer sort_temp_;   // cub temporary storage
};

}  // namespace asymcache::model::cuda

#endif  // ASYMCACHE_MODEL_CUDA_SAMPLING_CUH_
