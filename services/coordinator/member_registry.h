// MemberRegistry: the coordinator's table of cluster members (DESIGN.md §4):
// cache daemons (one per GPU) and the workers (engines) co-located with
// them, their load from heartbeats, and agent-job affinity. Soft state: it is
// rebuilt from registrations and heartbeats after a coordinator restart.
//
// Members:
//   * Register adds a member under its id or replaces the record of that id.
//     A daemon needs a valid model shape and calibration (its cost model is
//     built from them); the first daemon fixes the cluster's shape unless
//     one was configured, and a daemon of another shape is refused
//     (FAILED_PRECONDITION). Each daemon gets a MemberSlot (its id in the
//     BlockLocationIndex). Re-registering a daemon with a changed instance
//     or address means its old blocks are gone: the result says which slot's
//     watcher and index entries the caller must reset.
//   * Heartbeat records load, refreshes the member's deadline and clears
//     the "pending" work the coordinator added since the last heartbeat.
//     Unknown ids get NOT_FOUND (the member registers again).
//   * ExpireMembers removes members whose last heartbeat (or registration)
//     is older than member_timeout, by the injected Clock.
//   * A removed daemon's slot is "draining": it is not reused until the
//     caller has stopped its watcher, dropped its index entries and called
//     ReleaseSlot (so a late event of the old member can never land in the
//     slot of a new one).
//   * Workers attach to their daemon by daemon_id (registration order is
//     free; a worker whose daemon is not registered is not routable yet). A
//     daemon's effective role is the union of its workers' roles, or its own
//     role when it has no worker.
//
// Routing view: View() is a consistent snapshot of every live daemon as a
// route candidate (cost model, load = its own and its workers' queued
// prefill tokens plus the tokens routed to them since their last heartbeat,
// so a burst of routes between two heartbeats spreads; the worker a route
// would name). AddPending records a route's work.
//
// Rejoin ramp: a daemon that registers again under its id with another run
// (a restart), also after its id left (expired, deregistered; the runs of
// the last max_members departed ids are remembered), rejoins with an empty
// pool (the same run coming back keeps its cache and is not ramped). For
// rejoin_ramp after that its ramp weight w grows linearly from 0 to 1, and it
// is open to a route only while the routes it took since the rejoin stay
// within w of the routes it was a candidate for (CountRampRoute records
// both), so it is ramped in rather than flooded.
//
// Agent affinity: job id -> the daemon its last route went to, for
// agent_affinity_ttl after that route; dropped by the job's last_step, when
// the daemon leaves or restarts, or when the table is full (soonest expiry
// first). The context blocks of a daemon's live jobs are its "committed"
// blocks in the routing view (they will come back to it).
//
// Thread-safety: thread-safe; one mutex (members change rarely, routes read
// a snapshot under a reader lock). The clock must outlive the registry.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_MEMBER_REGISTRY_H_
#define ASYMCACHE_SERVICES_COORDINATOR_MEMBER_REGISTRY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/block_location_index.h"
#include "cachecore/clock.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"

namespace asymcache {

enum class MemberKind : uint8_t {
  kDaemon = 1,  // a cache daemon (one per GPU)
  kWorker = 2,  // an engine co-located with a daemon
};
enum class MemberRole : uint8_t {
  kBoth = 1,
  kPrefill = 2,
  kDecode = 3,
};
absl::string_view MemberKindName(MemberKind kind);  // "daemon", "worker"
absl::string_view MemberRoleName(MemberRole role);  // "both", "prefill", "decode"

// Load a member reports with each heartbeat (coordinator.proto MemberLoad).
struct MemberLoad {
  int64_t queued_prefill_tokens = 0;  // prefill/rebuild tokens waiting or running
  int64_t decode_batch = 0;           // sequences decoding
  int64_t free_blocks = 0;            // daemons
  int64_t capacity_blocks = 0;        // daemons
  uint64_t last_event_sequence = 0;   // daemons: latest KV event (event lag)
  int64_t busy_blocks = 0;            // daemons: blocks that cannot be evicted now
};

struct MemberRegistration {
  std::string member_id;  // [A-Za-z0-9._:-]{1,128}
  MemberKind kind = MemberKind::kDaemon;
  std::string address;    // host:port others reach it on
  int gpu = -1;           // GPU index on its host, -1 = CPU backend
  MemberRole role = MemberRole::kBoth;
  // Daemons: required. Workers: optional (checked against the cluster's).
  std::optional<ModelConfig> model;
  // Daemons: required (CalibrationParams::Validate). Ignored for workers.
  std::optional<CalibrationParams> calibration;
  std::string daemon_id;  // workers: the daemon they run against (required)
  std::string instance;   // daemons: the run identity; a change = a restart
};

struct MemberRegistryOptions {
  // Heartbeat deadline (CoordinatorOptions::member_timeout). > 0.
  absl::Duration member_timeout = absl::Seconds(5);
  // Members (daemons + workers). >= 1.
  int max_members = 1024;
  // Daemon slots are [0, slots). >= max_members (the index's max_members).
  int slots = 4096;
  // The configured cluster shape, if any.
  std::optional<ModelConfig> expected_model;
  // Agent affinity lifetime after a job's last route, and the table bound.
  absl::Duration agent_affinity_ttl = absl::Minutes(10);
  int64_t max_agent_jobs = int64_t{1} << 20;
  // Ramp period of a rejoined daemon (CoordinatorOptions::rejoin_ramp).
  // 0 (default here) = off. >= 0, finite.
  absl::Duration rejoin_ramp = absl::ZeroDuration();

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// Where a daemon's KV event watcher must (re)connect.
struct WatchTarget {
  MemberSlot slot = 0;
  std::string member_id;
  std::string address;
};

struct RegisterResult {
  bool replaced = false;  // the id had a record, now replaced
  // The slot of a daemon whose previous run (instance or address) is gone,
  // or of a daemon id that is now a worker: stop its watcher and drop its
  // index entries; then, when release_reset_slot, ReleaseSlot it.
  std::optional<MemberSlot> reset_slot;
  bool release_reset_slot = false;
  // Start a watcher for this daemon (after the reset above).
  std::optional<WatchTarget> watch;
};

struct RemovedMember {
  std::string member_id;
  MemberKind kind = MemberKind::kDaemon;
  std::optional<MemberSlot> slot;  // daemons: draining until ReleaseSlot
};

// Identity of a member, shared with route views (immutable).
struct MemberIdentity {
  std::string member_id;
  std::string address;
};

// A live daemon as a route candidate.
struct RoutingMember {
  MemberSlot slot = 0;
  std::shared_ptr<const MemberIdentity> daemon;
  std::shared_ptr<const CostModel> cost;
  MemberRole effective_role = MemberRole::kBoth;
  int64_t queued_prefill_tokens = 0;  // daemon + prefill-capable workers, incl. pending
  int64_t decode_batch = 0;           // workers' (or the daemon's without workers), incl. pending
  int64_t free_blocks = 0;
  int64_t capacity_blocks = 0;        // the daemon's pool (0 = not reported yet)
  int64_t busy_blocks = 0;            // not evictable now (pinned, writing, in transfer)
  int64_t committed_blocks = 0;       // context blocks of the agent jobs bound to it
  // The least-loaded attached worker able to prefill / decode; null if none.
  std::shared_ptr<const MemberIdentity> prefill_worker;
  std::shared_ptr<const MemberIdentity> decode_worker;
  // The rejoin ramp: its weight now (1 = not ramping) and whether it may take
  // the next route (always true at weight 1).
  double ramp_weight = 1;
  bool ramp_open = true;
};

struct RoutingView {
  std::vector<RoutingMember> prefill;  // effective role prefill or both
  std::vector<RoutingMember> decode;   // effective role decode (split serving)
  std::optional<ModelConfig> model;    // the cluster's shape, once known
};

// Everything ListMembers reports about one member.
struct MemberSnapshot {
  std::string member_id;
  MemberKind kind = MemberKind::kDaemon;
  std::string address;
  int gpu = -1;
  MemberRole role = MemberRole::kBoth;  // as registered
  MemberRole effective_role = MemberRole::kBoth;  // daemons: from their workers
  std::string daemon_id;
  std::string instance;
  MemberLoad load;
  int64_t pending_prefill_tokens = 0;
  absl::Duration since_heartbeat;
  std::optional<MemberSlot> slot;  // daemons
  double ramp_weight = 1;          // daemons: the rejoin ramp (1 = not ramping)
};

class MemberRegistry {
 public:
  // INVALID_ARGUMENT for bad options or a null clock.
  static absl::StatusOr<std::unique_ptr<MemberRegistry>> Create(MemberRegistryOptions options,
                                                                Clock* clock);
  MemberRegistry(const MemberRegistry&) = delete;
  MemberRegistry& operator=(const MemberRegistry&) = delete;

  // Adds or replaces a member. INVALID_ARGUMENT for a malformed registration
  // (naming the field); FAILED_PRECONDITION for a model shape other than the
  // cluster's; RESOURCE_EXHAUSTED when the table (or the slots) is full.
  // Nothing changes on error.
  absl::StatusOr<RegisterResult> Register(const MemberRegistration& registration);
  // NOT_FOUND for an unknown (or expired) member.
  absl::Status Heartbeat(absl::string_view member_id, const MemberLoad& load);
  // NOT_FOUND for an unknown member.
  absl::StatusOr<RemovedMember> Deregister(absl::string_view member_id);
  // Removes every member whose deadline has passed.
  std::vector<RemovedMember> ExpireMembers();
  // A draining slot becomes free. Precondition: it was handed out by a
  // RemovedMember or a RegisterResult with release_reset_slot.
  void ReleaseSlot(MemberSlot slot);

  RoutingView View() const;
  // Work routed to a member since its last heartbeat (the member a route
  // names: the worker if any, else the daemon). Unknown ids are ignored.
  void AddPending(absl::string_view member_id, int64_t prefill_tokens, int64_t decode_sequences);
  // A route was made among `candidates` (daemon ids) and went to `chosen`:
  // every ramping candidate counts a route offered, `chosen` (if ramping) a
  // route taken. Unknown or non-ramping ids are ignored.
  void CountRampRoute(absl::Span<const std::string> candidates, absl::string_view chosen);

  // The daemon slot an agent job sticks to (live daemon, unexpired).
  std::optional<MemberSlot> AgentAffinity(absl::string_view job_id) const;
  // A job was routed to `daemon_id` with a context of `context_blocks`
  // blocks: stick to it for agent_affinity_ttl, or forget the job when
  // last_step.
  void RecordAgentRoute(absl::string_view job_id, absl::string_view daemon_id, bool last_step,
                        int64_t context_blocks = 0);
  // Drops expired affinities; returns how many.
  int64_t ExpireAgentJobs();
  int64_t agent_jobs() const;

  std::vector<MemberSnapshot> List() const;  // ordered by member id
  std::optional<ModelConfig> cluster_model() const;
  int members() const;

  const MemberRegistryOptions& options() const { return options_; }

 private:
  struct Member {
    std::shared_ptr<const MemberIdentity> identity;
    MemberKind kind = MemberKind::kDaemon;
    int gpu = -1;
    MemberRole role = MemberRole::kBoth;
    std::string daemon_id;
    std::string instance;
    std::optional<ModelConfig> model;
    std::shared_ptr<const CostModel> cost;  // daemons
    MemberSlot slot = 0;                    // daemons
    MemberLoad load;
    int64_t pending_prefill_tokens = 0;
    int64_t pending_decode = 0;
    absl::Time last_heartbeat;
    // The rejoin ramp (daemons): InfinitePast = not ramping.
    absl::Time ramp_start = absl::InfinitePast();
    int64_t ramp_offered = 0;
    int64_t ramp_taken = 0;
  };
  struct AgentJob {
    std::string daemon_id;
    absl::Time expires;
    int64_t blocks = 0;  // its context's blocks at its last route
  };

  MemberRegistry(MemberRegistryOptions options, Clock* clock);

  absl::Status ValidateRegistration(const MemberRegistration& r) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Removes a member's record (and its worker links and affinities).
  RemovedMember RemoveLocked(absl::string_view member_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropAffinitiesOf(absl::string_view daemon_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseAgentJob(absl::string_view job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  MemberRole EffectiveRoleLocked(const Member& daemon) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool IsLiveDaemonLocked(absl::string_view id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The member's ramp weight at `now`, in [0, 1].
  double RampWeight(const Member& m, absl::Time now) const;
  void StartRamp(Member& m, absl::Time now) const;

  // Immutable after construction.
  const MemberRegistryOptions options_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);
  // daemon id -> ids of the workers attached to it (registered or not).
  absl::flat_hash_map<std::string, absl::btree_set<std::string>> workers_of_
      ABSL_GUARDED_BY(mu_);
  std::vector<MemberSlot> free_slots_ ABSL_GUARDED_BY(mu_);  // a stack, lowest on top
  int daemons_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<ModelConfig> cluster_model_ ABSL_GUARDED_BY(mu_);
  // Daemons that left, id -> their run (at most max_members, oldest dropped
  // first): a registration under one of them with another run is a rejoin.
  absl::flat_hash_map<std::string, std::string> departed_daemons_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> departed_order_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, AgentJob> jobs_ ABSL_GUARDED_BY(mu_);
  // (expiry, job id) of every job, soonest first.
  absl::btree_set<std::pair<absl::Time, std::string>> job_expiry_ ABSL_GUARDED_BY(mu_);
  // daemon id -> its jobs, and the sum of their blocks.
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> jobs_of_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> committed_blocks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_MEMBER_REGISTRY_H_
