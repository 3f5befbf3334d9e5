// Tests of services/daemon/gpu_calibration.h: option and model checks (any
// machine), the no-CUDA / no-device errors, and on a GPU a real calibration of
// the Llama-3-8B shape whose numbers must be plausible for any datacenter GPU
// and which must finish within 3x its budget (skipped without a GPU).
#include "services/daemon/gpu_calibration.h"

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>

#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/msa_cuda.h"

namespace asymcache::daemon {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

bool HaveGpu() { return msa::QueryGpu(0).ok(); }

absl::Status CalibrateStatus(const ModelConfig& model, const GpuCalibrationOptions& options) {
  return CalibrateGpu(model, options).status();
}

TEST(GpuCalibrationOptionsTest, DefaultsValidate) {
  const GpuCalibrationOptions options;
  EXPECT_TRUE(options.Validate().ok());
  EXPECT_EQ(options.device, 0);
  EXPECT_EQ(options.budget, absl::Seconds(5));
  EXPECT_EQ(options.linear_tokens, (std::vector<int64_t>{1, 64, 256, 1024, 4096}));
}

TEST(GpuCalibrationOptionsTest, BadFieldsAreNamed) {
  struct Case {
    std::function<void(GpuCalibrationOptions*)> edit;
    std::string message;
  };
  const Case cases[] = {
      {[](GpuCalibrationOptions* o) { o->device = -1; }, "device must be >= 0, got -1"},
      {[](GpuCalibrationOptions* o) { o->budget = absl::ZeroDuration(); },
       "budget must be positive"},
      {[](GpuCalibrationOptions* o) { o->budget = -absl::Seconds(1); }, "budget must be positive"},
      {[](GpuCalibrationOptions* o) { o->repeats = 2; }, "repeats must be >= 3, got 2"},
      {[](GpuCalibrationOptions* o) { o->linear_tokens.clear(); }, "linear_tokens must hold 1..16"},
      {[](GpuCalibrationOptions* o) { o->linear_tokens = {1, 64, 64}; },
       "strictly increasing in [1, 65536], got [1, 64, 64] (index 2)"},
      {[](GpuCalibrationOptions* o) { o->linear_tokens = {0, 8}; }, "(index 0)"},
      {[](GpuCalibrationOptions* o) { o->linear_tokens = {1, 100000}; }, "(index 1)"},
      {[](GpuCalibrationOptions* o) { o->linear_tokens = std::vector<int64_t>(17, 1); },
       "got 17"},
      {[](GpuCalibrationOptions* o) { o->lm_head_tokens = 0; }, "lm_head_tokens must be >= 1"},
  };
  for (const Case& c : cases) {
    GpuCalibrationOptions options;
    c.edit(&options);
    const absl::Status s = options.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
    EXPECT_THAT(std::string(s.message()), StartsWith("GpuCalibrationOptions."));
    // CalibrateGpu checks options before touching any device.
    EXPECT_EQ(CalibrateStatus(ModelConfig{}, options).code(), absl::StatusCode::kInvalidArgument)
        << c.message;
  }
}

TEST(GpuCalibrationModelTest, ModelsMsaCannotRunAreRejectedFirst) {
  GpuCalibrationOptions options;
  ModelConfig fp32 = *ModelConfig::Named("tiny");  // dtype_bytes 4
  absl::Status s = CalibrateStatus(fp32, options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("needs a 16-bit KV dtype; model 'tiny' has dtype_bytes = 4"));

  ModelConfig odd_dim;
  odd_dim.head_dim = 96;
  s = CalibrateStatus(odd_dim, options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("head_dim must be 64, 128 or 256, got 96"));

  ModelConfig odd_group;
  odd_group.num_q_heads = 48;
  odd_group.num_kv_heads = 8;  // group 6
  EXPECT_THAT(CalibrateStatus(odd_group, options).message(),
              HasSubstr("must be 1, 2, 4 or 8, got 6"));

  ModelConfig invalid;
  invalid.num_layers = 0;
  EXPECT_THAT(CalibrateStatus(invalid, options).message(),
              HasSubstr("num_layers must be positive"));
}

TEST(GpuCalibrationTest, WithoutAGpuItFailsPrecisely) {
  if (HaveGpu()) GTEST_SKIP() << "a CUDA device is present";
  const absl::Status s = CalibrateStatus(ModelConfig{}, GpuCalibrationOptions{});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), ::testing::AnyOf(HasSubstr("built without CUDA"),
                                            HasSubstr("no CUDA device")));
}

TEST(GpuCalibrationTest, BadDeviceOrdinal) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: " << msa::QueryGpu(0).status().message();
  GpuCalibrationOptions options;
  options.device = 1 << 20;
  const absl::Status s = CalibrateStatus(ModelConfig{}, options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("does not exist"));
}

// Plausible for any datacenter GPU (A10 .. B200), bf16.
void ExpectPlausible(const CalibrationParams& p, const ModelConfig& model) {
  EXPECT_TRUE(p.Validate().ok()) << p.Validate();
  EXPECT_GE(p.attn_flops_per_s, 10e12);
  EXPECT_LE(p.attn_flops_per_s, 2000e12);
  EXPECT_GE(p.attn_kv_bytes_per_s, 100e9);
  EXPECT_LE(p.attn_kv_bytes_per_s, 10e12);
  EXPECT_GE(p.segment_overhead_s, 0);
  EXPECT_LE(p.segment_overhead_s, 100e-6);
  EXPECT_GT(p.step_overhead_s, 1e-6);
  EXPECT_LT(p.step_overhead_s, 50e-3);
  ASSERT_EQ(p.linear_step_s.size(), GpuCalibrationOptions{}.linear_tokens.size());
  for (size_t i = 0; i < p.linear_step_s.size(); ++i) {
    const auto [tokens, seconds] = p.linear_step_s[i];
    EXPECT_EQ(tokens, GpuCalibrationOptions{}.linear_tokens[i]);
    // Weight streaming: all weights read once at <= 10 TB/s gives a floor;
    // compute at >= 10 TFLOP/s with a generous 2x on the weight read gives a ceiling.
    const double weight_bytes =
        2.0 * (model.num_layers * static_cast<double>(model.LinearParamsPerLayer()) +
               static_cast<double>(model.vocab_size) * model.hidden_size);
    const double flops = 2.0 * tokens * model.num_layers * model.LinearParamsPerLayer();
    EXPECT_GE(seconds, weight_bytes / 10e12) << tokens << " tokens";
    EXPECT_LE(seconds, 2 * weight_bytes / 100e9 + flops / 10e12) << tokens << " tokens";
    if (i > 0) {
      EXPECT_GE(seconds, p.linear_step_s[i - 1].second);
    }
  }
  EXPECT_THAT(p.source, StartsWith("asymcache-daemon on-start calibration 20"));
  EXPECT_FALSE(p.device.empty());
}

TEST(GpuCalibrationTest, Llama8bOnThisGpuIsPlausibleAndWithinBudget) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: " << msa::QueryGpu(0).status().message();
  const ModelConfig model;  // Llama-3-8B
  GpuCalibrationOptions options;
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<GpuCalibrationReport> report = CalibrateGpuWithReport(model, options);
  const double wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(report.ok()) << report.status();
  for (const std::string& line : report->details) std::printf("[calibration] %s\n", line.c_str());
  const CalibrationParams& p = report->params;
  std::printf("[calibration] %s\n", CostModel::CalibrationToJson(p, model).c_str());
  std::printf("[calibration] wall %.2f s (budget %s)\n", wall_s,
              absl::FormatDuration(options.budget).c_str());
  ExpectPlausible(p, model);
  EXPECT_LT(wall_s, 3 * absl::ToDoubleSeconds(options.budget));
  // The result feeds the cost model as a calibration file would.
  absl::StatusOr<CalibrationParams> parsed =
      CostModel::ParseCalibration(CostModel::CalibrationToJson(p, model), "on-start");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const CostModel cost(model, *parsed);
  EXPECT_GT(cost.LinearStepTime(4096), cost.LinearStepTime(1));
}

TEST(GpuCalibrationTest, ShortBudgetStillProducesValidParams) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device: " << msa::QueryGpu(0).status().message();
  ModelConfig model = *ModelConfig::Named("llama-3-70b-tp");
  GpuCalibrationOptions options;
  options.budget = absl::Milliseconds(500);
  options.linear_tokens = {1, 512};
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<CalibrationParams> p = CalibrateGpu(model, options);
  const double wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->Validate().ok());
  ASSERT_EQ(p->linear_step_s.size(), 2u);
  EXPECT_EQ(p->linear_step_s[1].first, 512);
  // Minimum samples can overrun a tiny budget; CUDA start-up is already paid.
  EXPECT_LT(wall_s, 6.0);
}

}  // namespace
}  // namespace asymcache::daemon
