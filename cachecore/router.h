// Router: picks the cache daemon (and its workers) a request should run on,
// by predicted time to first token (DESIGN.md §3.6). The one routing code
// path: the coordinator service calls it with its registry and event-fed
// BlockLocationIndex, the simulator's cluster mode with its engines.
//
// Predicted TTFT of a candidate (hole-aware, the default mode):
//
//   ttft = max(queue_s, fetch_s) + compute_s
//   queue_s   = the linear-layer time the queued prefill tokens there add to
//               the step(s) this request rides in (CostModel::MarginalLinearTime
//               over its query tokens) plus one step overhead per full
//               `queue_step_tokens` step queued ahead of it.
//   compute_s = CostModel::PerPairStepLatency of one step whose queries are the
//               request's missing tokens (holes and the uncached tail), as
//               one AttentionWork: attended pairs by absolute position, the
//               whole context scanned once, one segment per missing run.
//   fetch_s   = for the missing blocks fetched from peers: setup + bytes /
//               fetch_bytes_per_s. A missing block is fetched (when another
//               member allowed by RouteQuery::fetch_sources holds it and
//               fetching is allowed) iff its
//               transfer time is below its marginal rebuild cost
//               (CostModel::RebuildCost at its position, packed: sigma 0, in
//               a step holding the request's missing tokens) — so cheap
//               leading blocks are rebuilt locally and deep ones pulled
//               (DESIGN.md §3.3). Fetching overlaps queueing.
//
// Choosing: a candidate is out of bounds when
//   * its load is: queued prefill tokens above both min_load +
//     imbalance_abs_tokens and min_load × imbalance_relative; or
//   * its memory is: the blocks the request must allocate there (missing +
//     reserve_blocks) do not fit beside the blocks it has busy (pinned by
//     running steps, agent pins, exports, being written); or the share of its
//     pool committed to live sticky agent jobs (committed_blocks / capacity)
//     exceeds the least committed candidate's by more than
//     memory_imbalance_fraction. Without the second test every job of a
//     tenant lands where the tenant's shared tool prompt is cached, and those
//     daemons thrash while others idle (docs/results/sim_cluster.md). Busy
//     blocks are not balanced: on shared documents they are the very blocks a
//     request wants to reuse.
// Out-of-bounds candidates are skipped unless every candidate is (then those
// that fit the request, else all, are considered); among the rest, those
// within the tie tolerance of the best score are tie-broken by lowest load,
// then by most resident tokens (no needless second copy), then by a rotating
// start so equal candidates share work. An agent job
// whose sticky member is a candidate goes there (while it is alive: the
// caller passes only live candidates).
//
// Modes (RoutingMode): kHoleAware as above; kContiguousPrefix scores by the
// longest contiguous resident prefix (what other routers do: Dynamo, llm-d,
// SGLang) with the same load bound and tie-break; kRoundRobin ignores the
// cache. Every mode reports the chosen candidate's predicted TTFT breakdown.
//
// Contract: Route is thread-safe (the only mutable state is an atomic
// rotation counter). Candidates and the index are borrowed for the call.
// Cost: one index lookup per request, then O(blocks) per candidate that holds
// at least one of the request's blocks, O(blocks) once for all others.
#ifndef ASYMCACHE_CACHECORE_ROUTER_H_
#define ASYMCACHE_CACHECORE_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/block_location_index.h"
#include "cachecore/cost_model.h"
#include "cachecore/types.h"

namespace asymcache {

enum class RoutingMode : uint8_t {
  kHoleAware = 0,         // predicted TTFT, holes and fetches included (ours)
  kContiguousPrefix = 1,  // longest contiguous cached prefix (other routers)
  kRoundRobin = 2,        // ignore the cache
};
// "hole-aware", "contiguous-prefix", "round-robin".
absl::string_view RoutingModeName(RoutingMode mode);
// INVALID_ARGUMENT listing the names for an unknown one.
absl::StatusOr<RoutingMode> ParseRoutingMode(absl::string_view name);

// Why the chosen candidate was chosen.
enum class RouteReason : uint8_t {
  kBestPredictedTtft = 0,  // lowest predicted TTFT (or longest prefix), unique within tolerance
  kLoadTieBreak = 1,       // several within the tie tolerance; the least loaded won
  kLoadBound = 2,          // the best-scored candidate was over the imbalance bound
  kAgentAffinity = 3,      // the agent job's sticky member
  kOnlyCandidate = 4,      // one candidate
  kRoundRobin = 5,         // RoutingMode::kRoundRobin
  kMemoryBound = 6,        // the best-scored candidate lacked pool memory or was over the memory bound
};
// "best_predicted_ttft", "load_tie_break", "load_bound", "agent_affinity",
// "only_candidate", "round_robin", "memory_bound" (metric label values).
absl::string_view RouteReasonName(RouteReason reason);

struct RouterOptions {
  RoutingMode mode = RoutingMode::kHoleAware;
  // Consider fetching missing blocks from peers (DESIGN.md §3.3).
  bool allow_fetch = true;
  // Daemon-to-daemon block transfer rate, bytes/s. 5 GB/s: the warm GPU->GPU
  // ImportBlocks rate measured on an H100 over UCX (5.1–7.0 GB/s,
  // docs/results/daemon_h100.md), rounded down. Host-pool daemons over TCP
  // reach ~0.8 GB/s (docs/transport.md): set it per deployment. > 0.
  double fetch_bytes_per_s = 5e9;
  // Fixed cost of one fetch (ExportBlocks + ImportBlocks round trips and the
  // UCX connection when cached). 1 ms. >= 0.
  absl::Duration fetch_setup = absl::Milliseconds(1);
  // Two scores tie when they differ by at most max(tie_absolute,
  // tie_relative × best). 1 ms and 5 %: below what a one-step difference in
  // queueing changes. >= 0.
  absl::Duration tie_absolute = absl::Milliseconds(1);
  double tie_relative = 0.05;
  // Load bound (queued prefill tokens): a candidate is out of bounds when its
  // load exceeds BOTH min_load + imbalance_abs_tokens and min_load ×
  // imbalance_relative (SGLang's cache-aware router uses the same two-sided
  // test). 32768 tokens (a few long prompts) and 2.0. >= 0 / >= 1.
  int64_t imbalance_abs_tokens = 32768;
  double imbalance_relative = 2.0;
  // Memory bound: a candidate whose pool share committed to live sticky
  // agent jobs exceeds the least committed candidate's by more than this is
  // out of bounds. 0.05 (a twentieth of a pool: ~4 90k-token llama-3-8b
  // contexts on a 60 GiB H100 pool): in the simulator's cluster mode, 0.25
  // still let routing pack long agent jobs onto the daemons holding their
  // tenant's tool prompt (64 daemons: 1.25 s mean TTFT against round-robin's
  // 0.63 s); 0.05 removed that (0.62 s) and left the shared-document
  // workload's hit rate unchanged (docs/results/sim_cluster.md). In (0, 1];
  // 1 disables the balance test (the fit test stays).
  double memory_imbalance_fraction = 0.05;
  // Queued tokens per step ahead when converting queued work into queueing
  // delay (one step overhead per full step of this many). 8192: the adaptive
  // scheduler's typical prefill step size. >= 1.
  int64_t queue_step_tokens = 8192;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// One place a request can run: a cache daemon (with its co-located workers).
struct RouteCandidate {
  MemberSlot member = 0;             // its slot in the BlockLocationIndex
  const CostModel* cost = nullptr;   // its calibrated cost model; not null, same block_tokens as the request
  int64_t queued_prefill_tokens = 0; // prefill/rebuild tokens waiting or running there
  int64_t decode_batch = 0;          // sequences decoding there
  int64_t free_blocks = 0;           // free pool blocks (reported; informational)
  // Pool size and blocks that cannot be evicted now (pinned by running steps,
  // agent pins or exports, or being written). capacity_blocks 0 = unknown:
  // no memory test for this candidate.
  int64_t capacity_blocks = 0;
  int64_t busy_blocks = 0;
  // Blocks of the contexts of live agent jobs bound to this candidate (they
  // will come back here: affinity), as far as the caller knows. The memory
  // balance test compares these (not busy_blocks) across candidates.
  int64_t committed_blocks = 0;
};

struct RouteQuery {
  // Chain hashes of the request's context, one per block, the last one
  // possibly partial (cachecore/block_hash.h). Not empty.
  absl::Span<const BlockHash> hashes;
  // Context tokens: in ((hashes.size()-1)·B, hashes.size()·B].
  int64_t tokens = 0;
  // The agent job's sticky member, if it has one.
  std::optional<MemberSlot> sticky_member;
  // Blocks the request needs beyond its context (e.g. for the tokens it will
  // generate), for the memory fit test. >= 0.
  int64_t reserve_blocks = 0;
  // Members a missing block may be fetched from (live daemons, candidates or
  // not, e.g. decode-only ones). nullopt: any member the index names (the
  // caller's index holds live members only).
  std::optional<absl::Span<const MemberSlot>> fetch_sources;
};

// Missing blocks [first_block, first_block + blocks) rebuilt on the chosen
// candidate (positions first_block·B ...).
struct RebuildRun {
  int64_t first_block = 0;
  int64_t blocks = 0;
  int64_t tokens = 0;       // tokens in the run (the last block may be partial)
};
// Missing blocks [first_block, first_block + blocks) fetched from `from`.
struct FetchRun {
  MemberSlot from = 0;
  int64_t first_block = 0;
  int64_t blocks = 0;
  int64_t bytes = 0;
};

// The predicted TTFT of one candidate and what makes it up.
struct CandidateScore {
  MemberSlot member = 0;
  double predicted_ttft_s = 0;
  double queue_s = 0;
  double compute_s = 0;
  double fetch_s = 0;
  int64_t hit_tokens = 0;              // resident there
  int64_t contiguous_hit_tokens = 0;   // resident before the first missing block
  int64_t rebuild_tokens = 0;          // missing before the last resident/fetched block (holes)
  int64_t new_tokens = 0;              // missing after it (uncached tail)
  int64_t fetched_blocks = 0;
  int64_t fetch_bytes = 0;
  int64_t load_tokens = 0;             // queued_prefill_tokens
};

struct RouteDecision {
  size_t candidate = 0;                // index into the candidates passed
  RouteReason reason = RouteReason::kBestPredictedTtft;
  CandidateScore score;                // of the chosen candidate
  std::vector<RebuildRun> rebuild;     // chosen candidate's missing runs, position order
  std::vector<FetchRun> fetch;         // chosen candidate's fetches, position order
  std::vector<CandidateScore> all;     // every candidate's score (when requested), candidate order
};

class Router {
 public:
  // Options must be valid (Create checks; the constructor asserts).
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options);
  explicit Router(RouterOptions options);

  // Chooses among `candidates` (not empty; distinct members). INVALID_ARGUMENT
  // for an empty query or candidate list, tokens inconsistent with the
  // hashes, a null cost model, or a cost model whose block_tokens differs
  // from the first candidate's. `explain` fills RouteDecision::all.
  absl::StatusOr<RouteDecision> Route(const RouteQuery& query,
                                      absl::Span<const RouteCandidate> candidates,
                                      const BlockLocationIndex& index,
                                      bool explain = false) const;

  // Decode side of a prefill/decode split: the candidate with the fewest
  // decoding sequences (ties: most free blocks, then rotation). Index into
  // `candidates`; INVALID_ARGUMENT if empty.
  absl::StatusOr<size_t> PickDecode(absl::Span<const RouteCandidate> candidates) const;

  const RouterOptions& options() const { return options_; }

 private:
  const RouterOptions options_;
  mutable std::atomic<uint64_t> rotation_{0};
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_ROUTER_H_
