// Engine: the worker's step loop (DESIGN.md §3.3, §3.4). Continuous batching
// over a ModelBackend and the co-located cache daemon:
//
//   each step   admit waiting requests (PlanStep of their context; a full
//               pool leaves them waiting, FCFS), extend running sequences
//               (a decode token goes into the lease's private partial page
//               with no RPC; a full page triggers the next PlanStep — the
//               running set's plans are issued concurrently — whose
//               freshly allocated page gets the rows the previous lease holds
//               by a device copy), let the ChunkScheduler pick this step's
//               prefill/rebuild chunks beside the decode tokens, run ONE
//               forward pass for all of them, sample, commit the leases whose
//               positions are all computed (keeping the partial last page
//               private while the request goes on), stream tokens.
//   imports     a request with a kv_source first goes to the importer thread
//               (ImportBlocks from that daemon over UCX), so a transfer never
//               stalls the step loop; then it is admitted like any other.
//   off-thread  commits and releases go to the caller thread in order (the
//               step loop does not wait for them; a sequence's next plan waits
//               for its own commit); a request's OnFinish runs there after
//               them, so a client that sees the end finds its blocks sealed
//               and released.
//   finishing   stop token, max_new_tokens, cancel, or an error: every lease
//               is released (the last one with the agent fields, so the daemon
//               may pin the job's blocks).
//   pressure    a running sequence whose next plan gets RESOURCE_EXHAUSTED
//               waits; when no sequence can advance, the most recently
//               admitted one is preempted (its leases released; it re-plans
//               later and hits its own sealed blocks or rebuilds them).
//   daemon      a daemon RPC that fails because the daemon is gone, hung or
//   failures    no longer knows the request's lease ends that request with
//               UNAVAILABLE (retry: its tokens do not depend on where it
//               runs). A restarted daemon (another run, seen in a plan's
//               daemon_instance or by the periodic GetStats check) has a new,
//               empty pool: no plan of the new run is ever written through
//               the old mapping; the running requests end with UNAVAILABLE,
//               options.reattach maps the new pool and gives the backend over
//               it, and waiting requests then run there
//               (docs/reliability_faults.md).
//
// Exactness: every position's K/V is either computed by the same forward
// math from the same tokens, read from a block sealed under the chain hash of
// exactly those tokens, or copied from the request's own page; sampling
// depends on (seed, position) only. So the tokens do not depend on the cache.
//
// Contract: thread-safe. Submit/Cancel from any thread; sinks are called on
// the step thread. The backend and the client are borrowed and must outlive
// the engine (a backend that options.reattach replaced must outlive the
// reattach call only); the engine is the backend's only user. Shutdown()
// finishes every request with UNAVAILABLE and joins the step thread.
#ifndef ASYMCACHE_SERVICES_WORKER_ENGINE_H_
#define ASYMCACHE_SERVICES_WORKER_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/cost_model.h"
#include "model/model_backend.h"
#include "services/client/client.h"
#include "services/worker/generation.h"

namespace asymcache::worker {

enum class WorkerRole { kBoth, kPrefill, kDecode };
absl::string_view WorkerRoleName(WorkerRole role);

// A restarted daemon's pool, mapped again (EngineOptions::reattach).
struct ReattachedPool {
  // The backend over the new mapping; borrowed, used from then on instead of
  // the previous one (same model).
  model::ModelBackend* backend = nullptr;
  // The run the new mapping belongs to (AttachedPool::daemon_instance).
  std::string daemon_instance;
  // Its pool's blocks.
  int64_t capacity_blocks = 0;
};

// One forward step as it ran: its work in the ChunkScheduler's terms (so the
// cost model's prediction of it can be recomputed; cachecore's
// PredictMeasuredStep), what the scheduler predicted and how long it took
// (EngineOptions::on_step; the worker writes these as --step-trace).
struct StepRecord {
  absl::Time start;                 // when the step began
  std::vector<DecodeWork> decodes;  // one query each, context_tokens keys
  std::vector<Chunk> chunks;        // prefill/rebuild slices run
  double predicted_s = 0;           // StepSchedule::predicted_latency_s
  double forward_s = 0;             // the backend's Forward
  double step_s = 0;                // the whole step: planning RPCs, forward, sampling, commit
  int64_t waiting = 0;              // requests waiting for admission after the step
};

struct EngineOptions {
  static ChunkSchedulerOptions DefaultChunking() {
    ChunkSchedulerOptions chunking;
    chunking.max_budget_tokens = 8192 - 128;
    return chunking;
  }

  WorkerRole role = WorkerRole::kBoth;
  // How a step's prefill budget is chosen (cachecore/chunk_scheduler.h):
  // adaptive under a 50 ms TPOT target by default, the budget capped at
  // max_step_tokens - max_running (8064) so decodes always fit beside it.
  ChunkSchedulerOptions chunking = DefaultChunking();
  // Sequences in the running batch. 128: the largest decode batch the issue
  // measures; more wait (FCFS). >= 1.
  int32_t max_running = 128;
  // Requests queued (waiting + running) before Submit refuses with
  // RESOURCE_EXHAUSTED. 4096. >= max_running.
  int32_t max_queued = 4096;
  // Query tokens of one forward pass (decodes + chunks); the backend's
  // buffers are sized for it. Caps the chunk budget. 8192. >= 16.
  int32_t max_step_tokens = 8192;
  // Longest context (prompt + generated). 0 = the model's
  // max_position_embeddings. The daemon's own max_context_tokens applies too.
  int64_t max_context_tokens = 0;
  // Deadline of each daemon RPC. 10 s: far above a healthy plan.
  absl::Duration rpc_timeout = absl::Seconds(10);
  // Decode page rollover: when a request's private last page is full, ask
  // the daemon's ExtendLease for the next page (no plan, no context re-sent,
  // no rows copied). true (default). false: plan the longer context and copy
  // the page's rows into the block that plan allocates (the behaviour before
  // 2026-11-28; also the fallback whenever ExtendLease fails).
  bool extend_leases = true;
  // A request blocked at the head of the queue for pool space this long
  // after it arrived ends with RESOURCE_EXHAUSTED instead of waiting
  // forever: at its first admission (the pool stayed full), and also at a
  // re-admission after a preemption, whose clock still runs from the arrival
  // (deliberately: a request that the pool can hold only briefly would
  // otherwise cycle through preemption and re-prefill forever). 60 s: far
  // beyond any healthy queueing, short enough that a client retries
  // elsewhere. > 0.
  absl::Duration admission_timeout = absl::Seconds(60);
  // A request at the head of the queue whose plan was refused for pool space
  // is planned again only once one of this engine's lease releases landed
  // after the refusal (a request finished or was preempted: blocks came free)
  // or this long after the refusal (space freed elsewhere: agent pins that
  // expire or give way under pressure — the daemon releases those while
  // refusing plans, docs/scheduling.md — or another client of the daemon). In
  // between, steps send no plan for it: each refused plan re-sends the whole
  // context (~2 ms a step at 32-64k tokens on an H200 host, 2026-11-28
  // traces). 500 ms: several decode steps and a few long prefill steps of
  // llama-3-8b (a 100 ms interval still retried at every 140 ms mixed step),
  // short beside the seconds such a request waits at saturation and beside
  // agent pin TTLs. 0 = plan it again every step (the behaviour before
  // 2026-11-28). >= 0.
  absl::Duration admission_retry_interval = absl::Milliseconds(500);
  // Deferral of duplicate prefill. A request is planned at admission; when
  // at least this many of its context's tokens are in pages another request
  // is computing right now (its prefill started, its lease not committed:
  // two requests on one document, the second arriving during the first's
  // prefill), the daemon plans nothing (PlanStep ABORTED) and the request
  // waits at the head of the queue until one of this engine's commits
  // landed (the writer's prefill ended), a release landed (it ended), or
  // admission_retry_interval passed (a writer of another engine); then it is
  // planned again and hits those pages instead of computing a second copy
  // at the same time. 2048: a fixed-budget step's prefill (smaller overlaps
  // cost less than the wait). 0 = never defer (each computes its own copy,
  // the behaviour before 2026-11-28). >= 0. Only plans at admission are
  // deferred (a request's first, or its re-admission after a preemption);
  // an old daemon ignores the field (never defers).
  int64_t defer_pending_tokens = 2048;
  // How long one request may wait that way, from its first deferral: after
  // it, its plan computes its own copy instead of waiting further (a writer
  // on another engine, or one starved by --prefill-order). 10 s: two to three
  // 64k-token prefills on an H100/H200, well inside admission_timeout, so a
  // deferred request never times out for a deferral alone. > 0.
  absl::Duration defer_pending_max_wait = absl::Seconds(10);
  // Calibrated step costs for the chunk scheduler; the daemon's (GetStats)
  // is what the worker passes.
  CalibrationParams calibration;
  // Called on the step thread for every token emitted (after its sink got
  // it) with the seconds from the request's arrival and from its previous
  // token (negative for the first token, whose time is the TTFT). Must not
  // block. Empty (default): none. The worker feeds its TTFT/TPOT histograms.
  std::function<void(double since_arrival_s, double since_previous_s)> on_token;
  // Called on the step thread after every step that ran a forward pass.
  // Must not block for long (it delays the next step). Empty (default):
  // none. The worker writes them to --step-trace.
  std::function<void(const StepRecord&)> on_step;
  // The daemon run whose pool the backend maps (AttachedPool::daemon_instance).
  // A plan from another run is never computed: the daemon restarted.
  // Empty (default): the run GetStats reports at Start (a caller that
  // attached just before).
  std::string daemon_instance;
  // Called on the step thread once the daemon restarted, after every running
  // request has ended with UNAVAILABLE: map the new run's pool and return a
  // backend over it. On error the engine tries again at the next check and
  // requests fail with UNAVAILABLE meanwhile. Empty (default): a restart
  // cannot be followed; every request fails with UNAVAILABLE naming it.
  std::function<absl::StatusOr<ReattachedPool>()> reattach;
  // How often a thread asks the daemon for its run (GetStats), so a restart
  // is noticed even while no request plans. 1 s: about a coordinator's
  // heartbeat interval (the coordinator routes to a rejoined daemon no
  // sooner); one tiny RPC a second. 0 = never (only plans reveal a restart).
  absl::Duration daemon_check_interval = absl::Seconds(1);

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t steps = 0;
  int64_t generated_tokens = 0;
  int64_t prefill_tokens = 0;
  int64_t copied_tokens = 0;
  int64_t page_rollovers = 0;  // decode pages rolled over by ExtendLease (no plan)
  // Of which the step waited for the ExtendLease answer (no spare known yet).
  int64_t waited_rollovers = 0;
  // Plans of the queue's head refused for pool space (admission_retry_interval).
  int64_t admission_refusals = 0;
  // Plans of the queue's head deferred because another request was computing
  // its pages (defer_pending_tokens).
  int64_t deferred_admissions = 0;
  int64_t preemptions = 0;
  int64_t finished_requests = 0;
  // Prompt/hole tokens not yet computed: the context of every request not
  // yet planned plus the pending positions of running sequences still in
  // prefill (the load the coordinator's router weighs).
  int64_t queued_prefill_tokens = 0;
  double step_seconds = 0;
  double rpc_seconds = 0;        // daemon RPCs on the step thread (plans, first rollovers)
  double async_rpc_seconds = 0;  // off it (commits, extensions, renewals, releases; OnFinish)
  double import_seconds = 0;     // block imports from prefill daemons (importer thread)
  double forward_seconds = 0;
  // Times the daemon was seen restarted and its new pool mapped.
  int64_t daemon_reattaches = 0;
};

class Engine {
 public:
  // Starts the step thread. INVALID_ARGUMENT for bad options;
  // FAILED_PRECONDITION when the daemon's model (client's daemon) differs
  // from the backend's (checked through GetStats).
  static absl::StatusOr<std::unique_ptr<Engine>> Start(model::ModelBackend* backend,
                                                       Client* daemon, EngineOptions options);
  ~Engine();  // Shutdown()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; its tokens go to `sink`. Returns the request id (for
  // Cancel). INVALID_ARGUMENT (ValidateGenerationRequest), FAILED_PRECONDITION
  // for a request the role cannot serve (a prefill worker generates exactly one
  // token), RESOURCE_EXHAUSTED when max_queued requests are queued or the
  // prompt needs more blocks than the daemon's whole pool (a generation that
  // outgrows the pool later ends with RESOURCE_EXHAUSTED),
  // UNAVAILABLE after Shutdown. On error the sink is not called.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink);
  // Ends the request at the next step with CANCELLED (no-op when unknown/finished).
  void Cancel(uint64_t request_id);
  void Shutdown();

  EngineStats stats() const;
  const EngineOptions& options() const { return options_; }
  absl::string_view backend_name() const { return backend_name_; }
  const model::LlamaConfig& model_config() const { return config_; }
  // The daemon run whose pool the backend maps now.
  std::string daemon_instance() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t max_context_tokens() const { return max_context_tokens_; }

 private:
  struct Sequence;
  struct CallError;
  struct SpareBlock;
  Engine(model::ModelBackend* backend, Client* daemon, EngineOptions options,
         int64_t max_context_tokens, int64_t pool_blocks, std::string daemon_instance);
  void Loop();
  // The checker thread: GetStats every daemon_check_interval; a run other
  // than the attached one sets restarted_to_.
  void CheckLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Step thread: the daemon restarted (restarted_to_ set): ends the running
  // requests with UNAVAILABLE and re-maps the pool (options_.reattach).
  void FollowRestart() ABSL_LOCKS_EXCLUDED(mu_);
  // A daemon RPC's failure as the request's error (see the contract above).
  static absl::Status DaemonCallError(absl::string_view call, const absl::Status& status);
  // The importer thread: ImportBlocks for requests with a kv_source, then
  // hands them to the step thread.
  void ImportLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // One step over the running set; false when there was nothing to do.
  bool Step();

  // Step phases (step thread only).
  void TakeArrivals() ABSL_LOCKS_EXCLUDED(mu_);
  // stats_.running / waiting from the lists (step thread, after every loop turn).
  void PublishCounts() ABSL_LOCKS_EXCLUDED(mu_);
  void Admit();
  absl::Status Advance(Sequence& seq, bool* blocked);
  absl::Status PlanNext(Sequence& seq, int64_t target_tokens, bool* blocked);
  // PlanNext in parts: the context length the sequence must plan next, if any
  // (a decode token that fits the private page is appended there instead);
  // the PlanStep RPC (thread-safe; reads the sequence only); adopting the
  // lease (copies, the previous lease's release, stats) on the step thread.
  std::optional<int64_t> PlanTarget(Sequence& seq);
  absl::StatusOr<ScopedLease> BeginPlan(const Sequence& seq, int64_t target_tokens);
  absl::Status AdoptPlan(Sequence& seq, absl::StatusOr<ScopedLease> lease, int64_t target_tokens,
                         bool* blocked);
  // fn(0), ..., fn(n - 1) on the calling thread plus up to kPlanThreads - 1
  // helpers: one RPC's latency for a handful of daemon calls, not their sum.
  static constexpr size_t kPlanThreads = 8;
  static void ForEachConcurrently(size_t n, const std::function<void(size_t)>& fn);
  // BeginPlan for several sequences at once.
  std::vector<absl::StatusOr<ScopedLease>> BeginPlans(absl::Span<Sequence* const> seqs,
                                                      absl::Span<const int64_t> targets);
  // Decode page rollover: the next token needs a new page and the private
  // last page is full (SequencePages::PrivatePageIsFull).
  bool RollsOver(const Sequence& seq) const;
  // Rolls each of `seqs` over to its next page (after their commits landed):
  // into the lease's spare block at once when its last ExtendLease reported
  // one (that page's ExtendLease then runs on the call thread), else by
  // ExtendLease calls issued at once and waited for. A sequence whose
  // waited-for extension failed is returned, to be planned instead.
  std::vector<Sequence*> RollOver(absl::Span<Sequence* const> seqs);
  void Finish(Sequence& seq, const absl::Status& status, const std::string& reason);
  void Preempt(Sequence& seq);
  void ReleaseLeases(Sequence& seq, bool with_agent);
  // Imports the request's kv_source blocks (a failure only means rebuilding).
  void Import(Sequence& seq);
  // Daemon calls the step loop does not wait for (commits, releases, and the
  // sinks' OnFinish after them) run in order on the caller thread.
  // EnqueueCall returns a ticket; WaitForCall blocks until that call ran.
  uint64_t EnqueueCall(std::function<void()> call) ABSL_LOCKS_EXCLUDED(calls_mu_);
  void WaitForCall(uint64_t ticket) ABSL_LOCKS_EXCLUDED(calls_mu_);
  void CallLoop() ABSL_LOCKS_EXCLUDED(calls_mu_, mu_);

  // Immutable after construction.
  Client* const daemon_;
  const EngineOptions options_;
  const model::LlamaConfig config_;  // the backend's (every backend's: same model)
  const std::string backend_name_;
  const int64_t max_context_tokens_;
  int64_t BlocksFor(int64_t tokens) const {
    return (tokens + config_.block_tokens - 1) / config_.block_tokens;
  }
  const CostModel cost_;
  const ChunkScheduler scheduler_;

  // Step thread only (replaced by a reattach).
  model::ModelBackend* backend_;
  // The daemon's pool: a request needing more blocks can never run (read by Submit).
  std::atomic<int64_t> pool_blocks_;

  // Step thread only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  uint64_t next_daemon_sequence_ = 0;
  // The call-queue ticket of the latest release of a finished or preempted
  // request's lease (blocks came free; a re-plan's release frees none net).
  uint64_t last_release_ticket_ = 0;
  // The call-queue ticket of the latest commit (a prefill's pages came into
  // the cache: a deferred admission may retry).
  uint64_t last_commit_ticket_ = 0;
  // The head of the queue's latest refused or deferred plan
  // (options_.admission_retry_interval, options_.defer_pending_tokens).
  struct AdmissionRefusal {
    uint64_t request_id = 0;
    absl::Time at;
    uint64_t release_ticket = 0;  // last_release_ticket_ then
    uint64_t commit_ticket = 0;   // last_commit_ticket_ then
    bool deferred = false;        // waits for pages being written, not for space
  };
  std::optional<AdmissionRefusal> refusal_;
  // Whether the head `seq`, refused before, may be planned again now (waits
  // for the release that allows it to land).
  bool MayRetryAdmission(const Sequence& seq);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Sequence>> arrivals_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Sequence>> imports_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> cancelled_ ABSL_GUARDED_BY(mu_);  // subset of live_
  absl::flat_hash_set<uint64_t> live_ ABSL_GUARDED_BY(mu_);       // submitted, not finished
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  // The run whose pool backend_ maps; written by the step thread on reattach.
  std::string attached_instance_ ABSL_GUARDED_BY(mu_);
  // Set (to the new run, or "?" when a plan showed it) once the daemon is
  // seen restarted; cleared by a successful reattach.
  std::optional<std::string> restarted_to_ ABSL_GUARDED_BY(mu_);
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_request_id_ ABSL_GUARDED_BY(mu_) = 1;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);

  absl::Mutex calls_mu_;
  std::deque<std::function<void()>> calls_ ABSL_GUARDED_BY(calls_mu_);
  uint64_t calls_enqueued_ ABSL_GUARDED_BY(calls_mu_) = 0;
  uint64_t calls_done_ ABSL_GUARDED_BY(calls_mu_) = 0;
  bool calls_stop_ ABSL_GUARDED_BY(calls_mu_) = false;

  std::thread thread_;
  std::thread importer_;
  std::thread caller_;
  std::thread checker_;
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_ENGINE_H_
