// asymcache-calibrate: measures this GPU for the cost model (MSA + cuBLAS, the
// measurements of services/daemon/gpu_calibration.h) and writes the
// calibration JSON (asymcache.calibration.v1). The daemon runs it as a child
// process on start (cuda backend, no --calibration): cuBLAS stays out of the
// daemon's address space (its large static TLS breaks the small-stack threads
// of the metrics HTTP server) and every byte of scratch GPU memory is returned
// when the child exits. Also usable by hand to produce a calibration file.
//
// Exit status: 0 written; 1 measurement failed; 2 bad flags.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "services/daemon/gpu_calibration.h"
#include "util/absl_flags_main.h"

ABSL_FLAG(std::string, out, "", "file to write the calibration JSON to (required)");
ABSL_FLAG(std::string, model, "llama-3-8b", "named model shape the shape flags start from");
ABSL_FLAG(int, num_layers, 0, "override: layers (0 = the named shape's)");
ABSL_FLAG(int, num_q_heads, 0, "override: query heads");
ABSL_FLAG(int, num_kv_heads, 0, "override: KV heads");
ABSL_FLAG(int, head_dim, 0, "override: head dimension");
ABSL_FLAG(int, dtype_bytes, 0, "override: bytes per KV element");
ABSL_FLAG(int, block_tokens, 0, "override: tokens per KV block");
ABSL_FLAG(int64_t, hidden_size, 0, "override: model width");
ABSL_FLAG(int64_t, intermediate_size, 0, "override: MLP width");
ABSL_FLAG(int64_t, vocab_size, 0, "override: vocabulary size");
ABSL_FLAG(int, device, 0, "CUDA device");
ABSL_FLAG(absl::Duration, budget, absl::Seconds(5), "target wall time of the measurements");

namespace {

absl::Status Main() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return absl::InvalidArgumentError("--out is required");
  absl::StatusOr<asymcache::ModelConfig> named = asymcache::ModelConfig::Named(absl::GetFlag(FLAGS_model));
  if (!named.ok()) return absl::InvalidArgumentError(std::string(named.status().message()));
  asymcache::ModelConfig model = *named;
  auto override_int = [](int flag, int* field) { if (flag != 0) *field = flag; };
  auto override_i64 = [](int64_t flag, int64_t* field) { if (flag != 0) *field = flag; };
  override_int(absl::GetFlag(FLAGS_num_layers), &model.num_layers);
  override_int(absl::GetFlag(FLAGS_num_q_heads), &model.num_q_heads);
  override_int(absl::GetFlag(FLAGS_num_kv_heads), &model.num_kv_heads);
  override_int(absl::GetFlag(FLAGS_head_dim), &model.head_dim);
  override_int(absl::GetFlag(FLAGS_dtype_bytes), &model.dtype_bytes);
  override_int(absl::GetFlag(FLAGS_block_tokens), &model.block_tokens);
  override_i64(absl::GetFlag(FLAGS_hidden_size), &model.hidden_size);
  override_i64(absl::GetFlag(FLAGS_intermediate_size), &model.intermediate_size);
  override_i64(absl::GetFlag(FLAGS_vocab_size), &model.vocab_size);
  if (absl::Status s = model.Validate(); !s.ok()) return s;

  asymcache::daemon::GpuCalibrationOptions options;
  options.device = absl::GetFlag(FLAGS_device);
  options.budget = absl::GetFlag(FLAGS_budget);
  absl::StatusOr<asymcache::daemon::GpuCalibrationReport> report =
      asymcache::daemon::CalibrateGpuWithReport(model, options);
  if (!report.ok()) return report.status();
  for (const std::string& line : report->details) {
    std::fprintf(stderr, "[asymcache-calibrate] %s\n", line.c_str());
  }
  const std::string json = asymcache::CostModel::CalibrationToJson(report->params, model);
  std::FILE* f = std::fopen(out.c_str(), "w");
  if (f == nullptr || std::fwrite(json.data(), 1, json.size(), f) != json.size()) {
    if (f != nullptr) std::fclose(f);
    return absl::UnavailableError("cannot write --out " + out);
  }
  std::fclose(f);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  asymcache::ParseDashedAbslFlags(argc, argv, "calibrate_main",
      "Measures this GPU for AsymCache's cost model and writes the calibration JSON.\n"
      "Example: asymcache-calibrate --model=llama-3-8b --out=calibration.json");
  const absl::Status status = Main();
  if (!status.ok()) {
    std::fprintf(stderr, "asymcache-calibrate: %s\n", status.ToString().c_str());
    return absl::IsInvalidArgument(status) ? 2 : 1;
  }
  return 0;
}
