#include "services/daemon/daemon_metrics.h"

#include <algorithm>
#include <exception>
#include <functional>
#include <stdexcept>

#include "absl/base/internal/raw_logging.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace asymcache {
PlanTokenCounts CountPlanTokens(const StepPlan& plan) {
  PlanTokenCounts counts;
  bool seen_missing = false;
  for (const Segment& segment : plan.segments) {
    const int64_t length = std::max<int64_t>(0, segment.length());
    switch (segment.kind) {
      case Segment::Kind::kResident:
        (seen_missing ? counts.hole_hit_tokens : counts.contiguous_hit_tokens) += length;
        break;
      case Segment::Kind::kHole:
        counts.rebuild_tokens += length;
        seen_missing = true;
        break;
      case Segment::Kind::kTail:
        counts.new_tokens += length;
        seen_missing = true;
        break;
    }
  }
  return counts;
}

absl::string_view EvictionReasonName(EvictionReason reason) {
  switch (reason) {
    case EvictionReason::kCapacity: return "capacity";
    case EvictionReason::kInvalidate: return "invalidate";
  }
  return "unknown";
}

absl::string_view TransferDirectionName(TransferDirection direction) {
  switch (direction) {
    case TransferDirection::kImport: return "import";
    case TransferDirection::kExport: return "export";
  }
  return "unknown";
}

absl::Status DaemonMetricsOptions::Validate() const {
  if (policy.empty()) return absl::InvalidArgumentError("DaemonMetricsOptions.policy is empty");
  if (backend.empty()) return absl::InvalidArgumentError("DaemonMetricsOptions.backend is empty");
  if (model.empty()) return absl::InvalidArgumentError("DaemonMetricsOptions.model is empty");
  absl::flat_hash_set<absl::string_view> seen;
  for (const std::string& method : rpc_methods) {
    if (method.empty()) {
      return absl::InvalidArgumentError("DaemonMetricsOptions.rpc_methods has an empty entry");
    }
    if (!seen.insert(method).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("DaemonMetricsOptions.rpc_methods lists '", method, "' twice"));
    }
  }
  return absl::OkStatus();
}

const std::vector<double>& DaemonMetrics::PlanLatencyBuckets() {
  return OperationLatencyBuckets();
}

const std::vector<double>& DaemonMetrics::RpcLatencyBuckets() {
  return ::asymcache::RpcLatencyBuckets();
}

absl::StatusOr<std::unique_ptr<DaemonMetrics>> DaemonMetrics::Create(
    prometheus::Registry& registry, const DaemonMetricsOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<DaemonMetrics> metrics;
  absl::Status registered =
      RegisterMetricFamilies(registry, "daemon", [&](MetricFamilyRegistrar& families) {
        metrics.reset(new DaemonMetrics(families, options));
      });
  if (!registered.ok()) return registered;
  return metrics;
}

DaemonMetrics::DaemonMetrics(MetricFamilyRegistrar& families, const DaemonMetricsOptions& options) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;

  families.Add(BuildGauge(), "asymcache_daemon_info",
           "Cache daemon configuration (eviction policy, pool backend, model); always 1.")
      .Add({{"policy", options.policy}, {"backend", options.backend}, {"model", options.model}})
      .Set(1);

  auto& blocks = families.Add(BuildGauge(), "asymcache_blocks",
                          "KV blocks in the pool by lifecycle state (sealed = sealed and "
                          "evictable; pinned = sealed and pinned).");
  const char* const kStates[] = {"free", "writing", "sealed", "pinned", "in_transfer"};
  for (size_t i = 0; i < blocks_.size(); ++i) blocks_[i] = &blocks.Add({{"state", kStates[i]}});
  capacity_blocks_ = &families.Add(BuildGauge(), "asymcache_capacity_blocks",
                               "KV blocks in the pool (all states).")
                          .Add({});

  auto& hits = families.Add(BuildCounter(), "asymcache_hit_tokens_total",
                        "Context tokens found resident by plans: contiguous_prefix = before the "
                        "first missing page, hole_aware = after it (non-contiguous reuse).");
  contiguous_hit_tokens_ = &hits.Add({{"kind", "contiguous_prefix"}});
  hole_hit_tokens_ = &hits.Add({{"kind", "hole_aware"}});
  rebuilt_tokens_ = &families.Add(BuildCounter(), "asymcache_rebuilt_tokens_total",
                              "Context tokens in holes that plans had recomputed.")
                         .Add({});
  new_tokens_ = &families.Add(BuildCounter(), "asymcache_new_tokens_total",
                          "Context tokens in plan tails (new tokens, never cached).")
                     .Add({});
  plan_duration_ = &families.Add(BuildHistogram(), "asymcache_plan_duration_seconds",
                             "Time to hash, plan, pin and allocate one step, in seconds.")
                        .Add({}, PlanLatencyBuckets());

  rpcs_ = std::make_unique<RpcDurationHistograms>(
      families.Add(BuildHistogram(), "asymcache_rpc_duration_seconds",
               "Daemon RPC handling time in seconds, by method and status code."));

  auto& evictions = families.Add(BuildCounter(), "asymcache_evictions_total",
                             "KV blocks evicted from the pool, by eviction policy and reason.");
  evictions_[static_cast<int>(EvictionReason::kCapacity)] =
      &evictions.Add({{"policy", options.policy}, {"reason", "capacity"}});
  evictions_[static_cast<int>(EvictionReason::kInvalidate)] =
      &evictions.Add({{"policy", options.policy}, {"reason", "invalidate"}});

  active_leases_ = &families.Add(BuildGauge(), "asymcache_active_leases",
                             "Step leases held (begun and not yet released or expired).")
                        .Add({});
  writing_pages_ = &families.Add(BuildGauge(), "asymcache_writing_pages",
                                "Full KV pages uncommitted leases are writing now (a plan of them "
                                "with defer_if_pending_tokens waits for their commit).")
                       .Add({});
  deferred_plans_ = &families.Add(BuildCounter(), "asymcache_deferred_plans_total",
                                  "PlanStep calls deferred because another lease was writing "
                                  "their pages (defer_if_pending_tokens).")
                         .Add({});
  agent_pinned_blocks_ = &families.Add(BuildGauge(), "asymcache_agent_pinned_blocks",
                                   "KV blocks pinned for agent jobs waiting on a tool call.")
                              .Add({});
  agent_pinned_jobs_ = &families.Add(BuildGauge(), "asymcache_agent_pinned_jobs",
                                 "Agent jobs holding pinned blocks while waiting on a tool call.")
                            .Add({});

  auto& transfers = families.Add(BuildCounter(), "asymcache_transfers_total",
                             "Block transfers with peer daemons completed successfully.");
  auto& transfer_bytes = families.Add(BuildCounter(), "asymcache_transfer_bytes_total",
                                  "Bytes of successful block transfers with peer daemons.");
  auto& transfer_errors = families.Add(BuildCounter(), "asymcache_transfer_errors_total",
                                   "Block transfers with peer daemons that failed.");
  for (TransferDirection d : {TransferDirection::kImport, TransferDirection::kExport}) {
    const std::string name(TransferDirectionName(d));
    transfers_[static_cast<int>(d)] = &transfers.Add({{"direction", name}});
    transfer_bytes_[static_cast<int>(d)] = &transfer_bytes.Add({{"direction", name}});
    transfer_errors_[static_cast<int>(d)] = &transfer_errors.Add({{"direction", name}});
  }

  calibration_info_family_ =
      &families.Add(BuildGauge(), "asymcache_calibration_info",
                "Calibration of the cost model in use (device, how it was produced); always 1.");
  calibration_flops_ =
      &families.Add(BuildGauge(), "asymcache_calibration_attention_flops_per_second",
                "Calibrated attention FLOP rate of the cost model.")
           .Add({});
  calibration_kv_bytes_ =
      &families.Add(BuildGauge(), "asymcache_calibration_kv_bytes_per_second",
                "Calibrated attention KV-scan bandwidth of the cost model.")
           .Add({});
  calibration_segment_overhead_ =
      &families.Add(BuildGauge(), "asymcache_calibration_segment_overhead_seconds",
                "Calibrated cost of one extra attention segment per layer.")
           .Add({});
  calibration_step_overhead_ =
      &families.Add(BuildGauge(), "asymcache_calibration_step_overhead_seconds",
                "Calibrated fixed cost of one engine step.")
           .Add({});
  calibration_num_sms_ =
      &families.Add(BuildGauge(), "asymcache_calibration_num_sms",
                "SMs of the cost model's prefill launch model; 0 = attention priced per pair.")
           .Add({});

  auto& kv_events = families.Add(BuildCounter(), "asymcache_kv_events_total",
                             "KV events emitted to coordinators, by kind.");
  kv_events_[static_cast<int>(KvEvent::Kind::kStored)] = &kv_events.Add({{"kind", "stored"}});
  kv_events_[static_cast<int>(KvEvent::Kind::kRemoved)] = &kv_events.Add({{"kind", "removed"}});

  for (const std::string& method : options.rpc_methods) {
    rpcs_->Series(method, absl::StatusCode::kOk);
  }
}

void DaemonMetrics::ObservePlan(absl::Duration latency, const PlanTokenCounts& tokens) {
  if (tokens.contiguous_hit_tokens < 0 || tokens.hole_hit_tokens < 0 ||
      tokens.rebuild_tokens < 0 || tokens.new_tokens < 0) {
    ABSL_RAW_LOG(ERROR, "DaemonMetrics::ObservePlan: negative token count dropped");
    return;
  }
  plan_duration_->Observe(NonNegativeSeconds(latency));
  contiguous_hit_tokens_->Increment(static_cast<double>(tokens.contiguous_hit_tokens));
  hole_hit_tokens_->Increment(static_cast<double>(tokens.hole_hit_tokens));
  rebuilt_tokens_->Increment(static_cast<double>(tokens.rebuild_tokens));
  new_tokens_->Increment(static_cast<double>(tokens.new_tokens));
}

void DaemonMetrics::ObserveRpc(absl::string_view method, absl::StatusCode code,
                               absl::Duration latency) {
  rpcs_->Observe(method, code, latency);
}

void DaemonMetrics::SetBlockStates(const BlockPool::Stats& stats) {
  blocks_[0]->Set(static_cast<double>(stats.free));
  blocks_[1]->Set(static_cast<double>(stats.writing));
  blocks_[2]->Set(static_cast<double>(stats.sealed_evictable));
  blocks_[3]->Set(static_cast<double>(stats.pinned));
  blocks_[4]->Set(static_cast<double>(stats.in_transfer));
  capacity_blocks_->Set(static_cast<double>(stats.capacity));
}

void DaemonMetrics::SetLeases(int64_t active_leases) {
  active_leases_->Set(static_cast<double>(active_leases));
}

void DaemonMetrics::SetWritingPages(int64_t pages) {
  writing_pages_->Set(static_cast<double>(pages));
}

void DaemonMetrics::AddDeferredPlans(int64_t plans) {
  if (plans > 0) deferred_plans_->Increment(static_cast<double>(plans));
}

void DaemonMetrics::SetAgentPins(int64_t pinned_blocks, int64_t pinned_jobs) {
  agent_pinned_blocks_->Set(static_cast<double>(pinned_blocks));
  agent_pinned_jobs_->Set(static_cast<double>(pinned_jobs));
}

void DaemonMetrics::AddEvictions(EvictionReason reason, int64_t blocks) {
  if (blocks < 0) {
    ABSL_RAW_LOG(ERROR, "DaemonMetrics::AddEvictions: negative count %lld dropped",
                 static_cast<long long>(blocks));
    return;
  }
  evictions_[static_cast<int>(reason)]->Increment(static_cast<double>(blocks));
}

void DaemonMetrics::AddTransfer(TransferDirection direction, int64_t bytes, bool ok) {
  if (bytes < 0) {
    ABSL_RAW_LOG(ERROR, "DaemonMetrics::AddTransfer: negative byte count %lld dropped",
                 static_cast<long long>(bytes));
    return;
  }
  const int d = static_cast<int>(direction);
  if (ok) {
    transfers_[d]->Increment();
    transfer_bytes_[d]->Increment(static_cast<double>(bytes));
  } else {
    transfer_errors_[d]->Increment();
  }
}

void DaemonMetrics::SetCalibration(const CalibrationParams& params) {
  {
    absl::MutexLock lock(&calibration_mu_);
    if (calibration_info_ != nullptr) calibration_info_family_->Remove(calibration_info_);
    calibration_info_ =
        &calibration_info_family_->Add({{"device", params.device}, {"source", params.source}});
    calibration_info_->Set(1);
  }
  calibration_flops_->Set(params.attn_flops_per_s);
  calibration_kv_bytes_->Set(params.attn_kv_bytes_per_s);
  calibration_segment_overhead_->Set(params.segment_overhead_s);
  calibration_step_overhead_->Set(params.step_overhead_s);
  calibration_num_sms_->Set(params.num_sms);
}

void DaemonMetrics::AddKvEvents(KvEvent::Kind kind, int64_t events) {
  if (events < 0) {
    ABSL_RAW_LOG(ERROR, "DaemonMetrics::AddKvEvents: negative count %lld dropped",
                 static_cast<long long>(events));
    return;
  }
  kv_events_[static_cast<int>(kind)]->Increment(static_cast<double>(events));
}

}  // namespace asymcache
