// Cluster mode: replays one Workload over N engines (cache daemons with their
// workers) behind the real router (cachecore/router.h), so routing modes can
// be compared on the same trace (docs/simulator.md, "Cluster mode").
//
// Model:
//   * N EngineInstances (sim/engine.h), each with its own KvCache of
//     `engine.pool_blocks` blocks, its own ChunkScheduler and agent pin table,
//     the same SystemSpec and CostModel. They share one FakeClock: modeled
//     time advances event by event (arrivals, step ends) in time order; ties
//     go step ends first (engine index order), then arrivals (arrival order),
//     then step boundaries (engine index order).
//   * Each request (session step) is routed when it arrives by
//     Router::Route over all N engines as candidates (member slot = engine
//     index) with their current load (EngineInstance::Load: queued prefill
//     tokens, decode batch, free/capacity/busy blocks), the context blocks
//     of the agent jobs whose last step went there (committed_blocks, until
//     the job's last step), the request's output blocks as reserve_blocks,
//     and a BlockLocationIndex fed
//     synchronously by every engine's KvCache events — the router sees exact,
//     current state: no heartbeat staleness, no event lag, no network delay.
//   * RouterOptions.allow_fetch must be false: the simulator does not model
//     daemon-to-daemon block transfer, so a request reuses only blocks of the
//     engine it runs on.
//   * Agent stickiness: when the system's agent pins are on (EngineOptions.
//     agent_pins and a reusing system), an agent job's step k > 0 passes the
//     engine of step k-1 as RouteQuery.sticky_member (Continuum semantics: the
//     job's pinned blocks are there). Otherwise no stickiness.
//   * An engine that has nothing running wakes at every arrival (any
//     engine's): it expires its pins and admits what was routed to it — the
//     single-engine replay does the same, so a 1-engine cluster reproduces
//     RunSystem exactly, in every routing mode.
//
// Load imbalance = max over engines of work_e / mean over engines of work_e,
// where work_e = prefill/rebuild query tokens + decode tokens engine e
// computed over the run (1 = perfectly even, N = everything on one engine; 0
// when nothing ran).
//
// Contract: RunCluster is a pure function of its inputs (deterministic; its
// Router and index are private to the call). Thread-safe; the CostModel is
// borrowed for the call. RunClusters runs independent (system, mode) runs on
// worker threads; results do not depend on the thread count.
#ifndef ASYMCACHE_SIM_CLUSTER_H_
#define ASYMCACHE_SIM_CLUSTER_H_

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "cachecore/cost_model.h"
#include "cachecore/router.h"
#include "sim/engine.h"
#include "sim/report.h"
#include "sim/system.h"
#include "sim/workload.h"

namespace asymcache {

// RouterOptions for the simulator: the defaults with allow_fetch = false (no
// block transfer is modeled).
RouterOptions SimRouterOptions();

struct ClusterOptions {
  // Every engine's options; pool_blocks is per engine. engine.progress, when
  // set, gets the fraction of the cluster's requests done.
  EngineOptions engine;
  // Engines (daemons). 4: the small cluster of issue #5; the CLI's
  // `--cluster N` sets it. In [1, 4096] (BlockLocationIndex member slots).
  int engines = 4;
  // The router's options; `mode` is overridden by RunCluster's argument.
  // allow_fetch must be false (see above).
  RouterOptions router = SimRouterOptions();

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// One engine's share of a cluster run.
struct ClusterEngineResult {
  int64_t requests = 0;  // requests routed to it
  EngineTotals totals;
  int64_t work_tokens() const { return totals.prefill_tokens + totals.decode_tokens; }
};

inline constexpr int kRouteReasons = 7;  // RouteReason values (kMemoryBound is the last)

struct ClusterResult {
  std::string system;
  RoutingMode routing = RoutingMode::kHoleAware;
  int engines = 0;
  // The whole cluster as one RunResult: every request (arrival order) and job;
  // counters summed over engines; final_pool summed; consistency the first
  // engine's failure (named) or OK.
  RunResult run;
  // Engine of run.requests[i]; -1 when it was rejected at arrival (never routed).
  std::vector<int32_t> request_engine;
  std::vector<ClusterEngineResult> per_engine;
  // Routing decisions by RouteReason (indexed by its value).
  std::array<int64_t, kRouteReasons> route_reasons{};
  double load_imbalance = 0;  // see above
};

// Replays `workload` on `options.engines` engines of `system`, routed by
// `mode`. INVALID_ARGUMENT for bad options or an invalid workload; INTERNAL if
// a cache misbehaves or the router fails (bugs).
absl::StatusOr<ClusterResult> RunCluster(const Workload& workload, const SystemSpec& system,
                                         RoutingMode mode, const CostModel& cost,
                                         const ClusterOptions& options);

// max / mean of `work`; 0 for an empty or all-zero input.
double LoadImbalance(absl::Span<const int64_t> work);

// Parses a comma-separated list of routing modes (RoutingModeName spellings).
// Duplicates are dropped (first wins). INVALID_ARGUMENT naming `--routing` for
// an unknown or empty list.
absl::StatusOr<std::vector<RoutingMode>> ParseRoutingModes(absl::string_view list);

// Several cluster runs side by side.
struct ClusterComparisonOptions {
  ClusterOptions cluster;                 // cluster.engine.progress is ignored (see `progress`)
  int threads = 1;                        // worker threads, >= 1
  std::function<void(double)> progress;   // overall fraction done (serialized)
  // Fails a run (INTERNAL) when an engine's cache is inconsistent or leaks
  // pins/writes after it; on by default (cheap: O(pool) per engine).
  bool check_consistency = true;
};

// One run per (system, mode), systems outer: results[s * modes.size() + m].
absl::StatusOr<std::vector<ClusterResult>> RunClusters(const Workload& workload,
                                                       const std::vector<SystemSpec>& systems,
                                                       const std::vector<RoutingMode>& modes,
                                                       const CostModel& cost,
                                                       const ClusterComparisonOptions& options);

// The report row of a cluster run (sim/report.h).
ClusterSummary Summarize(const ClusterResult& result);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_CLUSTER_H_
