#include "services/coordinator/coordinator_metrics.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <stdexcept>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace asymcache {

namespace {

constexpr RouteReason kReasons[] = {RouteReason::kBestPredictedTtft, RouteReason::kLoadTieBreak,
                                    RouteReason::kLoadBound,         RouteReason::kAgentAffinity,
                                    RouteReason::kOnlyCandidate,     RouteReason::kRoundRobin,
                                    RouteReason::kMemoryBound};
constexpr MemberKind kKinds[] = {MemberKind::kDaemon, MemberKind::kWorker};
constexpr MemberRole kRoles[] = {MemberRole::kBoth, MemberRole::kPrefill, MemberRole::kDecode};

int KindIndex(MemberKind kind) { return kind == MemberKind::kDaemon ? 0 : 1; }
int RoleIndex(MemberRole role) {
  switch (role) {
    case MemberRole::kBoth: return 0;
    case MemberRole::kPrefill: return 1;
    case MemberRole::kDecode: return 2;
  }
  return 0;
}

}  // namespace

void MemberCounts::Add(MemberKind kind, MemberRole role) {
  ++by_kind_role[KindIndex(kind)][RoleIndex(role)];
}

const std::vector<double>& CoordinatorMetrics::RouteLatencyBuckets() {
  return OperationLatencyBuckets();
}

const std::vector<double>& CoordinatorMetrics::RelativeErrorBuckets() {
  // (reported - predicted) / reported <= 1; negative = over-predicted.
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      -4, -2, -1, -0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.25, 0.5, 0.75, 1};
  return *kBuckets;
}

const std::vector<double>& CoordinatorMetrics::RpcLatencyBuckets() {
  return ::asymcache::RpcLatencyBuckets();
}

absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> CoordinatorMetrics::Create(
    prometheus::Registry& registry, RoutingMode mode) {
  std::unique_ptr<CoordinatorMetrics> metrics;
  absl::Status registered =
      RegisterMetricFamilies(registry, "coordinator", [&](MetricFamilyRegistrar& families) {
        metrics.reset(new CoordinatorMetrics(families, mode));
      });
  if (!registered.ok()) return registered;
  return metrics;
}

CoordinatorMetrics::CoordinatorMetrics(MetricFamilyRegistrar& families, RoutingMode mode) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;

  auto& routes = families.Add(BuildCounter(), "asymcache_coordinator_routes_total",
                          "Requests routed, by why the target was chosen and the routing mode.");
  const std::string mode_name(RoutingModeName(mode));
  for (RouteReason reason : kReasons) {
    routes_[static_cast<int>(reason)] =
        &routes.Add({{"reason", std::string(RouteReasonName(reason))}, {"mode", mode_name}});
  }
  route_duration_ =
      &families.Add(BuildHistogram(), "asymcache_coordinator_route_duration_seconds",
                "Time to route one request (hashing, index lookup, scoring), in seconds.")
           .Add({}, RouteLatencyBuckets());
  rpcs_ = std::make_unique<RpcDurationHistograms>(
      families.Add(BuildHistogram(), "asymcache_coordinator_rpc_duration_seconds",
                   "Coordinator RPC handling time in seconds, by method and status code."));
  ttft_error_ =
      &families.Add(BuildHistogram(), "asymcache_coordinator_ttft_relative_error",
                "Relative error of the predicted TTFT, (reported - predicted) / reported, from "
                "ReportTtft; negative = over-predicted.")
           .Add({}, RelativeErrorBuckets());
  ttft_reports_ = &families.Add(BuildCounter(), "asymcache_coordinator_ttft_reports_total",
                            "TTFT reports received (ReportTtft) for known routes.")
                       .Add({});
  index_entries_ = &families.Add(BuildGauge(), "asymcache_coordinator_index_entries",
                             "(block hash, daemon) entries in the coordinator's block index.")
                        .Add({});
  index_dropped_ =
      &families.Add(BuildCounter(), "asymcache_coordinator_index_dropped_stored_total",
                "STORED events dropped because the block index was full.")
           .Add({});
  index_stale_ =
      &families.Add(BuildCounter(), "asymcache_coordinator_index_stale_removed_total",
                "REMOVED events ignored because they named another block than recorded.")
           .Add({});
  auto& members = families.Add(BuildGauge(), "asymcache_coordinator_members",
                           "Registered members by kind and registered role.");
  for (MemberKind kind : kKinds) {
    for (MemberRole role : kRoles) {
      members_[KindIndex(kind)][RoleIndex(role)] =
          &members.Add({{"kind", std::string(MemberKindName(kind))},
                        {"role", std::string(MemberRoleName(role))}});
    }
  }
  lag_family_ = &families.Add(BuildGauge(), "asymcache_coordinator_event_lag",
                          "KV events a daemon has emitted (its last sequence number, from its "
                          "heartbeat) that this coordinator has not applied yet.");
  connected_family_ = &families.Add(BuildGauge(), "asymcache_coordinator_events_connected",
                                "1 while the daemon's KV event stream is up, else 0.");
  auto& kv_events = families.Add(BuildCounter(),
                             "asymcache_coordinator_kv_events_applied_total",
                             "KV events applied to the block index, by kind (snapshots included).");
  kv_events_[static_cast<int>(KvEvent::Kind::kStored)] = &kv_events.Add({{"kind", "stored"}});
  kv_events_[static_cast<int>(KvEvent::Kind::kRemoved)] = &kv_events.Add({{"kind", "removed"}});
  snapshots_ = &families.Add(BuildCounter(), "asymcache_coordinator_snapshots_total",
                         "Daemon index snapshots applied (on connect, restart or falling behind).")
                    .Add({});
  reconnects_ =
      &families.Add(BuildCounter(), "asymcache_coordinator_watcher_reconnects_total",
                "KV event streams reopened after the first one of a daemon (broken streams, "
                "daemon restarts).")
           .Add({});
  agent_jobs_ = &families.Add(BuildGauge(), "asymcache_coordinator_agent_jobs",
                          "Agent jobs with a daemon affinity.")
                     .Add({});
  proxy_pauses_ =
      &families.Add(BuildCounter(), "asymcache_coordinator_proxy_backpressure_pauses_total",
                    "Times a proxied Generate stopped reading its worker because the messages "
                    "queued for its client passed --proxy-max-buffered-bytes.")
           .Add({});
}

void CoordinatorMetrics::ObserveRoute(RouteReason reason, absl::Duration latency) {
  const int index = static_cast<int>(reason);
  if (index >= 0 && index < static_cast<int>(routes_.size())) routes_[index]->Increment();
  route_duration_->Observe(NonNegativeSeconds(latency));
}

void CoordinatorMetrics::ObserveRpc(absl::string_view method, absl::StatusCode code,
                                    absl::Duration latency) {
  rpcs_->Observe(method, code, latency);
}

void CoordinatorMetrics::ObserveTtftReport(double relative_error) {
  if (!std::isfinite(relative_error)) return;
  ttft_error_->Observe(relative_error);
  ttft_reports_->Increment();
}

void CoordinatorMetrics::SetIndex(int64_t entries, int64_t dropped_stored_total,
                                  int64_t stale_removed_total) {
  index_entries_->Set(static_cast<double>(entries));
  absl::MutexLock lock(&index_mu_);
  if (dropped_stored_total > last_dropped_) {
    index_dropped_->Increment(static_cast<double>(dropped_stored_total - last_dropped_));
    last_dropped_ = dropped_stored_total;
  }
  if (stale_removed_total > last_stale_) {
    index_stale_->Increment(static_cast<double>(stale_removed_total - last_stale_));
    last_stale_ = stale_removed_total;
  }
}

void CoordinatorMetrics::SetMembers(const MemberCounts& counts) {
  for (int k = 0; k < 2; ++k) {
    for (int r = 0; r < 3; ++r) members_[k][r]->Set(static_cast<double>(counts.by_kind_role[k][r]));
  }
}

void CoordinatorMetrics::SetAgentJobs(int64_t jobs) { agent_jobs_->Set(static_cast<double>(jobs)); }

void CoordinatorMetrics::SetDaemonEvents(absl::string_view member_id, int64_t lag, bool connected) {
  absl::MutexLock lock(&daemon_mu_);
  auto it = daemons_.find(member_id);
  if (it == daemons_.end()) {
    DaemonSeries series;
    series.lag = &lag_family_->Add({{"member", std::string(member_id)}});
    series.connected = &connected_family_->Add({{"member", std::string(member_id)}});
    it = daemons_.emplace(std::string(member_id), series).first;
  }
  it->second.lag->Set(static_cast<double>(lag));
  it->second.connected->Set(connected ? 1 : 0);
}

void CoordinatorMetrics::RemoveDaemon(absl::string_view member_id) {
  absl::MutexLock lock(&daemon_mu_);
  auto it = daemons_.find(member_id);
  if (it == daemons_.end()) return;
  lag_family_->Remove(it->second.lag);
  connected_family_->Remove(it->second.connected);
  daemons_.erase(it);
}

void CoordinatorMetrics::AddKvEvents(KvEvent::Kind kind, int64_t events) {
  if (events <= 0) return;
  kv_events_[static_cast<int>(kind)]->Increment(static_cast<double>(events));
}

void CoordinatorMetrics::AddSnapshot() { snapshots_->Increment(); }
void CoordinatorMetrics::AddWatcherReconnect() { reconnects_->Increment(); }
void CoordinatorMetrics::AddProxyPause() { proxy_pauses_->Increment(); }

}  // namespace asymcache
