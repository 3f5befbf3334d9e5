// WorkerMetrics: the Prometheus metrics of the worker, behind a small typed
// API so that the worker code never touches prometheus types.
//
// Families (all names asymcache_worker_*, base units, help text each):
//   asymcache_worker_info{role,backend,model}         gauge, always 1
//   asymcache_worker_steps_total                      counter (forward steps)
//   asymcache_worker_step_duration_seconds            histogram, 0.5 ms .. 10 s
//   asymcache_worker_forward_seconds_total            counter (time in the model backend)
//   asymcache_worker_daemon_rpc_seconds_total         counter (time in daemon RPCs:
//       plan, commit, renew, release, import)
//   asymcache_worker_generated_tokens_total           counter
//   asymcache_worker_prefill_tokens_total             counter (prompt/hole tokens computed)
//   asymcache_worker_copied_tokens_total              counter (K/V rows copied, not recomputed)
//   asymcache_worker_page_rollovers_total             counter (decode pages from ExtendLease)
//   asymcache_worker_deferred_admissions_total        counter (waited for pages being written)
//   asymcache_worker_preemptions_total                counter
//   asymcache_worker_finished_requests_total          counter
//   asymcache_worker_running_sequences                gauge (the decode batch)
//   asymcache_worker_waiting_requests                 gauge
//   asymcache_worker_ttft_seconds                     histogram, 5 ms .. 60 s
//   asymcache_worker_tpot_seconds                     histogram, 1 ms .. 1 s
//
// Sources. The engine keeps cumulative counters (engine.h EngineStats);
// Update() is called with a fresh snapshot every stats interval and advances
// each counter by the difference since the previous snapshot (exact), sets
// the gauges, and puts the interval's steps into the step histogram: its
// _count and _sum are exact, but every step of one interval falls into the
// bucket of that interval's MEAN step time (the engine reports no per-step
// durations), so the buckets show the spread between intervals, not within
// one. TTFT and TPOT are per token: ObserveTtft/ObserveTpot take one
// request's first-token latency and one inter-token gap.
//
// Ownership: the registry must outlive the WorkerMetrics; one WorkerMetrics
// per registry. Thread-safety: thread-safe (prometheus-cpp metrics are; the
// previous snapshot is guarded by a mutex).
#ifndef ASYMCACHE_SERVICES_WORKER_WORKER_METRICS_H_
#define ASYMCACHE_SERVICES_WORKER_WORKER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "services/common/metric_families.h"
#include "services/worker/engine.h"

namespace asymcache::worker {

class WorkerMetrics {
 public:
  // The labels of asymcache_worker_info.
  struct Info {
    std::string role;     // both | prefill | decode
    std::string backend;  // cpu | cuda
    std::string model;    // the model's name
  };

  static const std::vector<double>& StepLatencyBuckets();  // 5e-4 .. 10
  static const std::vector<double>& TtftBuckets();         // 5e-3 .. 60
  static const std::vector<double>& TpotBuckets();         // 1e-3 .. 1

  // Registers the families in `registry`. ALREADY_EXISTS when the registry
  // holds one of the names as another type (the registry is left as it was).
  static absl::StatusOr<std::unique_ptr<WorkerMetrics>> Create(prometheus::Registry& registry,
                                                               const Info& info);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // A snapshot of the engine's cumulative stats (see the file comment). A
  // counter that went backwards (a snapshot of another engine) is taken as
  // the new base without advancing.
  void Update(const EngineStats& stats) ABSL_LOCKS_EXCLUDED(mu_);
  // One request's time from arrival to its first token, in seconds.
  void ObserveTtft(double seconds);
  // One gap between consecutive tokens of a request, in seconds.
  void ObserveTpot(double seconds);

 private:
  explicit WorkerMetrics(MetricFamilyRegistrar& families, const Info& info);

  // Immutable after construction (pointees are thread-safe, owned by the registry).
  prometheus::Counter* steps_ = nullptr;
  prometheus::Histogram* step_duration_ = nullptr;
  prometheus::Counter* forward_seconds_ = nullptr;
  prometheus::Counter* rpc_seconds_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Counter* prefill_tokens_ = nullptr;
  prometheus::Counter* copied_tokens_ = nullptr;
  prometheus::Counter* page_rollovers_ = nullptr;
  prometheus::Counter* deferred_admissions_ = nullptr;
  prometheus::Counter* preemptions_ = nullptr;
  prometheus::Counter* finished_requests_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* tpot_ = nullptr;

  absl::Mutex mu_;
  EngineStats last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_WORKER_METRICS_H_
