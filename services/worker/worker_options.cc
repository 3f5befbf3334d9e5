#include "services/worker/worker_options.h"

#include "absl/strings/str_cat.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "model/llama_config.h"
#include "services/common/option_checks.h"

namespace asymcache::worker {

WorkerOptions::WorkerOptions() {
  engine.chunking.max_budget_tokens = engine.max_step_tokens - engine.max_running;
}

absl::Status WorkerOptions::Validate() const {
  auto quoted = [](absl::string_view s) { return absl::StrCat("'", s, "'"); };

  if (absl::Status s = client_rate_limit.Validate(); !s.ok()) return s;
  if (listen.empty()) return FlagValueError("listen", "\"\"", "must be HOST:PORT");
  if (metrics_port < -1 || metrics_port > 65535) {
    return FlagValueError("metrics-port", metrics_port, "must be -1 (off), 0 (any) or 1..65535");
  }
  if (metrics_port >= 0 && metrics_host.empty()) {
    return FlagValueError("metrics-host", "\"\"", "must name an address when metrics are on");
  }
  if (daemon.empty()) {
    return absl::InvalidArgumentError(
        "--daemon is required: the gRPC address (host:port) of the co-located cache daemon");
  }
  if (absl::Status s = CheckPositiveFinite("daemon-connect-timeout", daemon_connect_timeout);
      !s.ok()) {
    return s;
  }
  if (backend != "cpu" && backend != "cuda") {
    return FlagValueError("backend", quoted(backend), "must be cpu or cuda");
  }
  if (gpu < 0) return FlagValueError("gpu", gpu, "must be >= 0 (a CUDA device index)");
  if (model_dir.empty()) {
    absl::StatusOr<model::LlamaConfig> shape = model::LlamaConfig::Named(model);
    if (!shape.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--model: ", shape.status().message()));
    }
    if (backend == "cpu" && shape->dtype != msa::DType::kFloat32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--model ", model, " is a bf16/fp16 shape; the cpu backend runs fp32 shapes only "
          "(tiny): use --backend=cuda or --model=tiny"));
    }
  }
  if (cpu_threads < 0) {
    return FlagValueError("cpu-threads", cpu_threads, "must be >= 0 (0 = all cores)");
  }

  const ChunkSchedulerOptions& chunking = engine.chunking;
  const int64_t tile = chunking.tile_tokens;
  if (chunking.fixed_budget_tokens <= 0 || chunking.fixed_budget_tokens % tile != 0) {
    return FlagValueError("fixed-budget-tokens", chunking.fixed_budget_tokens,
                          absl::StrCat("must be a positive multiple of ", tile));
  }
  if (absl::Status s = CheckPositiveFinite("tpot-target", chunking.tpot_target); !s.ok()) return s;
  if (chunking.max_step_latency < absl::ZeroDuration() ||
      chunking.max_step_latency == absl::InfiniteDuration()) {
    return FlagValueError("max-step-latency", absl::FormatDuration(chunking.max_step_latency),
                          "must be finite and >= 0");
  }
  if (chunking.overload_budget_tokens < 0 || chunking.overload_budget_tokens % tile != 0) {
    return FlagValueError("overload-budget-tokens", chunking.overload_budget_tokens,
                          absl::StrCat("must be 0 (off) or a positive multiple of ", tile));
  }
  if (chunking.max_budget_tokens < chunking.min_budget_tokens ||
      chunking.max_budget_tokens % tile != 0) {
    return FlagValueError(
        "max-chunk-tokens", chunking.max_budget_tokens,
        absl::StrCat("must be a multiple of ", tile, " and >= ", chunking.min_budget_tokens));
  }
  if (engine.max_running < 1) {
    return FlagValueError("max-running", engine.max_running, "must be >= 1");
  }
  if (engine.max_queued < engine.max_running) {
    return FlagValueError("max-queued", engine.max_queued,
                          absl::StrCat("must be >= --max-running (", engine.max_running, ")"));
  }
  if (engine.max_step_tokens < 16) {
    return FlagValueError("max-step-tokens", engine.max_step_tokens, "must be >= 16");
  }
  if (chunking.max_budget_tokens + engine.max_running > engine.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-chunk-tokens (", chunking.max_budget_tokens, ") + --max-running (",
        engine.max_running, ") must not exceed --max-step-tokens (", engine.max_step_tokens,
        "): the largest chunk and a full decode batch share one forward pass"));
  }
  if (engine.max_context_tokens < 0) {
    return FlagValueError("max-context-tokens", engine.max_context_tokens,
                          "must be >= 0 (0 = the model's limit)");
  }
  if (absl::Status s = CheckPositiveFinite("rpc-timeout", engine.rpc_timeout); !s.ok()) return s;
  if (absl::Status s = CheckPositiveFinite("admission-timeout", engine.admission_timeout);
      !s.ok()) {
    return s;
  }
  if (engine.admission_retry_interval < absl::ZeroDuration() ||
      engine.admission_retry_interval == absl::InfiniteDuration()) {
    return FlagValueError("admission-retry-interval",
                          absl::FormatDuration(engine.admission_retry_interval),
                          "must be finite and >= 0 (0 = every step)");
  }
  if (engine.defer_pending_tokens < 0) {
    return FlagValueError("defer-pending-tokens", engine.defer_pending_tokens,
                          "must be >= 0 (0 = never defer)");
  }
  if (engine.defer_pending_max_wait <= absl::ZeroDuration() ||
      engine.defer_pending_max_wait == absl::InfiniteDuration()) {
    return FlagValueError("defer-pending-max-wait",
                          absl::FormatDuration(engine.defer_pending_max_wait),
                          "must be finite and > 0");
  }
  if (engine.daemon_check_interval < absl::ZeroDuration() ||
      engine.daemon_check_interval == absl::InfiniteDuration()) {
    return FlagValueError("daemon-check-interval",
                          absl::FormatDuration(engine.daemon_check_interval),
                          "must be finite and >= 0 (0 = never)");
  }

  if (absl::Status s = CheckCoordinatorAddresses(coordinators); !s.ok()) return s;
  if (absl::Status s = CheckMemberIdFlag("member-id", member_id); !s.ok()) return s;
  if (!coordinators.empty() && daemon_member_id.empty()) {
    return absl::InvalidArgumentError(
        "--daemon-member-id is required with --coordinators: the member id of the co-located "
        "daemon, which the coordinators pair this worker with");
  }
  if (absl::Status s = CheckMemberIdFlag("daemon-member-id", daemon_member_id); !s.ok()) {
    return s;
  }
  if (!member_id.empty() && member_id == daemon_member_id) {
    return FlagValueError("member-id", quoted(member_id), "must differ from --daemon-member-id");
  }
  if (absl::Status s = CheckPositiveFinite("coordinator-rpc-timeout", coordinator_rpc_timeout);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPositiveFinite("coordinator-retry-max", coordinator_retry_max);
      !s.ok()) {
    return s;
  }
  if (max_message_bytes < (1 << 20)) {
    return FlagValueError("max-message-bytes", max_message_bytes, "must be >= 1 MiB");
  }
  if (max_stream_buffered_bytes < (int64_t{1} << 20)) {
    return FlagValueError("max-stream-buffered-bytes", max_stream_buffered_bytes,
                          "must be >= 1 MiB");
  }
  if (shutdown_grace < absl::ZeroDuration()) {
    return FlagValueError("shutdown-grace", absl::FormatDuration(shutdown_grace), "must be >= 0");
  }
  if (absl::Status s = CheckPositiveFinite("stats-interval", stats_interval); !s.ok()) return s;
  // What no flag reaches (e.g. chunking.min_budget_tokens). The calibration
  // is not a setting: Start() replaces it with the daemon's, so any valid one
  // stands in for it here.
  EngineOptions rest = engine;
  rest.calibration = CostModel::DefaultCpu(ModelConfig::Named("tiny").value());
  if (absl::Status s = rest.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("engine options: ", s.message()));
  }
  return security.Validate();
}

}  // namespace asymcache::worker
