// asymcache::Client: the C++ client of one cache daemon (the CacheDaemon
// service of proto/asymcache/v1/cache_daemon.proto), the way serving engines
// integrate with AsymCache.
//
// How an engine drives one step of a request:
//   1. PlanStep(salt, sequence, tokens)  -> a lease + a StepPlan (pages in
//      position order; resident pages are read only, allocated pages must be
//      written). BeginStep does the same and wraps the lease in a ScopedLease.
//   2. The engine computes the plan's query_positions and writes their K/V into
//      the allocated blocks through its mapping of the pool (AttachPool).
//   3. CommitStep(lease)  -> the written blocks are sealed and indexed (other
//      requests hit them from now on); the lease keeps them pinned.
//   4. ReleaseStep(lease[, agent])  -> the pins are dropped; uncommitted blocks
//      are freed. With agent fields the daemon may pin the job's blocks for a
//      TTL learned from the tool (DESIGN.md §3.5).
// A lease not released within the daemon's lease timeout (renewed by CommitStep
// and RenewLease) is released by the daemon, so a crashed engine leaks
// nothing for long; ScopedLease releases on destruction so a live one leaks
// nothing at all.
//
// Contract:
//   Threads   Client is thread-safe: one gRPC channel, any method from any
//             thread concurrently. ScopedLease and EventStream are not
//             (one owner thread), except EventStream::Cancel, which any thread
//             may call. AttachedPool is immutable.
//   Ownership Client owns the channel. A ScopedLease or EventStream borrows the
//             Client that made it and must not outlive it; an AttachedPool owns
//             its mapping and does not need the Client after AttachPool.
//   Deadlines Every unary call takes `timeout`; kDefaultTimeout (or any value
//             <= 0) means ClientOptions::default_timeout. Streams default to no
//             deadline (WatchOptions::stream_timeout); PrepareWatch + Open
//             bound the connect and can be cancelled while connecting.
//   Errors    absl::Status. A daemon error keeps its gRPC code one to one and
//             its message verbatim (the codes of cache_daemon.proto:
//             INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE,
//             RESOURCE_EXHAUSTED, UNAVAILABLE); no daemon reachable ->
//             UNAVAILABLE; timeout -> DEADLINE_EXCEEDED; a reply the client
//             cannot use (malformed plan, unknown enum) -> INTERNAL starting
//             "daemon reply: ". A miss is a value (std::nullopt), not an error.
//   Checks    Arguments the daemon validates (tokens, sequence ids, hashes,
//             TTLs, block ids) are NOT pre-checked here: the daemon is the one
//             authority, and a bad argument comes back as its INVALID_ARGUMENT
//             (or other code) with nothing changed there.
#ifndef ASYMCACHE_SERVICES_CLIENT_CLIENT_H_
#define ASYMCACHE_SERVICES_CLIENT_CLIENT_H_

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
#include "cachecore/agent_pins.h"
#include "cachecore/cost_model.h"
#include "cachecore/kv_cache.h"
#include "cachecore/model_config.h"
#include "cachecore/step_plan.h"
#include "cachecore/types.h"
#include "services/daemon/pool_layout.h"

namespace grpc {
class ChannelCredentials;
}  // namespace grpc

namespace asymcache {

namespace daemon {
class MappedPool;  // services/daemon/pool_memory.h
}  // namespace daemon

// Any timeout <= 0 selects ClientOptions::default_timeout.
inline constexpr absl::Duration kDefaultTimeout = absl::ZeroDuration();

struct ClientOptions {
  // gRPC target of the daemon, e.g. "127.0.0.1:50051" or "dns:///cache-0:50051".
  // Required.
  std::string target;
  // Deadline of a unary call that passes kDefaultTimeout. 5 s: far above any
  // healthy call (plans take microseconds to milliseconds), short enough that a
  // hung daemon surfaces quickly. > 0.
  absl::Duration default_timeout = absl::Seconds(5);
  // Largest message sent or received, bytes. 64 MiB: the daemon's default
  // max_message_bytes (a 1M-token request). > 0.
  int max_message_bytes = 64 << 20;
  // Channel credentials; nullptr = insecure (plain TCP, what a daemon run
  // with --plaintext serves). For mutual TLS: MakeChannelCredentials
  // (services/common/transport_security.h).
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

// Agent fields of a request (DESIGN.md §3.5). job_id empty = not an agent request.
struct AgentJob {
  std::string job_id;     // stable across the job's steps
  std::string tool;       // the tool the step ended with a call to
  bool last_step = false; // the job is done after this step (nothing is pinned)
};

struct PlanStepOptions {
  // Resume this agent job (its pins are released; the tool's time recorded).
  std::optional<AgentJob> agent;
  // The client's chain hashes of the context (cachecore/block_hash.h), one per
  // block incl. a partial last one. Sent for the daemon to verify
  // (INVALID_ARGUMENT naming the first mismatch); also fill plan.hashes.
  std::vector<BlockHash> block_hashes;
  // FAILED_PRECONDITION from the daemon when its model shape differs.
  std::optional<ModelConfig> expected_model;
  // The daemon does not send page hashes. With block_hashes empty and this
  // true (default) the client computes them (ChainHashes, a few µs per 1k
  // tokens) so the returned StepPlan is complete and passes ValidateStepPlan;
  // false leaves plan.hashes empty (the plan is still usable for kernels).
  bool compute_plan_hashes = true;
  // Deferral of duplicate work (0 = never, the default): ABORTED from the
  // daemon, nothing planned, when at least this many of the context's tokens
  // are in full pages another sequence's uncommitted lease is writing now;
  // plan again after that lease committed (PlanStepRequest.defer_if_pending_tokens).
  int64_t defer_if_pending_tokens = 0;
};

// A planned step: the lease and its plan.
struct LeasedStep {
  uint64_t lease_id = 0;
  StepPlan plan;                        // hashes: see PlanStepOptions
  int64_t contiguous_hit_tokens = 0;    // resident tokens before the first missing page
  absl::Duration lease_timeout;         // the lease expires this long after Plan/Commit/Renew
  // The daemon run that planned it: page ids are valid only in the pool of
  // that run (AttachedPool::daemon_instance); empty from a daemon too old to say.
  std::string daemon_instance;
};

struct CommitResult {
  int64_t sealed_blocks = 0;     // blocks indexed by this commit
  int64_t duplicate_blocks = 0;  // written blocks another lease indexed first
  int64_t private_blocks = 0;    // kept private by keep_partial_last_page (0 or 1)
};

// ExtendLease's answer: the next page's block (the lease's new private page).
struct LeaseExtension {
  BlockId block = kNoBlock;
  int64_t position = 0;           // its first token position
  bool sealed = false;            // the full page was indexed (false: a duplicate, kept private)
  absl::Duration lease_timeout;   // the lease expires this long from now
  BlockId spare = kNoBlock;       // the lease's spare block (reserve_spare), kNoBlock: none
};

struct CommitOptions {
  // A decoding engine keeps writing the partial last page: it stays the
  // lease's private block (not sealed, freed at release); see
  // CommitStepRequest.keep_partial_last_page. Default false: seal every page.
  bool keep_partial_last_page = false;
};

// The daemon's pin decision for a job: cachecore's decision plus the number of
// blocks offered to the pin table.
struct JobPinDecision {
  PinDecision decision;
  int64_t blocks = 0;
};

struct PinList {
  std::vector<JobPinInfo> jobs;  // oldest pin first
  int64_t pinned_blocks = 0;
  int64_t pinned_capacity_cap = 0;
};

struct ImportSummary {
  int64_t imported = 0;          // blocks received and indexed
  int64_t already_resident = 0;  // skipped: indexed here already
  int64_t not_on_peer = 0;       // skipped: the peer did not hold them
  int64_t bytes = 0;
  double transfer_seconds = 0;
};

// GetStats: the daemon's state (GetStatsResponse field by field).
struct DaemonStats {
  std::string daemon_instance;
  std::string backend;
  std::string policy;
  ModelConfig model;
  CalibrationParams calibration;
  int64_t capacity_blocks = 0;
  int64_t free_blocks = 0;
  int64_t writing_blocks = 0;
  int64_t sealed_blocks = 0;       // sealed, not pinned (evictable)
  int64_t pinned_blocks = 0;       // sealed and pinned (leases, agent pins, exports)
  int64_t in_transfer_blocks = 0;
  int64_t indexed_blocks = 0;
  int64_t evictions = 0;
  int64_t active_leases = 0;
  int64_t active_exports = 0;
  int64_t agent_pinned_blocks = 0;
  int64_t agent_pinned_jobs = 0;
  int64_t steps = 0;
  int64_t hit_tokens = 0;
  int64_t rebuild_tokens = 0;
  int64_t new_tokens = 0;
  uint64_t last_event_sequence = 0;
  double uptime_s = 0;
  int64_t lease_extensions = 0;   // successful ExtendLease calls
  int64_t deferred_plans = 0;     // PlanStep calls deferred (defer_if_pending_tokens)
  int64_t writing_pages = 0;      // full pages uncommitted leases are writing now
};

// One KvEventBatch of WatchEvents (cache_daemon.proto explains snapshots).
struct KvEventBatch {
  std::string daemon_instance;  // changes when the daemon restarted
  bool snapshot_begin = false;
  bool snapshot_end = false;
  uint64_t sequence_number = 0; // snapshot: state as of this event; live: last event in batch
  std::vector<KvEvent> events;  // cachecore/kv_cache.h KvEvent (sequence_number 0 in snapshots)
};

struct WatchOptions {
  uint64_t after_sequence = 0;  // resume after this event (0 = from now)
  bool snapshot = false;        // send the indexed blocks first
  // Deadline of the whole stream; infinite by default (a watch is long-lived).
  absl::Duration stream_timeout = absl::InfiniteDuration();
};

class Client;

// A lease that is released when this object goes away (RAII). Move-only; not
// thread-safe. After Release() (or Detach()) it is inactive and its
// destructor does nothing. Release() marks the lease inactive whatever the
// outcome: on failure the daemon's lease timeout releases it.
class ScopedLease {
 public:
  ScopedLease() = default;  // inactive
  // Precondition: `client` outlives this object.
  ScopedLease(Client* client, LeasedStep step);
  ~ScopedLease();
  ScopedLease(ScopedLease&& other) noexcept;
  ScopedLease& operator=(ScopedLease&& other) noexcept;  // releases the current lease first
  ScopedLease(const ScopedLease&) = delete;
  ScopedLease& operator=(const ScopedLease&) = delete;

  bool active() const { return client_ != nullptr; }
  uint64_t lease_id() const { return step_.lease_id; }
  const LeasedStep& step() const { return step_; }
  const StepPlan& plan() const { return step_.plan; }

  // FAILED_PRECONDITION when inactive; otherwise Client::CommitStep.
  absl::StatusOr<CommitResult> Commit(absl::Duration timeout = kDefaultTimeout);
  absl::StatusOr<CommitResult> Commit(const CommitOptions& options,
                                      absl::Duration timeout = kDefaultTimeout);
  // FAILED_PRECONDITION when inactive; otherwise Client::RenewLease.
  absl::StatusOr<absl::Duration> Renew(absl::Duration timeout = kDefaultTimeout);
  // FAILED_PRECONDITION when inactive; otherwise Client::ExtendLease.
  absl::StatusOr<LeaseExtension> Extend(int64_t position, absl::Span<const TokenId> page_tokens,
                                        bool reserve_spare = false,
                                        absl::Duration timeout = kDefaultTimeout);
  // FAILED_PRECONDITION when inactive; otherwise Client::ReleaseStep, after
  // which the lease is inactive.
  absl::StatusOr<std::optional<JobPinDecision>> Release(
      const std::optional<AgentJob>& agent = std::nullopt,
      absl::Duration timeout = kDefaultTimeout);
  // Stops managing the lease without releasing it; returns its id (0 when inactive).
  uint64_t Detach();

 private:
  Client* client_ = nullptr;
  LeasedStep step_;
};

// A WatchEvents stream. Not thread-safe except Cancel(). Destroying it
// cancels the stream. From Client::WatchEvents it is open; from
// Client::PrepareWatch it is open once Open() succeeded.
class EventStream {
 public:
  ~EventStream();
  EventStream(const EventStream&) = delete;
  EventStream& operator=(const EventStream&) = delete;

  // Connects and sends the request of a stream from Client::PrepareWatch.
  // Waits at most `connect_timeout` (> 0; InfiniteDuration waits as long as
  // the channel keeps trying) for the channel to be connected, seeing a
  // Cancel() within 100 ms. OK once the request is sent; CANCELLED after
  // Cancel(); DEADLINE_EXCEEDED (naming the target) when not connected in
  // time; UNAVAILABLE at once while the channel is failing (e.g. connection
  // refused; gRPC retries it with its own backoff) or shut down;
  // INVALID_ARGUMENT for connect_timeout <= 0; FAILED_PRECONDITION when Open()
  // ran before. After an error the stream is over and Next() returns it.
  absl::Status Open(absl::Duration connect_timeout);
  // Blocks for the next batch (FAILED_PRECONDITION on a prepared stream not
  // yet opened). std::nullopt when the daemon ended the stream
  // cleanly (e.g. it shut down: resume elsewhere or later from
  // last_sequence()); the stream's status otherwise (CANCELLED after Cancel(),
  // DEADLINE_EXCEEDED after stream_timeout, UNAVAILABLE when the daemon went
  // away or refused the watch, e.g. too many watchers: RESOURCE_EXHAUSTED).
  // After the end every call returns the same result. A watcher that fell too
  // far behind gets a fresh snapshot (snapshot_begin), not an error.
  absl::StatusOr<std::optional<KvEventBatch>> Next();
  // Ends the stream from any thread, also before or during Open(); a blocked
  // Next() or Open() returns CANCELLED.
  void Cancel();
  // sequence_number of the last batch Next() returned (0 before any): the
  // after_sequence to resume from.
  uint64_t last_sequence() const { return last_sequence_; }

 private:
  friend class Client;
  struct Call;
  explicit EventStream(std::unique_ptr<Call> call);
  std::unique_ptr<Call> call_;
  uint64_t last_sequence_ = 0;
};

// A mapping of the daemon's pool in this process (shared memory on the host
// backend, CUDA IPC on the cuda backend; services/daemon/pool_memory.h).
// Unmapped on destruction. Immutable; thread-safe. Writing a block is only
// meaningful while a lease has it allocated (see the step protocol above).
class AttachedPool {
 public:
  AttachedPool(AttachedPool&&) noexcept;
  AttachedPool& operator=(AttachedPool&&) noexcept;
  ~AttachedPool();

  absl::string_view backend() const { return backend_; }  // "host" or "cuda"
  const ModelConfig& model() const { return model_; }
  // The daemon run whose pool this maps (GetStats' daemon_instance then): a
  // plan of another run (LeasedStep::daemon_instance) must not be written
  // through this mapping — the daemon restarted and this pool is orphaned.
  const std::string& daemon_instance() const { return daemon_instance_; }
  const daemon::PoolLayout& layout() const;
  // Host pointer ("host") or device pointer ("cuda") to byte 0 of the pool.
  void* base() const;
  // Block `block`'s piece of layer `layer`: layout().piece_bytes() bytes
  // (K then V, [2][block_tokens][Hkv][D]). Precondition: indices in range.
  uint8_t* Piece(int32_t layer, int64_t block) const {
    return static_cast<uint8_t*>(base()) + layout().PieceOffset(layer, block);
  }

 private:
  friend class Client;
  AttachedPool(std::string backend, ModelConfig model, std::string daemon_instance,
               std::unique_ptr<daemon::MappedPool> mapping);
  std::string backend_;
  ModelConfig model_;
  std::string daemon_instance_;
  std::unique_ptr<daemon::MappedPool> mapping_;
};

class Client {
 public:
  // Creates the channel (it connects lazily; see WaitForReady).
  // INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const ClientOptions& options() const { return options_; }

  // Waits until the channel is connected. DEADLINE_EXCEEDED (naming the
  // target and the last channel state) when it is not within `timeout`.
  absl::Status WaitForReady(absl::Duration timeout = kDefaultTimeout);

  // ------------------------------------------------------------ steps
  // Plans one step (the whole context after it in `tokens`) and leases it.
  absl::StatusOr<LeasedStep> PlanStep(absl::string_view salt, SequenceId sequence,
                                       absl::Span<const TokenId> tokens,
                                       const PlanStepOptions& options = {},
                                       absl::Duration timeout = kDefaultTimeout);
  // PlanStep wrapped in a ScopedLease (released when it goes away).
  absl::StatusOr<ScopedLease> BeginStep(absl::string_view salt, SequenceId sequence,
                                        absl::Span<const TokenId> tokens,
                                        const PlanStepOptions& options = {},
                                        absl::Duration timeout = kDefaultTimeout);
  absl::StatusOr<CommitResult> CommitStep(uint64_t lease_id,
                                          absl::Duration timeout = kDefaultTimeout);
  absl::StatusOr<CommitResult> CommitStep(uint64_t lease_id, const CommitOptions& options,
                                          absl::Duration timeout = kDefaultTimeout);
  // The pin decision when agent has a job_id, std::nullopt otherwise.
  absl::StatusOr<std::optional<JobPinDecision>> ReleaseStep(
      uint64_t lease_id, const std::optional<AgentJob>& agent = std::nullopt,
      absl::Duration timeout = kDefaultTimeout);
  // Returns the lease timeout now in force (from now).
  absl::StatusOr<absl::Duration> RenewLease(uint64_t lease_id,
                                            absl::Duration timeout = kDefaultTimeout);
  // Decode page rollover (ExtendLeaseRequest): the lease's private page,
  // starting at `position`, is full with `page_tokens` (block_tokens of
  // them); it is sealed and the next
  // page's block is allocated (the spare when the lease has one; with
  // reserve_spare one more is kept for the page after). Errors as the RPC's
  // (cache_daemon.proto).
  absl::StatusOr<LeaseExtension> ExtendLease(uint64_t lease_id, int64_t position,
                                             absl::Span<const TokenId> page_tokens,
                                             bool reserve_spare = false,
                                             absl::Duration timeout = kDefaultTimeout);

  // ------------------------------------------------------------ lookup
  // Per hash: the block's position where resident, std::nullopt where not.
  absl::StatusOr<std::vector<std::optional<int64_t>>> Lookup(
      absl::Span<const BlockHash> hashes, absl::Duration timeout = kDefaultTimeout);
  // Drops unpinned sealed blocks by id; returns how many were dropped.
  absl::StatusOr<int64_t> InvalidateBlocks(absl::Span<const BlockId> block_ids,
                                           absl::Duration timeout = kDefaultTimeout);

  // ------------------------------------------------------------ agent pins
  // Pins the resident blocks of a job's context (agent.job_id required).
  absl::StatusOr<JobPinDecision> PinJob(const AgentJob& agent, absl::string_view salt,
                                        absl::Span<const TokenId> tokens,
                                        absl::Duration timeout = kDefaultTimeout);
  // The job's pins expire `ttl` from now (whole milliseconds are sent).
  absl::Status RefreshPin(absl::string_view job_id, absl::Duration ttl,
                          absl::Duration timeout = kDefaultTimeout);
  // False when the job held no pins.
  absl::StatusOr<bool> Unpin(absl::string_view job_id, absl::Duration timeout = kDefaultTimeout);
  absl::StatusOr<PinList> ListPins(absl::Duration timeout = kDefaultTimeout);

  // ------------------------------------------------------------ transfer
  // Asks this daemon to fetch `hashes` from the daemon at `peer` (host:port).
  absl::StatusOr<ImportSummary> ImportBlocks(absl::string_view peer,
                                            absl::Span<const BlockHash> hashes,
                                            absl::Duration timeout = kDefaultTimeout);

  // ------------------------------------------------------------ events, pool, stats
  // Opens a stream; blocks until the request is sent, which takes until the
  // connection is up or has failed (gRPC's connect timeout is 20 s for an
  // address that drops connects) and cannot be cancelled meanwhile.
  absl::StatusOr<std::unique_ptr<EventStream>> WatchEvents(const WatchOptions& options = {});
  // The same stream, not yet opened: its Cancel() works from now on, from
  // any thread, so a watcher that must stop promptly can cancel the connect
  // that EventStream::Open(connect_timeout) then makes. Nothing is sent
  // before Open().
  std::unique_ptr<EventStream> PrepareWatch(const WatchOptions& options = {});
  // Maps the pool into this process. FAILED_PRECONDITION when expected_model
  // differs from the daemon's shape (daemon-side); INTERNAL when the reply's
  // layout does not match its model; pool_memory.h MapPool's errors otherwise
  // (NOT_FOUND for a shm name that does not exist, e.g. a daemon on another
  // host; FAILED_PRECONDITION for a cuda pool in a build without CUDA).
  absl::StatusOr<AttachedPool> AttachPool(const std::optional<ModelConfig>& expected_model =
                                              std::nullopt,
                                          absl::Duration timeout = kDefaultTimeout);
  absl::StatusOr<DaemonStats> GetStats(absl::Duration timeout = kDefaultTimeout);

 private:
  struct Rpc;  // channel + stub
  Client(ClientOptions options, std::unique_ptr<Rpc> rpc);
  absl::Time DeadlineFor(absl::Duration timeout) const;

  const ClientOptions options_;
  const std::unique_ptr<Rpc> rpc_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_CLIENT_CLIENT_H_
