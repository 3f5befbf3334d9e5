#include "cachecore/step_calibration_fit.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

// The steps that isolate one parameter, by key.
struct StepGroups {
  // batch -> (context, step index): decode-only steps with one shared context.
  std::map<int64_t, std::vector<std::pair<int64_t, size_t>>> decode_by_batch;
  // chunk length -> (position, step index): single-chunk prefill steps.
  std::map<int64_t, std::vector<std::pair<int64_t, size_t>>> prefill_by_length;
};

absl::Status CheckStep(const MeasuredStep& step, size_t index) {
  const std::string name = absl::StrCat("step ", index, " (", step.label, ")");
  if (!std::isfinite(step.seconds) || step.seconds <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": seconds must be positive and finite, got ", step.seconds));
  }
  if (step.decodes.empty() && step.chunks.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": no decodes and no chunks"));
  }
  for (const DecodeWork& decode : step.decodes) {
    if (decode.context_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": a decode's context_tokens must be >= 1, got ",
                       decode.context_tokens));
    }
  }
  for (const Chunk& chunk : step.chunks) {
    if (chunk.begin < 0 || chunk.end <= chunk.begin) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": chunk [", chunk.begin, ", ",
                                                     chunk.end, ") is empty or negative"));
    }
  }
  return absl::OkStatus();
}

StepGroups GroupSteps(absl::Span<const MeasuredStep> steps) {
  StepGroups groups;
  for (size_t i = 0; i < steps.size(); ++i) {
    const MeasuredStep& step = steps[i];
    if (step.chunks.empty()) {
      const int64_t context = step.decodes.front().context_tokens;
      const bool uniform =
          std::all_of(step.decodes.begin(), step.decodes.end(),
                      [&](const DecodeWork& d) { return d.context_tokens == context; });
      if (uniform) {
        groups.decode_by_batch[static_cast<int64_t>(step.decodes.size())].emplace_back(context, i);
      }
    } else if (step.decodes.empty() && step.chunks.size() == 1) {
      groups.prefill_by_length[step.chunks.front().tokens()].emplace_back(
          step.chunks.front().begin, i);
    }
  }
  for (auto* by_key : {&groups.decode_by_batch, &groups.prefill_by_length}) {
    for (auto& [key, members] : *by_key) std::sort(members.begin(), members.end());
  }
  return groups;
}

int64_t StepTokens(const MeasuredStep& step) {
  int64_t tokens = static_cast<int64_t>(step.decodes.size());
  for (const Chunk& chunk : step.chunks) tokens += chunk.tokens();
  return tokens;
}

// The pairs of every group: each member after the first against the group's
// first member. Per pair (for the report) rate * (predicted difference) /
// (measured difference), when both differences are positive; and the pooled
// estimate rate * sum(predicted differences) / sum(measured differences) over
// those pairs, the new rate (0 when there is no pair). At the fixed point the
// model's differences add up to the measured ones. Pooling weighs each pair by
// its attention time: a median of per-pair ratios let the small-batch pairs,
// whose differences are a few microseconds of mostly noise, set the rate for
// the large batches that dominate a loaded engine's steps.
double PooledPairEstimate(const std::map<int64_t, std::vector<std::pair<int64_t, size_t>>>& groups,
                          absl::Span<const MeasuredStep> steps,
                          const std::vector<double>& predicted, double rate,
                          std::vector<double>* per_pair) {
  per_pair->clear();
  double measured_sum = 0;
  double modeled_sum = 0;
  for (const auto& [key, members] : groups) {
    if (members.size() < 2) continue;
    const size_t low = members.front().second;
    for (size_t m = 1; m < members.size(); ++m) {
      const size_t high = members[m].second;
      const double measured = steps[high].seconds - steps[low].seconds;
      const double modeled = predicted[high] - predicted[low];
      if (measured > 0 && modeled > 0) {
        per_pair->push_back(rate * modeled / measured);
        measured_sum += measured;
        modeled_sum += modeled;
      }
    }
  }
  return measured_sum > 0 ? rate * modeled_sum / measured_sum : 0;
}

std::vector<double> PredictAll(const ModelConfig& model, const CalibrationParams& params,
                               absl::Span<const MeasuredStep> steps) {
  std::vector<double> out;
  out.reserve(steps.size());
  for (const MeasuredStep& step : steps) out.push_back(PredictMeasuredStep(model, params, step));
  return out;
}

// The linear curve through the anchors: per token count, the candidate step
// with the least predicted attention, its point set so that the step is
// predicted exactly under `params`; then made non-decreasing.
std::vector<std::pair<int64_t, double>> LinearThroughAnchors(
    const ModelConfig& model, const CalibrationParams& params,
    absl::Span<const MeasuredStep> steps,
    const std::map<int64_t, std::vector<size_t>>& anchor_candidates) {
  const CostModel cost(model, params);
  const std::vector<double> predicted = PredictAll(model, params, steps);
  std::vector<std::pair<int64_t, double>> points;
  for (const auto& [tokens, candidates] : anchor_candidates) {
    size_t best = candidates.front();
    double best_attention = 0;
    for (size_t c : candidates) {
      const double attention = predicted[c] - cost.StepLatency(StepTokens(steps[c]), {});
      if (c == candidates.front() || attention < best_attention) {
        best = c;
        best_attention = attention;
      }
    }
    points.emplace_back(tokens,
                        cost.LinearStepTime(tokens) + steps[best].seconds - predicted[best]);
  }
  double floor = 0;
  for (auto& [tokens, seconds] : points) {
    seconds = std::max(seconds, floor);
    floor = seconds;
  }
  return points;
}

}  // namespace

double PredictMeasuredStep(const ModelConfig& model, const CalibrationParams& params,
                           const MeasuredStep& step) {
  const CostModel cost(model, params);
  const ChunkScheduler scheduler(&cost, ChunkSchedulerOptions{});
  return scheduler.PredictStepLatency(step.decodes, step.chunks);
}

absl::StatusOr<StepFitResult> FitCalibrationToSteps(const ModelConfig& model,
                                                    const CalibrationParams& base,
                                                    absl::Span<const MeasuredStep> steps,
                                                    const StepFitOptions& options) {
  if (absl::Status s = base.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("base calibration: ", s.message()));
  }
  if (options.iterations < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("iterations must be >= 1, got ", options.iterations));
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    if (absl::Status s = CheckStep(steps[i], i); !s.ok()) return s;
  }
  const StepGroups groups = GroupSteps(steps);

  // Anchors: per token count, the step with the least attention in it.
  std::map<int64_t, std::vector<size_t>> anchor_candidates;
  for (const auto& [batch, members] : groups.decode_by_batch) {
    anchor_candidates[batch].push_back(members.front().second);
  }
  for (const auto& [length, members] : groups.prefill_by_length) {
    anchor_candidates[length].push_back(members.front().second);
  }
  if (anchor_candidates.empty()) {
    return absl::FailedPreconditionError(
        "no anchor step: need decode-only steps with one shared context or single-chunk "
        "prefill steps");
  }

  StepFitResult result;
  result.params = base;
  result.predicted_base_s = PredictAll(model, base, steps);
  if (groups.decode_by_batch.empty() ||
      std::none_of(groups.decode_by_batch.begin(), groups.decode_by_batch.end(),
                   [](const auto& g) { return g.second.size() >= 2; })) {
    result.notes.push_back(
        "no decode pair (same batch, two contexts): KV-scan bandwidth kept from the base");
  }
  if (std::none_of(groups.prefill_by_length.begin(), groups.prefill_by_length.end(),
                   [](const auto& g) { return g.second.size() >= 2; })) {
    result.notes.push_back(
        "no prefill pair (same length, two positions): attention FLOP rate kept from the base");
  }

  CalibrationParams& params = result.params;
  for (int round = 0; round < options.iterations; ++round) {
    // 1. The linear curve through the anchors.
    params.linear_step_s = LinearThroughAnchors(model, params, steps, anchor_candidates);
    // 2. KV-scan bandwidth from the decode pairs.
    {
      const std::vector<double> predicted = PredictAll(model, params, steps);
      const double pooled =
          PooledPairEstimate(groups.decode_by_batch, steps, predicted,
                             params.attn_kv_bytes_per_s, &result.bandwidth_estimates);
      if (pooled > 0) params.attn_kv_bytes_per_s = pooled;
    }
    // 3. Attention FLOP rate from the prefill pairs.
    {
      const std::vector<double> predicted = PredictAll(model, params, steps);
      const double pooled =
          PooledPairEstimate(groups.prefill_by_length, steps, predicted, params.attn_flops_per_s,
                             &result.flops_rate_estimates);
      if (pooled > 0) params.attn_flops_per_s = pooled;
    }
  }
  // The curve once more, for the final rates.
  params.linear_step_s = LinearThroughAnchors(model, params, steps, anchor_candidates);
  if (absl::Status s = params.Validate(); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the fitted parameters do not validate: ", s.message()));
  }
  result.predicted_fitted_s = PredictAll(model, params, steps);
  return result;
}

}  // namespace asymcache
