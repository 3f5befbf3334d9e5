// CoordinatorState: the coordinator's core, assembled (DESIGN.md §3.6, §4):
// the member registry, the event-fed block index with one DaemonEventWatcher
// per daemon, the Router, the route log and the metrics. The gRPC service
// (coordinator_service.h) is a thin adapter over it; a benchmark or test may
// drive it directly (fill index() with AddStored, call Route()).
//
// Membership changes (Register, Deregister, expiry) are serialized: each one
// updates the registry, then stops the watcher of a daemon that left or
// restarted, drops its index entries and frees its slot, then starts the
// watcher of a daemon that joined — so no event of a departed daemon ever
// lands in a slot that a new daemon holds. Route, Heartbeat, ReportTtft and
// ListMembers never wait for a membership change's watcher join.
//
// All state is soft: a restarted coordinator rebuilds it from registrations,
// heartbeats and the daemons' snapshots (docs/coordinator.md explains why no
// consensus store is needed).
//
// Thread-safety: thread-safe. Ownership: owns everything it holds; the
// metrics registry (when given) and the clock must outlive it.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_STATE_H_
#define ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_STATE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "cachecore/block_location_index.h"
#include "cachecore/clock.h"
#include "cachecore/router.h"
#include "cachecore/types.h"
#include "grpcpp/security/credentials.h"
#include "services/common/tenant_salt.h"
#include "services/common/transport_security.h"
#include "services/coordinator/coordinator_metrics.h"
#include "services/coordinator/coordinator_options.h"
#include "services/coordinator/daemon_event_watcher.h"
#include "services/coordinator/member_registry.h"
#include "services/coordinator/route_log.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace asymcache {

// A route request in core types (coordinator.proto RouteRequest).
struct RouteInput {
  absl::string_view salt;
  // The context's tokens; or, when empty, its chain hashes and token count.
  absl::Span<const TokenId> tokens;
  absl::Span<const BlockHash> block_hashes;
  int64_t num_tokens = 0;
  // Tokens the request adds beyond its context (max output tokens): their
  // blocks must fit in the chosen pool too. >= 0.
  int64_t reserve_tokens = 0;
  // Agent fields (job_id empty = not an agent request).
  absl::string_view job_id;
  absl::string_view tool;
  bool last_step = false;
  bool explain = false;  // fill RouteOutcome::candidates
  // Member ids of daemons not to route to, nor fetch from (a Generate retry's
  // failed ones). Default none.
  absl::Span<const std::string> exclude_daemons;
};

// A daemon (and the worker on it, when one is registered) a route names.
struct RoutedTarget {
  std::shared_ptr<const MemberIdentity> daemon;
  std::shared_ptr<const MemberIdentity> worker;  // null when none
};

struct RoutedFetch {
  std::shared_ptr<const MemberIdentity> from;  // the daemon holding the blocks
  int64_t first_block = 0;
  int64_t blocks = 0;
  int64_t bytes = 0;
};

struct ScoredCandidate {
  std::shared_ptr<const MemberIdentity> daemon;
  CandidateScore score;
};

struct RouteOutcome {
  uint64_t route_id = 0;
  RoutedTarget prefill;
  RoutedTarget decode;    // equals prefill unless split
  bool split = false;
  RouteReason reason = RouteReason::kBestPredictedTtft;
  RoutingMode mode = RoutingMode::kHoleAware;
  int block_tokens = 0;   // positions = blocks × block_tokens
  CandidateScore score;   // the prefill daemon's
  std::vector<RebuildRun> rebuild;
  std::vector<RoutedFetch> fetch;
  std::vector<ScoredCandidate> candidates;  // explain only, candidate order
};

struct TtftReport {
  double predicted_ttft_s = 0;
  double relative_error = 0;  // (reported - predicted) / reported
};

// One member as ListMembers reports it.
struct MemberStatus {
  MemberSnapshot member;
  int64_t index_entries = 0;          // daemons
  uint64_t applied_event_sequence = 0;  // daemons
  bool events_connected = false;      // daemons
};

struct CoordinatorListing {
  std::vector<MemberStatus> members;  // by member id
  int64_t index_entries = 0;
  int64_t index_dropped_stored = 0;
  int64_t stale_removed = 0;
  RoutingMode mode = RoutingMode::kHoleAware;
  std::optional<ModelConfig> model;
};

class CoordinatorState {
 public:
  // Validates options and builds the core. `metrics_registry` may be null
  // (no metrics). INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<CoordinatorState>> Create(
      const CoordinatorOptions& options, prometheus::Registry* metrics_registry);
  ~CoordinatorState();  // StopWatchers()
  CoordinatorState(const CoordinatorState&) = delete;
  CoordinatorState& operator=(const CoordinatorState&) = delete;

  // ------------------------------------------------------------ membership
  // MemberRegistry::Register's errors; watchers are reset/started as needed.
  absl::Status Register(const MemberRegistration& registration);
  absl::Status Heartbeat(absl::string_view member_id, const MemberLoad& load);
  absl::Status Deregister(absl::string_view member_id);
  // Removes members past their heartbeat deadline; returns how many.
  int ExpireMembers();

  // ------------------------------------------------------------ routing
  // INVALID_ARGUMENT for a malformed request (naming the field);
  // UNAVAILABLE when no daemon is registered or none can prefill.
  absl::StatusOr<RouteOutcome> Route(const RouteInput& input);
  // INVALID_ARGUMENT for route_id 0 or a TTFT that is not a positive finite
  // number; NOT_FOUND for a route not remembered (or already reported).
  absl::StatusOr<TtftReport> ReportTtft(uint64_t route_id, double ttft_s);

  CoordinatorListing List() const;

  // Expires members and agent affinities and refreshes the gauges (the
  // maintenance thread calls it every maintenance_interval).
  void RunMaintenance();
  // Stops every watcher (shutdown). Idempotent.
  void StopWatchers();

  const CoordinatorOptions& options() const { return options_; }
  // Credentials of every channel the coordinator opens (daemons' event
  // streams, proxied Generate to workers): options().security's.
  const std::shared_ptr<grpc::ChannelCredentials>& channel_credentials() const {
    return channel_credentials_;
  }
  // The salt of tenant requests (Route, Generate) and who is a component.
  const TenantSaltPolicy& tenant_salts() const { return tenant_salts_; }
  // Per-client limits on Generate and Route (options().client_rate_limit).
  ClientRateLimiter& client_limiter() { return client_limiter_; }
  const std::string& instance() const { return instance_; }
  MemberRegistry& registry() { return *registry_; }
  BlockLocationIndex& index() { return *index_; }
  const Router& router() const { return *router_; }
  CoordinatorMetrics* metrics() { return metrics_.get(); }
  // The watcher of a daemon slot's current member, for tests (null if none).
  // Valid until that member leaves.
  const DaemonEventWatcher* watcher(MemberSlot slot) const ABSL_LOCKS_EXCLUDED(watchers_mu_);

 private:
  explicit CoordinatorState(const CoordinatorOptions& options);

  // Stops the slot's watcher, drops its index entries, optionally frees the slot.
  void ResetDaemonSlot(MemberSlot slot, bool release) ABSL_EXCLUSIVE_LOCKS_REQUIRED(membership_mu_);
  void HandleRemoved(const RemovedMember& removed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(membership_mu_);
  absl::Status StartWatcher(const WatchTarget& target) ABSL_EXCLUSIVE_LOCKS_REQUIRED(membership_mu_);
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(membership_mu_);

  // Immutable after construction.
  const CoordinatorOptions options_;
  const std::string instance_;
  const TenantSaltPolicy tenant_salts_;
  ClientRateLimiter client_limiter_;
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials_;  // set by Create
  std::unique_ptr<MemberRegistry> registry_;
  std::unique_ptr<BlockLocationIndex> index_;
  std::unique_ptr<Router> router_;
  std::unique_ptr<CoordinatorMetrics> metrics_;  // null without a registry
  RouteLog route_log_;

  // Serializes membership changes (held across a watcher's Stop()).
  absl::Mutex membership_mu_ ABSL_ACQUIRED_BEFORE(watchers_mu_);
  bool stopped_ ABSL_GUARDED_BY(membership_mu_) = false;

  mutable absl::Mutex watchers_mu_;
  absl::flat_hash_map<MemberSlot, std::unique_ptr<DaemonEventWatcher>> watchers_
      ABSL_GUARDED_BY(watchers_mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_STATE_H_
