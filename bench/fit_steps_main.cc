// asymcache-fit-steps: the cost model against measured steps, on any machine.
//
//   --measured=step_grid.json --calibration=BASE
//     Refits a calibration from a step-grid measurement file (the JSON that
//     bench/gpu/step_grid_bench.cc writes): the grid is rebuilt from the
//     file's grid options (bench/step_grid.h), each step's measured time is
//     taken from the file by label, and the same fit and report as the GPU
//     bench's run (FitAndReport) follow. Used to refit committed measurements
//     after a change to the fit or to the base calibration.
//   --trace=STEPS.jsonl --calibration=CAL
//     Compares CAL's prediction of every step of a worker's --step-trace
//     (services/worker/step_trace.h) with the step's measured forward time:
//     per class of step (decode only, prefill only, mixed) the count, the
//     measured and predicted totals and their ratio (what a run's latency
//     prediction inherits), and the median, p10 and p90 of the per-step
//     relative error. --out writes the same as JSON. It also reports the
//     engine's time outside the forward (step_ms - forward_ms: daemon RPCs,
//     scheduling, bookkeeping), which whole-step grids (forward only) never
//     see; --fit_out then writes CAL with that mean added to
//     step_overhead_s, so the simulator charges it to every step.
//
// Exit status: 0 on success; 1 when a file cannot be read or matched, or the
// fit fails (the message says which step, line or field); 2 on bad flags.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
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
#include "cachecore/step_calibration_fit.h"
#include "nlohmann/json.hpp"
#include "util/absl_flags_main.h"

ABSL_FLAG(std::string, measured, "",
          "step-grid measurement JSON written by step_grid_bench (or --trace)");
ABSL_FLAG(std::string, trace, "", "a worker's --step-trace file to compare the model with");
ABSL_FLAG(std::string, calibration, "", "base calibration file the fit starts from (required)");
ABSL_FLAG(std::string, shape, "",
          "named model shape; empty = the measurement file's (the trace header's)");
ABSL_FLAG(std::string, out, "", "write the report JSON here");
ABSL_FLAG(std::string, out_md, "", "write the markdown table here");
ABSL_FLAG(std::string, fit_out, "",
          "write the fitted calibration file here (--trace: CAL plus the engine time "
          "outside the forward)");

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

// One trace line as the cost model's step; `line` (1-based) names it in errors.
absl::StatusOr<MeasuredStep> TraceStep(const nlohmann::json& entry, size_t line,
                                       const std::string& path) {
  const std::string where = absl::StrCat(path, ":", line);
  if (!entry.is_object() || !entry.contains("decodes") || !entry["decodes"].is_array() ||
      !entry.contains("chunks") || !entry["chunks"].is_array() ||
      !entry.contains("forward_ms") || !entry["forward_ms"].is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": needs \"decodes\", \"chunks\" arrays and a number forward_ms"));
  }
  MeasuredStep step;
  step.label = absl::StrCat("line ", line);
  SequenceId next_decode = 0;
  for (const nlohmann::json& context : entry["decodes"]) {
    if (!context.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": a decode context is not an integer"));
    }
    // Decodes are separate sequences; their ids only have to differ from the chunks'.
    step.decodes.push_back(DecodeWork{(SequenceId{1} << 62) + next_decode++,
                                      context.get<int64_t>()});
  }
  for (const nlohmann::json& chunk : entry["chunks"]) {
    if (!chunk.is_array() || chunk.size() != 3 || !chunk[0].is_number_unsigned() ||
        !chunk[1].is_number_integer() || !chunk[2].is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": a chunk is not [sequence, begin, end]"));
    }
    step.chunks.push_back(
        Chunk{chunk[0].get<SequenceId>(), chunk[1].get<int64_t>(), chunk[2].get<int64_t>()});
  }
  step.seconds = entry["forward_ms"].get<double>() * 1e-3;
  return step;
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
}

// The cost-model shape a trace's header records.
absl::StatusOr<ModelConfig> TraceModel(const nlohmann::json& header, const std::string& path) {
  const auto model = header.find("model");
  if (model == header.end() || !model->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ":1: no \"model\" in the header; pass --shape"));
  }
  ModelConfig shape;
  shape.name = model->value("name", shape.name);
  shape.num_layers = model->value("num_layers", 0);
  shape.num_q_heads = model->value("num_q_heads", 0);
  shape.num_kv_heads = model->value("num_kv_heads", 0);
  shape.head_dim = model->value("head_dim", 0);
  shape.dtype_bytes = model->value("dtype_bytes", 0);
  shape.block_tokens = model->value("block_tokens", 0);
  shape.hidden_size = model->value("hidden_size", int64_t{0});
  shape.intermediate_size = model->value("intermediate_size", int64_t{0});
  shape.vocab_size = model->value("vocab_size", int64_t{0});
  if (absl::Status s = shape.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":1: model: ", s.message()));
  }
  return shape;
}

// `shape`: --shape's, or nullopt for the trace header's. `fit_out`: where to
// write `calibration` plus the trace's mean engine time outside the forward
// (empty = nowhere).
int RunTrace(const std::string& trace_path, const CalibrationParams& calibration,
             std::optional<ModelConfig> shape, const std::string& fit_out) {
  std::ifstream file(trace_path);
  if (!file) {
    std::fprintf(stderr, "asymcache-fit-steps: NOT_FOUND: %s: cannot open\n", trace_path.c_str());
    return 1;
  }
  struct Class {
    explicit Class(const char* n) : name(n) {}
    const char* name;
    size_t steps = 0;
    double measured_s = 0;
    double predicted_s = 0;
    std::vector<double> errors;
  };
  Class classes[3] = {Class("decode only"), Class("prefill only"), Class("mixed")};
  // Steps with both times, and their sums (engine time outside the forward).
  size_t timed_steps = 0;
  double step_s = 0;
  double outside_s = 0;
  std::string text;
  size_t line = 0;
  while (std::getline(file, text)) {
    ++line;
    if (text.empty()) continue;
    const nlohmann::json entry = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (line == 1) {
      if (!entry.is_object() || entry.value("schema", std::string()) != "asymcache.step_trace.v1") {
        std::fprintf(stderr,
                     "asymcache-fit-steps: INVALID_ARGUMENT: %s:1: not an "
                     "asymcache.step_trace.v1 file (no schema line)\n",
                     trace_path.c_str());
        return 1;
      }
      if (!shape.has_value()) {
        absl::StatusOr<ModelConfig> recorded = TraceModel(entry, trace_path);
        if (!recorded.ok()) {
          std::fprintf(stderr, "asymcache-fit-steps: %s\n", recorded.status().ToString().c_str());
          return 1;
        }
        shape = *recorded;
      }
      continue;
    }
    absl::StatusOr<MeasuredStep> step = TraceStep(entry, line, trace_path);
    if (!step.ok()) {
      std::fprintf(stderr, "asymcache-fit-steps: %s\n", step.status().ToString().c_str());
      return 1;
    }
    if (step->seconds <= 0) continue;
    Class& c = classes[step->chunks.empty() ? 0 : step->decodes.empty() ? 1 : 2];
    if (!shape.has_value()) {
      std::fprintf(stderr, "asymcache-fit-steps: INVALID_ARGUMENT: %s: no header line\n",
                   trace_path.c_str());
      return 1;
    }
    if (entry.contains("step_ms") && entry["step_ms"].is_number()) {
      const double whole = entry["step_ms"].get<double>() * 1e-3;
      if (whole < step->seconds) {
        std::fprintf(stderr,
                     "asymcache-fit-steps: INVALID_ARGUMENT: %s:%zu: step_ms is less than "
                     "forward_ms\n",
                     trace_path.c_str(), line);
        return 1;
      }
      ++timed_steps;
      step_s += whole;
      outside_s += whole - step->seconds;
    }
    const double predicted = PredictMeasuredStep(*shape, calibration, *step);
    ++c.steps;
    c.measured_s += step->seconds;
    c.predicted_s += predicted;
    c.errors.push_back((predicted - step->seconds) / step->seconds);
  }
  nlohmann::json out = {{"trace", trace_path}, {"classes", nlohmann::json::array()}};
  std::printf("%-13s %7s %12s %12s %9s %9s %9s %9s\n", "steps", "count", "measured_s",
              "predicted_s", "total_err", "p10_err", "p50_err", "p90_err");
  Class all("all");
  for (const Class& c : classes) {
    all.steps += c.steps;
    all.measured_s += c.measured_s;
    all.predicted_s += c.predicted_s;
    all.errors.insert(all.errors.end(), c.errors.begin(), c.errors.end());
  }
  for (const Class* c : {&classes[0], &classes[1], &classes[2], &all}) {
    if (c->steps == 0) continue;
    const double total = (c->predicted_s - c->measured_s) / c->measured_s;
    std::printf("%-13s %7zu %12.3f %12.3f %+8.1f%% %+8.1f%% %+8.1f%% %+8.1f%%\n", c->name,
                c->steps, c->measured_s, c->predicted_s, 100 * total,
                100 * Quantile(c->errors, 0.1), 100 * Quantile(c->errors, 0.5),
                100 * Quantile(c->errors, 0.9));
    out["classes"].push_back({{"class", c->name},
                              {"steps", c->steps},
                              {"measured_s", c->measured_s},
                              {"predicted_s", c->predicted_s},
                              {"total_error", total},
                              {"p10_error", Quantile(c->errors, 0.1)},
                              {"p50_error", Quantile(c->errors, 0.5)},
                              {"p90_error", Quantile(c->errors, 0.9)}});
  }
  if (all.steps == 0) {
    std::fprintf(stderr, "asymcache-fit-steps: INVALID_ARGUMENT: %s: no step with a forward time\n",
                 trace_path.c_str());
    return 1;
  }
  const double outside_per_step = timed_steps > 0 ? outside_s / static_cast<double>(timed_steps) : 0;
  if (timed_steps > 0) {
    std::printf("engine time outside the forward: %.3f ms per step (%.1f%% of %zu steps' time)\n",
                outside_per_step * 1e3, 100 * outside_s / step_s, timed_steps);
    out["engine_outside_forward_s_per_step"] = outside_per_step;
    out["engine_outside_forward_fraction"] = outside_s / step_s;
  }
  if (!fit_out.empty()) {
    if (timed_steps == 0) {
      std::fprintf(stderr,
                   "asymcache-fit-steps: INVALID_ARGUMENT: %s: no step has step_ms; nothing to "
                   "add to step_overhead_s\n",
                   trace_path.c_str());
      return 1;
    }
    CalibrationParams with_engine = calibration;
    with_engine.step_overhead_s += outside_per_step;
    with_engine.source = absl::StrCat(calibration.source, "; + ", outside_per_step * 1e3,
                                      " ms per step of engine time outside the forward from ",
                                      trace_path, " (asymcache-fit-steps --trace)");
    std::ofstream cal(fit_out);
    cal << CostModel::CalibrationToJson(with_engine, *shape) << "\n";
    if (!cal) {
      std::fprintf(stderr, "asymcache-fit-steps: INTERNAL: cannot write %s\n", fit_out.c_str());
      return 1;
    }
  }
  const std::string out_path = absl::GetFlag(FLAGS_out);
  if (!out_path.empty()) {
    std::ofstream json(out_path);
    json << out.dump(2) << "\n";
    if (!json) {
      std::fprintf(stderr, "asymcache-fit-steps: INTERNAL: cannot write %s\n", out_path.c_str());
      return 1;
    }
  }
  return 0;
}

int Run() {
  const std::string measured_path = absl::GetFlag(FLAGS_measured);
  const std::string trace_path = absl::GetFlag(FLAGS_trace);
  const std::string calibration_path = absl::GetFlag(FLAGS_calibration);
  if (measured_path.empty() == trace_path.empty() || calibration_path.empty()) {
    std::fprintf(stderr,
                 "asymcache-fit-steps: --calibration and one of --measured and --trace are "
                 "required\n");
    return 2;
  }
  if (!trace_path.empty()) {
    absl::StatusOr<CalibrationParams> calibration =
        CostModel::LoadCalibrationFile(calibration_path);
    if (!calibration.ok()) {
      std::fprintf(stderr, "asymcache-fit-steps: %s\n", calibration.status().ToString().c_str());
      return 1;
    }
    std::optional<ModelConfig> shape;
    if (!absl::GetFlag(FLAGS_shape).empty()) {
      absl::StatusOr<ModelConfig> named = ModelConfig::Named(absl::GetFlag(FLAGS_shape));
      if (!named.ok()) {
        std::fprintf(stderr, "asymcache-fit-steps: %s\n", named.status().ToString().c_str());
        return 1;
      }
      shape = *named;
    }
    return RunTrace(trace_path, *calibration, shape, absl::GetFlag(FLAGS_fit_out));
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
      "[--fit_out=FITTED.json] [--out=report.json] [--out_md=table.md]\n"
      "       asymcache-fit-steps --trace=STEPS.jsonl --calibration=CAL.json [--shape=NAME] "
      "[--fit_out=CAL_WITH_ENGINE.json] [--out=report.json]");
  return asymcache::bench::Run();
}
