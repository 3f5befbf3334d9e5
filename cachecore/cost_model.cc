// CostModel implementation. The formulas are DESIGN.md §3.1; the calibration
// schema and the derivation of the built-in defaults are in docs/calibration.md.
#include "cachecore/cost_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/msa_waves.h"

namespace asymcache {
namespace {

using Json = nlohmann::json;

constexpr absl::string_view kSchema = "asymcache.calibration.v1";

bool IsFinite(double v) { return std::isfinite(v); }

// Query heads per kv head (GQA group), at least 1.
int32_t GroupSize(const ModelConfig& model) {
  return model.num_kv_heads > 0 ? std::max(model.num_q_heads / model.num_kv_heads, 1) : 1;
}

// Largest attention.num_sms accepted (an H100 has 132).
constexpr int32_t kMaxNumSms = 4096;

// Checks shared by Validate() and ParseCalibration(); `path` names are the JSON
// paths of docs/calibration.md so a message points at the field in the file.
absl::Status CheckPositive(double v, absl::string_view path) {
  if (!IsFinite(v) || v <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": must be a positive number, got ", v));
  }
  return absl::OkStatus();
}

absl::Status CheckNonNegative(double v, absl::string_view path) {
  if (!IsFinite(v) || v < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": must be a non-negative number, got ", v));
  }
  return absl::OkStatus();
}

absl::Status Prefixed(absl::string_view origin, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(origin, ": ", status.message()));
}

std::string TypeName(const Json& j) { return j.type_name(); }

// Keys starting with '_' are annotations ("_comment") and are ignored; any
// other key not in `known` is rejected so that a typo never silently falls back
// to a default.
absl::Status CheckKeys(const Json& object, absl::string_view path,
                       std::initializer_list<absl::string_view> known) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string& key = it.key();
    if (!key.empty() && key[0] == '_') continue;
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path.empty() ? "" : absl::StrCat(path, "."), key, ": unknown key (known: ",
          absl::StrJoin(known, ", "), "; keys starting with '_' are ignored)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<const Json*> Member(const Json& object, absl::string_view path,
                                   const std::string& key) {
  auto it = object.find(key);
  if (it == object.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.empty() ? "" : absl::StrCat(path, "."), key, ": missing"));
  }
  return &*it;
}

absl::StatusOr<double> NumberAt(const Json& j, absl::string_view path) {
  if (!j.is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": must be a number, got ", TypeName(j)));
  }
  return j.get<double>();
}

absl::StatusOr<int64_t> IntegerAt(const Json& j, absl::string_view path) {
  if (!j.is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": must be an integer, got ", TypeName(j)));
  }
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": integer out of range"));
  }
  return j.get<int64_t>();
}

absl::StatusOr<std::string> StringAt(const Json& j, absl::string_view path) {
  if (!j.is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": must be a string, got ", TypeName(j)));
  }
  return j.get<std::string>();
}

// The optional "model" section: informational (the shape the numbers were
// measured for), but type-checked so a malformed file is still rejected.
absl::Status CheckModelSection(const Json& model) {
  if (!model.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model: must be an object, got ", TypeName(model)));
  }
  absl::Status keys = CheckKeys(model, "model",
                                {"name", "num_layers", "num_q_heads", "num_kv_heads", "head_dim",
                                 "dtype_bytes", "block_tokens"});
  if (!keys.ok()) return keys;
  if (auto it = model.find("name"); it != model.end()) {
    absl::StatusOr<std::string> name = StringAt(*it, "model.name");
    if (!name.ok()) return name.status();
  }
  for (const char* key :
       {"num_layers", "num_q_heads", "num_kv_heads", "head_dim", "dtype_bytes", "block_tokens"}) {
    auto it = model.find(key);
    if (it == model.end()) continue;
    const std::string path = absl::StrCat("model.", key);
    absl::StatusOr<int64_t> v = IntegerAt(*it, path);
    if (!v.ok()) return v.status();
    if (*v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": must be a positive integer, got ", *v));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CalibrationParams::Validate() const {
  if (linear_step_s.empty()) {
    return absl::InvalidArgumentError("linear_step_s: needs at least one [tokens, seconds] point");
  }
  for (size_t i = 0; i < linear_step_s.size(); ++i) {
    const auto& [tokens, seconds] = linear_step_s[i];
    const std::string path = absl::StrCat("linear_step_s[", i, "]");
    if (tokens <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tokens must be a positive integer, got ", tokens));
    }
    absl::Status s = CheckNonNegative(seconds, absl::StrCat(path, ": seconds"));
    if (!s.ok()) return s;
    if (i > 0) {
      const auto& [prev_tokens, prev_seconds] = linear_step_s[i - 1];
      if (tokens <= prev_tokens) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tokens must increase strictly (", tokens, " after ",
                         prev_tokens, ")"));
      }
      if (seconds < prev_seconds) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": seconds must not decrease with tokens (", seconds, " after ",
                         prev_seconds, ")"));
      }
    }
  }
  absl::Status s = CheckPositive(attn_flops_per_s, "attention.flops_per_s");
  if (s.ok()) s = CheckPositive(attn_kv_bytes_per_s, "attention.kv_bytes_per_s");
  if (s.ok()) s = CheckNonNegative(segment_overhead_s, "attention.segment_overhead_s");
  if (s.ok()) s = CheckNonNegative(step_overhead_s, "step_overhead_s");
  if (s.ok() && (num_sms < 0 || num_sms > kMaxNumSms)) {
    s = absl::InvalidArgumentError(absl::StrCat(
        "attention.num_sms: must be an integer in [0, ", kMaxNumSms, "], got ", num_sms));
  }
  return s;
}

CostModel::CostModel(ModelConfig model, CalibrationParams params)
    : model_(std::move(model)), params_(std::move(params)) {}

absl::StatusOr<CalibrationParams> CostModel::ParseCalibration(absl::string_view json,
                                                              absl::string_view origin) {
  const Json doc = Json::parse(json.begin(), json.end(), /*cb=*/nullptr,
                               /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid JSON"));
  }
  auto fail = [&](const absl::Status& s) { return Prefixed(origin, s); };
  if (!doc.is_object()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("(document): must be an object, got ", TypeName(doc))));
  }
  absl::Status keys = CheckKeys(doc, "",
                                {"schema", "device", "source", "model", "linear_step_s",
                                 "attention", "step_overhead_s"});
  if (!keys.ok()) return fail(keys);

  absl::StatusOr<const Json*> schema = Member(doc, "", "schema");
  if (!schema.ok()) return fail(schema.status());
  absl::StatusOr<std::string> schema_name = StringAt(**schema, "schema");
  if (!schema_name.ok()) return fail(schema_name.status());
  if (*schema_name != kSchema) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("schema: expected \"", kSchema, "\", got \"", *schema_name, "\"")));
  }

  CalibrationParams params;
  absl::StatusOr<const Json*> device = Member(doc, "", "device");
  if (!device.ok()) return fail(device.status());
  absl::StatusOr<std::string> device_name = StringAt(**device, "device");
  if (!device_name.ok()) return fail(device_name.status());
  params.device = *std::move(device_name);
  if (auto it = doc.find("source"); it != doc.end()) {
    absl::StatusOr<std::string> source = StringAt(*it, "source");
    if (!source.ok()) return fail(source.status());
    params.source = *std::move(source);
  }
  if (auto it = doc.find("model"); it != doc.end()) {
    absl::Status s = CheckModelSection(*it);
    if (!s.ok()) return fail(s);
  }

  absl::StatusOr<const Json*> points = Member(doc, "", "linear_step_s");
  if (!points.ok()) return fail(points.status());
  if (!(*points)->is_array()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("linear_step_s: must be an array of [tokens, seconds], got ",
                     TypeName(**points))));
  }
  for (size_t i = 0; i < (*points)->size(); ++i) {
    const Json& point = (**points)[i];
    const std::string path = absl::StrCat("linear_step_s[", i, "]");
    if (!point.is_array() || point.size() != 2) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat(path, ": must be a [tokens, seconds] pair")));
    }
    absl::StatusOr<int64_t> tokens = IntegerAt(point[0], absl::StrCat(path, "[0]"));
    if (!tokens.ok()) return fail(tokens.status());
    absl::StatusOr<double> seconds = NumberAt(point[1], absl::StrCat(path, "[1]"));
    if (!seconds.ok()) return fail(seconds.status());
    params.linear_step_s.emplace_back(*tokens, *seconds);
  }

  absl::StatusOr<const Json*> attention = Member(doc, "", "attention");
  if (!attention.ok()) return fail(attention.status());
  if (!(*attention)->is_object()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("attention: must be an object, got ", TypeName(**attention))));
  }
  keys = CheckKeys(**attention, "attention",
                   {"flops_per_s", "kv_bytes_per_s", "segment_overhead_s", "num_sms"});
  if (!keys.ok()) return fail(keys);
  if (auto it = (*attention)->find("num_sms"); it != (*attention)->end()) {
    absl::StatusOr<int64_t> num_sms = IntegerAt(*it, "attention.num_sms");
    if (!num_sms.ok()) return fail(num_sms.status());
    if (*num_sms < 0 || *num_sms > kMaxNumSms) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "attention.num_sms: must be an integer in [0, ", kMaxNumSms, "], got ", *num_sms)));
    }
    params.num_sms = static_cast<int32_t>(*num_sms);
  }
  struct NumberField {
    const Json* object;
    const char* prefix;
    const char* key;
    double* out;
  };
  for (const NumberField& f :
       {NumberField{*attention, "attention", "flops_per_s", &params.attn_flops_per_s},
        NumberField{*attention, "attention", "kv_bytes_per_s", &params.attn_kv_bytes_per_s},
        NumberField{*attention, "attention", "segment_overhead_s", &params.segment_overhead_s},
        NumberField{&doc, "", "step_overhead_s", &params.step_overhead_s}}) {
    absl::StatusOr<const Json*> member = Member(*f.object, f.prefix, f.key);
    if (!member.ok()) return fail(member.status());
    const std::string path =
        *f.prefix == '\0' ? std::string(f.key) : absl::StrCat(f.prefix, ".", f.key);
    absl::StatusOr<double> v = NumberAt(**member, path);
    if (!v.ok()) return fail(v.status());
    *f.out = *v;
  }
  absl::Status valid = params.Validate();
  if (!valid.ok()) return fail(valid);
  return params;
}

absl::StatusOr<CalibrationParams> CostModel::LoadCalibrationFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open calibration file"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return absl::UnavailableError(absl::StrCat(path, ": read error"));
  }
  return ParseCalibration(contents.str(), path);
}

std::string CostModel::CalibrationToJson(const CalibrationParams& params,
                                         const ModelConfig& model) {
  Json points = Json::array();
  for (const auto& [tokens, seconds] : params.linear_step_s) {
    points.push_back(Json::array({tokens, seconds}));
  }
  Json doc = {
      {"schema", std::string(kSchema)},
      {"device", params.device},
      {"source", params.source},
      {"model",
       {{"name", model.name},
        {"num_layers", model.num_layers},
        {"num_q_heads", model.num_q_heads},
        {"num_kv_heads", model.num_kv_heads},
        {"head_dim", model.head_dim},
        {"dtype_bytes", model.dtype_bytes},
        {"block_tokens", model.block_tokens}}},
      {"linear_step_s", std::move(points)},
      {"attention",
       {{"flops_per_s", params.attn_flops_per_s},
        {"kv_bytes_per_s", params.attn_kv_bytes_per_s},
        {"segment_overhead_s", params.segment_overhead_s}}},
      {"step_overhead_s", params.step_overhead_s},
  };
  // Written only when set, so files without the launch model stay as they were.
  if (params.num_sms > 0) doc["attention"]["num_sms"] = params.num_sms;
  return doc.dump(2);
}

CalibrationParams CostModel::DefaultCpu(const ModelConfig& model) {
  // fp32 CPU backend on ~2 cores (docs/calibration.md, "cpu default"):
  // compute 20 GFLOP/s for GEMMs, weights streamed at 10 GB/s.
  constexpr double kGemmFlopsPerS = 20e9;
  constexpr double kWeightBytesPerS = 10e9;
  constexpr double kWeightBytes = 4;  // fp32 weights
  const double params_per_step_token =
      static_cast<double>(model.LinearParamsPerLayer()) * model.num_layers;
  const double lm_head_params = static_cast<double>(model.vocab_size) * model.hidden_size;
  const double per_token_s = 2 * params_per_step_token / kGemmFlopsPerS;
  const double lm_head_s = 2 * lm_head_params / kGemmFlopsPerS;
  const double weight_floor_s =
      (params_per_step_token + lm_head_params) * kWeightBytes / kWeightBytesPerS;
  auto step_time = [&](int64_t tokens) {
    return std::max(weight_floor_s, lm_head_s + per_token_s * static_cast<double>(tokens));
  };
  CalibrationParams p;
  p.device = "cpu";
  p.source = "built-in CostModel::DefaultCpu (docs/calibration.md)";
  // Points at powers of two plus the knee where compute overtakes the weight
  // stream, so interpolation reproduces max(floor, compute) closely.
  std::vector<int64_t> tokens = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  const double knee = (weight_floor_s - lm_head_s) / per_token_s;
  if (knee > 1 && knee < 8192) tokens.push_back(static_cast<int64_t>(std::ceil(knee)));
  std::sort(tokens.begin(), tokens.end());
  tokens.erase(std::unique(tokens.begin(), tokens.end()), tokens.end());
  for (int64_t t : tokens) p.linear_step_s.emplace_back(t, step_time(t));
  p.attn_flops_per_s = 10e9;       // attention on CPU: half the GEMM rate
  p.attn_kv_bytes_per_s = 10e9;    // same memory stream as the weights
  p.segment_overhead_s = 2e-6;     // a loop restart per segment per layer
  p.step_overhead_s = 100e-6;      // thread-pool dispatch of one step
  return p;
}

CalibrationParams CostModel::DefaultH100Llama3_8B() {
  CalibrationParams p;
  p.device = "NVIDIA H100 80GB HBM3";
  p.source =
      "built-in CostModel::DefaultH100Llama3_8B, fitted to shared/docs/H100_REFERENCE.md "
      "(2026-11-26); see docs/calibration.md";
  // "Linear layers of one Llama-3-8B step" table, verbatim.
  p.linear_step_s = {{1, 5.37e-3},    {16, 5.57e-3},   {64, 5.59e-3},    {128, 6.07e-3},
                     {256, 7.11e-3},  {384, 10.91e-3}, {512, 11.20e-3},  {1024, 21.48e-3},
                     {2048, 41.90e-3}, {8192, 169.40e-3}};
  // Rebuild table, large chunks: 332 (1024 @ 8k) and 338 (4096 @ 32k) TFLOP/s.
  p.attn_flops_per_s = 330e12;
  // Decode B0 at batch 32, 16k context: 32*16384*8*128*2*2 B = 2.147 GB per
  // layer in 855.4 us = 2.51e12 B/s.
  p.attn_kv_bytes_per_s = 2.5e12;
  // Guess until the kernels issue measures MSA's per-segment cost.
  p.segment_overhead_s = 1e-6;
  p.step_overhead_s = 50e-6;
  return p;
}

double CostModel::LinearStepTime(int64_t tokens) const {
  const auto& pts = params_.linear_step_s;
  if (tokens <= 0 || pts.empty()) return 0;
  if (tokens <= pts.front().first) return pts.front().second;  // weight-bound floor
  if (pts.size() == 1) {
    return pts.front().second * static_cast<double>(tokens) / pts.front().first;
  }
  // Segment [i-1, i] containing tokens, or the last one for extrapolation.
  size_t i = 1;
  while (i + 1 < pts.size() && pts[i].first < tokens) ++i;
  const auto& [t0, s0] = pts[i - 1];
  const auto& [t1, s1] = pts[i];
  const double slope = (s1 - s0) / static_cast<double>(t1 - t0);
  return s0 + slope * static_cast<double>(tokens - t0);
}

double CostModel::MarginalLinearTime(int64_t step_tokens, int64_t extra_tokens) const {
  step_tokens = std::max<int64_t>(step_tokens, 0);
  extra_tokens = std::max<int64_t>(extra_tokens, 0);
  return std::max(
      0.0, LinearStepTime(step_tokens + extra_tokens) - LinearStepTime(step_tokens));
}

double CostModel::KvBytesPerTokenPerLayer() const {
  return model_.num_layers > 0 ? static_cast<double>(model_.KvBytesPerToken() / model_.num_layers)
                               : 0.0;
}

double CostModel::LayerAttentionTime(double attended_pairs, double kv_tokens_scanned) const {
  const double flops = 4.0 * model_.head_dim * model_.num_q_heads * attended_pairs;
  const double bytes = kv_tokens_scanned * KvBytesPerTokenPerLayer();
  return std::max(flops / params_.attn_flops_per_s, bytes / params_.attn_kv_bytes_per_s);
}

double CostModel::AttentionTime(const AttentionWork& work) const {
  if (!IsPrefillClass(work)) return PerPairAttentionTime(work);
  const double extra_segments = static_cast<double>(std::max<int64_t>(work.segments - 1, 0));
  return PrefillLaunchTime({&work, 1}) +
         model_.num_layers * extra_segments * params_.segment_overhead_s;
}

double CostModel::PerPairAttentionTime(const AttentionWork& work) const {
  const double extra_segments = static_cast<double>(std::max<int64_t>(work.segments - 1, 0));
  const double per_layer = LayerAttentionTime(static_cast<double>(work.attended_pairs),
                                              static_cast<double>(work.kv_tokens_scanned));
  return model_.num_layers * (per_layer + extra_segments * params_.segment_overhead_s);
}

double CostModel::PerPairStepLatency(const AttentionWork& work) const {
  return params_.step_overhead_s + LinearStepTime(work.query_tokens) + PerPairAttentionTime(work);
}

bool CostModel::IsPrefillClass(const AttentionWork& work) const {
  return params_.num_sms > 0 &&
         work.query_tokens * GroupSize(model_) > msa::kMsaDecodeTileRows;
}

double CostModel::PrefillLaunchTime(absl::Span<const AttentionWork> works) const {
  if (params_.num_sms <= 0) return 0;
  std::vector<int32_t> item_keys;
  double kv_tokens = 0;
  const int32_t group = GroupSize(model_);
  for (const AttentionWork& w : works) {
    if (w.query_tokens <= 0) continue;
    // The run of query_tokens positions [first, first + q) attends
    // q * first + q (q + 1) / 2 pairs: solve for its first position.
    const double q = static_cast<double>(w.query_tokens);
    const double first =
        std::max(0.0, (static_cast<double>(w.attended_pairs) - q * (q + 1) / 2) / q);
    const int64_t last_position = static_cast<int64_t>(std::llround(first)) + w.query_tokens - 1;
    msa::MsaPrefillTileKeys(w.query_tokens, last_position, group, model_.num_kv_heads,
                            item_keys);
    kv_tokens += static_cast<double>(w.kv_tokens_scanned);
  }
  if (item_keys.empty()) return 0;
  msa::MsaSplitOptions split;  // the planner's defaults (MsaPlanOptions)
  split.num_sms = params_.num_sms;
  const double makespan_keys =
      static_cast<double>(msa::MsaModelPrefillLaunch(item_keys, split).makespan_keys);
  // One 128-row tile's (query, key) work per key, at one SM's share of P.
  const double tile_flops_per_key = 4.0 * model_.head_dim * msa::kMsaPrefillTileRows;
  const double key_s = tile_flops_per_key * params_.num_sms / params_.attn_flops_per_s;
  return model_.num_layers * std::max(makespan_keys * key_s, kv_tokens * KvBytesPerTokenPerLayer() /
                                                                  params_.attn_kv_bytes_per_s);
}

double CostModel::StepLatency(int64_t total_tokens, absl::Span<const AttentionWork> work) const {
  double t = params_.step_overhead_s + LinearStepTime(total_tokens);
  if (params_.num_sms <= 0) {
    for (const AttentionWork& w : work) t += AttentionTime(w);
    return t;
  }
  std::vector<AttentionWork> prefill;
  for (const AttentionWork& w : work) {
    if (!IsPrefillClass(w)) {
      t += AttentionTime(w);
      continue;
    }
    prefill.push_back(w);
    t += model_.num_layers * static_cast<double>(std::max<int64_t>(w.segments - 1, 0)) *
         params_.segment_overhead_s;
  }
  return t + PrefillLaunchTime(prefill);
}

double CostModel::RebuildCost(int64_t block_tokens, int64_t position, double sigma,
                              int64_t step_tokens) const {
  if (block_tokens <= 0) return 0;
  return MarginalLinearTime(step_tokens, block_tokens) +
         RebuildAttentionCost(block_tokens, position, sigma);
}

double CostModel::RebuildAttentionCost(int64_t block_tokens, int64_t position,
                                       double sigma) const {
  if (block_tokens <= 0) return 0;
  position = std::max<int64_t>(position, 0);
  sigma = std::clamp(sigma, 0.0, 1.0);
  const double b = static_cast<double>(block_tokens);
  const double p = static_cast<double>(position);
  // Query i of the block sees the p earlier tokens and ~b/2 of the block.
  return model_.num_layers *
         (LayerAttentionTime(b * (p + b / 2), sigma * (p + b)) + params_.segment_overhead_s);
}

}  // namespace asymcache
