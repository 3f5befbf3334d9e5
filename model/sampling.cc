// Host reference of the sampling rule (model/sampling.h, model/model_backend.h).
//
// The rule step by step, so that a device implementation can follow it:
//   1. temperature <= 0 (or not a number): ArgmaxToken.
//   2. m = the largest non-NaN logit. If there is none, token 0; if m is +inf,
//      ArgmaxToken (the first +inf logit).
//   3. weight w_i = exp((double(l_i) - double(m)) / double(temperature)) in
//      double; NaN logits get 0 (-inf logits get 0 from exp).
//   4. order tokens by w descending, ties by lower index first.
//   5. c_k = w_(0) + ... + w_(k), summed in that order in double; Z = c_(V-1).
//      The nucleus is the shortest prefix [0, k] with c_k >= top_p * Z.
//   6. u = SampleUniform(seed, position); r = u * c_k; the sampled token is the
//      first j <= k (in that order) with c_j > r (c_k itself when rounding
//      leaves none).
// Softmax normalisation cancels out of 5 and 6, so it is never computed.
#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/types/span.h"
#include "model/model_backend.h"

namespace asymcache::model {

int32_t ArgmaxToken(absl::Span<const float> logits) {
  int32_t best = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) continue;
    if (best < 0 || logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best < 0 ? 0 : best;
}

int32_t SampleToken(absl::Span<const float> logits, const SamplingParams& params,
                    int64_t position) {
  if (!(params.temperature > 0.0f) || logits.empty()) return ArgmaxToken(logits);
  const int32_t argmax = ArgmaxToken(logits);
  const float max_logit = logits[argmax];
  if (std::isnan(max_logit)) return 0;  // every logit is NaN
  if (std::isinf(max_logit) && max_logit > 0) return argmax;

  const size_t vocab = logits.size();
  const double temperature = static_cast<double>(params.temperature);
  std::vector<double> weights(vocab);
  for (size_t i = 0; i < vocab; ++i) {
    weights[i] = std::isnan(logits[i])
                     ? 0.0
                     : std::exp((static_cast<double>(logits[i]) - static_cast<double>(max_logit)) /
                                temperature);
  }
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&weights](int32_t a, int32_t b) {
    return weights[a] != weights[b] ? weights[a] > weights[b] : a < b;
  });
  std::vector<double> cumulative(vocab);
  double running = 0.0;
  for (size_t k = 0; k < vocab; ++k) {
    running += weights[order[k]];
    cumulative[k] = running;
  }
  const double target = static_cast<double>(params.top_p) * cumulative.back();
  size_t last = 0;
  while (last + 1 < vocab && cumulative[last] < target) ++last;

  const double threshold =
      static_cast<double>(SampleUniform(params.seed, position)) * cumulative[last];
  for (size_t j = 0; j < last; ++j) {
    if (cumulative[j] > threshold) return order[j];
  }
  return order[last];
}

}  // namespace asymcache::model
