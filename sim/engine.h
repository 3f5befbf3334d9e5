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
//   * A request's first token comes at the end of the step that completes its
//     prefill (TTFT = that time - arrival); each later step adds one token.
//     At finish the lease is committed (blocks sealed and indexed, so later
//     requests can hit them) and released. Committing at finish, not at the
//     end of prefill, means two requests that run concurrently on the same new
//     document both compute it (documented simplification).
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
// Contract: RunSystem is a pure function of its inputs (deterministic: same
// inputs, same result). Thread-safe (no shared state); the CostModel is
// borrowed for the call.
#ifndef ASYMCACHE_SIM_ENGINE_H_
#define ASYMCACHE_SIM_ENGINE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachecore/agent_pins.h"
#include "cachecore/block_pool.h"
#include "cachecore/cost_model.h"
#include "sim/system.h"
#include "sim/workload.h"

namespace asymcache {

struct EngineOptions {
  int64_t pool_blocks = 0;             // KV pool capacity in blocks; required, >= 1
  int max_running_requests = 256;      // vLLM's max_num_seqs default
  absl::Duration tpot_target = absl::Milliseconds(50);  // adaptive chunking's step target
  int64_t max_budget_tokens = 16384;   // adaptive budget cap (no decode waiting)
  int64_t tile_tokens = 16;            // chunk alignment (= block size)
  bool agent_pins = false;             // Continuum-style pins for tool calls
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

struct RunResult {
  std::string system;
  std::vector<RequestRecord> requests;  // in arrival order
  std::vector<JobRecord> jobs;          // in session order
  int64_t engine_steps = 0;
  double makespan_s = 0;                // first arrival to last finish
  double busy_s = 0;                    // modeled time spent in steps
  int64_t prefill_tokens = 0;           // query tokens of prefill/rebuild chunks
  int64_t decode_tokens = 0;
  int64_t evictions = 0;
  int64_t pins_granted = 0;             // AgentPinTable decisions that pinned
  int64_t pins_released_under_pressure = 0;
  BlockPool::Stats final_pool;          // after the run, pin table dropped
  absl::Status consistency;             // KvCache::CheckConsistency() after the run
};

// Replays `workload` on `system`. INVALID_ARGUMENT for bad options or an
// invalid workload; INTERNAL if the cache misbehaves (a bug).
absl::StatusOr<RunResult> RunSystem(const Workload& workload, const SystemSpec& system,
                                    const CostModel& cost, const EngineOptions& options);

// KV pool blocks in `gib` GiB for the model (bytes per block from ModelConfig).
int64_t PoolBlocksForGiB(const ModelConfig& model, double gib);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_ENGINE_H_
