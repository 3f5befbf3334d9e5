// asymcache-fit-steps: refits a calibration from a step-grid measurement file
// (the JSON that bench/gpu/step_grid_bench.cc writes) on any machine, no GPU:
// the grid is rebuilt from the file's grid options (bench/step_grid.h), each
// step's measured time is taken from the file by label, and the same fit and
// report as the GPU bench's run (FitAndReport) follow. Used to refit committed
// measurements after a change to the fit or to the base calibration.
//
// Exit status: 0 on success; 1 when the file cannot be read or matched, or the
// fit fails (the message says which step or field); 2 on bad flags.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "bench/step_grid.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "nlohmann/json.hpp"
#include "util/absl_flags_main.h"

ABSL_FLAG(std::string, measured, "",
          "step-grid measurement JSON written by step_grid_bench (required)");
ABSL_FLAG(std::string, calibration, "", "base calibration file the fit starts from (required)");
ABSL_FLAG(std::string, shape, "", "named model shape; empty = the measurement file's");
ABSL_FLAG(std::string, out, "", "write the refitted report JSON here");
ABSL_FLAG(std::string, out_md, "", "write the markdown table here");
ABSL_FLAG(std::string, fit_out, "", "write the fitted calibration file here");

namespace asymcache::bench {
namespace {

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << file.rdbuf();
  nlohmann::json doc = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return doc;
}

// The grid of `doc` with each step's measured time (and spread) from `doc`.
absl::StatusOr<std::vector<GridStep>> MeasuredGrid(const nlohmann::json& doc,
                                                   const std::string& path) {
  StepGridOptions options;
  if (const auto grid = doc.find("grid"); grid != doc.end() && grid->is_object()) {
    options.quick = grid->value("quick", options.quick);
    options.max_context_tokens = grid->value("max_context_tokens", options.max_context_tokens);
  }
  const auto steps = doc.find("steps");
  if (steps == doc.end() || !steps->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"steps\" array"));
  }
  std::map<std::string, const nlohmann::json*> by_label;
  for (size_t i = 0; i < steps->size(); ++i) {
    const nlohmann::json& step = (*steps)[i];
    if (!step.is_object() || !step.contains("label") || !step["label"].is_string() ||
        !step.contains("measured_ms") || !step["measured_ms"].is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": steps[", i, "] needs a string label and a number measured_ms"));
    }
    by_label[step["label"].get<std::string>()] = &step;
  }
  std::vector<GridStep> grid = BuildStepGrid(options);
  size_t matched = 0;
  for (GridStep& step : grid) {
    const auto found = by_label.find(step.step.label);
    if (found == by_label.end()) continue;  // not measured: skipped by the fit
    const nlohmann::json& entry = *found->second;
    step.step.seconds = entry["measured_ms"].get<double>() * 1e-3;
    step.p10_ms = entry.value("p10_ms", 0.0);
    step.p90_ms = entry.value("p90_ms", 0.0);
    ++matched;
  }
  if (matched != by_label.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", by_label.size() - matched,
                     " step labels are not in the grid its options describe (quick=",
                     options.quick, ", max_context_tokens=", options.max_context_tokens, ")"));
  }
  return grid;
}

int Run() {
  const std::string measured_path = absl::GetFlag(FLAGS_measured);
  const std::string calibration_path = absl::GetFlag(FLAGS_calibration);
  if (measured_path.empty() || calibration_path.empty()) {
    std::fprintf(stderr, "asymcache-fit-steps: --measured and --calibration are required\n");
    return 2;
  }
  absl::StatusOr<nlohmann::json> doc = ReadJson(measured_path);
  absl::StatusOr<CalibrationParams> base = CostModel::LoadCalibrationFile(calibration_path);
  if (!doc.ok() || !base.ok()) {
    std::fprintf(stderr, "asymcache-fit-steps: %s\n",
                 (!doc.ok() ? doc.status() : base.status()).ToString().c_str());
    return 1;
  }
  std::string shape_name = absl::GetFlag(FLAGS_shape);
  if (shape_name.empty()) shape_name = doc->value("shape", std::string("llama-3-8b"));
  absl::StatusOr<ModelConfig> shape = ModelConfig::Named(shape_name);
  if (!shape.ok()) {
    std::fprintf(stderr, "asymcache-fit-steps: %s\n", shape.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::vector<GridStep>> grid = MeasuredGrid(*doc, measured_path);
  if (!grid.ok()) {
    std::fprintf(stderr, "asymcache-fit-steps: %s\n", grid.status().ToString().c_str());
    return 1;
  }
  const std::string card = doc->value("card", std::string("unknown card"));
  const std::string date = doc->value("date", std::string("unknown date"));
  nlohmann::json header = *doc;
  header.erase("steps");
  header.erase("fit");
  header["refit"] = {{"measured", measured_path}, {"base_calibration", calibration_path}};
  const absl::Status reported = FitAndReport(
      *grid, *shape, *base, header, card,
      absl::StrCat("asymcache-fit-steps --measured=", measured_path, " --calibration=",
                   calibration_path, " (whole CUDA-backend steps measured on ", card, ", ", date,
                   ")"),
      absl::GetFlag(FLAGS_out), absl::GetFlag(FLAGS_out_md), absl::GetFlag(FLAGS_fit_out));
  if (!reported.ok()) {
    std::fprintf(stderr, "asymcache-fit-steps: %s\n", reported.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace asymcache::bench

int main(int argc, char** argv) {
  asymcache::ParseDashedAbslFlags(
      argc, argv, "bench/fit_steps_main.cc",
      "asymcache-fit-steps --measured=step_grid.json --calibration=BASE.json "
      "[--fit_out=FITTED.json] [--out=report.json] [--out_md=table.md]");
  return asymcache::bench::Run();
}
