#include "cachecore/tool_duration_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace asymcache {

ToolDurationStats::ToolDurationStats(int max_samples_per_tool, int max_tools)
    : max_samples_per_tool_(max_samples_per_tool), max_tools_(max_tools) {
  if (max_samples_per_tool_ < 1 || max_tools_ < 1) {
    std::fprintf(stderr, "ToolDurationStats: max_samples_per_tool (%d) and max_tools (%d) must be >= 1\n",
                 max_samples_per_tool_, max_tools_);
    std::abort();
  }
}

bool ToolDurationStats::Record(absl::string_view tool, absl::Duration duration) {
  auto it = tools_.find(tool);
  if (it == tools_.end()) {
    if (tools_.size() >= static_cast<size_t>(max_tools_)) return false;
    it = tools_.emplace(std::string(tool), Samples{}).first;
  }
  Samples& samples = it->second;
  duration = std::max(duration, absl::ZeroDuration());
  if (samples.ring.size() < static_cast<size_t>(max_samples_per_tool_)) {
    samples.ring.push_back(duration);
  } else {
    samples.ring[samples.next] = duration;
    samples.next = (samples.next + 1) % samples.ring.size();
  }
  return true;
}

std::optional<absl::Duration> ToolDurationStats::Quantile(absl::string_view tool, double q) const {
  auto it = tools_.find(tool);
  if (it == tools_.end() || it->second.ring.empty()) return std::nullopt;
  std::vector<absl::Duration> sorted = it->second.ring;
  const size_t n = sorted.size();
  q = std::clamp(q, 0.0, 1.0);
  // Nearest rank: the ceil(q * n)-th smallest (1-based), at least the first.
  // The epsilon keeps float error (0.7 * 10 = 7.000000000000001) from moving
  // an exact rank up by one.
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(n) - 1e-9));
  rank = std::clamp<size_t>(rank, 1, n);
  std::nth_element(sorted.begin(), sorted.begin() + (rank - 1), sorted.end());
  return sorted[rank - 1];
}

int ToolDurationStats::count(absl::string_view tool) const {
  auto it = tools_.find(tool);
  return it == tools_.end() ? 0 : static_cast<int>(it->second.ring.size());
}

}  // namespace asymcache
