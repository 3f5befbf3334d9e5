// Rotary embeddings (model/rope.h): frequencies with Llama-3 scaling, cos/sin
// tables and the rotate_half rotation.
#include "model/rope.h"

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "absl/types/span.h"
#include "model/llama_config.h"

namespace asymcache::model {

std::vector<double> RopeInvFrequencies(const LlamaConfig& config) {
  const int32_t half = config.head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int32_t i = 0; i < half; ++i) {
    const double exponent = static_cast<double>(2 * i) / static_cast<double>(config.head_dim);
    inv_freq[i] = 1.0 / std::pow(config.rope_theta, exponent);
  }
  const RopeScaling& scaling = config.rope_scaling;
  if (!scaling.enabled) return inv_freq;

  const double original = static_cast<double>(scaling.original_max_position_embeddings);
  const double low_freq_wavelen = original / scaling.low_freq_factor;
  const double high_freq_wavelen = original / scaling.high_freq_factor;
  for (double& freq : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / freq;
    if (wavelen < high_freq_wavelen) continue;  // high frequency: kept
    if (wavelen > low_freq_wavelen) {
      freq /= scaling.factor;  // low frequency: interpolated by the full factor
      continue;
    }
    const double smooth = (original / wavelen - scaling.low_freq_factor) /
                          (scaling.high_freq_factor - scaling.low_freq_factor);
    freq = (1.0 - smooth) * freq / scaling.factor + smooth * freq;
  }
  return inv_freq;
}

void RopeCosSin(absl::Span<const double> inv_freq, int64_t position, float* cos, float* sin) {
  const double p = static_cast<double>(position);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double angle = p * inv_freq[i];
    cos[i] = static_cast<float>(std::cos(angle));
    sin[i] = static_cast<float>(std::sin(angle));
  }
}

void ApplyRope(const float* cos, const float* sin, int32_t half, float* x) {
  for (int32_t i = 0; i < half; ++i) {
    const float a = x[i];
    const float b = x[i + half];
    x[i] = a * cos[i] - b * sin[i];
    x[i + half] = b * cos[i] + a * sin[i];
  }
}

}  // namespace asymcache::model
