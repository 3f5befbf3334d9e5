// RandomWeightValue: the seeded value of element `element` of tensor
// `tensor_id` (its index in LlamaTensorSpecs), as a pure function so that the
// CPU backend (host) and the CUDA backend (a device kernel) generate
// bit-identical fp32 weights. Header-only, host and device.
//
// Distribution: uniform in [-scale, scale) with scale by role:
//   norms (attn, mlp, final)      1 + uniform[-0.1, 0.1)  (around one, like trained norms)
//   embedding                     1.0   (RMSNorm follows; magnitude is irrelevant)
//   linear layers, LM head        sqrt(3 / fan_in)  (unit-variance outputs)
// The bits come from a SplitMix64 finalizer of (seed, tensor_id, element).
//
// Contract: pure, thread-safe; no state.
#ifndef ASYMCACHE_MODEL_RANDOM_WEIGHT_H_
#define ASYMCACHE_MODEL_RANDOM_WEIGHT_H_

#include <cstdint>

#if defined(__CUDACC__)
#define ASYMCACHE_HOST_DEVICE __host__ __device__
#else
#define ASYMCACHE_HOST_DEVICE
#endif

namespace asymcache::model {

ASYMCACHE_HOST_DEVICE inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) from 24 random bits (exact in fp32).
ASYMCACHE_HOST_DEVICE inline float RandomUnit(uint64_t seed, uint32_t tensor_id, uint64_t element) {
  const uint64_t h = SplitMix64(SplitMix64(seed ^ (uint64_t{tensor_id} << 40)) ^ element);
  const uint32_t bits = static_cast<uint32_t>(h >> 40);  // 24 bits
  return static_cast<float>(bits) * (1.0f / 8388608.0f) - 1.0f;
}

// kind: 0 = norm (1 + 0.1 u), 1 = scaled (scale * u). On the device every
// operation rounds on its own (__fmul_rn/__fadd_rn: nvcc would otherwise
// contract 1 + 0.1 u into a fused multiply-add and differ from the host in the
// last bit); RandomUnit's product is exact, so it needs no such care.
ASYMCACHE_HOST_DEVICE inline float RandomWeightValue(uint64_t seed, uint32_t tensor_id,
                                                     uint64_t element, int kind, float scale) {
  const float u = RandomUnit(seed, tensor_id, element);
#if defined(__CUDA_ARCH__)
  return kind == 0 ? __fadd_rn(1.0f, __fmul_rn(0.1f, u)) : __fmul_rn(scale, u);
#else
  return kind == 0 ? 1.0f + 0.1f * u : scale * u;
#endif
}

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_RANDOM_WEIGHT_H_
