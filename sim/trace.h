// Trace files: workloads as JSON Lines (schema "asymcache.trace.v1",
// documented in workloads/README.md and docs/simulator.md).
//
// One line = one step (engine request) of one session:
//   {"session":"agent-000001","step":0,"arrival_s":0.25,"salt":"tenant-1",
//    "input":[{"shared":"agent-system-1","len":2100},{"len":830}],
//    "output_len":120,"tool":"bash","tool_s":1.7,"last_step":false}
// Parts: {"len":N} (unique tokens), {"shared":ID,"len":N} (same tokens wherever
// ID appears), {"tokens":[ids...]} (explicit token ids). Blank lines are
// skipped. Unknown keys are errors (they are usually typos).
//
// Contract: ParseTrace reads EVERYTHING before returning: any malformed line
// (bad JSON, wrong type, missing/unknown field, out-of-range value, step gaps,
// a session whose final line lacks last_step, ...) gives INVALID_ARGUMENT
// "origin:line: what is wrong" and no workload at all. WriteTrace is the
// inverse: ParseTrace(WriteTrace(w)) == w (source_line aside). Pure functions;
// thread-safe.
#ifndef ASYMCACHE_SIM_TRACE_H_
#define ASYMCACHE_SIM_TRACE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sim/workload.h"

namespace asymcache {

// Parses a whole trace; `origin` (a file name) prefixes every error message.
absl::StatusOr<Workload> ParseTrace(absl::string_view text, absl::string_view origin);
// Reads and parses a file. NOT_FOUND when it cannot be opened.
absl::StatusOr<Workload> ReadTraceFile(const std::string& path);

// Serializes a workload, one line per step, sessions in start order.
std::string WriteTrace(const Workload& workload);
// Writes WriteTrace(workload) to `path`. UNAVAILABLE when the file cannot be written.
absl::Status WriteTraceFile(const Workload& workload, const std::string& path);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_TRACE_H_
