// AgentPinTable: keeps an agent job's KV blocks resident while the job waits
// on a tool call, for a TTL learned from that tool's observed durations
// (DESIGN.md §3.5, after Continuum).
//
// The rule (docs/scheduling.md has the reasoning):
//   TTL(tool)   = default_ttl                          if fewer than min_samples durations seen,
//               = ttl_margin × quantile_{ttl_quantile} of the tool's recent durations otherwise.
//   Pin a job iff (1) its step is not the last, (2) it hands over >= 1 pin,
//   (3) TTL <= max_ttl (the wait is short enough for a pin to be worth holding),
//   (4) the expected saving beats the holding cost:
//         ttl_quantile × expected_rebuild_cost_s  >  hold_cost_s_per_block_s × blocks × TTL,
//   (5) the pinned-capacity cap holds: pinned blocks + blocks <= max_pinned_fraction × capacity.
//   A pin lasts until the job resumes (OnJobResumed), Unpin, TTL expiry
//   (ExpirePins), or pressure (ReleaseUnderPressure: soft pins, oldest first,
//   only pins whose expected benefit — the rebuild time they save — is less
//   than how long waiting requests have been blocked on memory).
// Expired or released blocks fall back to the pool's eviction policy.
//
// Ownership: the table owns the pins handed to it (BlockPool::PinHandle or
// PinSet: RAII, unpinned when the table drops them). The BlockPool behind the
// pins and the Clock must outlive the table. Destroying the table releases
// every pin it holds. Pins are released outside the table's lock.
//
// Durations: a job's tool time runs from PinJob (its step ended with a tool
// call) to OnJobResumed (its next step arrived); it is recorded for the tool
// whether or not the job was pinned. A job that has not resumed after
// max_tool_wait_tracked is forgotten and recorded as having taken that long (a
// lower bound, which keeps slow tools from looking fast).
//
// Thread-safety: thread-safe; one absl::Mutex guards all state. Costs: PinJob,
// OnJobResumed, Unpin and Refresh are O(1) plus the pins released; ExpirePins,
// ReleaseUnderPressure and List scan all jobs (O(jobs log jobs) at most).
#ifndef ASYMCACHE_CACHECORE_AGENT_PINS_H_
#define ASYMCACHE_CACHECORE_AGENT_PINS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachecore/block_pool.h"
#include "cachecore/clock.h"
#include "cachecore/tool_duration_stats.h"

namespace asymcache {

struct AgentPinOptions {
  // Cap: pinned blocks <= fraction × pool capacity. 0.25 keeps three quarters
  // of the pool for admission and the eviction policy (SGLang's max pinned
  // ratio and the vLLM pinning PRs use caps of this order).
  double max_pinned_fraction = 0.25;
  // TTL for a tool with fewer than min_samples observations: Continuum's
  // cold-start TTL (2 s), long enough for quick tools (file reads, greps,
  // short commands) and short enough that a wrong guess costs little.
  absl::Duration default_ttl = absl::Seconds(2);
  // Longest TTL ever granted; a tool whose TTL would exceed it is not pinned
  // (its blocks are likely evicted-and-rebuilt more cheaply than held).
  absl::Duration max_ttl = absl::Seconds(30);
  // TTL = this quantile of the tool's recent durations × ttl_margin: 0.9 means
  // about nine jobs in ten come back before the pin expires.
  double ttl_quantile = 0.9;
  // Slack on the quantile (>= 1): covers sampling error of a few hundred
  // samples and the time between the tool finishing and the next step being
  // planned.
  double ttl_margin = 1.25;
  // Below this many observations of a tool, default_ttl is used.
  int min_samples = 3;
  // Bounded memory per tool: the most recent durations kept (ring buffer).
  int max_samples_per_tool = 256;
  // Bounded memory overall: distinct tool names tracked (later ones get default_ttl).
  int max_tools = 4096;
  // Price of memory in seconds saved per block-second held, for rule (4).
  // 0 by default: holding is free until someone needs the memory, and that
  // case is handled by soft release (ReleaseUnderPressure) instead of refusing
  // pins up front. Set > 0 to refuse pins whose saving does not cover holding.
  double hold_cost_s_per_block_s = 0.0;
  // A job not resumed after this long is forgotten (recorded as this long).
  // Ten minutes: far above max_ttl, bounded memory for abandoned jobs.
  absl::Duration max_tool_wait_tracked = absl::Minutes(10);

  // INVALID_ARGUMENT naming the field for out-of-range values.
  absl::Status Validate() const;
};

enum class PinOutcome {
  kPinned,
  kLastStep,      // the job is done: nothing to keep
  kNoBlocks,      // no pins handed over
  kWaitTooLong,   // TTL would exceed max_ttl
  kNotWorthIt,    // expected saving <= holding cost (or no rebuild cost)
  kCapacityCap,   // would exceed max_pinned_fraction of the pool
};
absl::string_view PinOutcomeName(PinOutcome outcome);

struct PinDecision {
  bool pinned = false;
  PinOutcome outcome = PinOutcome::kNoBlocks;
  absl::Duration ttl = absl::ZeroDuration();  // the TTL computed for the tool (granted iff pinned)
  std::string reason;                          // human-readable, with the numbers compared
};

struct JobPinInfo {
  std::string job_id;
  std::string tool;
  int64_t blocks = 0;
  absl::Time pinned_at;
  absl::Time expires_at;
  double expected_benefit_s = 0;  // the rebuild time the pin saves if the job returns in time
};

class AgentPinTable {
 public:
  // Preconditions: pool_capacity_blocks >= 1, options.Validate().ok(), clock
  // non-null and outliving the table (checked; a violation aborts).
  AgentPinTable(int64_t pool_capacity_blocks, AgentPinOptions options, Clock* clock);
  ~AgentPinTable();
  AgentPinTable(const AgentPinTable&) = delete;
  AgentPinTable& operator=(const AgentPinTable&) = delete;

  // A step of job `job_id` ended with a call to `tool` (or was the last step).
  // Releases any pins the job already held, then decides by the rule above
  // whether to keep `pins` (one per block; the caller takes them from the
  // step's pins, e.g. BlockPool::PinSealed) and for how long. Pins not kept
  // are released before returning. `expected_rebuild_cost_s` is what
  // rebuilding these blocks would cost the job's next step (CostModel). Also
  // starts timing the tool call (unless last_step, which forgets the job).
  PinDecision PinJob(absl::string_view job_id, absl::string_view tool, bool last_step,
                     std::vector<BlockPool::PinHandle> pins, double expected_rebuild_cost_s);
  // Same, with the pins as one PinSet (released under one pool lock).
  PinDecision PinJob(absl::string_view job_id, absl::string_view tool, bool last_step,
                     BlockPool::PinSet pins, double expected_rebuild_cost_s);

  // The job's next step arrived: records the tool's duration (now - PinJob
  // time) and releases the job's pins (the new step pins what it needs through
  // its own plan). Returns false (no-op) for a job not waiting on a tool.
  bool OnJobResumed(absl::string_view job_id);

  // Releases the job's pins now; the job still counts as waiting on its tool
  // (its duration is recorded when it resumes). False if it held no pins.
  bool Unpin(absl::string_view job_id);

  // Sets the job's pins to expire `ttl` from now. NOT_FOUND when the job holds
  // no pins; INVALID_ARGUMENT unless 0 < ttl <= max_ttl.
  absl::Status Refresh(absl::string_view job_id, absl::Duration ttl);

  // Releases every pin whose TTL has passed (expires_at <= now) and forgets
  // jobs waiting longer than max_tool_wait_tracked. Returns the number of jobs
  // whose pins expired.
  int64_t ExpirePins();

  // Soft pins: when waiting requests have been blocked on memory for
  // `longest_wait`, releases pins whose expected benefit is below that wait,
  // oldest pin first, until at least `blocks_needed` pins are released (a job's
  // pins go together). Returns the number of pins released (blocks also pinned
  // elsewhere are released by the table but stay pinned in the pool).
  int64_t ReleaseUnderPressure(int64_t blocks_needed, absl::Duration longest_wait);

  // The TTL PinJob would compute for `tool` now.
  absl::Duration TtlFor(absl::string_view tool) const;
  // Observations held for `tool` (<= max_samples_per_tool).
  int ToolSamples(absl::string_view tool) const;

  int64_t pinned_blocks() const;  // pins held (a block pinned by two jobs counts twice)
  size_t pinned_jobs() const;
  size_t waiting_jobs() const;    // jobs waiting on a tool, pinned or not
  int64_t pinned_capacity_cap() const { return cap_blocks_; }
  // Pinned jobs, oldest pin first.
  std::vector<JobPinInfo> List() const;

  const AgentPinOptions& options() const { return options_; }

 private:
  // The pins of one job: either form the caller handed over.
  struct Pins {
    std::vector<BlockPool::PinHandle> handles;
    BlockPool::PinSet set;
    int64_t size() const { return static_cast<int64_t>(handles.size() + set.size()); }
  };
  struct Job {
    std::string tool;
    absl::Time tool_started;      // when the step ended with the tool call
    Pins pins;                    // empty when not pinned
    absl::Time pinned_at;
    absl::Time expires_at;
    double expected_benefit_s = 0;
    uint64_t pin_order = 0;       // tie-break for equal pinned_at: lower = older
  };

  PinDecision PinJobLocked(absl::string_view job_id, absl::string_view tool, bool last_step,
                           Pins pins, double expected_rebuild_cost_s, std::vector<Pins>* released)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the job's pins (if any) into *released.
  void DropPinsLocked(Job& job, std::vector<Pins>* released) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration TtlForLocked(absl::string_view tool) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Immutable after construction.
  const AgentPinOptions options_;
  const int64_t cap_blocks_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  ToolDurationStats stats_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Job> jobs_ ABSL_GUARDED_BY(mu_);  // waiting on a tool
  int64_t pinned_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  size_t pinned_jobs_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_pin_order_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_AGENT_PINS_H_
