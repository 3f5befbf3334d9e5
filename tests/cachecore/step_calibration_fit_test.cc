#include "cachecore/step_calibration_fit.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

MeasuredStep Decodes(int64_t batch, int64_t context) {
  MeasuredStep step;
  step.label = absl::StrCat("decode b=", batch, " ctx=", context);
  for (int64_t s = 0; s < batch; ++s) step.decodes.push_back(DecodeWork{static_cast<SequenceId>(s), context});
  return step;
}

MeasuredStep Prefill(int64_t position, int64_t tokens) {
  MeasuredStep step;
  step.label = absl::StrCat("prefill ", tokens, " at ", position);
  step.chunks.push_back(Chunk{0, position, position + tokens});
  return step;
}

// A step like the engine's: decodes of other sequences plus one chunk.
MeasuredStep Mixed(int64_t batch, int64_t context, int64_t position, int64_t tokens) {
  MeasuredStep step = Decodes(batch, context);
  step.label = absl::StrCat("mixed b=", batch, " + ", tokens, " at ", position);
  step.chunks.push_back(Chunk{static_cast<SequenceId>(batch), position, position + tokens});
  return step;
}

// A made-up "engine" unlike the base calibration: slower linear layers, a
// fixed cost per step, lower attention rates.
CalibrationParams Truth() {
  CalibrationParams truth = CostModel::DefaultH100Llama3_8B();
  truth.device = "synthetic";
  truth.linear_step_s = {{1, 6.9e-3},   {4, 7.0e-3},    {16, 7.1e-3},  {32, 7.4e-3},
                         {64, 7.8e-3},  {128, 8.5e-3},  {256, 10e-3},  {512, 14e-3},
                         {1024, 24e-3}, {2048, 46e-3},  {4096, 90e-3}, {8192, 180e-3}};
  truth.attn_kv_bytes_per_s = 2.2e12;
  truth.attn_flops_per_s = 1.6e14;
  return truth;
}

std::vector<MeasuredStep> Grid(const ModelConfig& model, const CalibrationParams& truth) {
  std::vector<MeasuredStep> steps;
  for (int64_t batch : {1, 4, 16, 32, 64, 128}) {
    for (int64_t context : {256, 4096, 16384}) steps.push_back(Decodes(batch, context));
  }
  for (int64_t tokens : {256, 512, 1024, 2048, 4096, 8192}) {
    for (int64_t position : {0, 8192, 24576}) steps.push_back(Prefill(position, tokens));
  }
  for (MeasuredStep& step : steps) step.seconds = PredictMeasuredStep(model, truth, step);
  return steps;
}

double RelativeError(double got, double want) { return std::abs(got - want) / want; }

TEST(StepCalibrationFitTest, RecoversTheRatesAndCurveOfAnEngineUnlikeTheBase) {
  const ModelConfig model = ModelConfig::Named("llama-3-8b").value();
  const CalibrationParams truth = Truth();
  const CalibrationParams base = CostModel::DefaultH100Llama3_8B();
  const std::vector<MeasuredStep> steps = Grid(model, truth);

  absl::StatusOr<StepFitResult> fit = FitCalibrationToSteps(model, base, steps);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_LT(RelativeError(fit->params.attn_kv_bytes_per_s, truth.attn_kv_bytes_per_s), 0.01)
      << fit->params.attn_kv_bytes_per_s;
  EXPECT_LT(RelativeError(fit->params.attn_flops_per_s, truth.attn_flops_per_s), 0.01)
      << fit->params.attn_flops_per_s;
  ASSERT_EQ(fit->params.linear_step_s.size(), truth.linear_step_s.size());
  for (size_t i = 0; i < truth.linear_step_s.size(); ++i) {
    EXPECT_EQ(fit->params.linear_step_s[i].first, truth.linear_step_s[i].first);
    EXPECT_LT(RelativeError(fit->params.linear_step_s[i].second, truth.linear_step_s[i].second),
              0.01)
        << "point " << truth.linear_step_s[i].first;
  }
  ASSERT_EQ(fit->predicted_fitted_s.size(), steps.size());
  ASSERT_EQ(fit->predicted_base_s.size(), steps.size());
  double worst_base = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_LT(RelativeError(fit->predicted_fitted_s[i], steps[i].seconds), 0.01) << steps[i].label;
    worst_base = std::max(worst_base, RelativeError(fit->predicted_base_s[i], steps[i].seconds));
  }
  // The base really was wrong for this engine, so the fit had work to do.
  EXPECT_GT(worst_base, 0.2);
  EXPECT_TRUE(fit->notes.empty());
  EXPECT_EQ(fit->params.step_overhead_s, base.step_overhead_s);
  EXPECT_EQ(fit->params.segment_overhead_s, base.segment_overhead_s);
  EXPECT_FALSE(fit->bandwidth_estimates.empty());
  EXPECT_FALSE(fit->flops_rate_estimates.empty());
}

TEST(StepCalibrationFitTest, FittedModelPredictsMixedStepsItNeverSaw) {
  const ModelConfig model = ModelConfig::Named("llama-3-8b").value();
  const CalibrationParams truth = Truth();
  absl::StatusOr<StepFitResult> fit =
      FitCalibrationToSteps(model, CostModel::DefaultH100Llama3_8B(), Grid(model, truth));
  ASSERT_TRUE(fit.ok()) << fit.status();
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_int_distribution<int64_t> batch(1, 64), blocks(1, 1500), chunk_tiles(1, 200);
  for (int i = 0; i < 50; ++i) {
    const MeasuredStep step =
        Mixed(batch(rng), 16 * blocks(rng), 16 * blocks(rng), 16 * chunk_tiles(rng));
    const double want = PredictMeasuredStep(model, truth, step);
    EXPECT_LT(RelativeError(PredictMeasuredStep(model, fit->params, step), want), 0.02)
        << step.label;
  }
}

TEST(StepCalibrationFitTest, MixedStepsAreNotFittedButPredictedBeforeAndAfter) {
  const ModelConfig model = ModelConfig::Named("llama-3-8b").value();
  const CalibrationParams truth = Truth();
  std::vector<MeasuredStep> steps = Grid(model, truth);
  MeasuredStep mixed = Mixed(16, 4096, 16384, 2048);
  // Measured far off what any engine would do: the fit must not bend to it.
  mixed.seconds = 10 * PredictMeasuredStep(model, truth, mixed);
  steps.push_back(mixed);
  absl::StatusOr<StepFitResult> fit =
      FitCalibrationToSteps(model, CostModel::DefaultH100Llama3_8B(), steps);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_LT(RelativeError(fit->params.attn_flops_per_s, truth.attn_flops_per_s), 0.01);
  EXPECT_NEAR(fit->predicted_fitted_s.back(), mixed.seconds / 10, 0.01 * mixed.seconds / 10);
}

TEST(StepCalibrationFitTest, WithoutPairsTheRatesStayTheBasesAndNotesSayWhy) {
  const ModelConfig model = ModelConfig::Named("llama-3-8b").value();
  const CalibrationParams truth = Truth();
  const CalibrationParams base = CostModel::DefaultH100Llama3_8B();
  std::vector<MeasuredStep> steps = {Decodes(1, 256), Decodes(32, 256), Prefill(0, 2048)};
  for (MeasuredStep& step : steps) step.seconds = PredictMeasuredStep(model, truth, step);
  absl::StatusOr<StepFitResult> fit = FitCalibrationToSteps(model, base, steps);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->params.attn_kv_bytes_per_s, base.attn_kv_bytes_per_s);
  EXPECT_EQ(fit->params.attn_flops_per_s, base.attn_flops_per_s);
  ASSERT_EQ(fit->notes.size(), 2u);
  EXPECT_THAT(fit->notes[0], HasSubstr("bandwidth kept"));
  EXPECT_THAT(fit->notes[1], HasSubstr("FLOP rate kept"));
  // The anchors themselves are still met exactly.
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_LT(RelativeError(fit->predicted_fitted_s[i], steps[i].seconds), 1e-9) << steps[i].label;
  }
  ASSERT_EQ(fit->params.linear_step_s.size(), 3u);
  EXPECT_EQ(fit->params.linear_step_s[0].first, 1);
  EXPECT_EQ(fit->params.linear_step_s[1].first, 32);
  EXPECT_EQ(fit->params.linear_step_s[2].first, 2048);
}

TEST(StepCalibrationFitTest, BadStepsAreRefusedNamingTheStep) {
  const ModelConfig model = ModelConfig::Named("llama-3-8b").value();
  const CalibrationParams base = CostModel::DefaultH100Llama3_8B();
  MeasuredStep good = Decodes(4, 1024);
  good.seconds = 0.01;

  MeasuredStep negative = good;
  negative.label = "neg";
  negative.seconds = -1;
  MeasuredStep nan = good;
  nan.label = "nan";
  nan.seconds = std::nan("");
  MeasuredStep empty;
  empty.label = "empty";
  empty.seconds = 0.01;
  MeasuredStep bad_chunk = Prefill(100, 10);
  bad_chunk.label = "backwards";
  bad_chunk.chunks[0].end = 50;
  bad_chunk.seconds = 0.01;
  MeasuredStep bad_decode = good;
  bad_decode.label = "zero ctx";
  bad_decode.decodes[1].context_tokens = 0;

  for (const MeasuredStep& bad : {negative, nan, empty, bad_chunk, bad_decode}) {
    absl::StatusOr<StepFitResult> fit = FitCalibrationToSteps(model, base, {good, bad});
    EXPECT_TRUE(absl::IsInvalidArgument(fit.status())) << bad.label << ": " << fit.status();
    EXPECT_THAT(fit.status().message(), HasSubstr(absl::StrCat("step 1 (", bad.label, ")")));
  }

  // Only mixed steps: nothing isolates the linear curve.
  MeasuredStep mixed = Mixed(8, 1024, 0, 512);
  mixed.seconds = 0.02;
  absl::StatusOr<StepFitResult> fit = FitCalibrationToSteps(model, base, {mixed});
  EXPECT_TRUE(absl::IsFailedPrecondition(fit.status())) << fit.status();
  EXPECT_THAT(fit.status().message(), HasSubstr("no anchor"));

  StepFitOptions options;
  options.iterations = 0;
  fit = FitCalibrationToSteps(model, base, {good}, options);
  EXPECT_TRUE(absl::IsInvalidArgument(fit.status())) << fit.status();

  CalibrationParams broken = base;
  broken.attn_flops_per_s = 0;
  fit = FitCalibrationToSteps(model, broken, {good});
  EXPECT_TRUE(absl::IsInvalidArgument(fit.status())) << fit.status();
  EXPECT_THAT(fit.status().message(), HasSubstr("base calibration"));
}

}  // namespace
}  // namespace asymcache
