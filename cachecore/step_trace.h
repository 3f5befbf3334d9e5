// Step traces (schema asymcache.step_trace.v1): one JSON object per line per
// engine step, so that a run's steps — the worker's measured ones
// (services/worker/step_trace.h, --step-trace) or the simulator's modeled ones
// (asymcache-sim --step-trace-dir) — can be compared with each other and with
// the cost model offline (asymcache-fit-steps --trace,
// bench/step_trace_summary.py).
//
// Line schema (times in milliseconds, 4 decimals):
//   {"t_ms": step start since the trace's origin,
//    "decodes": [context tokens of each decode, its own token included],
//    "chunks": [[sequence, begin, end], ...]  prefill/rebuild query runs,
//    "predicted_ms": the chunk scheduler's prediction (cost model),
//    "forward_ms": the forward pass, "step_ms": the whole step,
//    "waiting": requests waiting for admission after the step}
// The first line is {"schema": "asymcache.step_trace.v1", "started": RFC 3339
// time, "model": the cost model's shape (ModelConfig's fields)}. The
// simulator's steps are modeled: forward_ms = step_ms = predicted_ms.
//
// Contract: pure formatting, no newline at the end of a line; thread-safe.
#ifndef ASYMCACHE_CACHECORE_STEP_TRACE_H_
#define ASYMCACHE_CACHECORE_STEP_TRACE_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/model_config.h"

namespace asymcache {

inline constexpr char kStepTraceSchema[] = "asymcache.step_trace.v1";

// One step as the trace records it.
struct StepTraceEntry {
  double start_s = 0;                 // since the trace's origin
  absl::Span<const DecodeWork> decodes;
  absl::Span<const Chunk> chunks;
  double predicted_s = 0;
  double forward_s = 0;
  double step_s = 0;
  int64_t waiting = 0;
};

// The header line: schema, `started`, the model's shape.
std::string StepTraceHeader(const ModelConfig& model, absl::Time started);
// One step's line.
std::string StepTraceLine(const StepTraceEntry& entry);

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_STEP_TRACE_H_
