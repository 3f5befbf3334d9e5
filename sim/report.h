// Report: per-system summaries of simulator runs and their renderings
// (aligned terminal tables, JSON for tools).
//
// Metrics (docs/simulator.md defines each):
//   block hit rate   prompt blocks resident at admission / prompt blocks
//   rebuilt tokens   prompt tokens in holes (evicted blocks recomputed)
//   TTFT             arrival -> first token (modeled seconds), over finished requests
//   TPOT             (finish - first token) / (output - 1), over finished requests with output > 1
//   job latency      agent job: first step's arrival -> last step's finish
//   throughput       output tokens / makespan
// Ratio columns compare each system's MEAN TTFT/TPOT with the reference
// systems `vllm` and `pensieve`: reference / system, so > 1 means better than
// the reference.
//
// Contract: pure functions over values; thread-safe.
#ifndef ASYMCACHE_SIM_REPORT_H_
#define ASYMCACHE_SIM_REPORT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sim/engine.h"

namespace asymcache {

struct Distribution {
  int64_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
};
// Nearest-rank percentiles; all zero for an empty input.
Distribution Summarize(std::vector<double> values);

struct SystemSummary {
  std::string system;
  int64_t requests = 0;
  int64_t finished = 0;
  int64_t rejected = 0;
  double block_hit_rate = 0;
  int64_t prompt_tokens = 0;
  int64_t hit_tokens = 0;
  int64_t rebuilt_tokens = 0;
  int64_t new_tokens = 0;
  Distribution ttft_s;
  Distribution tpot_s;
  int64_t jobs = 0;
  int64_t jobs_finished = 0;
  double job_latency_mean_s = 0;
  int64_t output_tokens = 0;
  double makespan_s = 0;
  double throughput_tok_s = 0;
  int64_t engine_steps = 0;
  int64_t evictions = 0;
  int64_t pins_granted = 0;
  int64_t preemptions = 0;           // EngineOptions::grow_output_blocks only
  int64_t blocked_decode_steps = 0;  // likewise
};
SystemSummary Summarize(const RunResult& run);

// What a run was (printed above the table and stored in JSON).
struct RunHeader {
  std::string workload;
  int64_t sessions = 0;
  int64_t requests = 0;
  double rate = 0;            // session starts per second
  int64_t pool_blocks = 0;
  double pool_gib = 0;
  std::string model;
  std::string calibration;    // device / source of the cost model
  uint64_t seed = 0;
  bool agent_pins = false;
  double tpot_target_ms = 0;
  std::string tpot_slo;            // "request-mean" or "per-step"
  double max_step_latency_ms = 0;  // request-mean's stall cap
};

// Index of the reference row for `base` ("vllm" / "pensieve"): the row named
// exactly `base`, else the first row whose name starts with `base:`; -1 if none.
int FindReference(const std::vector<SystemSummary>& rows, const std::string& base);

std::string FormatHeader(const RunHeader& header);
// One row per system; ratio columns where the references exist.
std::string FormatTable(const std::vector<SystemSummary>& rows);
std::string ToJson(const RunHeader& header, const std::vector<SystemSummary>& rows);

// Every request of every run as CSV, one row per request (arrival order within
// a run), for looking at where TTFT goes: system, session, step, arrival /
// admitted / first token / finish (modeled s; -1 when it never happened),
// queue_s = admitted - arrival, prefill_s = first token - admitted, the steps
// that computed its chunks and their modeled time, prompt / hit / rebuilt /
// new tokens, output tokens. Then one `#steps` comment line per run with its
// step mix (mixed, prefill-only and decode-only steps with their busy time).
std::string RequestsToCsv(const std::vector<RunResult>& runs);

// A run's modeled steps (RunResult::steps, EngineOptions::record_steps) as a
// step trace (cachecore/step_trace.h), one line per step, newline-terminated:
// the header (`started` is the Unix epoch: the times are modeled seconds from
// the trace origin), then each step with forward_ms = step_ms = predicted_ms
// = its modeled latency. bench/step_trace_summary.py and asymcache-fit-steps
// --trace read it as they read a worker's.
std::string StepsToTrace(const RunResult& run, const ModelConfig& model);

// --- sweeps ---------------------------------------------------------------

struct SloTargets {
  double ttft_s = 0;  // mean TTFT must stay <= this
  double tpot_s = 0;  // mean TPOT must stay <= this
};
bool MeetsSlo(const SystemSummary& s, const SloTargets& slo);

struct SweepPoint {
  double rate = 0;
  std::vector<SystemSummary> systems;  // same order at every point
};

struct Capacity {
  std::string system;
  // Highest swept rate at which the SLO holds at that rate and every lower
  // swept rate; 0 when it fails at the lowest.
  double rate = 0;
  bool saturated = false;  // some swept rate failed (the capacity is bounded by the sweep)
};
std::vector<Capacity> CapacityAtSlo(const std::vector<SweepPoint>& sweep, const SloTargets& slo);

std::string FormatSweep(const std::vector<SweepPoint>& sweep, const SloTargets& slo);
std::string SweepToJson(const RunHeader& header, const std::vector<SweepPoint>& sweep,
                        const SloTargets& slo);

// --- cluster mode (sim/cluster.h) ------------------------------------------

// One cluster run (system x routing mode). Load imbalance: max over engines
// of work tokens / their mean (sim/cluster.h defines it).
struct ClusterSummary {
  SystemSummary summary;     // the whole cluster as one system
  std::string routing;       // RoutingModeName
  int engines = 0;
  double load_imbalance = 0;
  std::vector<int64_t> engine_requests;     // requests routed to each engine
  std::vector<int64_t> engine_work_tokens;  // prefill + decode tokens of each engine
  // Routing decisions by reason (RouteReasonName, count), reasons that occurred.
  std::vector<std::pair<std::string, int64_t>> route_reasons;
};
// One row per run: TTFT mean/p50/p99, TPOT mean/p99, hit rate, rebuilt
// tokens, load imbalance (+ job latency when there are jobs).
std::string FormatClusterTable(const std::vector<ClusterSummary>& rows);
// Schema asymcache.sim.cluster.v1: the header, then per run the SystemSummary
// fields plus routing, engines, load_imbalance, route_reasons and the
// per-engine vectors.
std::string ClusterToJson(const RunHeader& header, const std::vector<ClusterSummary>& rows);
// One line per run, the table's columns as plain numbers (seconds, tokens).
std::string ClusterToCsv(const std::vector<ClusterSummary>& rows);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_REPORT_H_
