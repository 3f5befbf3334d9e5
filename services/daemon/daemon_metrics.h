// DaemonMetrics: the Prometheus metrics of the cache daemon, behind a small
// typed API so that the service code never touches prometheus types.
//
// Families (all names asymcache_*, base units, every family has help text):
//   asymcache_daemon_info{policy,backend,model}            gauge, always 1
//   asymcache_blocks{state=free|writing|sealed|pinned|in_transfer}  gauge
//   asymcache_capacity_blocks                               gauge
//   asymcache_hit_tokens_total{kind=contiguous_prefix|hole_aware}   counter
//   asymcache_rebuilt_tokens_total, asymcache_new_tokens_total      counter
//   asymcache_plan_duration_seconds                         histogram, 5 µs .. 100 ms
//   asymcache_rpc_duration_seconds{method,code}             histogram, 20 µs .. 1 s
//   asymcache_evictions_total{policy,reason=capacity|invalidate}    counter (blocks)
//   asymcache_active_leases                                 gauge
//   asymcache_writing_pages                                 gauge (full pages uncommitted leases write)
//   asymcache_deferred_plans_total                          counter (plans deferred: pages being written)
//   asymcache_agent_pinned_blocks, asymcache_agent_pinned_jobs      gauge
//   asymcache_transfers_total{direction=import|export}      counter (successful transfers)
//   asymcache_transfer_bytes_total{direction}               counter (bytes of successful transfers)
//   asymcache_transfer_errors_total{direction}              counter (failed transfers)
//   asymcache_calibration_info{device,source}               gauge, 1 for the calibration in use
//   asymcache_calibration_attention_flops_per_second, asymcache_calibration_kv_bytes_per_second,
//   asymcache_calibration_segment_overhead_seconds, asymcache_calibration_step_overhead_seconds,
//   asymcache_calibration_num_sms  gauge
//   asymcache_kv_events_total{kind=stored|removed}          counter
// Every label set of a fixed label domain is created at construction, so the
// series exist (at 0) from the first scrape. rpc series are created on first
// use per (method, code); options.rpc_methods are created up front with code
// "OK". The method label takes whatever the caller passes: pass RPC method
// names only (a bounded set), never request data.
//
// Hit tokens: a plan's resident tokens before its first hole or tail are
// "contiguous_prefix" hits (what a prefix cache would also have served); the
// resident tokens after the first missing page are "hole_aware" hits (served
// only because AsymCache reuses non-contiguous blocks). CountPlanTokens
// computes both from a StepPlan.
//
// Ownership: the registry must outlive the DaemonMetrics; the families live in
// the registry. One DaemonMetrics per registry (a second one on the same
// registry would share the families).
//
// Thread-safety: thread-safe. Counters, gauges and histograms are
// prometheus-cpp's (atomic / internally locked); the rpc series cache
// (services/common/metric_families.h) and the calibration info series are
// guarded by mutexes. Counts are non-negative by
// precondition: an observation with a negative count is dropped whole.
#ifndef ASYMCACHE_SERVICES_DAEMON_DAEMON_METRICS_H_
#define ASYMCACHE_SERVICES_DAEMON_DAEMON_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachecore/block_pool.h"
#include "cachecore/cost_model.h"
#include "cachecore/kv_cache.h"
#include "cachecore/step_plan.h"
#include "services/common/metric_families.h"

namespace asymcache {

// Token accounting of one plan (all >= 0).
struct PlanTokenCounts {
  int64_t contiguous_hit_tokens = 0;  // resident tokens before the first hole/tail
  int64_t hole_hit_tokens = 0;        // resident tokens after the first hole/tail
  int64_t rebuild_tokens = 0;         // tokens in holes
  int64_t new_tokens = 0;             // tokens in the tail
  friend bool operator==(const PlanTokenCounts&, const PlanTokenCounts&) = default;
};

// Classifies a plan's tokens from its segments (pure; no validation: a plan
// that is not ValidateStepPlan-clean yields whatever its segments add up to).
PlanTokenCounts CountPlanTokens(const StepPlan& plan);

enum class EvictionReason : uint8_t {
  kCapacity = 0,    // the pool evicted to make room (the eviction policy chose)
  kInvalidate = 1,  // an explicit InvalidateBlock
};
absl::string_view EvictionReasonName(EvictionReason reason);  // "capacity", "invalidate"

enum class TransferDirection : uint8_t {
  kImport = 0,  // blocks received from a peer daemon
  kExport = 1,  // blocks sent to a peer daemon
};
absl::string_view TransferDirectionName(TransferDirection direction);  // "import", "export"

struct DaemonMetricsOptions {
  std::string policy;   // eviction policy name, e.g. "asym"; required
  std::string backend;  // pool backend, e.g. "cuda" or "host"; required
  std::string model;    // model name, e.g. "llama-3-8b"; required
  // RPC methods whose code="OK" series are created up front (e.g. "Plan").
  // Default: none; series are created on first use either way.
  std::vector<std::string> rpc_methods;
  // INVALID_ARGUMENT naming the field: empty policy/backend/model, an empty
  // or duplicate rpc_methods entry.
  absl::Status Validate() const;
};

class DaemonMetrics {
 public:
  // Histogram bucket upper bounds, in seconds.
  static const std::vector<double>& PlanLatencyBuckets();  // 5e-6 .. 0.1
  static const std::vector<double>& RpcLatencyBuckets();   // 2e-5 .. 1

  // Registers the families in `registry`. INVALID_ARGUMENT for bad options;
  // ALREADY_EXISTS when the registry already holds one of the names as
  // another metric type or with other constant labels (the registry is left
  // as it was).
  static absl::StatusOr<std::unique_ptr<DaemonMetrics>> Create(prometheus::Registry& registry,
                                                               const DaemonMetricsOptions& options);
  DaemonMetrics(const DaemonMetrics&) = delete;
  DaemonMetrics& operator=(const DaemonMetrics&) = delete;

  // One plan (BeginStep): its latency and token accounting.
  void ObservePlan(absl::Duration latency, const PlanTokenCounts& tokens);
  // One finished RPC. Negative latency is recorded as 0.
  void ObserveRpc(absl::string_view method, absl::StatusCode code, absl::Duration latency);

  // Snapshot of the pool (gauges replaced).
  void SetBlockStates(const BlockPool::Stats& stats);
  void SetLeases(int64_t active_leases);
  // The deferral of duplicate prefill (KvCache::Stats writing_pages, deferred_plans).
  void SetWritingPages(int64_t pages);
  void AddDeferredPlans(int64_t plans);
  void SetAgentPins(int64_t pinned_blocks, int64_t pinned_jobs);

  void AddEvictions(EvictionReason reason, int64_t blocks);
  // A finished transfer: ok adds `bytes` and one transfer, !ok one error (the
  // bytes of a failed transfer are not counted).
  void AddTransfer(TransferDirection direction, int64_t bytes, bool ok);
  // The calibration in use; replaces the previous calibration_info series.
  void SetCalibration(const CalibrationParams& params);
  void AddKvEvents(KvEvent::Kind kind, int64_t events);

 private:
  // Registers every family through `families` (Create removes them again if
  // a registration throws).
  DaemonMetrics(MetricFamilyRegistrar& families, const DaemonMetricsOptions& options);

  // Immutable after construction (the pointees are thread-safe metrics owned
  // by the registry).
  std::unique_ptr<RpcDurationHistograms> rpcs_;
  prometheus::Family<prometheus::Gauge>* calibration_info_family_;
  std::array<prometheus::Gauge*, 5> blocks_;  // free, writing, sealed, pinned, in_transfer
  prometheus::Gauge* capacity_blocks_;
  prometheus::Counter* contiguous_hit_tokens_;
  prometheus::Counter* hole_hit_tokens_;
  prometheus::Counter* rebuilt_tokens_;
  prometheus::Counter* new_tokens_;
  prometheus::Histogram* plan_duration_;
  std::array<prometheus::Counter*, 2> evictions_;        // by EvictionReason
  prometheus::Gauge* active_leases_;
  prometheus::Gauge* writing_pages_;
  prometheus::Counter* deferred_plans_;
  prometheus::Gauge* agent_pinned_blocks_;
  prometheus::Gauge* agent_pinned_jobs_;
  std::array<prometheus::Counter*, 2> transfers_;        // by TransferDirection
  std::array<prometheus::Counter*, 2> transfer_bytes_;
  std::array<prometheus::Counter*, 2> transfer_errors_;
  prometheus::Gauge* calibration_flops_;
  prometheus::Gauge* calibration_kv_bytes_;
  prometheus::Gauge* calibration_segment_overhead_;
  prometheus::Gauge* calibration_step_overhead_;
  prometheus::Gauge* calibration_num_sms_;
  std::array<prometheus::Counter*, 2> kv_events_;        // by KvEvent::Kind

  absl::Mutex calibration_mu_;
  prometheus::Gauge* calibration_info_ ABSL_GUARDED_BY(calibration_mu_) = nullptr;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_DAEMON_METRICS_H_
