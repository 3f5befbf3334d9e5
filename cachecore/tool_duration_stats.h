// ToolDurationStats: how long each agent tool call took, per tool name, in
// bounded memory (DESIGN.md §3.5). The agent pin table derives pin TTLs from
// these quantiles.
//
// Contract: keeps the most recent `max_samples_per_tool` durations of each tool
// (a ring buffer: old samples age out, so the statistics follow tools whose
// speed drifts) for at most `max_tools` distinct tool names (later names are
// not tracked and Record returns false; their callers fall back to a default).
// Quantile uses the nearest-rank definition: the smallest sample x such that at
// least a fraction q of the held samples are <= x.
//
// Thread-safety: NOT thread-safe (a plain value type); the owner (AgentPinTable)
// guards it with its own mutex.
#ifndef ASYMCACHE_CACHECORE_TOOL_DURATION_STATS_H_
#define ASYMCACHE_CACHECORE_TOOL_DURATION_STATS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace asymcache {

class ToolDurationStats {
 public:
  // Preconditions: max_samples_per_tool >= 1, max_tools >= 1 (checked; abort).
  ToolDurationStats(int max_samples_per_tool, int max_tools);

  // Adds one observed duration of `tool` (negative durations count as zero),
  // replacing the oldest held sample when the tool's buffer is full. Returns
  // false (and records nothing) when `tool` is new and max_tools names are
  // already tracked.
  bool Record(absl::string_view tool, absl::Duration duration);

  // Nearest-rank q-quantile of the held samples of `tool`; q is clamped to
  // [0, 1] (q = 0 gives the minimum). std::nullopt when the tool has no sample.
  std::optional<absl::Duration> Quantile(absl::string_view tool, double q) const;

  // Samples currently held for `tool` (<= max_samples_per_tool).
  int count(absl::string_view tool) const;
  // Distinct tools tracked.
  size_t tool_count() const { return tools_.size(); }

 private:
  struct Samples {
    std::vector<absl::Duration> ring;  // size <= max_samples_per_tool_
    size_t next = 0;                   // slot overwritten by the next Record once full
  };

  int max_samples_per_tool_;
  int max_tools_;
  absl::flat_hash_map<std::string, Samples> tools_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_TOOL_DURATION_STATS_H_
