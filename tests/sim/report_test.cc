#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sim/report.h"
#include "sim/system.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

// Cells of the first table row after the line containing `section` whose first
// cell is `first` (Align separates cells by at least two spaces); empty if none.
std::vector<std::string> RowCells(const std::string& text, const std::string& section,
                                  const std::string& first) {
  const size_t start = text.find(section);
  if (start == std::string::npos) return {};
  for (absl::string_view line : absl::StrSplit(absl::string_view(text).substr(start), '\n')) {
    std::vector<std::string> cells;
    for (absl::string_view cell : absl::StrSplit(line, "  ", absl::SkipWhitespace())) {
      cells.emplace_back(absl::StripAsciiWhitespace(cell));
    }
    if (!cells.empty() && cells[0] == first) return cells;
  }
  return {};
}

TEST(Systems, ParseNamesBudgetsAndErrors) {
  absl::StatusOr<std::vector<SystemSpec>> all = ParseSystems("all", 1024);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 8u);
  EXPECT_EQ((*all)[0].name, "vllm");
  EXPECT_EQ((*all)[0].policy, "lru-tail");
  EXPECT_FALSE((*all)[0].adaptive_chunking);
  EXPECT_EQ((*all)[0].fixed_budget_tokens, 1024);
  EXPECT_EQ((*all)[2].name, "asymcache");
  EXPECT_EQ((*all)[2].policy, "asym");
  EXPECT_TRUE((*all)[2].adaptive_chunking);
  EXPECT_TRUE((*all)[2].least_remaining_first);
  EXPECT_FALSE((*all)[6].reuse);
  EXPECT_EQ((*all)[7].name, "asymcache-arrival");
  EXPECT_TRUE((*all)[7].adaptive_chunking);
  EXPECT_FALSE((*all)[7].least_remaining_first);
  for (size_t i : {0, 1, 3, 4, 5, 6}) EXPECT_FALSE((*all)[i].least_remaining_first) << i;

  absl::StatusOr<std::vector<SystemSpec>> some = ParseSystems("vllm:512, vllm:8192,pensieve,vllm:512", 2048);
  ASSERT_TRUE(some.ok());
  ASSERT_EQ(some->size(), 3u);
  EXPECT_EQ((*some)[0].fixed_budget_tokens, 512);
  EXPECT_EQ((*some)[1].fixed_budget_tokens, 8192);
  EXPECT_EQ((*some)[2].fixed_budget_tokens, 2048);

  // A prefill-order suffix, after a budget if any; reported as given.
  absl::StatusOr<std::vector<SystemSpec>> ordered = ParseSystems(
      "asym-fixed@least-remaining,pensieve:4096@least-remaining,asymcache@arrival,vllm@arrival",
      2048);
  ASSERT_TRUE(ordered.ok()) << ordered.status();
  ASSERT_EQ(ordered->size(), 4u);
  EXPECT_EQ((*ordered)[0].name, "asym-fixed@least-remaining");
  EXPECT_EQ((*ordered)[0].base, "asym-fixed");
  EXPECT_EQ((*ordered)[0].policy, "asym");
  EXPECT_FALSE((*ordered)[0].adaptive_chunking);
  EXPECT_TRUE((*ordered)[0].least_remaining_first);
  EXPECT_EQ((*ordered)[1].fixed_budget_tokens, 4096);
  EXPECT_TRUE((*ordered)[1].least_remaining_first);
  EXPECT_TRUE((*ordered)[2].adaptive_chunking);
  EXPECT_FALSE((*ordered)[2].least_remaining_first);
  EXPECT_FALSE((*ordered)[3].least_remaining_first);
  for (const char* bad : {"asym-fixed@fifo", "asym-fixed@", "all@arrival", "vllm@arrival:512",
                          "asymcache:512@arrival", "nope@arrival"}) {
    EXPECT_EQ(ParseSystems(bad, 2048).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }

  EXPECT_EQ(ParseSystems("vllm:500", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("asymcache:512", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("sglang", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("all", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("all:512", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("vllm:abc", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSystems("vllm:-16", 2048).status().code(), absl::StatusCode::kInvalidArgument);
  // The budget must be a multiple of the given tile, not of the default 16.
  EXPECT_EQ(ParseSystems("vllm:48", 2048, 32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseSystems("vllm:64", 2048, 32).ok());
}

TEST(Report, NearestRankPercentiles) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  const Distribution d = Summarize(v);
  EXPECT_EQ(d.count, 100);
  EXPECT_DOUBLE_EQ(d.mean, 50.5);
  EXPECT_DOUBLE_EQ(d.p50, 50);
  EXPECT_DOUBLE_EQ(d.p99, 99);
  EXPECT_EQ(Summarize(std::vector<double>{}).count, 0);
}

SystemSummary Row(const std::string& name, double ttft, double tpot) {
  SystemSummary s;
  s.system = name;
  s.requests = s.finished = 10;
  s.ttft_s = Distribution{10, ttft, ttft, ttft};
  s.tpot_s = Distribution{10, tpot, tpot, tpot};
  return s;
}

TEST(Report, TableHasRatiosAgainstVllmAndPensieve) {
  const std::vector<SystemSummary> rows = {Row("vllm:512", 4, 0.08), Row("pensieve", 2, 0.04),
                                           Row("asymcache", 1, 0.02)};
  EXPECT_EQ(FindReference(rows, "vllm"), 0);
  EXPECT_EQ(FindReference(rows, "pensieve"), 1);
  EXPECT_EQ(FindReference(rows, "lru"), -1);
  const std::string table = FormatTable(rows);
  EXPECT_THAT(table, HasSubstr("TTFT vs vllm"));
  EXPECT_THAT(table, HasSubstr("TPOT vs pensieve"));
  EXPECT_THAT(table, HasSubstr("4.00x"));  // asymcache vs vllm
  EXPECT_THAT(table, HasSubstr("2.00x"));  // asymcache vs pensieve
  // The asymcache row ends with TTFT/TPOT vs vllm (4x) then vs pensieve (2x).
  const std::vector<std::string> asym = RowCells(table, "system", "asymcache");
  ASSERT_GE(asym.size(), 4u) << table;
  EXPECT_EQ(std::vector<std::string>(asym.end() - 4, asym.end()),
            (std::vector<std::string>{"4.00x", "4.00x", "2.00x", "2.00x"}))
      << table;
  const std::vector<std::string> pensieve = RowCells(table, "system", "pensieve");
  ASSERT_GE(pensieve.size(), 4u) << table;
  EXPECT_EQ(std::vector<std::string>(pensieve.end() - 4, pensieve.end()),
            (std::vector<std::string>{"2.00x", "2.00x", "1.00x", "1.00x"}))
      << table;
  RunHeader header;
  header.workload = "chat";
  const nlohmann::json j = nlohmann::json::parse(ToJson(header, rows));
  EXPECT_EQ(j["schema"], "asymcache.sim.report.v1");
  EXPECT_EQ(j["systems"].size(), 3u);
  EXPECT_DOUBLE_EQ(j["systems"][2]["ttft_s"]["mean"].get<double>(), 1.0);
}

TEST(Report, RequestsCsvHasOneRowPerRequestAndAStepLinePerRun) {
  RunResult run;
  run.system = "asymcache";
  RequestRecord done;
  done.session = 3;
  done.step = 1;
  done.arrival_s = 1;
  done.admitted_s = 1.5;
  done.first_token_s = 2;
  done.finish_s = 4;
  done.prompt_tokens = 100;
  done.hit_tokens = 60;
  done.rebuild_tokens = 16;
  done.new_tokens = 24;
  done.output_tokens = 5;
  done.prefill_steps = 2;
  done.prefill_step_s = 0.25;
  done.preemptions = 1;
  done.blocked_decode_steps = 3;
  RequestRecord rejected;
  rejected.rejected = true;
  run.requests = {done, rejected};
  run.engine_steps = 10;
  run.busy_s = 3;
  run.mixed_steps = 4;
  run.mixed_busy_s = 1;
  run.prefill_only_steps = 1;
  run.prefill_only_busy_s = 0.5;
  run.memory_blocked_s = 0.75;
  run.memory_blocked_busy_fraction = 0.9;
  run.makespan_s = 3;
  run.preemptions = 1;
  run.blocked_decode_steps = 3;
  const std::vector<std::string> lines =
      absl::StrSplit(RequestsToCsv({run}), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u);
  const std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  const std::vector<std::string> row = absl::StrSplit(lines[1], ',');
  ASSERT_EQ(row.size(), header.size());
  auto cell = [&](const std::vector<std::string>& r, const std::string& column) {
    for (size_t i = 0; i < header.size(); ++i) {
      if (header[i] == column) return r[i];
    }
    ADD_FAILURE() << "no column " << column;
    return std::string();
  };
  EXPECT_EQ(cell(row, "system"), "asymcache");
  EXPECT_EQ(cell(row, "ttft_s"), "1.000000");
  EXPECT_EQ(cell(row, "queue_s"), "0.500000");
  EXPECT_EQ(cell(row, "prefill_s"), "0.500000");
  EXPECT_EQ(cell(row, "prefill_steps"), "2");
  EXPECT_EQ(cell(row, "rebuild_tokens"), "16");
  EXPECT_EQ(cell(row, "tpot_s"), "0.500000");
  EXPECT_EQ(cell(row, "preemptions"), "1");
  EXPECT_EQ(cell(row, "blocked_decode_steps"), "3");
  // A request that never ran: -1 for what never happened.
  const std::vector<std::string> never = absl::StrSplit(lines[2], ',');
  EXPECT_EQ(cell(never, "ttft_s"), "-1.000000");
  EXPECT_EQ(cell(never, "queue_s"), "-1.000000");
  EXPECT_THAT(lines[3], ::testing::StartsWith("#steps,asymcache,total,10,3.000000,mixed,4,"));
  EXPECT_THAT(lines[3], ::testing::HasSubstr("decode_only,5,1.500000"));
  EXPECT_THAT(lines[3], ::testing::HasSubstr("memory_blocked_s,0.750000"));
  EXPECT_THAT(lines[3], ::testing::HasSubstr("preemptions,1,blocked_decode_steps,3"));
}

TEST(Report, StepsToTraceWritesTheHeaderAndOneModeledLinePerStep) {
  RunResult run;
  run.system = "asymcache";
  run.steps.push_back(SimStep{0.25, {DecodeWork{1, 40}}, {Chunk{2, 16, 48}}, 0.002, 1});
  run.steps.push_back(SimStep{0.252, {DecodeWork{1, 41}, DecodeWork{2, 49}}, {}, 0.001, 0});
  const std::string text = StepsToTrace(run, ModelConfig{});
  std::vector<std::string> lines = absl::StrSplit(absl::StripSuffix(text, "\n"), '\n');
  ASSERT_EQ(lines.size(), 3u) << text;
  const nlohmann::json header = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(header["schema"], "asymcache.step_trace.v1");
  EXPECT_EQ(header["started"], "1970-01-01T00:00:00+00:00");
  EXPECT_EQ(header["model"]["num_layers"], 32);
  const nlohmann::json first = nlohmann::json::parse(lines[1]);
  EXPECT_DOUBLE_EQ(first["t_ms"].get<double>(), 250.0);
  EXPECT_EQ(first["decodes"], nlohmann::json::array({40}));
  EXPECT_EQ(first["chunks"], nlohmann::json::parse("[[2,16,48]]"));
  // Modeled: the prediction is the forward and the step.
  EXPECT_DOUBLE_EQ(first["predicted_ms"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(first["forward_ms"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(first["step_ms"].get<double>(), 2.0);
  EXPECT_EQ(first["waiting"], 1);
  const nlohmann::json second = nlohmann::json::parse(lines[2]);
  EXPECT_EQ(second["decodes"], nlohmann::json::array({41, 49}));
  EXPECT_TRUE(second["chunks"].empty());
  EXPECT_EQ(StepsToTrace(RunResult{}, ModelConfig{}).find('\n'),
            StepsToTrace(RunResult{}, ModelConfig{}).size() - 1);
}

TEST(Report, CapacityIsTheHighestRateMeetingTheSloAtEveryLowerRate) {
  const SloTargets slo{2.0, 0.1};
  std::vector<SweepPoint> sweep = {
      {4.0, {Row("vllm", 3.0, 0.05), Row("asymcache", 1.5, 0.05)}},
      {1.0, {Row("vllm", 1.0, 0.05), Row("asymcache", 0.5, 0.05)}},
      {2.0, {Row("vllm", 1.9, 0.05), Row("asymcache", 1.0, 0.20)}},
      {3.0, {Row("vllm", 1.0, 0.05), Row("asymcache", 1.0, 0.05)}},
  };
  const std::vector<Capacity> c = CapacityAtSlo(sweep, slo);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].system, "vllm");
  EXPECT_EQ(c[0].rate, 3.0);
  EXPECT_TRUE(c[0].saturated);
  EXPECT_EQ(c[1].rate, 1.0);  // TPOT misses at 2.0, so 3.0 does not count
  SystemSummary rejected = Row("x", 0.1, 0.01);
  rejected.rejected = 1;
  EXPECT_FALSE(MeetsSlo(rejected, slo));
  const std::string text = FormatSweep(sweep, slo);
  EXPECT_THAT(text, HasSubstr("Capacity at SLO"));
  // Capacity rows: system, rate, bounded by sweep, vs the best baseline (vllm at 3/s).
  EXPECT_THAT(text, HasSubstr("vs best baseline (vllm)"));
  EXPECT_EQ(RowCells(text, "Capacity at SLO", "vllm"),
            (std::vector<std::string>{"vllm", "3", "yes", "+0%"}))
      << text;
  EXPECT_EQ(RowCells(text, "Capacity at SLO", "asymcache"),
            (std::vector<std::string>{"asymcache", "1", "yes", "-67%"}))
      << text;
  EXPECT_THAT(text, HasSubstr("MISS"));
  const nlohmann::json j = nlohmann::json::parse(SweepToJson(RunHeader{}, sweep, slo));
  EXPECT_EQ(j["points"].size(), 4u);
  EXPECT_EQ(j["capacity"][0]["rate"].get<double>(), 3.0);
}

}  // namespace
}  // namespace asymcache
