// Device helpers of msa_gpu_bench: random fills and near-empty kernels.
//
// Contract: launches are asynchronous on the given stream and return the
// launch's cudaError_t (cudaSuccess when enqueued). Pointers are device memory.
// Thread-safe (no state).
#ifndef ASYMCACHE_BENCH_GPU_BENCH_DEVICE_H_
#define ASYMCACHE_BENCH_GPU_BENCH_DEVICE_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace asymcache::msa::bench {

// Writes `count` bf16 values, uniform in [-scale, scale), derived from a hash of
// (seed, index): a different seed gives independent data, never zeros.
cudaError_t FillRandomBf16(void* dst, size_t count, uint64_t seed, float scale,
                           cudaStream_t stream);

// Launches `count` one-thread kernels that do (almost) nothing.
cudaError_t LaunchEmptyKernels(int count, cudaStream_t stream);

}  // namespace asymcache::msa::bench

#endif  // ASYMCACHE_BENCH_GPU_BENCH_DEVICE_H_
