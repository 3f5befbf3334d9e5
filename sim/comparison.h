// Comparison: runs several systems on the same workload (side by side), and
// arrival-rate sweeps with capacity at SLO.
//
// Contract: every (system, rate) run is independent and deterministic, so the
// runs execute on up to `threads` worker threads and the results are the same
// whatever the thread count. `progress`, when set, is called (from any worker,
// serialized by an internal mutex) with the overall fraction done.
#ifndef ASYMCACHE_SIM_COMPARISON_H_
#define ASYMCACHE_SIM_COMPARISON_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "cachecore/cost_model.h"
#include "sim/engine.h"
#include "sim/report.h"
#include "sim/system.h"
#include "sim/workload.h"

namespace asymcache {

struct ComparisonOptions {
  EngineOptions engine;                     // engine.progress is ignored (see `progress`)
  int threads = 1;                          // worker threads, >= 1
  std::function<void(double)> progress;     // overall fraction done
  // Fails a run (INTERNAL) when the cache is inconsistent or leaks pins/writes
  // after it; on by default (cheap: O(pool)).
  bool check_consistency = true;
};

// One run per system on `workload`, results in `systems` order.
absl::StatusOr<std::vector<RunResult>> RunSystems(const Workload& workload,
                                                  const std::vector<SystemSpec>& systems,
                                                  const CostModel& cost,
                                                  const ComparisonOptions& options);

// The workload to replay at a session rate (a generator, or a trace rescaled).
using WorkloadAtRate = std::function<absl::StatusOr<Workload>(double rate)>;

// Every system at every rate (rates in the given order).
absl::StatusOr<std::vector<SweepPoint>> RunSweep(const WorkloadAtRate& workload,
                                                 const std::vector<double>& rates,
                                                 const std::vector<SystemSpec>& systems,
                                                 const CostModel& cost,
                                                 const ComparisonOptions& options);

// Automatic sweep: starts at `start_rate`; while some system other than `none`
// still meets the SLO, multiplies the rate by `factor`; stops when every such
// system misses (one point past the last capacity) or after `max_points`.
// If a system already misses at the start, first divides by `factor` (up to
// max_points/2 times) until all meet. Points sorted by rate.
absl::StatusOr<std::vector<SweepPoint>> RunAutoSweep(const WorkloadAtRate& workload,
                                                     double start_rate, double factor,
                                                     int max_points, const SloTargets& slo,
                                                     const std::vector<SystemSpec>& systems,
                                                     const CostModel& cost,
                                                     const ComparisonOptions& options);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_COMPARISON_H_
