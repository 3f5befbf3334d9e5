// Rotary position embeddings (RoPE): the ONE definition of the rotary
// frequencies and angles that every Llama code path uses (CPU backend, dense
// reference, and the CUDA backend's host-built cos/sin table), so that they
// all rotate by bit-identical fp32 cos/sin values.
//
// Convention (Hugging Face "rotate_half"): within one head of head_dim D,
// dims i and i + D/2 form a pair rotated by the angle p * inv_freq[i]
// (i < D/2), p the token's ABSOLUTE position:
//   x'[i]       = x[i] * cos - x[i + D/2] * sin
//   x'[i + D/2] = x[i + D/2] * cos + x[i] * sin
//
// Frequencies: inv_freq[i] = rope_theta^(-2i/D), computed in double; with
// Llama-3 scaling (config.rope_scaling.enabled) each is then adjusted as HF's
// `_compute_llama3_parameters` does: wavelen = 2*pi / freq;
// wavelen < original_max / high_freq_factor keeps freq; wavelen >
// original_max / low_freq_factor divides it by `factor`; in between
// smooth = (original_max / wavelen - low_freq_factor) /
// (high_freq_factor - low_freq_factor) and
// freq = (1 - smooth) * freq / factor + smooth * freq.
// cos/sin of p * inv_freq[i] are computed in double and rounded to float.
//
// Contract: pure host functions (no CUDA); thread-safe. Preconditions: a
// validated config (even head_dim), position >= 0.
#ifndef ASYMCACHE_MODEL_ROPE_H_
#define ASYMCACHE_MODEL_ROPE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "model/llama_config.h"

namespace asymcache::model {

// The head_dim / 2 inverse frequencies of `config` (Llama-3 scaling applied
// when enabled).
std::vector<double> RopeInvFrequencies(const LlamaConfig& config);

// cos[i], sin[i] of position * inv_freq[i] for i < inv_freq.size(), computed
// in double and rounded to float. cos and sin hold inv_freq.size() floats.
void RopeCosSin(absl::Span<const double> inv_freq, int64_t position, float* cos, float* sin);

// Rotates one head `x` [2 * half] in place by the angles whose cos/sin are
// cos[0, half), sin[0, half) (the rotate_half pairing above), in fp32.
void ApplyRope(const float* cos, const float* sin, int32_t half, float* x);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_ROPE_H_
