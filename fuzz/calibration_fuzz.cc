// Fuzz target: the calibration file loader (cachecore/cost_model.h,
// CostModel::ParseCalibration; schema asymcache.calibration.v1,
// docs/calibration.md), read by the daemon's --calibration.
//
// Input: the bytes of a calibration JSON file.
//
// Invariants checked (beyond "no crash, no sanitizer report"):
//   - a refusal is INVALID_ARGUMENT "fuzz.json: ...";
//   - accepted parameters pass CalibrationParams::Validate();
//   - round trip: ParseCalibration(CalibrationToJson(p)) == p, exactly;
//   - the cost model built from them passes through every point it was given
//     and stays finite and non-negative between them.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "fuzz/fuzz_check.h"

namespace asymcache {
namespace {

constexpr absl::string_view kOrigin = "fuzz.json";

bool SameParams(const CalibrationParams& a, const CalibrationParams& b) {
  return a.device == b.device && a.source == b.source && a.linear_step_s == b.linear_step_s &&
         a.attn_flops_per_s == b.attn_flops_per_s &&
         a.attn_kv_bytes_per_s == b.attn_kv_bytes_per_s &&
         a.segment_overhead_s == b.segment_overhead_s && a.step_overhead_s == b.step_overhead_s;
}

void CheckCostModel(const CalibrationParams& params) {
  const CostModel cost(ModelConfig::Named("tiny").value(), params);
  const auto& points = params.linear_step_s;
  for (size_t i = 0; i < points.size(); ++i) {
    const auto& [tokens, seconds] = points[i];
    const double at_point = cost.LinearStepTime(tokens);
    FUZZ_CHECK(std::isfinite(at_point) &&
                   std::abs(at_point - seconds) <= 1e-9 * std::max(seconds, 1e-300),
               "LinearStepTime(", tokens, ") = ", at_point, ", the file says ", seconds);
    if (i > 0) {
      // Half way to the previous point: between the two values.
      const int64_t mid = points[i - 1].first + (tokens - points[i - 1].first) / 2;
      const double between = cost.LinearStepTime(mid);
      FUZZ_CHECK(std::isfinite(between) && between >= 0 &&
                     between <= seconds * (1 + 1e-9) + 1e-300,
                 "LinearStepTime(", mid, ") = ", between, " between points up to ", seconds);
    }
  }
}

void Run(absl::string_view text) {
  absl::StatusOr<CalibrationParams> params = CostModel::ParseCalibration(text, kOrigin);
  if (!params.ok()) {
    FUZZ_CHECK(fuzz::IsRefusalNaming(params.status(), absl::StrCat(kOrigin, ": ")),
               "refusal not INVALID_ARGUMENT naming the file: ", params.status().ToString());
    return;
  }
  const absl::Status valid = params->Validate();
  FUZZ_CHECK(valid.ok(), "accepted but invalid: ", valid.ToString());

  const std::string written = CostModel::CalibrationToJson(*params, ModelConfig::Named("tiny").value());
  absl::StatusOr<CalibrationParams> reread = CostModel::ParseCalibration(written, kOrigin);
  FUZZ_CHECK(reread.ok(), "CalibrationToJson's output is refused: ", reread.status().ToString(),
             "\n--- written:\n", written);
  FUZZ_CHECK(SameParams(*params, *reread), "round trip changed the parameters\n--- written:\n",
             written);
  CheckCostModel(*params);
}

}  // namespace
}  // namespace asymcache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::Run(asymcache::fuzz::AsText(data, size));
  return 0;
}
