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
//   6. The nucleus's tokens are then taken in ASCENDING TOKEN ID order (not
//      by weight): Z' = their weights summed in that order; u =
//      SampleUniform(seed, position); r = u * Z'; the sampled token is the
//      first of them whose running sum exceeds r (the last of them when
//      rounding leaves none).
// Softmax normalisation cancels out of 5 and 6, so it is never computed.
// Why id order in 6: two tokens with almost equal logits swap places in a
// weight order under a 1e-7 change of the logits (another summation order,
// a cached vs a recomputed K/V), and the draw would then pick the other one.
// In id order only a draw within rounding of a cumulative boundary, or a
// token exactly at the nucleus edge, can flip: the sample is as stable as
// greedy decoding.
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

  std::vector<int32_t> nucleus(order.begin(), order.begin() + static_cast<int64_t>(last) + 1);
  std::sort(nucleus.begin(), nucleus.end());
  double total = 0.0;
  for (int32_t token : nucleus) total += weights[token];
  const double threshold = static_cast<double>(SampleUniform(params.seed, position)) * total;
  double running_in_id_order = 0.0;
  for (size_t j = 0; j + 1 < nucleus.size(); ++j) {
    running_in_id_order += weights[nucleus[j]];
    if (running_in_id_order > threshold) return nucleus[j];
  }
  return nucleus.back();
}

}  // namespace asymcache::model
