#include "cachecore/chunk_scheduler.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

int64_t AlignDown(int64_t value, int64_t tile) { return value / tile * tile; }
int64_t AlignUp(int64_t value, int64_t tile) { return (value + tile - 1) / tile * tile; }

absl::Status CheckBudget(const char* field, int64_t value, int64_t tile) {
  if (value <= 0 || value % tile != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkSchedulerOptions.", field, " must be a positive multiple of tile_tokens (",
                     tile, "), got ", value));
  }
  return absl::OkStatus();
}

// Prefill/rebuild tokens a sequence has left.
int64_t RemainingTokens(const PrefillWork& work) {
  int64_t tokens = 0;
  for (const auto& [begin, end] : work.runs) tokens += end - begin;
  return tokens;
}

// Debug-build check of the PrefillWork preconditions.
[[maybe_unused]] bool WellFormed(const PrefillWork& work) {
  int64_t previous_end = 0;
  for (const auto& [begin, end] : work.runs) {
    if (begin < previous_end || end <= begin) return false;
    previous_end = end;
  }
  return previous_end <= work.context_tokens;
}

}  // namespace

absl::Status ChunkSchedulerOptions::Validate() const {
  if (tile_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkSchedulerOptions.tile_tokens must be positive, got ", tile_tokens));
  }
  if (absl::Status s = CheckBudget("fixed_budget_tokens", fixed_budget_tokens, tile_tokens); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckBudget("max_budget_tokens", max_budget_tokens, tile_tokens); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckBudget("min_budget_tokens", min_budget_tokens, tile_tokens); !s.ok()) {
    return s;
  }
  if (min_budget_tokens > max_budget_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ChunkSchedulerOptions.min_budget_tokens (", min_budget_tokens,
        ") exceeds max_budget_tokens (", max_budget_tokens, ")"));
  }
  if (overload_budget_tokens != 0) {
    if (absl::Status s =
            CheckBudget("overload_budget_tokens", overload_budget_tokens, tile_tokens);
        !s.ok()) {
      return s;
    }
  }
  if (tpot_target <= absl::ZeroDuration() || tpot_target == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkSchedulerOptions.tpot_target must be positive and finite, got ",
                     absl::FormatDuration(tpot_target)));
  }
  if (tpot_slo != TpotSlo::kPerStep && tpot_slo != TpotSlo::kRequestMean) {
    return absl::InvalidArgumentError(
        "ChunkSchedulerOptions.tpot_slo is not kPerStep or kRequestMean");
  }
  if (max_step_latency == absl::InfiniteDuration() || max_step_latency < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkSchedulerOptions.max_step_latency must be finite and >= 0, got ",
                     absl::FormatDuration(max_step_latency)));
  }
  if (mode != Mode::kFixed && mode != Mode::kAdaptive) {
    return absl::InvalidArgumentError("ChunkSchedulerOptions.mode is not kFixed or kAdaptive");
  }
  if (prefill_order != PrefillOrder::kArrival && prefill_order != PrefillOrder::kLeastRemaining) {
    return absl::InvalidArgumentError(
        "ChunkSchedulerOptions.prefill_order is not kArrival or kLeastRemaining");
  }
  if (reorder_wait_limit <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChunkSchedulerOptions.reorder_wait_limit must be > 0, got ",
                     absl::FormatDuration(reorder_wait_limit)));
  }
  return absl::OkStatus();
}

absl::string_view PrefillOrderName(ChunkSchedulerOptions::PrefillOrder order) {
  return order == ChunkSchedulerOptions::PrefillOrder::kArrival ? "arrival" : "least-remaining";
}

absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> ParsePrefillOrder(absl::string_view name) {
  for (auto order : {ChunkSchedulerOptions::PrefillOrder::kArrival,
                     ChunkSchedulerOptions::PrefillOrder::kLeastRemaining}) {
    if (name == PrefillOrderName(order)) return order;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("must be arrival or least-remaining, got '", name, "'"));
}

absl::string_view TpotSloName(ChunkSchedulerOptions::TpotSlo slo) {
  return slo == ChunkSchedulerOptions::TpotSlo::kPerStep ? "per-step" : "request-mean";
}

absl::StatusOr<ChunkSchedulerOptions::TpotSlo> ParseTpotSlo(absl::string_view name) {
  for (auto slo : {ChunkSchedulerOptions::TpotSlo::kRequestMean,
                   ChunkSchedulerOptions::TpotSlo::kPerStep}) {
    if (name == TpotSloName(slo)) return slo;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("must be request-mean or per-step, got '", name, "'"));
}

ChunkScheduler::ChunkScheduler(const CostModel* cost, ChunkSchedulerOptions options)
    : cost_(cost), options_(std::move(options)) {
  absl::Status valid = options_.Validate();
  if (cost_ == nullptr || !valid.ok()) {
    std::fprintf(stderr, "ChunkScheduler: %s\n",
                 cost_ == nullptr ? "null CostModel" : valid.ToString().c_str());
    std::abort();
  }
}

int64_t ChunkScheduler::CausalAttendedPairs(int64_t begin, int64_t end) {
  if (end <= begin) return 0;
  // n * s / 2 with s = 2 * begin + n + 1: n and s have opposite parity, so
  // halve the even one first (exact, and no overflow of the intermediate).
  const int64_t n = end - begin;
  const int64_t s = begin + end + 1;
  return (n % 2 == 0) ? (n / 2) * s : n * (s / 2);
}

std::vector<Chunk> ChunkScheduler::FillBudget(int64_t budget_tokens,
                                              absl::Span<const PrefillWork> pending) const {
  const int64_t tile = options_.tile_tokens;
  std::vector<Chunk> chunks;
  int64_t left = budget_tokens;
  for (const PrefillWork& work : pending) {
    if (left <= 0) break;
    assert(WellFormed(work));
    for (const auto& [begin, end] : work.runs) {
      if (end - begin <= left) {
        // The whole run fits: its end is the run's end, aligned or not.
        chunks.push_back(Chunk{work.sequence, begin, end});
        left -= end - begin;
        continue;
      }
      // Cut inside the run at the last aligned position the budget reaches.
      const int64_t cut = AlignDown(begin + left, tile);
      if (cut > begin) {
        chunks.push_back(Chunk{work.sequence, begin, cut});
        left -= cut - begin;
      }
      // Later runs of this sequence need this run's positions first: the
      // sequence waits; later sequences may still pack into what is left.
      break;
    }
  }
  return chunks;
}

double ChunkScheduler::PredictStepLatency(absl::Span<const DecodeWork> decodes,
                                          absl::Span<const Chunk> chunks) const {
  std::vector<AttentionWork> works;
  works.reserve(decodes.size() + chunks.size());
  int64_t total_tokens = 0;
  for (const DecodeWork& decode : decodes) {
    works.push_back(AttentionWork{/*query_tokens=*/1,
                                  /*attended_pairs=*/decode.context_tokens,
                                  /*kv_tokens_scanned=*/decode.context_tokens,
                                  /*segments=*/1});
    total_tokens += 1;
  }
  // One AttentionWork per run of consecutive chunks of the same sequence: the
  // kernel packs a sequence's query segments into one scan of its KV, which
  // reaches up to the furthest query position.
  for (size_t i = 0; i < chunks.size();) {
    AttentionWork work;
    work.segments = 0;
    int64_t previous_end = -1;
    const SequenceId sequence = chunks[i].sequence;
    for (; i < chunks.size() && chunks[i].sequence == sequence; ++i) {
      const Chunk& chunk = chunks[i];
      work.query_tokens += chunk.tokens();
      work.attended_pairs += CausalAttendedPairs(chunk.begin, chunk.end);
      work.kv_tokens_scanned = std::max(work.kv_tokens_scanned, chunk.end);
      if (chunk.begin != previous_end) ++work.segments;  // adjacent chunks form one segment
      previous_end = chunk.end;
    }
    total_tokens += work.query_tokens;
    works.push_back(work);
  }
  return cost_->StepLatency(total_tokens, works);
}

double ChunkScheduler::StepLatencyLimit(absl::Span<const DecodeWork> decodes) const {
  const double target_s = absl::ToDoubleSeconds(options_.tpot_target);
  if (options_.tpot_slo == ChunkSchedulerOptions::TpotSlo::kPerStep || decodes.empty()) {
    return target_s;
  }
  double allowance_s = std::numeric_limits<double>::infinity();
  for (const DecodeWork& decode : decodes) {
    const double tokens = static_cast<double>(std::max<int64_t>(decode.tokens_after_first, 0));
    // A clock reading that is not a finite time gives the sequence no slack.
    const double allowance = std::isfinite(decode.seconds_since_first)
                                 ? target_s * (tokens + 1) - decode.seconds_since_first
                                 : target_s;
    allowance_s = std::min(allowance_s, allowance);
  }
  // Below tpot_target the cap acts as tpot_target.
  return std::max(target_s, std::min(allowance_s, absl::ToDoubleSeconds(options_.max_step_latency)));
}

StepSchedule ChunkScheduler::Schedule(absl::Span<const DecodeWork> decodes,
                                      absl::Span<const PrefillWork> given,
                                      bool overloaded) const {
  // PrefillOrder::kLeastRemaining: sequences that waited past the limit keep
  // the caller's order, ahead; the others by fewest remaining tokens.
  std::vector<PrefillWork> reordered;
  absl::Span<const PrefillWork> pending = given;
  if (options_.prefill_order == ChunkSchedulerOptions::PrefillOrder::kLeastRemaining &&
      given.size() > 1) {
    const double limit_s = absl::ToDoubleSeconds(options_.reorder_wait_limit);
    std::vector<std::pair<int64_t, size_t>> keys;  // (remaining or -1 when starved, index)
    keys.reserve(given.size());
    for (size_t i = 0; i < given.size(); ++i) {
      keys.emplace_back(given[i].waited_s >= limit_s ? -1 : RemainingTokens(given[i]), i);
    }
    const auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
    if (!std::is_sorted(keys.begin(), keys.end(), by_key)) {  // copy only when the order changes
      std::stable_sort(keys.begin(), keys.end(), by_key);
      reordered.reserve(given.size());
      for (const auto& key : keys) reordered.push_back(given[key.second]);
      pending = reordered;
    }
  }
  const int64_t tile = options_.tile_tokens;
  int64_t pending_tokens = 0;
  for (const PrefillWork& work : pending) pending_tokens += RemainingTokens(work);

  StepSchedule schedule;
  if (pending_tokens == 0) {
    schedule.predicted_latency_s = PredictStepLatency(decodes, {});
    return schedule;
  }

  if (options_.mode == ChunkSchedulerOptions::Mode::kFixed) {
    schedule.budget_tokens = options_.fixed_budget_tokens;
    schedule.chunks = FillBudget(schedule.budget_tokens, pending);
    schedule.predicted_latency_s = PredictStepLatency(decodes, schedule.chunks);
  } else {
    // A budget at or above the pending work (rounded to a tile) takes all of it.
    const int64_t cap = std::min(options_.max_budget_tokens, AlignUp(pending_tokens, tile));
    // The smallest budget this step takes, whatever the target says.
    int64_t floor_tokens = options_.min_budget_tokens;
    if (overloaded && options_.overload_budget_tokens > 0) {
      floor_tokens = std::max(floor_tokens, std::min(options_.overload_budget_tokens, cap));
    }
    if (decodes.empty() || cap <= floor_tokens) {
      // No decode waits (TTFT first: finish as much prefill as allowed), or the
      // floor already covers all the pending work.
      schedule.budget_tokens = cap;
      schedule.chunks = FillBudget(cap, pending);
      schedule.predicted_latency_s = PredictStepLatency(decodes, schedule.chunks);
    } else {
      // Largest tile multiple in [floor, cap] whose predicted step fits the
      // target. Latency grows with the budget (a larger budget takes the same
      // chunks extended further; the exceptions, leftover tokens that no
      // longer fit a later tiny hole, and with the launch model
      // (CalibrationParams::num_sms) a larger prefill class whose KV split
      // balances its waves better, can only make the search settle short of
      // the largest fitting budget), so binary search over tile counts. The budget returned was
      // always evaluated against the target (or is the floor).
      const double target_s = StepLatencyLimit(decodes);
      int64_t lo = floor_tokens / tile;  // fallback, need not fit
      int64_t hi = cap / tile;
      // `best` and its latency are kept together, so the result needs no
      // second evaluation.
      std::vector<Chunk> best = FillBudget(lo * tile, pending);
      double best_latency_s = PredictStepLatency(decodes, best);
      if (best_latency_s <= target_s) {
        // Invariant: lo fits; find the largest fitting count in (lo, hi].
        while (lo < hi) {
          const int64_t mid = lo + (hi - lo + 1) / 2;
          std::vector<Chunk> candidate = FillBudget(mid * tile, pending);
          const double candidate_latency_s = PredictStepLatency(decodes, candidate);
          if (candidate_latency_s <= target_s) {
            lo = mid;
            best = std::move(candidate);
            best_latency_s = candidate_latency_s;
          } else {
            hi = mid - 1;
          }
        }
      }
      schedule.budget_tokens = lo * tile;
      schedule.chunks = std::move(best);
      schedule.predicted_latency_s = best_latency_s;
    }
  }
  for (const Chunk& chunk : schedule.chunks) schedule.prefill_tokens += chunk.tokens();
  return schedule;
}

}  // namespace asymcache
