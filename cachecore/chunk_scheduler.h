// ChunkScheduler: chooses, for one engine step, which slices of pending
// prefill/rebuild work run beside the step's decode tokens (DESIGN.md §3.4).
//
// Contract:
//   * The step's token budget (prefill/rebuild query tokens, decodes not
//     counted) is either fixed (kFixed: the common serving-engine default) or
//     adaptive (kAdaptive: the largest multiple of `tile_tokens` whose
//     predicted step latency, decodes included, stays within the step's
//     latency limit: `tpot_target` under TpotSlo::kPerStep; under
//     kRequestMean, the most any decoding sequence can wait for its next
//     token with its mean TPOT since its first token still within
//     `tpot_target`, clamped to [tpot_target, max_step_latency] — see
//     StepLatencyLimit;
//     with no decode waiting it grows to `max_budget_tokens` so a prefill
//     finishes in as few steps as possible: TTFT first). When the caller says
//     requests wait for admission behind the step (`overloaded`), the
//     adaptive budget is at least `overload_budget_tokens`: an overloaded
//     engine keeps the fixed-budget baseline's prefill throughput instead of
//     trading it for per-step latency.
//   * Chunks never exceed the budget in total; sequences are served in the
//     order given (the caller's FCFS order) under PrefillOrder::kArrival, or
//     fewest remaining prefill tokens first under kLeastRemaining (see
//     there); within a sequence strictly in
//     position order, never skipping a run, so every chunk's queries find all
//     earlier positions present (already resident, rebuilt by an earlier step,
//     or in this step's earlier chunks of the same sequence).
//   * A chunk that stops inside a run ends at an absolute position that is a
//     multiple of `tile_tokens` (block/tile aligned); only the end of a run may
//     be unaligned. When the budget left cannot reach the next aligned cut of a
//     sequence, that sequence waits and later sequences' (small) runs are
//     packed into the remaining budget.
//   * Latency prediction goes through the CostModel only (see docs/scheduling.md
//     for how attention work of a chunk is counted).
//
// Ownership: borrows the CostModel, which must outlive the scheduler.
// Thread-safety: immutable after construction; Schedule() is const and may be
// called concurrently.
#ifndef ASYMCACHE_CACHECORE_CHUNK_SCHEDULER_H_
#define ASYMCACHE_CACHECORE_CHUNK_SCHEDULER_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/cost_model.h"
#include "cachecore/types.h"

namespace asymcache {

struct ChunkSchedulerOptions {
  enum class Mode { kFixed, kAdaptive };
  // kAdaptive is the AsymCache default; kFixed reproduces vLLM/Sarathi-style
  // token budgets for baselines.
  Mode mode = Mode::kAdaptive;
  // kFixed: prefill/rebuild tokens per step. 2048 is vLLM's common
  // max_num_batched_tokens default for chunked prefill. Multiple of tile_tokens.
  int64_t fixed_budget_tokens = 2048;
  // kAdaptive: the TPOT SLO. 50 ms is a typical interactive decode SLO and,
  // with the H100 Llama-3-8B calibration, leaves room for ~2k prefill tokens
  // per step at shallow positions.
  absl::Duration tpot_target = absl::Milliseconds(50);
  // kAdaptive: what tpot_target bounds.
  //  * kPerStep: every step's predicted latency (the rule until 2026-11-27):
  //    every inter-token gap of every decode stays within the target.
  //  * kRequestMean (default): each decoding sequence's mean time per output
  //    token since its first token — the TPOT a client measures and the SLO
  //    the benchmarks report. A sequence that decoded n tokens after its first
  //    in e seconds can wait tpot_target * (n + 1) - e for its next one with
  //    its mean still within the target; the step may take the least such
  //    allowance over the step's decodes (never less than tpot_target, never
  //    more than max_step_latency). Decode-only steps run well under the
  //    target, so running decodes bank slack that a prefill chunk deep in a
  //    long context can spend; a sequence that just produced its first token
  //    has none. Why: on an H100, long-doc-qa at 24 sessions / 0.15 per s,
  //    kPerStep held asymcache's chunks to ~1100 tokens while no request waited
  //    for admission (pensieve's fixed budget: ~2000) for no mean-TPOT gain
  //    (26.2 ms both), and its mean TTFT was 1.2x pensieve's
  //    (docs/scheduling.md, "Request-mean TPOT").
  enum class TpotSlo { kPerStep, kRequestMean };
  TpotSlo tpot_slo = TpotSlo::kRequestMean;
  // kRequestMean: the longest step that banked slack may buy — the longest
  // single inter-token gap a decoding client sees because of prefill work
  // beside it (a stall cap). 250 ms = 5x the default target: a 2048-token
  // chunk at 48k positions fits (~0.21 s with
  // calibration/h100-llama-3-8b-engine.json: 47 ms linear + 161 ms attention;
  // docs/scheduling.md, "Defaults"), what the fixed-budget baselines run
  // there; a whole 16k-token step does not. Finite and >= 0; below tpot_target it acts as tpot_target.
  absl::Duration max_step_latency = absl::Milliseconds(250);
  // Budgets and in-run cuts are multiples of this: the KV block size (16) and
  // the attention kernels' tile rows, so chunks fill whole blocks.
  int64_t tile_tokens = 16;
  // kAdaptive cap when no decode waits (and the search's upper end): 16k tokens
  // finishes most prompts in one step while bounding one step's activations.
  // Multiple of tile_tokens.
  int64_t max_budget_tokens = 16384;
  // Never starve prefill: even when the decodes alone exceed the target, each
  // step takes at least this much prefill work. One tile. Multiple of tile_tokens.
  int64_t min_budget_tokens = 16;
  // kAdaptive, while requests wait for admission (Schedule's `overloaded`):
  // the budget is at least this (capped at the pending work), even when the
  // step then predicts more than tpot_target. 2048 = fixed_budget_tokens'
  // default: under overload mean TTFT is queueing behind prefill throughput,
  // and budgets far below it pay the decodes' per-step cost (weights read,
  // every decode's KV scan) once per few hundred prefill tokens. Measured on
  // an H100, long-doc-qa at 24 sessions / 0.15 per s (docs/scheduling.md,
  // "Overload"): asymcache's mean TTFT 13.8 s with the 50 ms target alone,
  // 6.5 s with this rule (vllm 8.2-9.7 s). 0 turns the rule off. Otherwise a
  // multiple of tile_tokens; above max_budget_tokens it acts as
  // max_budget_tokens.
  int64_t overload_budget_tokens = 2048;
  // Which sequence's prefill goes first.
  //  * kArrival (default; the rule until 2026-11-28, vLLM's and Pensieve's
  //    FCFS): the caller's order.
  //  * kLeastRemaining (cache-aware shortest-remaining-first, in the spirit
  //    of SGLang's longest-prefix-match schedule): the sequence with the
  //    fewest prefill/rebuild tokens left goes first (ties: the caller's
  //    order). At saturation on shared long documents a follow-up turn whose
  //    context is resident needs ~100 tokens but waited behind 30-60k-token
  //    document prefills for 10+ s (H200 long-doc-qa traces, 2026-11-28);
  //    serving it first costs the long one one short chunk. A sequence that
  //    waited `reorder_wait_limit` or longer (PrefillWork::waited_s) keeps
  //    its place ahead of the reordered ones, in the caller's order, so a
  //    long prompt is never starved by a stream of short ones.
  enum class PrefillOrder { kArrival, kLeastRemaining };
  PrefillOrder prefill_order = PrefillOrder::kArrival;
  // kLeastRemaining's starvation bound. 20 s: a third of the worker's 60 s
  // admission timeout, above the mean TTFT of every system at the saturated
  // long-doc-qa load (4-9 s) so that reordering acts there. > 0 (infinite:
  // never).
  absl::Duration reorder_wait_limit = absl::Seconds(20);

  // INVALID_ARGUMENT naming the field: tile_tokens <= 0; budgets not positive
  // multiples of tile_tokens; min_budget_tokens > max_budget_tokens;
  // overload_budget_tokens negative or not a multiple of tile_tokens;
  // tpot_target <= 0 or infinite; tpot_slo not one of its values;
  // max_step_latency infinite or negative; prefill_order not one of its
  // values; reorder_wait_limit <= 0.
  absl::Status Validate() const;
};

// The names of ChunkSchedulerOptions::PrefillOrder in flags and files:
// "arrival" and "least-remaining". ParsePrefillOrder returns INVALID_ARGUMENT
// "must be arrival or least-remaining, got 'NAME'" for any other name.
absl::string_view PrefillOrderName(ChunkSchedulerOptions::PrefillOrder order);
absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> ParsePrefillOrder(absl::string_view name);

// The names of ChunkSchedulerOptions::TpotSlo in flags and files:
// "request-mean" (kRequestMean) and "per-step" (kPerStep). ParseTpotSlo
// returns INVALID_ARGUMENT "must be request-mean or per-step, got 'NAME'" for
// any other name (callers prefix the flag or field).
absl::string_view TpotSloName(ChunkSchedulerOptions::TpotSlo slo);
absl::StatusOr<ChunkSchedulerOptions::TpotSlo> ParseTpotSlo(absl::string_view name);

// One sequence decoding this step: one query token that sees `context_tokens`
// keys (its whole context, itself included). For TpotSlo::kRequestMean, its
// decode so far: tokens generated after its first token, and seconds since
// its first token (the caller's clock, measured when the step is planned).
// The defaults (0, 0) describe a sequence with no slack (the allowance is
// tpot_target).
struct DecodeWork {
  SequenceId sequence = 0;
  int64_t context_tokens = 0;
  int64_t tokens_after_first = 0;
  double seconds_since_first = 0;
};

// The remaining prefill/rebuild work of one sequence: query runs [begin, end)
// of absolute positions, sorted, non-overlapping, non-empty (holes first, then
// the uncached tail, as the StepPlanner emits them), and the sequence's
// context size (>= the last run's end). Positions outside the runs are
// resident (or were rebuilt by earlier steps).
struct PrefillWork {
  SequenceId sequence = 0;
  std::vector<std::pair<int64_t, int64_t>> runs;
  int64_t context_tokens = 0;
  // Seconds since the request arrived (the caller's clock): the starvation
  // bound of PrefillOrder::kLeastRemaining. 0 (default): just arrived.
  double waited_s = 0;
};

// A slice [begin, end) of one run of `sequence`, scheduled this step.
struct Chunk {
  SequenceId sequence = 0;
  int64_t begin = 0;
  int64_t end = 0;
  int64_t tokens() const { return end - begin; }
  friend bool operator==(const Chunk& a, const Chunk& b) {
    return a.sequence == b.sequence && a.begin == b.begin && a.end == b.end;
  }
};

struct StepSchedule {
  // In service order: sequences in the order served (the order given, or
  // PrefillOrder's), each sequence's chunks in position order (consecutive).
  std::vector<Chunk> chunks;
  // The budget chosen (kFixed: fixed_budget_tokens; kAdaptive: the searched
  // budget, capped at the pending work rounded up to a tile; 0 with no work).
  int64_t budget_tokens = 0;
  // Sum of chunk tokens (<= budget_tokens).
  int64_t prefill_tokens = 0;
  // CostModel::StepLatency of the decodes plus the chunks.
  double predicted_latency_s = 0;
};

class ChunkScheduler {
 public:
  // Preconditions: cost non-null and outlives the scheduler;
  // options.Validate().ok() (checked; a violation aborts).
  ChunkScheduler(const CostModel* cost, ChunkSchedulerOptions options);

  // Chooses this step's chunks. Preconditions on `pending` as documented on
  // PrefillWork (checked in debug builds). A sequence should not appear twice.
  // `overloaded`: requests wait for admission behind this step (kAdaptive
  // then takes at least overload_budget_tokens; kFixed ignores it).
  StepSchedule Schedule(absl::Span<const DecodeWork> decodes,
                        absl::Span<const PrefillWork> pending, bool overloaded = false) const;

  // The chunks that a budget of `budget_tokens` takes from `pending`, by the
  // rules above (exposed for tests and the simulator's what-ifs).
  std::vector<Chunk> FillBudget(int64_t budget_tokens,
                                absl::Span<const PrefillWork> pending) const;

  // The latency a kAdaptive step may predict with these decodes (seconds):
  // tpot_target under kPerStep; under kRequestMean
  // max(tpot_target, min(max_step_latency, min over decodes of
  // tpot_target * (tokens_after_first + 1) - seconds_since_first)) (a
  // non-finite seconds_since_first counts as no slack); tpot_target with no
  // decodes.
  double StepLatencyLimit(absl::Span<const DecodeWork> decodes) const;

  // Predicted latency of a step running `decodes` plus `chunks` (chunks of one
  // sequence consecutive and in position order, as FillBudget returns them).
  double PredictStepLatency(absl::Span<const DecodeWork> decodes,
                            absl::Span<const Chunk> chunks) const;

  // Attended (query, key) pairs of queries [begin, end) under causal
  // attention when every earlier position is present:
  // sum_{q=begin}^{end-1} (q + 1) = (end - begin) * (begin + end + 1) / 2.
  static int64_t CausalAttendedPairs(int64_t begin, int64_t end);

  const ChunkSchedulerOptions& options() const { return options_; }

 private:
  const CostModel* const cost_;
  const ChunkSchedulerOptions options_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_CHUNK_SCHEDULER_H_
