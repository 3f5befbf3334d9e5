// RunSummary: what one replay (one system at one load) comes to — the
// numbers asymcache-bench prints and writes — and the comparisons across
// runs: token-for-token agreement and the simulator's prediction error.
//
// Definitions (all over FINISHED requests unless said):
//   ttft = first token received - request sent (client side); tpot = (last
//   token - first token) / (tokens - 1), requests of >= 2 tokens; hit rate =
//   hit prompt tokens / prompt tokens (the worker's RequestStats);
//   rebuilt = prompt tokens recomputed in holes; job latency = an agent job's
//   step-0 planned arrival to its last token; throughput = generated tokens /
//   replay duration.
//
// Contract: pure functions of their inputs; thread-compatible.
#ifndef ASYMCACHE_SERVICES_LOADGEN_RUN_SUMMARY_H_
#define ASYMCACHE_SERVICES_LOADGEN_RUN_SUMMARY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "services/loadgen/replay.h"
#include "sim/report.h"

namespace asymcache::loadgen {

// Distributions are the simulator's (sim/report.h: count, mean, nearest-rank
// p50/p90/p99, max), so measured and predicted runs summarize alike.
using ::asymcache::Distribution;

struct RunSummary {
  int64_t requests = 0;   // steps of the workload
  int64_t finished = 0;
  int64_t failed = 0;     // sent and failed (the first error kept below)
  int64_t not_sent = 0;   // a session's later steps after one of its steps failed
  std::string first_error;
  Distribution ttft_s, tpot_s, job_latency_s;
  int64_t prompt_tokens = 0, hit_tokens = 0, rebuilt_tokens = 0, computed_prompt_tokens = 0;
  int64_t generated_tokens = 0, preemptions = 0;
  double hit_rate = 0;
  double duration_s = 0, throughput_tokens_per_s = 0, max_send_lateness_s = 0;
};

RunSummary SummarizeRun(const ReplayResult& result);

// Requests whose generated tokens differ between two replays of the same
// workload (both finished); requests finished in only one are not counted.
int64_t CountTokenMismatches(const ReplayResult& a, const ReplayResult& b);

}  // namespace asymcache::loadgen

#endif  // ASYMCACHE_SERVICES_LOADGEN_RUN_SUMMARY_H_
