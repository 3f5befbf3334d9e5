#include "services/loadgen/run_summary.h"

#include <algorithm>

namespace asymcache::loadgen {

RunSummary SummarizeRun(const ReplayResult& result) {
  RunSummary s;
  std::vector<double> ttft, tpot, jobs;
  for (const RequestRecord& r : result.requests) {
    ++s.requests;
    if (r.sent_s < 0) {
      ++s.not_sent;
      continue;
    }
    if (!r.finished()) {
      ++s.failed;
      if (s.first_error.empty()) s.first_error = r.status.ToString();
      continue;
    }
    ++s.finished;
    ttft.push_back(r.ttft_s());
    if (r.output_tokens > 1) tpot.push_back(r.tpot_s());
    s.prompt_tokens += r.prompt_tokens;
    s.hit_tokens += r.hit_tokens;
    s.rebuilt_tokens += r.rebuilt_tokens;
    s.computed_prompt_tokens += r.computed_prompt_tokens;
    s.generated_tokens += r.output_tokens;
    s.preemptions += r.preemptions;
  }
  for (const JobRecord& j : result.jobs) {
    if (j.finish_s >= 0) jobs.push_back(j.finish_s - j.start_s);
  }
  s.ttft_s = Summarize(std::move(ttft));
  s.tpot_s = Summarize(std::move(tpot));
  s.job_latency_s = Summarize(std::move(jobs));
  s.hit_rate = s.prompt_tokens > 0
                   ? static_cast<double>(s.hit_tokens) / static_cast<double>(s.prompt_tokens)
                   : 0;
  s.duration_s = result.duration_s;
  s.throughput_tokens_per_s =
      result.duration_s > 0 ? static_cast<double>(s.generated_tokens) / result.duration_s : 0;
  s.max_send_lateness_s = result.max_send_lateness_s;
  return s;
}

int64_t CountTokenMismatches(const ReplayResult& a, const ReplayResult& b) {
  int64_t mismatches = 0;
  const size_t n = std::min(a.requests.size(), b.requests.size());
  for (size_t i = 0; i < n; ++i) {
    if (a.requests[i].finished() && b.requests[i].finished() &&
        a.requests[i].tokens != b.requests[i].tokens) {
      ++mismatches;
    }
  }
  return mismatches;
}

}  // namespace asymcache::loadgen
