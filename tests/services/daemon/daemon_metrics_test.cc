#include "services/daemon/daemon_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/kv_cache.h"
#include "cachecore/model_config.h"

namespace asymcache {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kPromtool[] = "/usr/bin/promtool";

std::string Exposition(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// The lines of `text` starting with `prefix`.
std::vector<std::string> LinesWithPrefix(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& line : Lines(text)) {
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
  }
  return out;
}

struct PromtoolResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr: lint problems and errors
};

// Writes `text` to `promtool check metrics` on stdin.
PromtoolResult PromtoolCheckMetrics(const std::string& text) {
  char output_path[] = "/tmp/asymcache_promtool_XXXXXX";
  int fd = mkstemp(output_path);
  EXPECT_GE(fd, 0);
  close(fd);
  const std::string command =
      absl::StrCat(kPromtool, " check metrics > ", output_path, " 2>&1");
  PromtoolResult result;
  FILE* pipe = popen(command.c_str(), "w");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return result;
  fwrite(text.data(), 1, text.size(), pipe);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(output_path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  result.output = buffer.str();
  unlink(output_path);
  return result;
}

DaemonMetricsOptions TestOptions() {
  DaemonMetricsOptions options;
  options.policy = "asym";
  options.backend = "host";
  options.model = "llama-3-8b";
  options.rpc_methods = {"BeginStep"};
  return options;
}

CalibrationParams TestCalibration() {
  CalibrationParams params;
  params.device = "NVIDIA H100 80GB HBM3";
  params.source = "asymcache-calibrate 2024-05-01";
  params.linear_step_s = {{1, 0.001}};
  params.attn_flops_per_s = 4e14;
  params.attn_kv_bytes_per_s = 2.5e12;
  params.segment_overhead_s = 3e-6;
  params.step_overhead_s = 0.0005;
  params.num_sms = 132;
  return params;
}

// Records one of everything with known values.
void RecordKnownValues(DaemonMetrics& metrics) {
  metrics.ObservePlan(absl::Microseconds(150), {.contiguous_hit_tokens = 32,
                                                 .hole_hit_tokens = 48,
                                                 .rebuild_tokens = 16,
                                                 .new_tokens = 10});
  metrics.ObservePlan(absl::Milliseconds(3), {.contiguous_hit_tokens = 64, .new_tokens = 1});
  metrics.ObserveRpc("BeginStep", absl::StatusCode::kOk, absl::Microseconds(30));
  metrics.ObserveRpc("BeginStep", absl::StatusCode::kOk, absl::Microseconds(700));
  metrics.ObserveRpc("BeginStep", absl::StatusCode::kResourceExhausted, absl::Seconds(2));
  BlockPool::Stats stats;
  stats.capacity = 100;
  stats.free = 40;
  stats.writing = 5;
  stats.sealed_evictable = 30;
  stats.pinned = 20;
  stats.in_transfer = 5;
  metrics.SetBlockStates(stats);
  metrics.SetLeases(3);
  metrics.SetWritingPages(40);
  metrics.AddDeferredPlans(2);
  metrics.AddDeferredPlans(0);
  metrics.AddDeferredPlans(1);
  metrics.SetAgentPins(12, 2);
  metrics.AddEvictions(EvictionReason::kCapacity, 5);
  metrics.AddEvictions(EvictionReason::kInvalidate, 1);
  metrics.AddTransfer(TransferDirection::kImport, 4096, true);
  metrics.AddTransfer(TransferDirection::kImport, 1024, true);
  metrics.AddTransfer(TransferDirection::kExport, 999, false);
  metrics.SetCalibration(TestCalibration());
  metrics.AddKvEvents(KvEvent::Kind::kStored, 7);
  metrics.AddKvEvents(KvEvent::Kind::kRemoved, 2);
}

Segment Seg(int64_t begin, int64_t end, Segment::Kind kind) { return {begin, end, kind}; }

TEST(CountPlanTokensTest, SplitsHitsAtTheFirstMissingPage) {
  using K = Segment::Kind;
  StepPlan plan;
  plan.segments = {Seg(0, 32, K::kResident), Seg(32, 48, K::kHole), Seg(48, 80, K::kResident),
                   Seg(80, 96, K::kHole), Seg(96, 112, K::kResident), Seg(112, 122, K::kTail)};
  EXPECT_EQ(CountPlanTokens(plan), (PlanTokenCounts{.contiguous_hit_tokens = 32,
                                                    .hole_hit_tokens = 48,
                                                    .rebuild_tokens = 32,
                                                    .new_tokens = 10}));

  plan.segments = {Seg(0, 64, K::kResident)};  // a full hit
  EXPECT_EQ(CountPlanTokens(plan), (PlanTokenCounts{.contiguous_hit_tokens = 64}));

  plan.segments = {Seg(0, 64, K::kResident), Seg(64, 70, K::kTail)};  // prefix hit + new tokens
  EXPECT_EQ(CountPlanTokens(plan), (PlanTokenCounts{.contiguous_hit_tokens = 64, .new_tokens = 6}));

  plan.segments = {Seg(0, 16, K::kHole), Seg(16, 48, K::kResident)};  // first page missing
  EXPECT_EQ(CountPlanTokens(plan),
            (PlanTokenCounts{.hole_hit_tokens = 32, .rebuild_tokens = 16}));

  plan.segments = {Seg(0, 20, K::kTail)};  // a miss
  EXPECT_EQ(CountPlanTokens(plan), (PlanTokenCounts{.new_tokens = 20}));

  plan.segments.clear();
  EXPECT_EQ(CountPlanTokens(plan), PlanTokenCounts{});
}

TEST(CountPlanTokensTest, MatchesARealPlanWithAHole) {
  FakeClock clock;
  KvCacheOptions options;
  options.model = *ModelConfig::Named("tiny");
  options.capacity_blocks = 32;
  auto cache = KvCache::Create(options, *MakeEvictionPolicy("lru", nullptr), &clock);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int64_t b = (*cache)->model().block_tokens;
  std::vector<TokenId> tokens(static_cast<size_t>(4 * b));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(i + 1);

  auto first = (*cache)->BeginStep("", 1, tokens);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*cache)->CommitStep(first->lease_id).ok());
  ASSERT_TRUE((*cache)->ReleaseStep(first->lease_id).ok());
  ASSERT_TRUE((*cache)->InvalidateBlock(first->plan.page_ids[1]).ok());  // a hole at page 1

  for (int i = 0; i < 5; ++i) tokens.push_back(static_cast<TokenId>(1000 + i));
  auto second = (*cache)->BeginStep("", 2, tokens);
  ASSERT_TRUE(second.ok()) << second.status();
  const PlanTokenCounts counts = CountPlanTokens(second->plan);
  EXPECT_EQ(counts, (PlanTokenCounts{.contiguous_hit_tokens = b,
                                     .hole_hit_tokens = 2 * b,
                                     .rebuild_tokens = b,
                                     .new_tokens = 5}));
  EXPECT_EQ(counts.contiguous_hit_tokens + counts.hole_hit_tokens, second->plan.hit_tokens);
  EXPECT_EQ(counts.rebuild_tokens, second->plan.rebuild_tokens);
  EXPECT_EQ(counts.new_tokens, second->plan.new_tokens);
}

TEST(DaemonMetricsTest, ExpositionHasExactValuesAndLabels) {
  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  RecordKnownValues(**metrics);
  const std::string text = Exposition(registry);
  const std::vector<std::string> lines = Lines(text);

  const std::vector<std::string> expected = {
      R"(asymcache_daemon_info{backend="host",model="llama-3-8b",policy="asym"} 1)",
      R"(asymcache_blocks{state="free"} 40)",
      R"(asymcache_blocks{state="writing"} 5)",
      R"(asymcache_blocks{state="sealed"} 30)",
      R"(asymcache_blocks{state="pinned"} 20)",
      R"(asymcache_blocks{state="in_transfer"} 5)",
      R"(asymcache_capacity_blocks 100)",
      R"(asymcache_hit_tokens_total{kind="contiguous_prefix"} 96)",
      R"(asymcache_hit_tokens_total{kind="hole_aware"} 48)",
      R"(asymcache_rebuilt_tokens_total 16)",
      R"(asymcache_new_tokens_total 11)",
      // Plans at 150 µs and 3 ms.
      R"(asymcache_plan_duration_seconds_count 2)",
      R"(asymcache_plan_duration_seconds_bucket{le="0.0001"} 0)",
      R"(asymcache_plan_duration_seconds_bucket{le="0.0002"} 1)",
      R"(asymcache_plan_duration_seconds_bucket{le="0.002"} 1)",
      R"(asymcache_plan_duration_seconds_bucket{le="0.005"} 2)",
      R"(asymcache_plan_duration_seconds_bucket{le="0.1"} 2)",
      R"(asymcache_plan_duration_seconds_bucket{le="+Inf"} 2)",
      // RPCs: BeginStep OK at 30 µs and 700 µs; RESOURCE_EXHAUSTED at 2 s.
      R"(asymcache_rpc_duration_seconds_count{code="OK",method="BeginStep"} 2)",
      R"(asymcache_rpc_duration_seconds_bucket{code="OK",method="BeginStep",le="2e-05"} 0)",
      R"(asymcache_rpc_duration_seconds_bucket{code="OK",method="BeginStep",le="5e-05"} 1)",
      R"(asymcache_rpc_duration_seconds_bucket{code="OK",method="BeginStep",le="0.0005"} 1)",
      R"(asymcache_rpc_duration_seconds_bucket{code="OK",method="BeginStep",le="0.001"} 2)",
      R"(asymcache_rpc_duration_seconds_bucket{code="OK",method="BeginStep",le="1"} 2)",
      R"(asymcache_rpc_duration_seconds_bucket{code="OK",method="BeginStep",le="+Inf"} 2)",
      R"(asymcache_rpc_duration_seconds_count{code="RESOURCE_EXHAUSTED",method="BeginStep"} 1)",
      R"(asymcache_rpc_duration_seconds_sum{code="RESOURCE_EXHAUSTED",method="BeginStep"} 2)",
      R"(asymcache_rpc_duration_seconds_bucket{code="RESOURCE_EXHAUSTED",method="BeginStep",le="1"} 0)",
      R"(asymcache_rpc_duration_seconds_bucket{code="RESOURCE_EXHAUSTED",method="BeginStep",le="+Inf"} 1)",
      R"(asymcache_evictions_total{policy="asym",reason="capacity"} 5)",
      R"(asymcache_evictions_total{policy="asym",reason="invalidate"} 1)",
      R"(asymcache_active_leases 3)",
      R"(asymcache_writing_pages 40)",
      R"(asymcache_deferred_plans_total 3)",
      R"(asymcache_agent_pinned_blocks 12)",
      R"(asymcache_agent_pinned_jobs 2)",
      R"(asymcache_transfers_total{direction="import"} 2)",
      R"(asymcache_transfers_total{direction="export"} 0)",
      R"(asymcache_transfer_bytes_total{direction="import"} 5120)",
      R"(asymcache_transfer_bytes_total{direction="export"} 0)",
      R"(asymcache_transfer_errors_total{direction="import"} 0)",
      R"(asymcache_transfer_errors_total{direction="export"} 1)",
      R"(asymcache_calibration_info{device="NVIDIA H100 80GB HBM3",source="asymcache-calibrate 2024-05-01"} 1)",
      R"(asymcache_calibration_attention_flops_per_second 400000000000000)",
      R"(asymcache_calibration_kv_bytes_per_second 2500000000000)",
      R"(asymcache_calibration_segment_overhead_seconds 3e-06)",
      R"(asymcache_calibration_step_overhead_seconds 0.0005)",
      R"(asymcache_calibration_num_sms 132)",
      R"(asymcache_kv_events_total{kind="stored"} 7)",
      R"(asymcache_kv_events_total{kind="removed"} 2)",
  };
  for (const std::string& line : expected) EXPECT_THAT(lines, Contains(line)) << text;

  // Every family has help text and a type; every rpc bucket bound is there.
  for (const char* family :
       {"asymcache_daemon_info", "asymcache_blocks", "asymcache_hit_tokens_total",
        "asymcache_rpc_duration_seconds", "asymcache_calibration_info", "asymcache_kv_events_total"}) {
    EXPECT_EQ(LinesWithPrefix(text, absl::StrCat("# HELP ", family, " ")).size(), 1u) << family;
  }
  EXPECT_THAT(lines, Contains("# TYPE asymcache_rpc_duration_seconds histogram"));
  EXPECT_THAT(lines, Contains("# TYPE asymcache_hit_tokens_total counter"));
  EXPECT_THAT(lines, Contains("# TYPE asymcache_blocks gauge"));
  EXPECT_EQ(LinesWithPrefix(text, R"(asymcache_rpc_duration_seconds_bucket{code="OK",)").size(),
            DaemonMetrics::RpcLatencyBuckets().size() + 1);
  EXPECT_EQ(DaemonMetrics::RpcLatencyBuckets().front(), 2e-5);
  EXPECT_EQ(DaemonMetrics::RpcLatencyBuckets().back(), 1.0);
}

TEST(DaemonMetricsTest, FreshRegistryShowsEveryFixedSeriesAtZero) {
  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const std::vector<std::string> lines = Lines(Exposition(registry));
  EXPECT_THAT(lines, Contains(R"(asymcache_blocks{state="in_transfer"} 0)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_hit_tokens_total{kind="hole_aware"} 0)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_evictions_total{policy="asym",reason="invalidate"} 0)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_transfer_errors_total{direction="import"} 0)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_kv_events_total{kind="removed"} 0)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_deferred_plans_total 0)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_writing_pages 0)"));
  // rpc_methods are precreated with code OK only.
  EXPECT_THAT(lines, Contains(R"(asymcache_rpc_duration_seconds_count{code="OK",method="BeginStep"} 0)"));
  EXPECT_TRUE(LinesWithPrefix(Exposition(registry), "asymcache_calibration_info{").empty());
}

TEST(DaemonMetricsTest, ExpositionPassesPromtool) {
  if (access(kPromtool, X_OK) != 0) GTEST_SKIP() << kPromtool << " not installed";
  // The checker itself must catch a problem: a counter without _total.
  PromtoolResult bad = PromtoolCheckMetrics(
      "# HELP asymcache_bad_count A counter named badly.\n"
      "# TYPE asymcache_bad_count counter\nasymcache_bad_count 1\n");
  EXPECT_THAT(bad.output, HasSubstr("_total")) << "promtool exit " << bad.exit_code;

  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  PromtoolResult fresh = PromtoolCheckMetrics(Exposition(registry));
  EXPECT_EQ(fresh.exit_code, 0) << fresh.output;
  EXPECT_THAT(fresh.output, IsEmpty());

  RecordKnownValues(**metrics);
  (*metrics)->ObserveRpc("Lookup", absl::StatusCode::kNotFound, absl::Microseconds(80));
  CalibrationParams quoted = TestCalibration();
  quoted.source = "a \"quoted\" path\\with\nnewline";  // escaped by the serializer
  (*metrics)->SetCalibration(quoted);
  const std::string text = Exposition(registry);
  PromtoolResult recorded = PromtoolCheckMetrics(text);
  EXPECT_EQ(recorded.exit_code, 0) << recorded.output << text;
  EXPECT_THAT(recorded.output, IsEmpty()) << text;
}

TEST(DaemonMetricsTest, SetCalibrationReplacesTheInfoSeries) {
  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  (*metrics)->SetCalibration(TestCalibration());
  CalibrationParams cpu = TestCalibration();
  cpu.device = "cpu";
  cpu.source = "built-in default";
  cpu.attn_flops_per_s = 5e10;
  (*metrics)->SetCalibration(cpu);
  const std::string text = Exposition(registry);
  EXPECT_EQ(LinesWithPrefix(text, "asymcache_calibration_info{"),
            std::vector<std::string>{
                R"(asymcache_calibration_info{device="cpu",source="built-in default"} 1)"});
  EXPECT_THAT(Lines(text), Contains("asymcache_calibration_attention_flops_per_second 50000000000"));
}

TEST(DaemonMetricsTest, NegativeCountsChangeNothing) {
  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  const std::string before = Exposition(registry);
  (*metrics)->ObservePlan(absl::Microseconds(10), {.contiguous_hit_tokens = 5, .new_tokens = -1});
  (*metrics)->AddEvictions(EvictionReason::kCapacity, -3);
  (*metrics)->AddTransfer(TransferDirection::kImport, -1, true);
  (*metrics)->AddKvEvents(KvEvent::Kind::kStored, -2);
  EXPECT_EQ(Exposition(registry), before);
}

TEST(DaemonMetricsTest, RpcCodesAndLatencyEdgeCases) {
  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  (*metrics)->ObserveRpc("Pin", static_cast<absl::StatusCode>(99), absl::Microseconds(10));
  (*metrics)->ObserveRpc("Pin", absl::StatusCode::kDeadlineExceeded, -absl::Seconds(1));
  const std::vector<std::string> lines = Lines(Exposition(registry));
  EXPECT_THAT(lines, Contains(R"(asymcache_rpc_duration_seconds_count{code="UNKNOWN",method="Pin"} 1)"));
  EXPECT_THAT(lines,
              Contains(R"(asymcache_rpc_duration_seconds_bucket{code="DEADLINE_EXCEEDED",method="Pin",le="2e-05"} 1)"));
  EXPECT_THAT(lines, Contains(R"(asymcache_rpc_duration_seconds_sum{code="DEADLINE_EXCEEDED",method="Pin"} 0)"));
}

TEST(DaemonMetricsTest, ConcurrentRecordingCountsEverything) {
  prometheus::Registry registry;
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string method = t % 2 == 0 ? "BeginStep" : "CommitStep";
      for (int i = 0; i < kPerThread; ++i) {
        (*metrics)->ObserveRpc(method, i % 2 == 0 ? absl::StatusCode::kOk : absl::StatusCode::kNotFound,
                               absl::Microseconds(100));
        (*metrics)->ObservePlan(absl::Microseconds(50), {.contiguous_hit_tokens = 1});
        if (i % 500 == 0) Exposition(registry);  // scrapes race with recording
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const std::vector<std::string> lines = Lines(Exposition(registry));
  const int per_series = kThreads / 2 * kPerThread / 2;
  for (const char* method : {"BeginStep", "CommitStep"}) {
    for (const char* code : {"OK", "NOT_FOUND"}) {
      EXPECT_THAT(lines, Contains(absl::StrCat("asymcache_rpc_duration_seconds_count{code=\"", code,
                                               "\",method=\"", method, "\"} ", per_series)));
    }
  }
  EXPECT_THAT(lines, Contains(absl::StrCat("asymcache_hit_tokens_total{kind=\"contiguous_prefix\"} ",
                                           kThreads * kPerThread)));
}

TEST(DaemonMetricsTest, BadOptionsAreInvalidArgument) {
  prometheus::Registry registry;
  struct Case {
    void (*mutate)(DaemonMetricsOptions&);
    std::string message;
  };
  const Case cases[] = {
      {[](DaemonMetricsOptions& o) { o.policy.clear(); }, "DaemonMetricsOptions.policy is empty"},
      {[](DaemonMetricsOptions& o) { o.backend.clear(); }, "DaemonMetricsOptions.backend is empty"},
      {[](DaemonMetricsOptions& o) { o.model.clear(); }, "DaemonMetricsOptions.model is empty"},
      {[](DaemonMetricsOptions& o) { o.rpc_methods = {"A", ""}; }, "rpc_methods has an empty entry"},
      {[](DaemonMetricsOptions& o) { o.rpc_methods = {"A", "B", "A"}; }, "lists 'A' twice"},
  };
  for (const Case& c : cases) {
    DaemonMetricsOptions options = TestOptions();
    c.mutate(options);
    auto metrics = DaemonMetrics::Create(registry, options);
    EXPECT_EQ(metrics.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(metrics.status().message(), HasSubstr(c.message));
  }
  EXPECT_THAT(Exposition(registry), IsEmpty());
}

TEST(DaemonMetricsTest, ConflictingRegistrationIsAlreadyExistsAndLeavesRegistryAsItWas) {
  prometheus::Registry registry;
  // Another component took a name of ours, as a counter.
  prometheus::BuildCounter()
      .Name("asymcache_active_leases")
      .Help("Someone else's counter.")
      .Register(registry)
      .Add({})
      .Increment(7);
  const std::string before = Exposition(registry);
  auto metrics = DaemonMetrics::Create(registry, TestOptions());
  ASSERT_EQ(metrics.status().code(), absl::StatusCode::kAlreadyExists) << metrics.status();
  EXPECT_THAT(metrics.status().message(), HasSubstr("cannot register the daemon metrics"));
  EXPECT_EQ(Exposition(registry), before);
  EXPECT_THAT(before, Not(HasSubstr("asymcache_blocks")));
}

}  // namespace
}  // namespace asymcache
