// CostModel: the one source of latency truth (DESIGN.md §3.1).
//
// Contract: eviction, chunk budgets, routing and rebuild-versus-fetch all ask
// this model; nothing else in the code base holds a GPU number. Parameters come
// from a calibration file (JSON, schema "asymcache.calibration.v1", documented in
// docs/calibration.md) or from one of the built-in defaults below. A CostModel is
// immutable after construction and thread-safe.
//
// Units: seconds, tokens, bytes, FLOPs.
#ifndef ASYMCACHE_CACHECORE_COST_MODEL_H_
#define ASYMCACHE_CACHECORE_COST_MODEL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "cachecore/model_config.h"

namespace asymcache {

// Calibrated hardware parameters for one device and one model shape.
struct CalibrationParams {
  std::string device = "cpu";   // e.g. "NVIDIA H100 80GB HBM3"
  std::string source;           // how it was produced (command, date)
  // Linear layers of one whole step (all layers, QKV+O+MLP, LM head for the
  // step's sampled tokens) as a function of tokens in the step: points
  // (tokens, seconds) sorted by tokens, interpolated linearly between points and
  // extrapolated with the last segment's slope. At least one point.
  std::vector<std::pair<int64_t, double>> linear_step_s;
  double attn_flops_per_s = 0;     // P_att: achieved attention FLOP rate
  double attn_kv_bytes_per_s = 0;  // BW_att: achieved KV-scan bandwidth
  double segment_overhead_s = 0;   // c_seg: per extra segment per layer
  double step_overhead_s = 0;      // fixed cost of one engine step (launches, sync)
  // Streaming multiprocessors of the GPU (H100 / H200 SXM: 132), JSON
  // "attention.num_sms", optional. > 0: a step's prefill attention (every
  // sequence with more query rows than the decode tile) is priced as the MSA
  // launch the planner would run: its query tiles, the planner's split-KV
  // choice and the list-scheduled makespan on num_sms SMs (kernels/msa_waves.h),
  // each 128-row tile's key at attn_flops_per_s / num_sms, so a deep chunk
  // of a few hundred tokens that leaves a wave half empty costs what it does
  // on the GPU. 0 (the default, and the CPU's): every sequence's attention at
  // attn_flops_per_s per pair (docs/calibration.md, "Prefill waves").
  int32_t num_sms = 0;

  absl::Status Validate() const;   // INVALID_ARGUMENT naming the bad field
};

// Attention work of one sequence in one step.
struct AttentionWork {
  int64_t query_tokens = 0;      // query rows (holes rebuilt + new tokens, or 1 for decode)
  int64_t attended_pairs = 0;    // sum over query tokens of keys visible to it
  int64_t kv_tokens_scanned = 0; // distinct KV tokens read (the scan, shared by packed queries)
  int64_t segments = 1;          // query segments (>1 adds segment overhead)
};

class CostModel {
 public:
  CostModel(ModelConfig model, CalibrationParams params);

  // Parses a calibration JSON document. INVALID_ARGUMENT with the JSON path of
  // the offending field on any schema violation; `origin` (e.g. a file name) is
  // prefixed to messages.
  static absl::StatusOr<CalibrationParams> ParseCalibration(absl::string_view json,
                                                            absl::string_view origin);
  // Reads and parses a calibration file; NOT_FOUND if it does not exist.
  static absl::StatusOr<CalibrationParams> LoadCalibrationFile(const std::string& path);
  // Serializes params (and the model shape they were measured for) as JSON.
  static std::string CalibrationToJson(const CalibrationParams& params, const ModelConfig& model);

  // Built-in defaults. "cpu": the fp32 CPU backend on a small core count.
  // "h100-llama-3-8b": fitted to ../shared/docs/H100_REFERENCE.md until a
  // measured calibration file replaces it.
  static CalibrationParams DefaultCpu(const ModelConfig& model);
  static CalibrationParams DefaultH100Llama3_8B();

  const ModelConfig& model() const { return model_; }
  const CalibrationParams& params() const { return params_; }

  // Linear-layer time of a step holding `tokens` tokens (all layers).
  double LinearStepTime(int64_t tokens) const;
  // LinearStepTime(step_tokens + extra) - LinearStepTime(step_tokens).
  double MarginalLinearTime(int64_t step_tokens, int64_t extra_tokens) const;
  // Attention time over all layers for one sequence's work: L * max(flops/P, bytes/BW)
  // + L * (segments-1) * c_seg; with num_sms > 0 a prefill-class work's first
  // term is its launch alone (PrefillLaunchTime of that one work).
  double AttentionTime(const AttentionWork& work) const;
  // The per-pair formula whatever num_sms says: L * max(flops/P, bytes/BW) +
  // L * (segments-1) * c_seg. For estimates of a whole prompt or context
  // (routing, a sequence's expected rebuild) that will run as many chunked
  // steps: the launch of one imagined step of all of it says nothing about
  // those, and would cost host time in proportion to its tiles.
  double PerPairAttentionTime(const AttentionWork& work) const;
  // PerPairAttentionTime plus step overhead and the linear time of the work's
  // query tokens: the per-pair estimate of running `work` as one step.
  double PerPairStepLatency(const AttentionWork& work) const;
  // Predicted latency of one step: step overhead + linear(total tokens) + attention:
  // with num_sms == 0 the sum of AttentionTime; with num_sms > 0 the decode-class
  // works' AttentionTime plus ONE launch for all prefill-class works together
  // (they share the GPU's waves), plus their segment overheads.
  double StepLatency(int64_t total_tokens, absl::Span<const AttentionWork> work) const;
  // With num_sms > 0: whether `work` runs in the prefill launch (more query rows,
  // query_tokens x GQA group, than the decode kernel's 16-row tile).
  bool IsPrefillClass(const AttentionWork& work) const;
  // With num_sms > 0, the prefill launch of `works` (all of them, whatever their
  // class) over all layers, without segment overheads: L * max(makespan keys x
  // one 128-row tile's time per key, bytes / BW). Each work's query rows are
  // taken as one run of query_tokens consecutive positions with its
  // attended_pairs (a contiguous chunk exactly; a sequence's holes as the run
  // of the same depth). 0 when num_sms == 0 or nothing is prefill-class.
  double PrefillLaunchTime(absl::Span<const AttentionWork> works) const;

  // DESIGN.md §3.1: cost to rebuild `block_tokens` tokens starting at absolute
  // position `position`, riding in a step that already holds `step_tokens`
  // tokens (marginal linear cost), with scan-sharing factor `sigma` in [0, 1]
  // (1 = isolated hole, 0 = packed with other queries of the sequence).
  // Equals MarginalLinearTime(step_tokens, block_tokens) +
  // RebuildAttentionCost(block_tokens, position, sigma).
  double RebuildCost(int64_t block_tokens, int64_t position, double sigma,
                     int64_t step_tokens) const;
  // The load-independent part of RebuildCost: attention over all layers,
  // L * max(flops/P, sigma * bytes/BW) with flops of b queries attending to
  // position + their causal prefix, plus one segment overhead per layer
  // (L * c_seg). 0 if block_tokens <= 0; position is floored at 0 and sigma
  // clamped into [0, 1] as in RebuildCost.
  double RebuildAttentionCost(int64_t block_tokens, int64_t position, double sigma) const;

 private:
  // Attention time of ONE layer: max(flops/P, bytes/BW) for `attended_pairs`
  // (query, key) pairs and `kv_tokens_scanned` KV tokens read (fractional
  // values allowed: a rebuild's causal half-block and scan sharing).
  double LayerAttentionTime(double attended_pairs, double kv_tokens_scanned) const;
  // Bytes of K and V one token holds in one layer (0 for a model without layers).
  double KvBytesPerTokenPerLayer() const;

  ModelConfig model_;
  CalibrationParams params_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_COST_MODEL_H_
