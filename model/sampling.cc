// Host reference of the sampling rule (model/sampling.h, model/model_backend.h).
//
// The rule step by step, so that a device implementation can follow it:
//   1. temperature <= 0 (or not a number): ArgmaxToken.
//   2. m = the largest non-NaN logit. If there is none, token 0; if m is
//      infinite, ArgmaxToken (+inf: the first +inf logit; -inf: every logit is
//      -inf or NaN, the first -inf one).
//   3. weight w_i = exp((double(l_i) - double(m)) / double(temperature)) in
//      double; NaN logits get 0 (-inf logits get 0 from exp).
//   4. order tokens by w descending, ties by lower index first.
//   5. c_k = w_(0) + ... + w_(k), summed in that order in double; Z = c_(V-1).
//      The nucleus is the shortest prefix [0, k] with c_k >= top_p * Z.
//   6. Gumbel-max over the nucleus: each of its tokens with w_i > 0 scores
//      s_i = (double(l_i) - double(m)) / double(temperature)
//            + SampleGumbel(seed, position, i);
//      the sampled token is the one with the largest score, ties by lower id.
//      P(i) = w_i / (sum of the nucleus's weights): the tempered, truncated
//      softmax, as an inverse-CDF draw would give.
// Softmax normalisation cancels out of 5 and 6, so it is never computed.
// Why Gumbel-max in 6 rather than one uniform draw walked along a cumulative
// sum: the logits of a cached and of a recomputed context differ in the last
// bits (another summation order), by some delta per logit. A score difference
// s_a - s_b moves by at most 2 delta / temperature (m cancels), so with the
// nucleus unchanged the sample changes only when the two best scores are that
// close: as rare as a greedy near-tie, whatever the vocabulary size (a token
// at the nucleus edge moving in or out changes it only if that token wins).
// A walk along a cumulative sum changes when any partial sum before the draw
// moves past it, and those move
// by the sum of many perturbations (~sqrt(V) delta / temperature relative to a
// token's width): the sampled token flipped often on GPUs (bf16 logits) and
// now and then even on the fp32 CPU backend.
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
  if (std::isinf(max_logit)) return argmax;  // +inf takes all; -inf: nothing has weight

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

  // Gumbel-max over the nucleus order[0..last] (any order: the maximum and
  // its lowest-id tie-break do not depend on it).
  int32_t best = -1;
  double best_score = 0.0;
  for (size_t k = 0; k <= last; ++k) {
    const int32_t token = order[k];
    if (!(weights[token] > 0.0)) continue;
    const double score =
        (static_cast<double>(logits[token]) - static_cast<double>(max_logit)) / temperature +
        SampleGumbel(params.seed, position, token);
    if (best < 0 || score > best_score || (score == best_score && token < best)) {
      best = token;
      best_score = score;
    }
  }
  return best < 0 ? argmax : best;
}

}  // namespace asymcache::model
