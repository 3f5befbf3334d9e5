#include "services/worker/worker_options.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "model/llama_config.h"

namespace asymcache::worker {

namespace {

// coordinator.proto RegisterRequest.member_id: [A-Za-z0-9._:-]{1,128}.
bool ValidMemberId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

WorkerOptions::WorkerOptions() {
  engine.chunking.max_budget_tokens = engine.max_step_tokens - engine.max_running;
}

absl::Status WorkerOptions::Validate() const {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(absl::StrCat("--", field, " ", want, ", got ", value));
  };
  auto positive = [&](absl::string_view field, absl::Duration d) -> absl::Status {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return bad(field, absl::FormatDuration(d), "must be positive and finite");
    }
    return absl::OkStatus();
  };
  auto quoted = [](absl::string_view s) { return absl::StrCat("'", s, "'"); };

  if (listen.empty()) return bad("listen", "\"\"", "must be HOST:PORT");
  if (metrics_port < -1 || metrics_port > 65535) {
    return bad("metrics-port", metrics_port, "must be -1 (off), 0 (any) or 1..65535");
  }
  if (metrics_port >= 0 && metrics_host.empty()) {
    return bad("metrics-host", "\"\"", "must name an address when metrics are on");
  }
  if (daemon.empty()) {
    return absl::InvalidArgumentError(
        "--daemon is required: the gRPC address (host:port) of the co-located cache daemon");
  }
  if (absl::Status s = positive("daemon-connect-timeout", daemon_connect_timeout); !s.ok()) {
    return s;
  }
  if (backend != "cpu" && backend != "cuda") {
    return bad("backend", quoted(backend), "must be cpu or cuda");
  }
  if (gpu < 0) return bad("gpu", gpu, "must be >= 0 (a CUDA device index)");
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
  if (cpu_threads < 0) return bad("cpu-threads", cpu_threads, "must be >= 0 (0 = all cores)");

  const ChunkSchedulerOptions& chunking = engine.chunking;
  const int64_t tile = chunking.tile_tokens;
  if (chunking.fixed_budget_tokens <= 0 || chunking.fixed_budget_tokens % tile != 0) {
    return bad("fixed-budget-tokens", chunking.fixed_budget_tokens,
               absl::StrCat("must be a positive multiple of ", tile));
  }
  if (absl::Status s = positive("tpot-target", chunking.tpot_target); !s.ok()) return s;
  if (chunking.max_budget_tokens < chunking.min_budget_tokens ||
      chunking.max_budget_tokens % tile != 0) {
    return bad("max-chunk-tokens", chunking.max_budget_tokens,
               absl::StrCat("must be a multiple of ", tile, " and >= ",
                            chunking.min_budget_tokens));
  }
  if (engine.max_running < 1) return bad("max-running", engine.max_running, "must be >= 1");
  if (engine.max_queued < engine.max_running) {
    return bad("max-queued", engine.max_queued,
               absl::StrCat("must be >= --max-running (", engine.max_running, ")"));
  }
  if (engine.max_step_tokens < 16) {
    return bad("max-step-tokens", engine.max_step_tokens, "must be >= 16");
  }
  if (chunking.max_budget_tokens + engine.max_running > engine.max_step_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-chunk-tokens (", chunking.max_budget_tokens, ") + --max-running (",
        engine.max_running, ") must not exceed --max-step-tokens (", engine.max_step_tokens,
        "): the largest chunk and a full decode batch share one forward pass"));
  }
  if (engine.max_context_tokens < 0) {
    return bad("max-context-tokens", engine.max_context_tokens,
               "must be >= 0 (0 = the model's limit)");
  }
  if (absl::Status s = positive("rpc-timeout", engine.rpc_timeout); !s.ok()) return s;
  if (absl::Status s = positive("admission-timeout", engine.admission_timeout); !s.ok()) return s;

  absl::flat_hash_set<std::string> seen;
  for (const std::string& c : coordinators) {
    if (c.empty()) return bad("coordinators", "an empty entry", "must be host:port addresses");
    if (!seen.insert(c).second) {
      return bad("coordinators", absl::StrCat("'", c, "' twice"), "must not repeat an address");
    }
  }
  if (!member_id.empty() && !ValidMemberId(member_id)) {
    return bad("member-id", quoted(member_id), "must match [A-Za-z0-9._:-]{1,128}");
  }
  if (!coordinators.empty() && daemon_member_id.empty()) {
    return absl::InvalidArgumentError(
        "--daemon-member-id is required with --coordinators: the member id of the co-located "
        "daemon, which the coordinators pair this worker with");
  }
  if (!daemon_member_id.empty() && !ValidMemberId(daemon_member_id)) {
    return bad("daemon-member-id", quoted(daemon_member_id), "must match [A-Za-z0-9._:-]{1,128}");
  }
  if (!member_id.empty() && member_id == daemon_member_id) {
    return bad("member-id", quoted(member_id), "must differ from --daemon-member-id");
  }
  if (absl::Status s = positive("coordinator-rpc-timeout", coordinator_rpc_timeout); !s.ok()) {
    return s;
  }
  if (absl::Status s = positive("coordinator-retry-max", coordinator_retry_max); !s.ok()) {
    return s;
  }
  if (max_message_bytes < (1 << 20)) {
    return bad("max-message-bytes", max_message_bytes, "must be >= 1 MiB");
  }
  if (shutdown_grace < absl::ZeroDuration()) {
    return bad("shutdown-grace", absl::FormatDuration(shutdown_grace), "must be >= 0");
  }
  if (absl::Status s = positive("stats-interval", stats_interval); !s.ok()) return s;
  // What no flag reaches (e.g. chunking.min_budget_tokens). The calibration
  // is not a setting: Start() replaces it with the daemon's, so any valid one
  // stands in for it here.
  EngineOptions rest = engine;
  rest.calibration = CostModel::DefaultCpu(ModelConfig::Named("tiny").value());
  if (absl::Status s = rest.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("engine options: ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace asymcache::worker
