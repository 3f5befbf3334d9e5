// DeviceSampler (model/cuda_sampling.cuh): greedy and top-p sampling on the
// GPU, following model/sampling.cc step by step.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cub/cub.cuh>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "model/cuda_sampling.cuh"
#include "model/device_sampling.h"
#include "model/sampling.h"

namespace asymcache::model::cuda {
namespace {

constexpr int kRowThreads = 1024;

absl::Status CudaError(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
}

struct Best {
  float value;
  int32_t index;  // -1: none (only NaN seen)
};

__device__ __forceinline__ Best Better(Best a, Best b) {
  if (b.index < 0) return a;
  if (a.index < 0) return b;
  if (b.value > a.value) return b;
  if (b.value < a.value) return a;
  return b.index < a.index ? b : a;
}

__device__ __forceinline__ Best ShuffleDown(Best b, int offset) {
  return Best{__shfl_down_sync(0xFFFFFFFFu, b.value, offset),
              __shfl_down_sync(0xFFFFFFFFu, b.index, offset)};
}

// One block per row: argmax (lowest index among equal maxima, NaN skipped;
// 0 when every logit is NaN), written to argmax[r] and tokens[r] (the greedy
// answer; top-p rows are overwritten later).
__global__ void __launch_bounds__(kRowThreads)
    ArgmaxKernel(const float* __restrict__ logits, int64_t vocab, int32_t* __restrict__ argmax,
                 int32_t* __restrict__ tokens) {
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  Best best{0.0f, -1};
  for (int64_t i = threadIdx.x; i < vocab; i += kRowThreads) {
    const float v = row[i];
    if (isnan(v)) continue;
    if (best.index < 0 || v > best.value) best = Best{v, static_cast<int32_t>(i)};
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) best = Better(best, ShuffleDown(best, offset));
  __shared__ Best warp_best[kRowThreads / 32];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = warp_best[lane];  // kRowThreads / 32 == 32 warps
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) best = Better(best, ShuffleDown(best, offset));
    if (lane == 0) {
      const int32_t index = best.index < 0 ? 0 : best.index;
      argmax[blockIdx.x] = index;
      tokens[blockIdx.x] = index;
    }
  }
}

// Grid (x: vocab chunks, y: slot s of this sort chunk). keys[s][i] = w_i of
// row rows[s], values[s][i] = i.
__global__ void TopPWeightsKernel(const float* __restrict__ logits, int64_t vocab,
                                  const int32_t* __restrict__ rows,
                                  const int32_t* __restrict__ argmax,
                                  const SampleRowParams* __restrict__ params,
                                  double* __restrict__ keys, int32_t* __restrict__ values) {
  const int32_t s = blockIdx.y;
  const int32_t row = rows[s];
  const float* l = logits + static_cast<int64_t>(row) * vocab;
  const float m = l[argmax[row]];
  const double temperature = static_cast<double>(params[row].temperature);
  double* k = keys + static_cast<int64_t>(s) * vocab;
  int32_t* v = values + static_cast<int64_t>(s) * vocab;
  const bool finite_max = isfinite(m);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < vocab;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float x = l[i];
    double w = 0.0;
    if (finite_max && !isnan(x)) {
      w = exp((static_cast<double>(x) - static_cast<double>(m)) / temperature);
    }
    k[i] = w;
    v[i] = static_cast<int32_t>(i);
  }
}

// A nucleus token's Gumbel score and id (-1: none yet).
struct Scored {
  double score;
  int32_t index;
};

// The larger score, ties to the lower id (model/sampling.cc step 6).
struct HigherScore {
  __device__ __forceinline__ Scored operator()(const Scored& a, const Scored& b) const {
    if (b.index < 0) return a;
    if (a.index < 0) return b;
    if (b.score > a.score) return b;
    if (b.score < a.score) return a;
    return b.index < a.index ? b : a;
  }
};

// One block per slot s: the nucleus from the sorted weights, then Gumbel-max
// over its tokens (id_weights_all: the slots' unsorted weights, id order;
// model/sampling.cc).
__global__ void __launch_bounds__(kRowThreads)
    TopPSelectKernel(const double* __restrict__ keys, const int32_t* __restrict__ values,
                     const double* __restrict__ id_weights_all,
                     int64_t vocab, const int32_t* __restrict__ rows,
                     const int32_t* __restrict__ argmax, const float* __restrict__ logits,
                     const SampleRowParams* __restrict__ params, int32_t* __restrict__ tokens) {
  using Scan = cub::BlockScan<double, kRowThreads>;
  using Reduce = cub::BlockReduce<Scored, kRowThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ int32_t s_last;

  const int32_t row = rows[blockIdx.x];
  const float* l = logits + static_cast<int64_t>(row) * vocab;
  const float m = l[argmax[row]];
  if (!isfinite(m)) {  // every logit NaN -> 0; an infinite maximum -> argmax
    if (threadIdx.x == 0) tokens[row] = isnan(m) ? 0 : argmax[row];
    return;
  }
  const int32_t n = static_cast<int32_t>(vocab);
  const double* w = keys + static_cast<int64_t>(blockIdx.x) * vocab;
  const int32_t* index = values + static_cast<int64_t>(blockIdx.x) * vocab;
  const int32_t per_thread = (n + kRowThreads - 1) / kRowThreads;
  const int32_t begin = min(n, static_cast<int32_t>(threadIdx.x) * per_thread);
  const int32_t end = min(n, begin + per_thread);

  double local = 0.0;
  for (int32_t j = begin; j < end; ++j) local += w[j];
  double prefix = 0.0;
  double total = 0.0;
  Scan(scan_storage).ExclusiveSum(local, prefix, total);
  if (threadIdx.x == 0) s_last = n;
  __syncthreads();

  // Shortest prefix whose mass reaches top_p * total.
  const SampleRowParams p = params[row];
  const double target = static_cast<double>(p.top_p) * total;
  double c = prefix;
  for (int32_t j = begin; j < end; ++j) {
    c += w[j];
    if (c >= target) {
      atomicMin(&s_last, j);
      break;
    }
  }
  __syncthreads();
  const int32_t last = s_last == n ? n - 1 : s_last;

  // Nucleus membership by id: a weight above the edge token's, or equal to it
  // with an id not above the edge token's (ties were ordered lower id first).
  // Zero weights (NaN, -inf, underflow) never win.
  const double edge_weight = w[last];
  const int32_t edge_id = index[last];
  const double* iw = id_weights_all + static_cast<int64_t>(blockIdx.x) * vocab;
  const double temperature = static_cast<double>(p.temperature);
  Scored best{0.0, -1};
  for (int32_t i = begin; i < end; ++i) {
    const double wi = iw[i];
    if (!(wi > 0.0)) continue;
    if (!(wi > edge_weight || (wi == edge_weight && i <= edge_id))) continue;
    const double score = (static_cast<double>(l[i]) - static_cast<double>(m)) / temperature +
                         SampleGumbel(p.seed, p.position, i);
    best = HigherScore()(best, Scored{score, i});
  }
  best = Reduce(reduce_storage).Reduce(best, HigherScore());
  if (threadIdx.x == 0) tokens[row] = best.index < 0 ? argmax[row] : best.index;
}

}  // namespace

absl::StatusOr<DeviceSampler> DeviceSampler::Create(int64_t vocab, int32_t max_rows) {
  if (vocab <= 0 || vocab > std::numeric_limits<int32_t>::max() / 2) {
    return absl::InvalidArgumentError(absl::StrCat("sampler vocab out of range: ", vocab));
  }
  if (max_rows <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("sampler max_rows must be > 0: ", max_rows));
  }
  DeviceSampler sampler;
  sampler.vocab_ = vocab;
  sampler.max_rows_ = max_rows;
  // cub's segmented sort takes int item counts.
  const int64_t by_int = std::numeric_limits<int32_t>::max() / vocab;
  sampler.sort_rows_ =
      static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>({kSortRows, max_rows, by_int})));
  const int64_t items = sampler.sort_rows_ * vocab;

  auto allocate = [](size_t bytes, msa::DeviceBuffer* out) -> absl::Status {
    absl::StatusOr<msa::DeviceBuffer> buffer = msa::DeviceBuffer::Allocate(bytes);
    if (!buffer.ok()) return buffer.status();
    *out = *std::move(buffer);
    return absl::OkStatus();
  };
  for (auto [bytes, buffer] :
       {std::pair{max_rows * sizeof(int32_t), &sampler.argmax_},
        std::pair{items * sizeof(double), &sampler.keys_in_},
        std::pair{items * sizeof(double), &sampler.keys_out_},
        std::pair{items * sizeof(int32_t), &sampler.values_in_},
        std::pair{items * sizeof(int32_t), &sampler.values_out_},
        std::pair{(sampler.sort_rows_ + 1) * sizeof(int32_t), &sampler.offsets_}}) {
    if (absl::Status status = allocate(bytes, buffer); !status.ok()) return status;
  }
  std::vector<int32_t> offsets(sampler.sort_rows_ + 1);
  for (int32_t r = 0; r <= sampler.sort_rows_; ++r) offsets[r] = static_cast<int32_t>(r * vocab);
  if (absl::Status status = msa::CopyHostToDevice(sampler.offsets_.data(), offsets.data(),
                                                  offsets.size() * sizeof(int32_t));
      !status.ok()) {
    return status;
  }
  const int32_t* d_offsets = static_cast<const int32_t*>(sampler.offsets_.data());
  size_t temp_bytes = 0;
  if (absl::Status status =
          CudaError(cub::DeviceSegmentedRadixSort::SortPairsDescending(
                        nullptr, temp_bytes, static_cast<const double*>(nullptr),
                        static_cast<double*>(nullptr), static_cast<const int32_t*>(nullptr),
                        static_cast<int32_t*>(nullptr), static_cast<int>(items), sampler.sort_rows_,
                        d_offsets, d_offsets + 1),
                    "cub::DeviceSegmentedRadixSort (size query)");
      !status.ok()) {
    return status;
  }
  sampler.sort_temp_bytes_ = std::max<size_t>(temp_bytes, 256);
  if (absl::Status status = allocate(sampler.sort_temp_bytes_, &sampler.sort_temp_); !status.ok()) {
    return status;
  }
  return sampler;
}

absl::Status DeviceSampler::Sample(const float* logits, int32_t rows, const SampleRowParams* params,
                                   const int32_t* top_p_rows, int32_t num_top_p, int32_t* tokens,
                                   cudaStream_t stream) {
  if (rows <= 0) return absl::OkStatus();
  if (rows > max_rows_ || num_top_p < 0 || num_top_p > rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampler: rows ", rows, " (max ", max_rows_, "), top-p rows ", num_top_p));
  }
  auto* argmax = static_cast<int32_t*>(argmax_.data());
  ArgmaxKernel<<<rows, kRowThreads, 0, stream>>>(logits, vocab_, argmax, tokens);
  if (absl::Status status = CudaError(cudaGetLastError(), "ArgmaxKernel"); !status.ok()) {
    return status;
  }
  auto* keys_in = static_cast<double*>(keys_in_.data());
  auto* keys_out = static_cast<double*>(keys_out_.data());
  auto* values_in = static_cast<int32_t*>(values_in_.data());
  auto* values_out = static_cast<int32_t*>(values_out_.data());
  const auto* offsets = static_cast<const int32_t*>(offsets_.data());
  const int weight_blocks = static_cast<int>(std::min<int64_t>((vocab_ + 1023) / 1024, 1024));
  for (int32_t first = 0; first < num_top_p; first += sort_rows_) {
    const int32_t count = std::min(sort_rows_, num_top_p - first);
    const int32_t* chunk_rows = top_p_rows + first;
    TopPWeightsKernel<<<dim3(weight_blocks, count), 256, 0, stream>>>(
        logits, vocab_, chunk_rows, argmax, params, keys_in, values_in);
    if (absl::Status status = CudaError(cudaGetLastError(), "TopPWeightsKernel"); !status.ok()) {
      return status;
    }
    size_t temp_bytes = sort_temp_bytes_;
    if (absl::Status status =
            CudaError(cub::DeviceSegmentedRadixSort::SortPairsDescending(
                          sort_temp_.data(), temp_bytes, keys_in, keys_out, values_in, values_out,
                          static_cast<int>(count * vocab_), count, offsets, offsets + 1, 0,
                          static_cast<int>(sizeof(double) * 8), stream),
                      "cub::DeviceSegmentedRadixSort::SortPairsDescending");
        !status.ok()) {
      return status;
    }
    TopPSelectKernel<<<count, kRowThreads, 0, stream>>>(keys_out, values_out, keys_in, vocab_,
                                                        chunk_rows,
                                                        argmax, logits, params, tokens);
    if (absl::Status status = CudaError(cudaGetLastError(), "TopPSelectKernel"); !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache::model::cuda

namespace asymcache::model {

absl::StatusOr<std::vector<int32_t>> SampleOnDevice(absl::Span<const float> logits,
                                                    int64_t vocab,
                                                    absl::Span<const SamplingParams> params,
                                                    absl::Span<const int64_t> positions) {
  if (absl::Status status = CheckSampleOnDeviceArgs(logits, vocab, params, positions);
      !status.ok()) {
    return status;
  }
  const auto rows = static_cast<int32_t>(params.size());
  std::vector<cuda::SampleRowParams> staged(params.size());
  std::vector<int32_t> top_p_rows;
  for (int32_t i = 0; i < rows; ++i) {
    const SamplingParams& p = params[i];
    staged[i] = cuda::SampleRowParams{p.temperature, p.top_p, p.seed, positions[i]};
    if (p.temperature > 0.0f) top_p_rows.push_back(i);  // as CudaBackend stages them
  }
  absl::StatusOr<cuda::DeviceSampler> sampler = cuda::DeviceSampler::Create(vocab, rows);
  if (!sampler.ok()) return sampler.status();
  const size_t logit_bytes = logits.size() * sizeof(float);
  const size_t param_bytes = staged.size() * sizeof(cuda::SampleRowParams);
  const size_t row_bytes = params.size() * sizeof(int32_t);
  msa::DeviceBuffer d_logits, d_params, d_top_p, d_tokens;
  for (auto [bytes, buffer] : {std::pair{logit_bytes, &d_logits}, std::pair{param_bytes, &d_params},
                               std::pair{row_bytes, &d_top_p}, std::pair{row_bytes, &d_tokens}}) {
    absl::StatusOr<msa::DeviceBuffer> allocated = msa::DeviceBuffer::Allocate(bytes);
    if (!allocated.ok()) return allocated.status();
    *buffer = *std::move(allocated);
  }
  for (auto [dst, src, bytes] :
       {std::tuple{d_logits.data(), static_cast<const void*>(logits.data()), logit_bytes},
        std::tuple{d_params.data(), static_cast<const void*>(staged.data()), param_bytes},
        std::tuple{d_top_p.data(), static_cast<const void*>(top_p_rows.data()),
                   top_p_rows.size() * sizeof(int32_t)}}) {
    if (bytes == 0) continue;
    if (absl::Status status = msa::CopyHostToDevice(dst, src, bytes); !status.ok()) return status;
  }
  if (absl::Status status = sampler->Sample(
          static_cast<const float*>(d_logits.data()), rows,
          static_cast<const cuda::SampleRowParams*>(d_params.data()),
          static_cast<const int32_t*>(d_top_p.data()), static_cast<int32_t>(top_p_rows.size()),
          static_cast<int32_t*>(d_tokens.data()), /*stream=*/nullptr);
      !status.ok()) {
    return status;
  }
  if (absl::Status status = msa::SynchronizeStream(nullptr); !status.ok()) return status;
  std::vector<int32_t> tokens(params.size());
  if (absl::Status status = msa::CopyDeviceToHost(tokens.data(), d_tokens.data(), row_bytes);
      !status.ok()) {
    return status;
  }
  return tokens;
}

}  // namespace asymcache::model
