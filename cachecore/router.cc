#include "cachecore/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace asymcache {
namespace {

constexpr int32_t kNotCandidate = -1;

// What one candidate holds of the request, from the index lookup.
struct Residency {
  std::vector<uint32_t> resident;  // block indices resident there, ascending
};

// Per-request facts shared by every candidate's scoring.
struct RequestView {
  absl::Span<const BlockHash> hashes;
  int64_t tokens = 0;
  int64_t block_tokens = 0;
  const std::vector<BlockHolders>* holders = nullptr;
  // Members blocks may be fetched from, by slot; empty: any holder.
  const std::vector<uint8_t>* source_allowed = nullptr;

  int64_t TokensOf(int64_t block) const {
    const int64_t n = static_cast<int64_t>(hashes.size());
    return block + 1 < n ? block_tokens : tokens - (n - 1) * block_tokens;
  }
  // A holder of `block` other than `self`, if any.
  const BlockLocation* SourceOf(int64_t block, MemberSlot self, bool self_is_member) const {
    for (const BlockLocation& h : (*holders)[block]) {
      if (self_is_member && h.member == self) continue;
      if (!source_allowed->empty() &&
          (h.member >= source_allowed->size() || (*source_allowed)[h.member] == 0)) {
        continue;
      }
      return &h;
    }
    return nullptr;
  }
};

// Queueing delay ahead of a request of `query_tokens` query rows: the extra
// linear-layer time the queued tokens add to the step(s) the request rides in,
// plus one step overhead per full `queue_step_tokens` step ahead of it.
double QueueSeconds(const CostModel& cost, int64_t queued_tokens, int64_t query_tokens,
                    int64_t queue_step_tokens) {
  if (queued_tokens <= 0) return 0;
  const int64_t steps_ahead = queued_tokens / queue_step_tokens;
  return cost.MarginalLinearTime(query_tokens, queued_tokens) +
         static_cast<double>(steps_ahead) * cost.params().step_overhead_s;
}

// Scores one candidate. `resident` lists the blocks it holds (ascending);
// `self_is_member` false scores a placement with nothing resident (shared by
// every candidate that holds none of the request). `state` receives each
// block's fate there (kMissing, kResident, kFetched) for CollectRuns.
constexpr uint8_t kMissing = 0;
constexpr uint8_t kFetched = 2;
CandidateScore ScoreCandidate(const RouterOptions& options, const RequestView& request,
                              const RouteCandidate& candidate, bool self_is_member,
                              absl::Span<const uint32_t> resident, std::vector<uint8_t>* state_out) {
  const CostModel& cost = *candidate.cost;
  const int64_t n = static_cast<int64_t>(request.hashes.size());
  const int64_t bytes_per_token = cost.model().KvBytesPerToken();

  CandidateScore score;
  score.member = candidate.member;
  score.load_tokens = candidate.queued_prefill_tokens;

  // Pass 1: residency, contiguous prefix, tokens missing here.
  std::vector<uint8_t>& state = *state_out;
  state.assign(static_cast<size_t>(n), kMissing);  // 0 missing, 1 resident, 2 fetched
  for (uint32_t b : resident) state[b] = 1;
  int64_t missing_tokens = 0;
  bool prefix = true;
  for (int64_t b = 0; b < n; ++b) {
    const int64_t t = request.TokensOf(b);
    if (state[b] == 1) {
      score.hit_tokens += t;
      if (prefix) score.contiguous_hit_tokens += t;
    } else {
      prefix = false;
      missing_tokens += t;
    }
  }

  // Pass 2: fetch a missing block held elsewhere when moving it is cheaper
  // than rebuilding it (packed, in a step holding the request's missing
  // tokens). The setup cost must be paid back by the blocks fetched.
  double fetch_transfer_s = 0;
  double rebuild_saved_s = 0;
  if (options.allow_fetch && missing_tokens > 0) {
    // RebuildCost = MarginalLinearTime + RebuildAttentionCost; the linear
    // part is the same for every full block, so it is computed once.
    const double full_block_linear_s =
        cost.MarginalLinearTime(missing_tokens, request.block_tokens);
    for (int64_t b = 0; b < n; ++b) {
      if (state[b] != 0) continue;
      if (request.SourceOf(b, candidate.member, self_is_member) == nullptr) continue;
      const int64_t t = request.TokensOf(b);
      const double transfer_s =
          static_cast<double>(t * bytes_per_token) / options.fetch_bytes_per_s;
      const double linear_s = t == request.block_tokens
                                  ? full_block_linear_s
                                  : cost.MarginalLinearTime(missing_tokens, t);
      const double rebuild_s =
          linear_s + cost.RebuildAttentionCost(t, b * request.block_tokens, /*sigma=*/0.0);
      if (transfer_s < rebuild_s) {
        state[b] = 2;
        fetch_transfer_s += transfer_s;
        rebuild_saved_s += rebuild_s;
      }
    }
    const double setup_s = absl::ToDoubleSeconds(options.fetch_setup);
    if (fetch_transfer_s + setup_s >= rebuild_saved_s) {
      for (uint8_t& s : state) {
        if (s == 2) s = 0;  // not worth a transfer
      }
      fetch_transfer_s = 0;
    } else {
      score.fetch_s = setup_s + fetch_transfer_s;
    }
  }

  // Pass 3: the compute step over what is still missing.
  int64_t last_present = -1;  // last block resident or fetched
  for (int64_t b = n - 1; b >= 0; --b) {
    if (state[b] != 0) {
      last_present = b;
      break;
    }
  }
  AttentionWork work;
  work.segments = 0;
  work.kv_tokens_scanned = request.tokens;
  for (int64_t b = 0; b < n; ++b) {
    const int64_t t = request.TokensOf(b);
    const int64_t position = b * request.block_tokens;
    if (state[b] == 2) {
      ++score.fetched_blocks;
      score.fetch_bytes += t * bytes_per_token;
      continue;
    }
    if (state[b] != 0) continue;
    if (b < last_present) {
      score.rebuild_tokens += t;
    } else {
      score.new_tokens += t;
    }
    const bool continues_run = b > 0 && state[b - 1] == 0;
    if (!continues_run) ++work.segments;
    work.query_tokens += t;
    work.attended_pairs += t * position + t * (t + 1) / 2;
  }
  if (work.query_tokens == 0) {
    // Everything is there: the first token still needs one query row at the
    // last position (engines recompute the last prompt token).
    work.query_tokens = 1;
    work.attended_pairs = request.tokens;
    work.segments = 1;
  }
  // Per pair whatever the calibration's launch model: the missing part runs
  // as many chunked steps, and routing must stay cheap per candidate.
  score.compute_s = cost.PerPairStepLatency(work);
  score.queue_s = QueueSeconds(cost, candidate.queued_prefill_tokens, work.query_tokens,
                               options.queue_step_tokens);
  score.predicted_ttft_s = std::max(score.queue_s, score.fetch_s) + score.compute_s;
  return score;
}

// The chosen candidate's rebuild and fetch runs, in position order, from the
// block states its scoring left.
void CollectRuns(const RequestView& request, const std::vector<uint8_t>& state,
                 MemberSlot member, bool self_is_member, int64_t bytes_per_token,
                 std::vector<RebuildRun>* rebuild, std::vector<FetchRun>* fetch) {
  const int64_t n = static_cast<int64_t>(state.size());
  for (int64_t b = 0; b < n; ++b) {
    const int64_t t = request.TokensOf(b);
    if (state[b] == kFetched) {
      const BlockLocation* source = request.SourceOf(b, member, self_is_member);
      if (!fetch->empty() && fetch->back().from == source->member &&
          fetch->back().first_block + fetch->back().blocks == b) {
        ++fetch->back().blocks;
        fetch->back().bytes += t * bytes_per_token;
      } else {
        fetch->push_back(FetchRun{source->member, b, 1, t * bytes_per_token});
      }
    } else if (state[b] == kMissing) {
      if (b > 0 && state[b - 1] == kMissing && !rebuild->empty()) {
        ++rebuild->back().blocks;
        rebuild->back().tokens += t;
      } else {
        rebuild->push_back(RebuildRun{b, 1, t});
      }
    }
  }
}

// Two cost models predict the same times: the same object, or equal shape and
// calibration (a coordinator holds one model per registered daemon, usually
// all equal; sharing the scoring of empty candidates across them keeps Route
// O(blocks) instead of O(blocks × daemons)).
bool SameCost(const CostModel* a, const CostModel* b) {
  if (a == b) return true;
  const ModelConfig& ma = a->model();
  const ModelConfig& mb = b->model();
  const CalibrationParams& pa = a->params();
  const CalibrationParams& pb = b->params();
  return ma.num_layers == mb.num_layers && ma.num_q_heads == mb.num_q_heads &&
         ma.num_kv_heads == mb.num_kv_heads && ma.head_dim == mb.head_dim &&
         ma.dtype_bytes == mb.dtype_bytes && ma.block_tokens == mb.block_tokens &&
         ma.hidden_size == mb.hidden_size && ma.intermediate_size == mb.intermediate_size &&
         ma.vocab_size == mb.vocab_size && pa.linear_step_s == pb.linear_step_s &&
         pa.attn_flops_per_s == pb.attn_flops_per_s &&
         pa.attn_kv_bytes_per_s == pb.attn_kv_bytes_per_s &&
         pa.segment_overhead_s == pb.segment_overhead_s &&
         pa.step_overhead_s == pb.step_overhead_s;
}

}  // namespace

absl::string_view RoutingModeName(RoutingMode mode) {
  switch (mode) {
    case RoutingMode::kHoleAware:
      return "hole-aware";
    case RoutingMode::kContiguousPrefix:
      return "contiguous-prefix";
    case RoutingMode::kRoundRobin:
      return "round-robin";
  }
  return "unknown";
}

absl::StatusOr<RoutingMode> ParseRoutingMode(absl::string_view name) {
  for (RoutingMode mode :
       {RoutingMode::kHoleAware, RoutingMode::kContiguousPrefix, RoutingMode::kRoundRobin}) {
    if (name == RoutingModeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown routing mode '", name, "' (known: hole-aware, contiguous-prefix, round-robin)"));
}

absl::string_view RouteReasonName(RouteReason reason) {
  switch (reason) {
    case RouteReason::kBestPredictedTtft:
      return "best_predicted_ttft";
    case RouteReason::kLoadTieBreak:
      return "load_tie_break";
    case RouteReason::kLoadBound:
      return "load_bound";
    case RouteReason::kAgentAffinity:
      return "agent_affinity";
    case RouteReason::kOnlyCandidate:
      return "only_candidate";
    case RouteReason::kRoundRobin:
      return "round_robin";
    case RouteReason::kMemoryBound:
      return "memory_bound";
  }
  return "unknown";
}

absl::Status RouterOptions::Validate() const {
  if (!(fetch_bytes_per_s > 0) || !std::isfinite(fetch_bytes_per_s)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fetch_bytes_per_s must be a finite number > 0, got ", fetch_bytes_per_s));
  }
  if (fetch_setup < absl::ZeroDuration() || fetch_setup == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fetch_setup must be finite and >= 0, got ", absl::FormatDuration(fetch_setup)));
  }
  if (tie_absolute < absl::ZeroDuration() || tie_absolute == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tie_absolute must be finite and >= 0, got ", absl::FormatDuration(tie_absolute)));
  }
  if (!(tie_relative >= 0) || !std::isfinite(tie_relative)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tie_relative must be a finite number >= 0, got ", tie_relative));
  }
  if (imbalance_abs_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("imbalance_abs_tokens must be >= 0, got ", imbalance_abs_tokens));
  }
  if (!(imbalance_relative >= 1) || !std::isfinite(imbalance_relative)) {
    return absl::InvalidArgumentError(
        absl::StrCat("imbalance_relative must be a finite number >= 1, got ", imbalance_relative));
  }
  if (!(memory_imbalance_fraction > 0 && memory_imbalance_fraction <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory_imbalance_fraction must be in (0, 1], got ", memory_imbalance_fraction));
  }
  if (queue_step_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue_step_tokens must be >= 1, got ", queue_step_tokens));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<Router>(std::move(options));
}

Router::Router(RouterOptions options) : options_(std::move(options)) {
  ABSL_RAW_CHECK(options_.Validate().ok(), "invalid RouterOptions");
}

absl::StatusOr<RouteDecision> Router::Route(const RouteQuery& query,
                                            absl::Span<const RouteCandidate> candidates,
                                            const BlockLocationIndex& index, bool explain) const {
  if (candidates.empty()) return absl::InvalidArgumentError("no candidates to route to");
  if (query.hashes.empty()) return absl::InvalidArgumentError("query has no block hashes");
  if (query.reserve_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("reserve_blocks must be >= 0, got ", query.reserve_blocks));
  }
  MemberSlot max_slot = 0;
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (candidates[c].cost == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("candidate ", c, " has no cost model"));
    }
    if (candidates[c].cost->model().block_tokens != candidates[0].cost->model().block_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "candidate ", c, " has block_tokens ", candidates[c].cost->model().block_tokens,
          ", candidate 0 has ", candidates[0].cost->model().block_tokens));
    }
    max_slot = std::max(max_slot, candidates[c].member);
  }
  const int64_t block_tokens = candidates[0].cost->model().block_tokens;
  const int64_t n = static_cast<int64_t>(query.hashes.size());
  if (query.tokens <= (n - 1) * block_tokens || query.tokens > n * block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokens ", query.tokens, " inconsistent with ", n, " block hashes of ", block_tokens,
        " tokens (expected (", (n - 1) * block_tokens, ", ", n * block_tokens, "])"));
  }
  std::vector<int32_t> slot_to_candidate(static_cast<size_t>(max_slot) + 1, kNotCandidate);
  for (size_t c = 0; c < candidates.size(); ++c) {
    int32_t& entry = slot_to_candidate[candidates[c].member];
    if (entry != kNotCandidate) {
      return absl::InvalidArgumentError(
          absl::StrCat("member ", candidates[c].member, " appears twice among the candidates"));
    }
    entry = static_cast<int32_t>(c);
  }

  std::vector<BlockHolders> holders;
  index.Lookup(query.hashes, &holders);
  std::vector<Residency> residency(candidates.size());
  for (int64_t b = 0; b < n; ++b) {
    for (const BlockLocation& h : holders[b]) {
      if (h.member <= max_slot && slot_to_candidate[h.member] != kNotCandidate) {
        residency[slot_to_candidate[h.member]].resident.push_back(static_cast<uint32_t>(b));
      }
    }
  }
  std::vector<uint8_t> source_allowed;
  if (query.fetch_sources.has_value()) {
    MemberSlot max_source = 0;
    for (MemberSlot m : *query.fetch_sources) max_source = std::max(max_source, m);
    // One extra entry so an empty source list still reads as "restricted".
    source_allowed.assign(static_cast<size_t>(max_source) + 2, 0);
    for (MemberSlot m : *query.fetch_sources) source_allowed[m] = 1;
  }
  const RequestView request{query.hashes, query.tokens, block_tokens, &holders, &source_allowed};

  // Scores: candidates holding something are scored one by one; the others
  // share one scoring per distinct cost model (they differ only in queueing).
  // Block states are kept (per holder; per shared scoring) so the chosen
  // candidate's runs need no second scoring.
  struct SharedScore {
    const CostModel* cost;
    CandidateScore score;
    std::vector<uint8_t> state;
  };
  std::vector<CandidateScore> scores(candidates.size());
  std::vector<std::vector<uint8_t>> states(candidates.size());
  std::vector<SharedScore> empty_scores;
  std::vector<size_t> shared_of(candidates.size(), 0);
  for (size_t c = 0; c < candidates.size(); ++c) {
    const RouteCandidate& cand = candidates[c];
    if (!residency[c].resident.empty()) {
      scores[c] = ScoreCandidate(options_, request, cand, /*self_is_member=*/true,
                                 residency[c].resident, &states[c]);
      continue;
    }
    auto it = std::find_if(empty_scores.begin(), empty_scores.end(),
                           [&](const SharedScore& e) { return SameCost(e.cost, cand.cost); });
    if (it == empty_scores.end()) {
      RouteCandidate unloaded = cand;
      unloaded.queued_prefill_tokens = 0;
      SharedScore shared{cand.cost, CandidateScore(), {}};
      shared.score = ScoreCandidate(options_, request, unloaded, /*self_is_member=*/false, {},
                                    &shared.state);
      empty_scores.push_back(std::move(shared));
      it = empty_scores.end() - 1;
    }
    shared_of[c] = static_cast<size_t>(it - empty_scores.begin());
    CandidateScore& s = scores[c];
    s = it->score;
    s.member = cand.member;
    s.load_tokens = cand.queued_prefill_tokens;
    s.queue_s = QueueSeconds(*cand.cost, cand.queued_prefill_tokens,
                             std::max<int64_t>(1, s.rebuild_tokens + s.new_tokens),
                             options_.queue_step_tokens);
    s.predicted_ttft_s = std::max(s.queue_s, s.fetch_s) + s.compute_s;
  }

  // Choose.
  RouteDecision decision;
  int64_t min_load = std::numeric_limits<int64_t>::max();
  for (const RouteCandidate& c : candidates) min_load = std::min(min_load, c.queued_prefill_tokens);
  auto load_ok = [&](size_t c) {
    const int64_t load = candidates[c].queued_prefill_tokens;
    const bool over_abs = load > min_load + options_.imbalance_abs_tokens;
    const bool over_rel =
        static_cast<double>(load) > static_cast<double>(min_load) * options_.imbalance_relative;
    return !(over_abs && over_rel);
  };
  // Memory: the blocks the request must allocate there (missing + reserve)
  // must fit beside the busy ones; and the pool share committed to live
  // sticky agent jobs must not run ahead of the least committed candidate's.
  auto fits = [&](size_t c) {
    const RouteCandidate& cand = candidates[c];
    const int64_t allocate =
        n - static_cast<int64_t>(residency[c].resident.size()) + query.reserve_blocks;
    return cand.capacity_blocks <= 0 || allocate <= cand.capacity_blocks - cand.busy_blocks;
  };
  auto committed_fraction = [&](size_t c) {
    const RouteCandidate& cand = candidates[c];
    return cand.capacity_blocks > 0 ? static_cast<double>(cand.committed_blocks) /
                                          static_cast<double>(cand.capacity_blocks)
                                    : 0.0;
  };
  double min_committed = 1.0;
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (candidates[c].capacity_blocks > 0) {
      min_committed = std::min(min_committed, committed_fraction(c));
    }
  }
  auto memory_ok = [&](size_t c) {
    return fits(c) &&
           committed_fraction(c) <= min_committed + options_.memory_imbalance_fraction;
  };
  // Which candidates may be chosen: in bounds; else those that fit; else all.
  std::vector<uint8_t> eligible(candidates.size(), 0);
  bool any_eligible = false;
  for (size_t c = 0; c < candidates.size(); ++c) {
    eligible[c] = load_ok(c) && memory_ok(c);
    any_eligible = any_eligible || eligible[c];
  }
  if (!any_eligible) {
    for (size_t c = 0; c < candidates.size(); ++c) {
      eligible[c] = fits(c);
      any_eligible = any_eligible || eligible[c];
    }
  }
  if (!any_eligible) std::fill(eligible.begin(), eligible.end(), 1);
  auto in_bounds = [&](size_t c) { return eligible[c] != 0; };
  // Higher is better: -ttft, or the contiguous prefix.
  auto merit = [&](size_t c) {
    return options_.mode == RoutingMode::kContiguousPrefix
               ? static_cast<double>(scores[c].contiguous_hit_tokens)
               : -scores[c].predicted_ttft_s;
  };

  std::optional<size_t> sticky;
  if (query.sticky_member.has_value() && *query.sticky_member <= max_slot &&
      slot_to_candidate[*query.sticky_member] != kNotCandidate) {
    sticky = static_cast<size_t>(slot_to_candidate[*query.sticky_member]);
  }
  if (sticky.has_value()) {
    decision.candidate = *sticky;
    decision.reason = RouteReason::kAgentAffinity;
  } else if (candidates.size() == 1) {
    decision.candidate = 0;
    decision.reason = RouteReason::kOnlyCandidate;
  } else if (options_.mode == RoutingMode::kRoundRobin) {
    decision.candidate = rotation_.fetch_add(1, std::memory_order_relaxed) % candidates.size();
    decision.reason = RouteReason::kRoundRobin;
  } else {
    size_t best_overall = 0;
    for (size_t c = 1; c < candidates.size(); ++c) {
      if (merit(c) > merit(best_overall)) best_overall = c;
    }
    std::optional<size_t> best_in;
    for (size_t c = 0; c < candidates.size(); ++c) {
      if (in_bounds(c) && (!best_in.has_value() || merit(c) > merit(*best_in))) best_in = c;
    }
    // At least one candidate is eligible, so best_in is set.
    const double best = merit(*best_in);
    const double tolerance =
        options_.mode == RoutingMode::kContiguousPrefix
            ? 0.0
            : std::max(absl::ToDoubleSeconds(options_.tie_absolute),
                       options_.tie_relative * std::fabs(best));
    std::vector<size_t> ties;
    for (size_t c = 0; c < candidates.size(); ++c) {
      if (in_bounds(c) && merit(c) >= best - tolerance) ties.push_back(c);
    }
    if (ties.size() == 1) {
      decision.candidate = ties[0];
    } else {
      int64_t least = std::numeric_limits<int64_t>::max();
      for (size_t c : ties) least = std::min(least, candidates[c].queued_prefill_tokens);
      // Equal load: the candidate holding more of the request (fewer copies
      // of the same blocks across the cluster), then rotation.
      int64_t most_hits = -1;
      for (size_t c : ties) {
        if (candidates[c].queued_prefill_tokens == least) {
          most_hits = std::max(most_hits, scores[c].hit_tokens);
        }
      }
      std::vector<size_t> least_loaded;
      for (size_t c : ties) {
        if (candidates[c].queued_prefill_tokens == least && scores[c].hit_tokens == most_hits) {
          least_loaded.push_back(c);
        }
      }
      decision.candidate =
          least_loaded.size() == 1
              ? least_loaded[0]
              : least_loaded[rotation_.fetch_add(1, std::memory_order_relaxed) %
                             least_loaded.size()];
    }
    if (!in_bounds(best_overall) && merit(best_overall) > merit(decision.candidate) + tolerance) {
      decision.reason =
          memory_ok(best_overall) ? RouteReason::kLoadBound : RouteReason::kMemoryBound;
    } else if (ties.size() > 1) {
      decision.reason = RouteReason::kLoadTieBreak;
    } else {
      decision.reason = RouteReason::kBestPredictedTtft;
    }
  }

  // The chosen candidate's runs, from the block states its scoring left.
  const size_t chosen = decision.candidate;
  const bool holds_any = !residency[chosen].resident.empty();
  decision.score = scores[chosen];
  CollectRuns(request, holds_any ? states[chosen] : empty_scores[shared_of[chosen]].state,
              candidates[chosen].member, holds_any,
              candidates[chosen].cost->model().KvBytesPerToken(), &decision.rebuild,
              &decision.fetch);
  if (explain) decision.all = std::move(scores);
  return decision;
}

absl::StatusOr<size_t> Router::PickDecode(absl::Span<const RouteCandidate> candidates) const {
  if (candidates.empty()) return absl::InvalidArgumentError("no decode candidates");
  std::vector<size_t> best = {0};
  for (size_t c = 1; c < candidates.size(); ++c) {
    const RouteCandidate& a = candidates[c];
    const RouteCandidate& b = candidates[best[0]];
    if (a.decode_batch < b.decode_batch ||
        (a.decode_batch == b.decode_batch && a.free_blocks > b.free_blocks)) {
      best = {c};
    } else if (a.decode_batch == b.decode_batch && a.free_blocks == b.free_blocks) {
      best.push_back(c);
    }
  }
  if (best.size() == 1) return best[0];
  return best[rotation_.fetch_add(1, std::memory_order_relaxed) % best.size()];
}

}  // namespace asymcache
