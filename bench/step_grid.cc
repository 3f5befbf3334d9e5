#include "bench/step_grid.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace asymcache::bench {
namespace {

GridStep MakeStep(std::string kind, std::vector<SequenceShape> sequences, std::string label) {
  GridStep grid_step;
  grid_step.kind = std::move(kind);
  grid_step.sequences = std::move(sequences);
  grid_step.step.label = std::move(label);
  for (size_t s = 0; s < grid_step.sequences.size(); ++s) {
    const SequenceShape& shape = grid_step.sequences[s];
    const auto id = static_cast<SequenceId>(s);
    if (shape.queries == 1 && shape.cached > 0) {
      grid_step.step.decodes.push_back(DecodeWork{id, shape.cached + 1});
    } else {
      grid_step.step.chunks.push_back(Chunk{id, shape.cached, shape.cached + shape.queries});
    }
  }
  return grid_step;
}

double ErrorPercent(double predicted, double measured) {
  return 100.0 * (predicted - measured) / measured;
}

}  // namespace

int64_t GridStep::kv_tokens() const {
  int64_t tokens = 0;
  for (const SequenceShape& s : sequences) tokens += s.cached + s.queries;
  return tokens;
}

int64_t GridStep::query_tokens() const {
  int64_t tokens = 0;
  for (const SequenceShape& s : sequences) tokens += s.queries;
  return tokens;
}

std::vector<GridStep> BuildStepGrid(const StepGridOptions& options) {
  const std::vector<int32_t> batches = {1, 4, 16, 32, 64, 128};
  const std::vector<int32_t> contexts = options.quick
                                            ? std::vector<int32_t>{256, 4096}
                                            : std::vector<int32_t>{256, 1024, 4096, 16384};
  const std::vector<int32_t> chunks = options.quick
                                          ? std::vector<int32_t>{256, 1024, 4096}
                                          : std::vector<int32_t>{256, 512, 1024, 2048, 4096, 8192};
  const std::vector<int32_t> positions = {0, 8192, 24576};
  std::vector<GridStep> grid;
  for (int32_t b : batches) {
    for (int32_t context : contexts) {
      GridStep step = MakeStep("decode", std::vector<SequenceShape>(b, SequenceShape{context, 1}),
                               absl::StrCat("decode b=", b, " ctx=", context));
      if (step.kv_tokens() <= options.max_context_tokens) grid.push_back(std::move(step));
    }
  }
  for (int32_t tokens : chunks) {
    for (int32_t position : positions) {
      grid.push_back(MakeStep("prefill", {SequenceShape{position, tokens}},
                              absl::StrCat("prefill ", tokens, " at ", position)));
    }
  }
  // Shapes an engine runs: decodes with a chunk riding along, unequal contexts.
  struct Mixed {
    int32_t batch, context, position, tokens;
  };
  for (const Mixed& m : std::vector<Mixed>{{8, 4096, 16384, 2048},
                                           {32, 1024, 0, 512},
                                           {16, 8192, 24576, 4096},
                                           {64, 2048, 4096, 256},
                                           {4, 16384, 8192, 1024}}) {
    std::vector<SequenceShape> sequences(m.batch, SequenceShape{m.context, 1});
    sequences.push_back(SequenceShape{m.position, m.tokens});
    grid.push_back(MakeStep("mixed", std::move(sequences),
                            absl::StrCat("mixed b=", m.batch, " ctx=", m.context, " + ", m.tokens,
                                         " at ", m.position)));
  }
  std::vector<SequenceShape> unequal;
  for (int32_t i = 0; i < 24; ++i) unequal.push_back(SequenceShape{512 + 700 * i, 1});
  grid.push_back(MakeStep("mixed", std::move(unequal), "mixed b=24 ctx=512..16612"));
  return grid;
}

absl::Status FitAndReport(const std::vector<GridStep>& grid, const ModelConfig& model,
                          const CalibrationParams& base, const nlohmann::json& header,
                          const std::string& device, const std::string& source,
                          const std::string& json_path, const std::string& md_path,
                          const std::string& fit_path) {
  std::vector<const GridStep*> measured;
  std::vector<MeasuredStep> fit_input;
  for (const GridStep& step : grid) {
    if (step.step.seconds <= 0) continue;
    measured.push_back(&step);
    if (step.kind != "mixed") fit_input.push_back(step.step);
  }
  absl::StatusOr<StepFitResult> fit = FitCalibrationToSteps(model, base, fit_input);
  if (!fit.ok()) return fit.status();

  nlohmann::json out = header;
  out["steps"] = nlohmann::json::array();
  std::string md =
      "| step | kind | query tokens | KV tokens | measured ms (p10–p90) | base model ms (error) | "
      "fitted model ms (error) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
  std::printf("\n%-36s %8s %10s %8s %10s %8s\n", "step", "meas_ms", "base_ms", "err%", "fit_ms",
              "err%");
  for (const GridStep* step : measured) {
    const double measured_ms = step->step.seconds * 1e3;
    const double base_ms = PredictMeasuredStep(model, base, step->step) * 1e3;
    const double fitted_ms = PredictMeasuredStep(model, fit->params, step->step) * 1e3;
    std::printf("%-36s %8.2f %10.2f %+7.1f%% %10.2f %+7.1f%%\n", step->step.label.c_str(),
                measured_ms, base_ms, ErrorPercent(base_ms, measured_ms), fitted_ms,
                ErrorPercent(fitted_ms, measured_ms));
    out["steps"].push_back({{"label", step->step.label},
                            {"kind", step->kind},
                            {"sequences", step->sequences.size()},
                            {"query_tokens", step->query_tokens()},
                            {"kv_tokens", step->kv_tokens()},
                            {"measured_ms", measured_ms},
                            {"p10_ms", step->p10_ms},
                            {"p90_ms", step->p90_ms},
                            {"base_predicted_ms", base_ms},
                            {"fitted_predicted_ms", fitted_ms},
                            {"fitted", step->kind != "mixed"}});
    absl::StrAppend(
        &md, "| ", step->step.label, " | ", step->kind, " | ", step->query_tokens(), " | ",
        step->kv_tokens(), " | ",
        absl::StrFormat("%.2f (%.2f–%.2f)", measured_ms, step->p10_ms, step->p90_ms), " | ",
        absl::StrFormat("%.2f (%+.1f%%)", base_ms, ErrorPercent(base_ms, measured_ms)), " | ",
        absl::StrFormat("%.2f (%+.1f%%)", fitted_ms, ErrorPercent(fitted_ms, measured_ms)),
        " |\n");
  }
  out["fit"] = {{"attn_kv_bytes_per_s", fit->params.attn_kv_bytes_per_s},
                {"attn_flops_per_s", fit->params.attn_flops_per_s},
                {"base_attn_kv_bytes_per_s", base.attn_kv_bytes_per_s},
                {"base_attn_flops_per_s", base.attn_flops_per_s},
                {"bandwidth_estimates", fit->bandwidth_estimates},
                {"flops_rate_estimates", fit->flops_rate_estimates},
                {"linear_step_s", fit->params.linear_step_s},
                {"notes", fit->notes}};
  std::printf("\n# fit: KV-scan %.0f GB/s (base %.0f), attention %.1f TFLOP/s (base %.1f)\n",
              fit->params.attn_kv_bytes_per_s / 1e9, base.attn_kv_bytes_per_s / 1e9,
              fit->params.attn_flops_per_s / 1e12, base.attn_flops_per_s / 1e12);
  for (const std::string& note : fit->notes) std::printf("# note: %s\n", note.c_str());

  auto write = [](const std::string& path, const std::string& text) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    std::ofstream file(path);
    file << text;
    file.close();
    if (!file) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  };
  CalibrationParams fitted = fit->params;
  fitted.device = device;
  fitted.source = source;
  for (const auto& [path, text] :
       {std::pair{json_path, out.dump(2) + "\n"}, std::pair{md_path, md},
        std::pair{fit_path, fit_path.empty() ? std::string()
                                             : CostModel::CalibrationToJson(fitted, model) + "\n"}}) {
    if (absl::Status s = write(path, text); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace asymcache::bench
