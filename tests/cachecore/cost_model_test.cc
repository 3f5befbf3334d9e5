// Tests for CostModel: calibration parsing, the built-in defaults and the
// DESIGN.md §3.1 formulas.
#include "cachecore/cost_model.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_replace.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

CostModel H100Model() { return CostModel(ModelConfig{}, CostModel::DefaultH100Llama3_8B()); }

TEST(CostModelTest, DefaultsValidate) {
  EXPECT_TRUE(CostModel::DefaultH100Llama3_8B().Validate().ok());
  ModelConfig llama;
  EXPECT_TRUE(CostModel::DefaultCpu(llama).Validate().ok());
  ModelConfig tiny;
  tiny.num_layers = 2;
  tiny.hidden_size = 256;
  tiny.intermediate_size = 512;
  tiny.vocab_size = 1000;
  tiny.num_q_heads = 4;
  tiny.num_kv_heads = 2;
  tiny.head_dim = 64;
  EXPECT_TRUE(CostModel::DefaultCpu(tiny).Validate().ok());
}

TEST(CostModelTest, H100LinearPointsReproduceTheReferenceTable) {
  const CostModel model = H100Model();
  const std::vector<std::pair<int64_t, double>> table = {
      {1, 5.37e-3},    {16, 5.57e-3},    {64, 5.59e-3},   {128, 6.07e-3},  {256, 7.11e-3},
      {384, 10.91e-3}, {512, 11.20e-3}, {1024, 21.48e-3}, {2048, 41.90e-3}, {8192, 169.40e-3}};
  for (const auto& [tokens, seconds] : table) {
    EXPECT_NEAR(model.LinearStepTime(tokens), seconds, 0.01 * seconds) << tokens << " tokens";
  }
  // Between points: interpolated; beyond the last: extrapolated, growing.
  EXPECT_GT(model.LinearStepTime(700), 11.20e-3);
  EXPECT_LT(model.LinearStepTime(700), 21.48e-3);
  EXPECT_GT(model.LinearStepTime(16384), model.LinearStepTime(8192));
  EXPECT_EQ(model.LinearStepTime(0), 0);
}

TEST(CostModelTest, DecodeAttentionMatchesReferenceWithin25Percent) {
  const CostModel model = H100Model();
  // Batch 32 at 16k context, one query token each (H100_REFERENCE.md: 855.4 us
  // for one layer of the batch).
  AttentionWork one{.query_tokens = 1, .attended_pairs = 16384, .kv_tokens_scanned = 16384,
                    .segments = 1};
  std::vector<AttentionWork> batch(32, one);
  double total = 0;
  for (const AttentionWork& w : batch) total += model.AttentionTime(w);
  const double per_layer = total / model.model().num_layers;
  EXPECT_NEAR(per_layer, 855.4e-6, 0.25 * 855.4e-6);
  // Large rebuild chunk (4096 queries after 32k cached): 6915.5 us per layer.
  int64_t pairs = 0;
  for (int64_t i = 0; i < 4096; ++i) pairs += 32768 + i + 1;
  AttentionWork chunk{.query_tokens = 4096, .attended_pairs = pairs,
                      .kv_tokens_scanned = 32768 + 4096, .segments = 1};
  EXPECT_NEAR(model.AttentionTime(chunk) / 32, 6915.5e-6, 0.25 * 6915.5e-6);
}

TEST(CostModelTest, SegmentsAddOverheadPerLayer) {
  const CostModel model = H100Model();
  AttentionWork w{.query_tokens = 16, .attended_pairs = 16 * 1000, .kv_tokens_scanned = 1000,
                  .segments = 1};
  const double one = model.AttentionTime(w);
  w.segments = 4;
  EXPECT_NEAR(model.AttentionTime(w) - one,
              3 * 32 * model.params().segment_overhead_s, 1e-12);
}

TEST(CostModelTest, StepLatencySumsItsParts) {
  const CostModel model = H100Model();
  AttentionWork a{.query_tokens = 1, .attended_pairs = 4096, .kv_tokens_scanned = 4096};
  AttentionWork b{.query_tokens = 128, .attended_pairs = 128 * 8000, .kv_tokens_scanned = 8000};
  const std::vector<AttentionWork> work = {a, b};
  EXPECT_DOUBLE_EQ(model.StepLatency(129, work),
                   model.params().step_overhead_s + model.LinearStepTime(129) +
                       model.AttentionTime(a) + model.AttentionTime(b));
}

TEST(CostModelTest, RebuildCostIsMonotone) {
  for (const CostModel& model :
       {H100Model(), CostModel(ModelConfig{}, CostModel::DefaultCpu(ModelConfig{}))}) {
    for (double sigma : {0.0, 1.0}) {
      for (int64_t load : {0, 64, 512, 4096}) {
        double prev = -1;
        for (int64_t p = 0; p <= 128 * 1024; p += 4096) {
          const double c = model.RebuildCost(16, p, sigma, load);
          EXPECT_GT(c, prev) << "position " << p << " sigma " << sigma << " load " << load;
          prev = c;
        }
        EXPECT_LT(model.RebuildCost(16, 8192, sigma, load),
                  model.RebuildCost(32, 8192, sigma, load));
      }
    }
    EXPECT_LE(model.RebuildCost(16, 8192, 0, 512), model.RebuildCost(16, 8192, 1, 512));
    double prev = -1;
    for (int64_t t = 1; t <= 16384; t *= 2) {
      EXPECT_GE(model.LinearStepTime(t), prev);  // flat while weight-bound
      prev = model.LinearStepTime(t);
    }
    EXPECT_GT(model.LinearStepTime(16384), model.LinearStepTime(1024));
  }
}

TEST(CostModelTest, RebuildCostFollowsTheDesignFormula) {
  const CostModel model = H100Model();
  const double b = 16, p = 8192;
  const double flops = 4 * 128 * 32 * b * (p + b / 2);
  const double bytes = (p + b) * 8 * 128 * 2 * 2;
  const double expected = model.MarginalLinearTime(512, 16) +
                          32 * std::max(flops / 330e12, bytes / 2.5e12) + 32 * 1e-6;
  EXPECT_NEAR(model.RebuildCost(16, 8192, 1.0, 512), expected, 1e-12);
  // Weight-bound steps make the linear part nearly free; compute-bound ones do not.
  EXPECT_LT(model.MarginalLinearTime(16, 16), 0.1 * model.MarginalLinearTime(1024, 16));
}

TEST(CostModelTest, CpuDefaultFollowsItsDocumentedFormula) {
  ModelConfig m;
  const CostModel model(m, CostModel::DefaultCpu(m));
  const double params = static_cast<double>(m.LinearParamsPerLayer()) * m.num_layers;
  const double lm_head = static_cast<double>(m.vocab_size) * m.hidden_size;
  auto expected = [&](int64_t t) {
    return std::max((params + lm_head) * 4 / 10e9, 2 * (lm_head + params * t) / 20e9);
  };
  for (int64_t t : {1, 16, 256, 1024, 8192}) {
    EXPECT_NEAR(model.LinearStepTime(t), expected(t), 1e-9 + 0.02 * expected(t)) << t;
  }
}

TEST(CostModelTest, RoundTripIsIdentity) {
  for (const CalibrationParams& p :
       {CostModel::DefaultH100Llama3_8B(), CostModel::DefaultCpu(ModelConfig{})}) {
    const std::string json = CostModel::CalibrationToJson(p, ModelConfig{});
    absl::StatusOr<CalibrationParams> back = CostModel::ParseCalibration(json, "roundtrip");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->device, p.device);
    EXPECT_EQ(back->source, p.source);
    EXPECT_EQ(back->linear_step_s, p.linear_step_s);
    EXPECT_EQ(back->attn_flops_per_s, p.attn_flops_per_s);
    EXPECT_EQ(back->attn_kv_bytes_per_s, p.attn_kv_bytes_per_s);
    EXPECT_EQ(back->segment_overhead_s, p.segment_overhead_s);
    EXPECT_EQ(back->step_overhead_s, p.step_overhead_s);
    EXPECT_EQ(CostModel::CalibrationToJson(*back, ModelConfig{}), json);
  }
}

constexpr char kGood[] = R"({
  "schema": "asymcache.calibration.v1",
  "device": "test gpu",
  "_comment": "annotations starting with an underscore are ignored",
  "model": {"name": "llama-3-8b", "num_layers": 32, "num_q_heads": 32, "num_kv_heads": 8,
            "head_dim": 128, "dtype_bytes": 2, "block_tokens": 16},
  "linear_step_s": [[1, 0.005], [128, 0.006], [1024, 0.021]],
  "attention": {"flops_per_s": 3.3e14, "kv_bytes_per_s": 2.5e12, "segment_overhead_s": 1e-6},
  "step_overhead_s": 5e-5
})";

TEST(CostModelTest, ParsesAGoodFile) {
  absl::StatusOr<CalibrationParams> p = CostModel::ParseCalibration(kGood, "good.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->device, "test gpu");
  EXPECT_EQ(p->source, "");
  ASSERT_EQ(p->linear_step_s.size(), 3u);
  EXPECT_EQ(p->linear_step_s[2].first, 1024);
  EXPECT_DOUBLE_EQ(p->linear_step_s[2].second, 0.021);
  EXPECT_DOUBLE_EQ(p->attn_flops_per_s, 3.3e14);
  EXPECT_DOUBLE_EQ(p->step_overhead_s, 5e-5);
}

struct BadCase {
  std::string from;  // substring of kGood to replace
  std::string to;
  std::string path;  // expected in the message
};

TEST(CostModelTest, RejectsMalformedInputNamingTheField) {
  const std::vector<BadCase> cases = {
      {"\"asymcache.calibration.v1\"", "\"asymcache.calibration.v2\"", "schema"},
      {"\"schema\": \"asymcache.calibration.v1\",", "", "schema: missing"},
      {"\"device\": \"test gpu\"", "\"device\": 7", "device"},
      {"\"flops_per_s\": 3.3e14", "\"flops_per_s\": -3.3e14", "attention.flops_per_s"},
      {"\"flops_per_s\": 3.3e14", "\"flops_per_s\": \"fast\"", "attention.flops_per_s"},
      {"\"flops_per_s\": 3.3e14,", "", "attention.flops_per_s: missing"},
      {"\"kv_bytes_per_s\": 2.5e12", "\"kv_bytes_per_s\": 0", "attention.kv_bytes_per_s"},
      {"\"segment_overhead_s\": 1e-6", "\"segment_overhead_s\": -1", "attention.segment_overhead_s"},
      {"\"flops_per_s\"", "\"flop_per_s\"", "attention.flop_per_s: unknown key"},
      {"\"step_overhead_s\": 5e-5", "\"step_overhead_s\": null", "step_overhead_s"},
      {"\"step_overhead_s\": 5e-5", "\"step_overhead\": 5e-5", "step_overhead: unknown key"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "[[1, 0.005], [1024, 0.021], [128, 0.006]]",
       "linear_step_s[2]"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "[[1, 0.005], [128, 0.004]]",
       "linear_step_s[1]"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "[]", "linear_step_s"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "[[1.5, 0.005]]", "linear_step_s[0][0]"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "[[0, 0.005]]", "linear_step_s[0]"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "[[1, 0.005], [2]]", "linear_step_s[1]"},
      {"[[1, 0.005], [128, 0.006], [1024, 0.021]]", "{\"1\": 0.005}", "linear_step_s"},
      {"\"attention\": {", "\"attention\": 3, \"x\": {", "attention"},
      {"\"num_layers\": 32", "\"num_layers\": -32", "model.num_layers"},
      {"\"head_dim\": 128", "\"head_dim\": \"128\"", "model.head_dim"},
      {"\"segment_overhead_s\": 1e-6", "\"segment_overhead_s\": 1e-6, \"num_sms\": -1",
       "attention.num_sms: must be an integer in [0, 4096], got -1"},
      {"\"segment_overhead_s\": 1e-6", "\"segment_overhead_s\": 1e-6, \"num_sms\": 132.5",
       "attention.num_sms: must be an integer"},
      {"\"segment_overhead_s\": 1e-6", "\"segment_overhead_s\": 1e-6, \"num_sms\": \"132\"",
       "attention.num_sms: must be an integer"},
      {"\"segment_overhead_s\": 1e-6", "\"segment_overhead_s\": 1e-6, \"num_sms\": 5000",
       "attention.num_sms"},
  };
  for (const BadCase& c : cases) {
    std::string json = kGood;
    ASSERT_NE(json.find(c.from), std::string::npos) << c.from;
    json = absl::StrReplaceAll(json, {{c.from, c.to}});
    absl::StatusOr<CalibrationParams> p = CostModel::ParseCalibration(json, "bad.json");
    ASSERT_FALSE(p.ok()) << "accepted: " << json;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
    EXPECT_THAT(p.status().message(), HasSubstr("bad.json: ")) << p.status();
    EXPECT_THAT(p.status().message(), HasSubstr(c.path)) << p.status();
  }
  for (const char* not_json : {"", "{", "not json", "[1, 2]", "42"}) {
    absl::StatusOr<CalibrationParams> p = CostModel::ParseCalibration(not_json, "x.json");
    ASSERT_FALSE(p.ok()) << not_json;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(p.status().message(), HasSubstr("x.json: "));
  }
}

TEST(CostModelTest, ValidateNamesTheField) {
  CalibrationParams p = CostModel::DefaultH100Llama3_8B();
  p.attn_kv_bytes_per_s = std::nan("");
  EXPECT_THAT(p.Validate().message(), HasSubstr("attention.kv_bytes_per_s"));
  p = CostModel::DefaultH100Llama3_8B();
  p.step_overhead_s = -1;
  EXPECT_THAT(p.Validate().message(), HasSubstr("step_overhead_s"));
  p = CostModel::DefaultH100Llama3_8B();
  p.num_sms = -3;
  EXPECT_THAT(p.Validate().message(), HasSubstr("attention.num_sms"));
}

// attention.num_sms: parsed, written back only when set (files without it
// round-trip byte for byte).
TEST(CostModelTest, NumSmsIsOptionalAndRoundTrips) {
  absl::StatusOr<CalibrationParams> plain = CostModel::ParseCalibration(kGood, "good.json");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->num_sms, 0);
  EXPECT_EQ(CostModel::CalibrationToJson(*plain, ModelConfig{}).find("num_sms"),
            std::string::npos);
  const std::string with = absl::StrReplaceAll(
      kGood, {{"\"segment_overhead_s\": 1e-6", "\"segment_overhead_s\": 1e-6, \"num_sms\": 132"}});
  absl::StatusOr<CalibrationParams> p = CostModel::ParseCalibration(with, "sms.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_sms, 132);
  const std::string json = CostModel::CalibrationToJson(*p, ModelConfig{});
  absl::StatusOr<CalibrationParams> back = CostModel::ParseCalibration(json, "back.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->num_sms, 132);
  EXPECT_EQ(CostModel::CalibrationToJson(*back, ModelConfig{}), json);
}

CostModel H100WaveModel() {
  CalibrationParams p = CostModel::DefaultH100Llama3_8B();
  p.num_sms = 132;
  return CostModel(ModelConfig{}, p);
}

// Pairs of query tokens [begin, end) attending causally.
AttentionWork Chunk(int64_t begin, int64_t end) {
  const int64_t q = end - begin;
  return AttentionWork{.query_tokens = q,
                       .attended_pairs = q * begin + q * (q + 1) / 2,
                       .kv_tokens_scanned = end};
}

// With num_sms the prefill launch follows the GPU's waves: a 559-token chunk
// at ~39k (144 items on 132 SMs, msa_waves_test.cc) costs well above its
// FLOPs at the full rate; a 2048-token chunk (512 items, ~4 waves) stays
// within a few percent of it; decodes are priced as before.
TEST(CostModelTest, WaveModelPricesPartlyFilledWavesAboveTheFlatRate) {
  const CostModel flat = H100Model();
  const CostModel waves = H100WaveModel();
  const AttentionWork deep_short = Chunk(39'441, 40'000);
  EXPECT_TRUE(waves.IsPrefillClass(deep_short));
  EXPECT_FALSE(flat.IsPrefillClass(deep_short));
  EXPECT_GT(waves.AttentionTime(deep_short), 1.10 * flat.AttentionTime(deep_short));
  const AttentionWork long_chunk = Chunk(14'336, 16'384);
  EXPECT_NEAR(waves.AttentionTime(long_chunk), flat.AttentionTime(long_chunk),
              0.06 * flat.AttentionTime(long_chunk));
  const AttentionWork decode{.query_tokens = 1, .attended_pairs = 50'000,
                             .kv_tokens_scanned = 50'000};
  EXPECT_FALSE(waves.IsPrefillClass(decode));
  EXPECT_DOUBLE_EQ(waves.AttentionTime(decode), flat.AttentionTime(decode));
  EXPECT_EQ(flat.PrefillLaunchTime({&long_chunk, 1}), 0);
  // The per-pair estimate ignores the launch model: the flat model's time.
  EXPECT_DOUBLE_EQ(waves.PerPairAttentionTime(deep_short), flat.AttentionTime(deep_short));
  EXPECT_DOUBLE_EQ(waves.PerPairStepLatency(deep_short),
                   flat.StepLatency(deep_short.query_tokens, {&deep_short, 1}));
}

// Two sequences' chunks share one launch: together they cost no more than
// two launches one after the other, and the step adds their segment
// overheads and the decodes' own time.
TEST(CostModelTest, WaveModelPacksAStepsPrefillWorksIntoOneLaunch) {
  const CostModel waves = H100WaveModel();
  AttentionWork a = Chunk(8'000, 8'300);
  a.segments = 3;
  const AttentionWork b = Chunk(20'000, 20'200);
  const AttentionWork decode{.query_tokens = 1, .attended_pairs = 30'000,
                             .kv_tokens_scanned = 30'000};
  const std::vector<AttentionWork> both = {a, b};
  EXPECT_LE(waves.PrefillLaunchTime(both),
            waves.PrefillLaunchTime({&a, 1}) + waves.PrefillLaunchTime({&b, 1}));
  const std::vector<AttentionWork> step = {decode, a, b};
  const double segments = 32 * 2 * waves.params().segment_overhead_s;
  EXPECT_DOUBLE_EQ(waves.StepLatency(501, step),
                   waves.params().step_overhead_s + waves.LinearStepTime(501) +
                       waves.AttentionTime(decode) + waves.PrefillLaunchTime(both) + segments);
  // One prefill work alone: the step is its AttentionTime, as without the model.
  const std::vector<AttentionWork> one = {a};
  EXPECT_DOUBLE_EQ(waves.StepLatency(300, one), waves.params().step_overhead_s +
                                                    waves.LinearStepTime(300) +
                                                    waves.AttentionTime(a));
}

TEST(CostModelTest, LoadsFilesAndReportsMissingOnes) {
  absl::StatusOr<CalibrationParams> missing =
      CostModel::LoadCalibrationFile("/nonexistent/dir/h100.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/dir/h100.json"));

  const std::string path = ::testing::TempDir() + "/cost_model_test_calibration.json";
  {
    std::ofstream out(path);
    out << CostModel::CalibrationToJson(CostModel::DefaultH100Llama3_8B(), ModelConfig{});
  }
  absl::StatusOr<CalibrationParams> loaded = CostModel::LoadCalibrationFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->linear_step_s, CostModel::DefaultH100Llama3_8B().linear_step_s);
  {
    std::ofstream out(path);
    out << "{\"schema\": 1}";
  }
  absl::StatusOr<CalibrationParams> bad = CostModel::LoadCalibrationFile(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(path + ": schema"));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace asymcache
