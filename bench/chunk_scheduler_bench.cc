// Host cost of one adaptive ChunkScheduler::Schedule call (the worker runs
// one per engine step, on the step thread), with the cost model's per-pair
// attention (num_sms = 0) and with the prefill launch model (num_sms = 132,
// docs/calibration.md "Prefill waves"), which list-schedules the prefill
// tiles for every budget the search tries.
//
// The step: two decodes at 40k and 50k tokens, one document of 40k tokens
// pending from position `begin` (the range argument), the request-mean TPOT
// target at its default with both decodes fresh, so the binary search over
// budgets runs (about 9 predictions). begin = 0: shallow chunks; 30000: the
// deep chunks of long-doc-qa.
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/time/time.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"

namespace asymcache {
namespace {

void BM_AdaptiveSchedule(benchmark::State& state, int32_t num_sms) {
  CalibrationParams params = CostModel::DefaultH100Llama3_8B();
  params.num_sms = num_sms;
  const CostModel cost(ModelConfig{}, params);
  ChunkSchedulerOptions options;
  options.mode = ChunkSchedulerOptions::Mode::kAdaptive;
  const ChunkScheduler scheduler(&cost, options);
  std::vector<DecodeWork> decodes(2);
  decodes[0].context_tokens = 40'000;
  decodes[1].context_tokens = 50'000;
  const int64_t begin = state.range(0);
  std::vector<PrefillWork> pending(1);
  pending[0].sequence = 7;
  pending[0].runs = {{begin, 40'000}};
  pending[0].context_tokens = 40'000;
  int64_t budget = 0;
  for (auto _ : state) {
    const StepSchedule schedule = scheduler.Schedule(decodes, pending, /*overloaded=*/false);
    budget = schedule.budget_tokens;
    benchmark::DoNotOptimize(schedule);
  }
  state.counters["budget_tokens"] = static_cast<double>(budget);
}

BENCHMARK_CAPTURE(BM_AdaptiveSchedule, per_pair, 0)
    ->Arg(0)->Arg(30'000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_AdaptiveSchedule, launch_model, 132)
    ->Arg(0)->Arg(30'000)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
