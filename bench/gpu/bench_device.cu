// Device helpers of msa_gpu_bench (see bench_device.h).
#include "bench/gpu/bench_device.h"

#include <cuda_bf16.h>

namespace asymcache::msa::bench {
namespace {

__device__ __forceinline__ uint64_t Mix64(uint64_t x) {
  // SplitMix64 finaliser.
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void FillRandomBf16Kernel(__nv_bfloat16* dst, size_t count, uint64_t seed, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const uint64_t bits = Mix64(seed ^ Mix64(i));
    // 24 random bits -> [0, 1) -> [-scale, scale).
    const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
    dst[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

__global__ void EmptyKernel(int* sink) {
  if (sink != nullptr) *sink = 0;
}

}  // namespace

cudaError_t FillRandomBf16(void* dst, size_t count, uint64_t seed, float scale,
                           cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int threads = 256;
  const size_t wanted = (count + threads - 1) / threads;
  const int blocks = static_cast<int>(wanted < 132 * 64 ? wanted : 132 * 64);
  FillRandomBf16Kernel<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), count,
                                                       seed, scale);
  return cudaGetLastError();
}

cudaError_t LaunchEmptyKernels(int count, cudaStream_t stream) {
  for (int i = 0; i < count; ++i) {
    EmptyKernel<<<1, 1, 0, stream>>>(nullptr);
  }
  return cudaGetLastError();
}

}  // namespace asymcache::msa::bench
