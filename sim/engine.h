// Engine: discrete-event replay of a Workload on one System, where time is the
// cost model.
//
// Model (docs/simulator.md, "How time is modeled"):
//   * Modeled time lives in a FakeClock that the KvCache, its eviction policy
//     and the agent pin table read; nothing reads the wall clock.
//   * Continuous batching. Each engine step runs one decode token for every
//     running request past its prefill, plus the prefill/rebuild chunks the
//     system's ChunkScheduler picks (fixed or adaptive budget; holes and the
//     new prompt tail in position order). The step lasts
//     CostModel::StepLatency of exactly that work (the scheduler's
//     predicted_latency_s); the clock advances by it.
//   * Admission under memory: waiting requests are admitted FCFS (head of line
//     blocks) at step boundaries while KvCache::BeginStep succeeds for the
//     request's whole context — prompt AND outputs, so a running request
//     never runs out of blocks — and fewer than max_running_requests run.
//     BeginStep pins the resident pages and allocates the holes and tail
//     (evicting by the system's policy). The prompt part of the plan gives
//     the request's hit / rebuilt / new tokens; only prompt positions are
//     prefilled (outputs are decoded).
//   * With EngineOptions::grow_output_blocks the engine holds memory as the
//     worker does (services/worker/engine.h) instead: admission plans the
//     prompt only; the lease is committed once its positions are computed,
//     its partial last page kept private; a decode token goes into that page
//     until it is full, then the next token's plan (BeginStep of the context
//     so far) allocates the next page, the old lease is released. Admission
//     plans before the running requests' pages each step. A request whose
//     page cannot be allocated skips the step (and asks again at the next);
//     when no running request can run, the most recently admitted one is
//     preempted: its lease released, it goes back to the head of the queue
//     and, when admitted again, plans its context so far (hitting what of it
//     is still resident) and prefills the rest, which yields its next token.
//   * A request's first token comes at the end of the step that completes its
//     prefill (TTFT = that time - arrival); each later step adds one token.
//     At finish the lease is committed (blocks sealed and indexed, so later
//     requests can hit them) and released. Committing at finish, not at the
//     end of prefill, means two requests that run concurrently on the same new
//     document both compute it (documented simplification); with
//     EngineOptions::commit_at_prefill_end the lease is committed when the
//     prefill completes instead (as the worker commits a lease once its
//     positions are computed) and released at finish.
//   * Sessions are closed loops: step k+1 arrives delay_after_s() after step k
//     finished. With agent pins on, a step that ends in a tool call hands its
//     context's resident blocks to the AgentPinTable (Continuum-style TTL
//     pins); the pins are released when the job's next step is admitted, on
//     TTL expiry, or under memory pressure (waiting requests blocked longer
//     than the pin's expected benefit).
//   * A request whose context can never fit (more blocks than the pool) is
//     rejected at arrival, and so are its session's later steps.
//   * `none` systems give each request a fresh salt and sequence id, so
//     nothing ever hits.
//
// Stepping (for the cluster mode, sim/cluster.h): RunSystem is a driver over
// two pieces that other drivers reuse. ReplayState holds what belongs to the
// workload — session contexts, request records, the queue of future arrivals
// (closed-loop next steps are pushed as steps finish) — and EngineInstance is
// one engine: its KvCache, ChunkScheduler, AgentPinTable, FCFS waiting queue
// and running batch. A driver owns one FakeClock (the modeled time every
// engine reads), pops arrivals in time order, hands each request to an
// engine, and at each engine's step boundaries calls StartStep (expire pins,
// admit, plan the next step) and, when the step's modeled time has passed,
// CompleteStep (tokens, first tokens, finishes).
//
// Contract: RunSystem is a pure function of its inputs (deterministic: same
// inputs, same result). Thread-safe (no shared state); the CostModel is
// borrowed for the call. ReplayState and EngineInstance are not thread-safe:
// one replay (with all its engines) runs on one thread.
#ifndef ASYMCACHE_SIM_ENGINE_H_
#define ASYMCACHE_SIM_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "cachecore/agent_pins.h"
#include "cachecore/block_pool.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/clock.h"
#include "cachecore/cost_model.h"
#include "cachecore/kv_cache.h"
#include "sim/system.h"
#include "sim/workload.h"

namespace asymcache {

struct EngineOptions {
  int64_t pool_blocks = 0;             // KV pool capacity in blocks; required, >= 1
  int max_running_requests = 256;      // vLLM's max_num_seqs default
  absl::Duration tpot_target = absl::Milliseconds(50);  // adaptive chunking's TPOT SLO
  // What tpot_target bounds, and the stall cap of slack-extended steps
  // (ChunkSchedulerOptions::tpot_slo / max_step_latency, same defaults:
  // each request's mean TPOT, 250 ms; kPerStep reproduces results of
  // 2026-11-27 and earlier). max_step_latency finite, >= 0 (below
  // tpot_target it acts as tpot_target).
  ChunkSchedulerOptions::TpotSlo tpot_slo = ChunkSchedulerOptions{}.tpot_slo;
  absl::Duration max_step_latency = ChunkSchedulerOptions{}.max_step_latency;
  int64_t max_budget_tokens = 16384;   // adaptive budget cap (no decode waiting)
  // Adaptive chunking's budget floor while requests wait for admission
  // (ChunkSchedulerOptions::overload_budget_tokens; above max_budget_tokens
  // it acts as that); 0 = off. 0 or a positive multiple of tile_tokens.
  int64_t overload_budget_tokens = 2048;
  int64_t tile_tokens = 16;            // chunk alignment (= block size)
  bool agent_pins = false;             // Continuum-style pins for tool calls
  // Commit a request's lease when its prefill completes (the worker's
  // behaviour: later requests hit its prompt blocks while it decodes) instead
  // of at finish (the default, kept so that earlier results reproduce). The
  // output blocks reserved at admission are sealed then too; only the
  // session's next step could hit them, and it arrives after the finish.
  bool commit_at_prefill_end = false;
  // How a request's output blocks are held. false (the default, kept so that
  // earlier results reproduce): admission reserves them with the prompt, so
  // a running request never runs out of blocks and nothing is preempted.
  // true: the worker's memory behaviour (the model at the top of this file):
  // the prompt at admission, one page at a time while decoding, a skipped
  // step when the pool cannot supply a page, preemption of the newest
  // request when nothing can run. Requires commit_at_prefill_end (the
  // next page's plan finds the earlier pages only once they are sealed).
  bool grow_output_blocks = false;
  // The worker's deferral of duplicate prefill (its
  // EngineOptions::defer_pending_tokens, default 2048 there): a request whose
  // admission plan has at least this many tokens in pages a running request
  // is still computing waits at the head of the queue until that request's
  // commit, then hits them. 0 (the default here, so that earlier results
  // reproduce) = never: each computes its own copy. > 0 requires
  // commit_at_prefill_end (committing at finish would make it wait for the
  // writer's whole decode).
  int64_t defer_pending_tokens = 0;
  // The worker's defer_pending_max_wait: a request stops waiting this long
  // after its first deferral and computes its own copy. 10 s (the worker's
  // default). > 0.
  absl::Duration defer_pending_max_wait = absl::Seconds(10);
  // Keep every step's work (RunResult::steps; single-engine runs, RunSystem):
  // what asymcache-sim --step-trace-dir writes as step traces
  // (cachecore/step_trace.h). ~100 bytes a step plus 24 per decode: off by
  // default.
  bool record_steps = false;

  AgentPinOptions pin_options;
  // Optional: called with the fraction of requests done, at most ~200 times a run.
  std::function<void(double)> progress;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// One engine request (one step of a session) as it was replayed. Times are
// modeled seconds from the trace origin; -1 when it never happened.
struct RequestRecord {
  int32_t session = 0;        // index into Workload::sessions
  int32_t step = 0;
  double arrival_s = 0;
  double admitted_s = -1;
  double first_token_s = -1;
  double finish_s = -1;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;  // tokens generated (== the step's output_tokens when finished)
  int64_t prompt_blocks = 0;  // blocks covering the prompt
  int64_t hit_blocks = 0;     // of those, resident at admission
  int64_t hit_tokens = 0;     // prompt tokens served from the cache
  int64_t rebuild_tokens = 0; // prompt tokens in holes (recomputed)
  int64_t new_tokens = 0;     // prompt tokens in the uncached tail
  bool rejected = false;      // never admitted (context larger than the pool)
  // Where its prefill time went (admitted_s .. first_token_s): the engine
  // steps that computed a chunk of its prompt, and their modeled time. The
  // rest of that span it was admitted but got no chunk (others' chunks first).
  int32_t prefill_steps = 0;
  double prefill_step_s = 0;
  // grow_output_blocks: times it was preempted (its lease released while it
  // decoded) and times the plan of its next page was refused (each time it
  // skips the step it asked for and asks again at the next).
  int32_t preemptions = 0;
  int32_t blocked_decode_steps = 0;

  bool finished() const { return finish_s >= 0; }
  double ttft_s() const { return first_token_s - arrival_s; }
  // Mean time between tokens after the first; 0 for single-token outputs.
  double tpot_s() const {
    return output_tokens > 1 ? (finish_s - first_token_s) / static_cast<double>(output_tokens - 1) : 0;
  }
};

// One agent job (a session whose steps call tools).
struct JobRecord {
  int32_t session = 0;
  double start_s = 0;    // step 0 arrival
  double finish_s = -1;  // last step finish; -1 if a step was rejected
};

// One modeled step (EngineOptions::record_steps): its start, the decodes and
// chunks it ran, its modeled latency, and the requests waiting for admission
// when it started (the worker's trace counts them after its step).
struct SimStep {
  double start_s = 0;
  std::vector<DecodeWork> decodes;
  std::vector<Chunk> chunks;
  double latency_s = 0;
  int64_t waiting = 0;
};

struct RunResult {
  std::string system;
  std::vector<RequestRecord> requests;  // in arrival order
  std::vector<JobRecord> jobs;          // in session order
  int64_t engine_steps = 0;
  double makespan_s = 0;                // first arrival to last finish
  double busy_s = 0;                    // modeled time spent in steps
  int64_t prefill_tokens = 0;           // query tokens of prefill/rebuild chunks
  int64_t decode_tokens = 0;
  // Step mix: steps with prefill chunks and decodes, with chunks only; the
  // rest were decode-only. Counts and modeled time.
  int64_t mixed_steps = 0;
  double mixed_busy_s = 0;
  int64_t prefill_only_steps = 0;
  double prefill_only_busy_s = 0;
  // Modeled time during which the head of the waiting queue could not be
  // admitted for lack of memory, and the mean share of the pool that could
  // not be evicted then (being written or pinned: running requests' contexts,
  // agent pins), weighted by time.
  double memory_blocked_s = 0;
  double memory_blocked_busy_fraction = 0;
  int64_t evictions = 0;
  int64_t pins_granted = 0;             // AgentPinTable decisions that pinned
  int64_t pins_released_under_pressure = 0;
  // defer_pending_tokens: admission plans deferred (one per step the head of
  // the queue waited for pages being written).
  int64_t deferred_plans = 0;
  // grow_output_blocks: RequestRecord's counts, over all requests.
  int64_t preemptions = 0;
  int64_t blocked_decode_steps = 0;
  BlockPool::Stats final_pool;          // after the run, pin table dropped
  absl::Status consistency;             // KvCache::CheckConsistency() after the run
  std::vector<SimStep> steps;           // EngineOptions::record_steps only, in order
};

// Replays `workload` on `system`. INVALID_ARGUMENT for bad options or an
// invalid workload; INTERNAL if the cache misbehaves (a bug).
absl::StatusOr<RunResult> RunSystem(const Workload& workload, const SystemSpec& system,
                                    const CostModel& cost, const EngineOptions& options);

// --- stepping one engine (RunSystem and RunCluster drive these) -----------

// Modeled seconds on the driver's FakeClock (UnixEpoch + s).
absl::Time ModeledTime(double s);

// One request (one step of a session) from its arrival to its finish.
struct EngineRequest {
  size_t record = 0;   // index into RunResult::requests
  int32_t session = 0;
  int32_t step = 0;
  SequenceId sequence = 0;
  std::string salt;
  uint64_t lease_id = 0;
  bool committed = false;      // its lease is committed (commit_at_prefill_end)
  int64_t prompt_tokens = 0;
  int64_t context_tokens = 0;  // prompt + outputs (admission reserves it unless grow_output_blocks)
  int64_t output_tokens = 0;
  std::vector<std::pair<int64_t, int64_t>> runs;  // pending prefill query runs [begin, end)
  size_t next_run = 0;
  int64_t generated = 0;
  // grow_output_blocks only. The positions its lease covers, decode tokens
  // written into the private page included (the worker's
  // SequencePages::context_tokens); whether the lease's partial last page is
  // private (decode extends it in place); whether the plan found that page
  // resident; whether its next page was refused this step; since when its
  // page plans have been refused (-1: the last one succeeded), for the agent
  // pins' pressure release as the daemon times it.
  int64_t planned_tokens = 0;
  bool private_last_page = false;
  bool last_page_resident = false;
  bool decode_blocked = false;
  double blocked_since_s = -1;
  // When its admission plan was first deferred (-1: never; defer_pending_tokens).
  double deferred_since_s = -1;

  bool prefilled() const { return next_run == runs.size(); }
  // Prefill/rebuild query tokens not computed yet (admitted requests).
  int64_t remaining_prefill_tokens() const;
};

// The workload side of a replay (see "Stepping" above). Precondition: the
// workload and options are valid (RunSystem/RunCluster check). Borrows
// workload, system and options for its lifetime.
class ReplayState {
 public:
  ReplayState(const Workload& workload, const SystemSpec& system, const EngineOptions& options,
              int block_tokens);

  bool has_arrival() const { return !arrivals_.empty(); }
  // Time of the next arrival. Precondition: has_arrival().
  double next_arrival_s() const { return arrivals_.top().time_s; }

  // Pops the next arrival ((time, push order) order), appends its inputs and
  // outputs to its session's context and records it. `request` is nullopt when
  // it was rejected at arrival (its context needs more blocks than the pool:
  // the session's later steps never arrive); `sequence` is its sequence id
  // either way.
  struct Arrival {
    std::optional<EngineRequest> request;
    int32_t session = 0;
    SequenceId sequence = 0;
  };
  Arrival PopArrival();

  // Every token of the session so far (prompts and outputs of arrived steps).
  const std::vector<TokenId>& context(int32_t session) const { return sessions_[session].context; }
  const Workload& workload() const { return workload_; }
  const SystemSpec& system() const { return system_; }
  RequestRecord& record(size_t i) { return result_.requests[i]; }
  size_t records() const { return result_.requests.size(); }

  // An engine rejected the request at admission (it can never fit): marks it
  // and the rest of its session.
  void Reject(const EngineRequest& request);
  // The request generated its last token at now_s (its lease is committed and
  // released): records it, ends the session or schedules its next step.
  void OnFinished(const EngineRequest& request, double now_s);

  // The records (arrival order), jobs (agent sessions only) and makespan;
  // engine counters are left for the driver. Call once, after the last step.
  RunResult TakeResult();

 private:
  struct SessionState {
    std::vector<TokenId> context;  // every token so far (prompts + outputs)
    int next_step = 0;
  };
  struct Pending {
    double time_s;
    uint64_t order;  // FIFO among equal times
    int32_t session;
    friend bool operator>(const Pending& a, const Pending& b) {
      return a.time_s != b.time_s ? a.time_s > b.time_s : a.order > b.order;
    }
  };
  void Schedule(int32_t session, double time_s);
  void ReportProgress();

  const Workload& workload_;
  const SystemSpec& system_;
  const EngineOptions& options_;
  const int block_tokens_;
  std::vector<SessionState> sessions_;
  std::priority_queue<Pending, std::vector<Pending>, std::greater<Pending>> arrivals_;
  uint64_t order_ = 0;
  RunResult result_;
  int64_t total_requests_ = 0;
  int64_t done_requests_ = 0;
  int64_t last_progress_ = -1;
};

// What one engine did over a run.
struct EngineTotals {
  int64_t engine_steps = 0;
  double busy_s = 0;              // modeled time spent in steps
  int64_t prefill_tokens = 0;     // query tokens of prefill/rebuild chunks
  int64_t decode_tokens = 0;
  int64_t mixed_steps = 0;        // RunResult's step mix
  double mixed_busy_s = 0;
  int64_t prefill_only_steps = 0;
  double prefill_only_busy_s = 0;
  double memory_blocked_s = 0;    // RunResult's
  double memory_blocked_busy_block_s = 0;  // (writing + pinned) / capacity, integrated over it
  int64_t evictions = 0;
  int64_t pins_granted = 0;
  int64_t pins_released_under_pressure = 0;
  int64_t deferred_plans = 0;        // RunResult's
  int64_t preemptions = 0;           // RunResult's
  int64_t blocked_decode_steps = 0;  // RunResult's
  std::vector<SimStep> steps;        // RunResult's (record_steps)
  BlockPool::Stats final_pool;    // after the run, pin table dropped
  absl::Status consistency;       // KvCache::CheckConsistency() after the run
};

// One engine (see "How time is modeled" above). Borrows the system, cost
// model, options, clock and replay, which must outlive it.
class EngineInstance {
 public:
  // INVALID_ARGUMENT for an unknown policy or bad cache/chunking options.
  // Precondition: options.Validate().ok().
  static absl::StatusOr<std::unique_ptr<EngineInstance>> Create(const SystemSpec& system,
                                                                const CostModel& cost,
                                                                const EngineOptions& options,
                                                                FakeClock* clock,
                                                                ReplayState* replay);

  // The request joins the FCFS waiting queue (admitted at a step boundary).
  void Enqueue(EngineRequest request);

  // A step boundary at now_s (the clock must read it; no step in flight):
  // expires agent pins, admits waiting requests FCFS (rejecting one that can
  // never fit), and plans the next step. Returns true when a step now runs
  // until step_end_s(), false when nothing runs (the waiting queue is then
  // empty). INTERNAL on cache misbehaviour.
  absl::StatusOr<bool> StartStep(double now_s);
  bool in_step() const { return in_step_; }
  double step_end_s() const { return step_end_s_; }
  // The step in flight ends: at step_end_s() (the clock must read it). Moves
  // chunks, counts tokens, records first tokens, finishes requests (commit,
  // release, agent pins, ReplayState::OnFinished). INTERNAL on misbehaviour.
  absl::Status CompleteStep();

  // Load, as a router sees it.
  //   queued_prefill_tokens: prompt tokens of waiting requests (not planned
  //     yet) + prefill/rebuild tokens not yet computed of admitted ones.
  //   decode_batch: running requests past their prefill.
  //   busy_blocks: blocks that cannot be evicted now (written, pinned by
  //     running requests or agent pins, in transfer); capacity_blocks: the pool.
  struct Load {
    int64_t queued_prefill_tokens = 0;
    int64_t decode_batch = 0;
    int64_t free_blocks = 0;
    int64_t capacity_blocks = 0;
    int64_t busy_blocks = 0;
  };
  Load CurrentLoad() const;
  bool has_waiting() const { return !waiting_.empty(); }

  KvCache& cache() { return *cache_; }
  // Forgets the session's cached hash chain in this engine's cache.
  void ForgetSession(SequenceId sequence) { cache_->ForgetSession(sequence); }

  // After the last step: drops the pin table, checks the cache, returns the
  // totals. Call once.
  EngineTotals Finish();

 private:
  EngineInstance(const SystemSpec& system, const CostModel& cost, const EngineOptions& options,
                 ReplayState* replay);
  absl::Status Admit();
  // grow_output_blocks: every decoding request's next position, written in
  // place or planned (a refused plan marks it decode_blocked).
  absl::Status PlanDecodePages();
  // grow_output_blocks: a lease whose positions are all computed is
  // committed, its partial last page kept private unless `finishing`.
  absl::Status CommitComputed(EngineRequest& request, bool finishing);
  // grow_output_blocks: releases the newest running request's lease and puts
  // it back at the head of the waiting queue.
  absl::Status PreemptNewest();
  absl::Status FinishRequest(EngineRequest& request);
  void Reject(EngineRequest& request);
  double ExpectedRebuildCost(int64_t tokens) const;

  const SystemSpec& system_;
  const CostModel& cost_;
  const EngineOptions& options_;
  ReplayState* const replay_;

  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<ChunkScheduler> scheduler_;
  std::unique_ptr<AgentPinTable> pins_;
  std::deque<EngineRequest> waiting_;
  std::vector<EngineRequest> running_;
  double now_s_ = 0;
  bool in_step_ = false;
  double step_end_s_ = 0;
  StepSchedule schedule_;          // of the step in flight
  std::vector<size_t> decoding_;   // running_ indices decoding in it
  absl::flat_hash_map<SequenceId, size_t> prefilling_;  // running_ indices prefilling in it
  int64_t load_hint_tokens_ = 0;
  bool head_blocked_on_memory_ = false;  // the last Admit left the head waiting for memory
  EngineTotals totals_;
};

// After a run: INTERNAL naming `name` when the cache was inconsistent
// (`consistency`, KvCache::CheckConsistency) or left blocks pinned or being
// written (`pool`); OK otherwise.
absl::Status CheckCacheAfterRun(absl::string_view name, const absl::Status& consistency,
                                const BlockPool::Stats& pool);

// KV pool blocks in `gib` GiB for the model (bytes per block from ModelConfig).
int64_t PoolBlocksForGiB(const ModelConfig& model, double gib);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_ENGINE_H_
