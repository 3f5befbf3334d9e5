#include "services/daemon/daemon_options.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "services/common/option_checks.h"

namespace asymcache {

DaemonOptions::DaemonOptions() {
  absl::StatusOr<ModelConfig> tiny = ModelConfig::Named("tiny");
  ABSL_RAW_CHECK(tiny.ok(), "the tiny model shape must exist");
  model = *tiny;
}

absl::Status DaemonOptions::Validate() const {
  if (listen.empty()) return FlagValueError("listen", "\"\"", "must be HOST:PORT");
  if (metrics_port < -1 || metrics_port > 65535) {
    return FlagValueError("metrics-port", metrics_port, "must be -1 (off), 0 (any) or 1..65535");
  }
  if (absl::Status s = model.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model shape: ", s.message()));
  }
  if (backend != "host" && backend != "cuda") {
    return FlagValueError("backend", backend, "must be host or cuda");
  }
  if (cuda_device < 0) return FlagValueError("cuda-device", cuda_device, "must be >= 0");
  if (backend == "cuda") {
    // Workers (and the on-start calibration) run MSA on this pool.
    const int group = model.num_q_heads / model.num_kv_heads;
    if (model.dtype_bytes != 2 || (model.head_dim != 64 && model.head_dim != 128 &&
                                   model.head_dim != 256) ||
        (group != 1 && group != 2 && group != 4 && group != 8)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--backend=cuda runs MSA, which needs a 16-bit KV dtype, head_dim 64/128/256 and "
          "Hq/Hkv in {1,2,4,8}; model '", model.name, "' has dtype_bytes ", model.dtype_bytes,
          ", head_dim ", model.head_dim, ", Hq/Hkv ", group));
    }
  }
  if ((pool_bytes > 0) == (pool_fraction > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "exactly one of --pool-bytes (", pool_bytes, ") and --pool-fraction (", pool_fraction,
        ") must be positive"));
  }
  if (pool_bytes < 0) return FlagValueError("pool-bytes", pool_bytes, "must be >= 0");
  if (!(pool_fraction >= 0 && pool_fraction <= 1)) {  // NaN fails too
    return FlagValueError("pool-fraction", pool_fraction, "must be in (0, 1]");
  }
  {
    const std::vector<std::string> known = EvictionPolicyNames();
    if (std::find(known.begin(), known.end(), policy) == known.end()) {
      return FlagValueError("policy", absl::StrCat("'", policy, "'"),
                            absl::StrCat("must be one of ", absl::StrJoin(known, ", ")));
    }
  }
  if (absl::Status s = chunking.Validate(); !s.ok()) return s;
  if (calibration_budget <= absl::ZeroDuration()) {
    return FlagValueError("calibration-budget", absl::FormatDuration(calibration_budget),
                          "must be positive");
  }
  if (lease_timeout <= absl::ZeroDuration()) {
    return FlagValueError("lease-timeout", absl::FormatDuration(lease_timeout), "must be positive");
  }
  if (export_timeout <= absl::ZeroDuration()) {
    return FlagValueError("export-timeout", absl::FormatDuration(export_timeout),
                          "must be positive");
  }
  if (maintenance_interval <= absl::ZeroDuration()) {
    return FlagValueError("maintenance-interval", absl::FormatDuration(maintenance_interval),
                          "must be positive");
  }
  if (max_context_tokens < 1 || max_context_tokens > (int64_t{1} << 30)) {
    return FlagValueError("max-context-tokens", max_context_tokens, "must be in [1, 2^30]");
  }
  if (max_message_bytes < (1 << 20)) {
    return FlagValueError("max-message-bytes", max_message_bytes, "must be >= 1 MiB");
  }
  if (max_context_tokens * 4 + (1 << 16) > max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-message-bytes ", max_message_bytes, " cannot carry --max-context-tokens ",
        max_context_tokens, " (4 bytes a token plus headers)"));
  }
  if (max_transfer_blocks < 1) {
    return FlagValueError("max-transfer-blocks", max_transfer_blocks, "must be >= 1");
  }
  if (session_chain_token_budget < 0) {
    return FlagValueError("session-chain-tokens", session_chain_token_budget, "must be >= 0");
  }
  if (event_history < 1) return FlagValueError("event-history", event_history, "must be >= 1");
  if (max_watchers < 1) return FlagValueError("max-watchers", max_watchers, "must be >= 1");
  if (absl::Status s = agent_pins.Validate(); !s.ok()) return s;
  if (shutdown_grace < absl::ZeroDuration() || shutdown_grace > absl::Hours(1)) {
    return FlagValueError("shutdown-grace", absl::FormatDuration(shutdown_grace),
                          "must be in [0, 1h]");
  }
  if (absl::Status s = CheckCoordinatorAddresses(coordinators); !s.ok()) return s;
  if (absl::Status s = CheckMemberIdFlag("member-id", member_id); !s.ok()) return s;
  if (role != "both" && role != "prefill" && role != "decode") {
    return FlagValueError("role", absl::StrCat("'", role, "'"), "must be both, prefill or decode");
  }
  if (gpu.has_value() && *gpu < -1) return FlagValueError("gpu", *gpu, "must be >= -1 (or auto)");
  for (const auto& [name, d] :
       {std::pair<const char*, absl::Duration>{"coordinator-rpc-timeout", coordinator_rpc_timeout},
        {"coordinator-retry-max", coordinator_retry_max}}) {
    if (d <= absl::ZeroDuration() || d > absl::Hours(1)) {
      return FlagValueError(name, absl::FormatDuration(d), "must be in (0, 1h]");
    }
  }
  for (const auto& [name, d] : {std::pair<const char*, absl::Duration>{"lease-timeout", lease_timeout},
                                {"export-timeout", export_timeout},
                                {"maintenance-interval", maintenance_interval},
                                {"calibration-budget", calibration_budget}}) {
    if (d > absl::Hours(24)) {
      return FlagValueError(name, absl::FormatDuration(d), "must be at most 24h");
    }
  }
  return security.Validate();
}

}  // namespace asymcache
