// StepTraceWriter: the worker's --step-trace file, one JSON object per line
// per engine step (EngineOptions::on_step), so that a run's real steps can be
// compared with what the cost model predicts for them offline
// (asymcache-fit-steps --trace; docs/worker.md "Step trace").
//
// Line schema: cachecore/step_trace.h (asymcache.step_trace.v1; the
// simulator writes the same lines for its modeled steps).
//
// Size: about 60 bytes per step plus 6 per decode; a busy worker (100 steps/s
// of 32 decodes) writes ~1.5 MB a minute. A diagnostic: off by default.
//
// Contract: Open truncates the file. Write is called on the step thread and
// buffers; Flush/destruction write the buffer out. Thread-safe.
#ifndef ASYMCACHE_SERVICES_WORKER_STEP_TRACE_H_
#define ASYMCACHE_SERVICES_WORKER_STEP_TRACE_H_

#include <fstream>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachecore/model_config.h"
#include "cachecore/step_trace.h"
#include "services/worker/engine.h"

namespace asymcache::worker {

class StepTraceWriter {
 public:
  // INVALID_ARGUMENT naming --step-trace when the file cannot be created.
  // `model`: the shape the engine's cost model predicts with (for the header).
  static absl::StatusOr<std::unique_ptr<StepTraceWriter>> Open(const std::string& path,
                                                               const ModelConfig& model);
  ~StepTraceWriter();

  void Write(const StepRecord& record);
  // Writes the buffered lines out; INTERNAL when the file reports an error.
  absl::Status Flush();

  // One record as its JSON line (no newline).
  static std::string Line(const StepRecord& record, absl::Time origin);

 private:
  StepTraceWriter(std::string path, absl::Time origin);

  const std::string path_;
  const absl::Time origin_;
  absl::Mutex mu_;
  std::ofstream file_ ABSL_GUARDED_BY(mu_);
  std::string buffer_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_STEP_TRACE_H_
