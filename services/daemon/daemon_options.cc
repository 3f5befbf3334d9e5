#include "services/daemon/daemon_options.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace asymcache {

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

DaemonOptions::DaemonOptions() {
  absl::StatusOr<ModelConfig> tiny = ModelConfig::Named("tiny");
  ABSL_RAW_CHECK(tiny.ok(), "the tiny model shape must exist");
  model = *tiny;
}

absl::Status DaemonOptions::Validate() const {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(absl::StrCat("--", field, " ", want, ", got ", value));
  };
  if (listen.empty()) return bad("listen", "\"\"", "must be HOST:PORT");
  if (metrics_port < -1 || metrics_port > 65535) {
    return bad("metrics-port", metrics_port, "must be -1 (off), 0 (any) or 1..65535");
  }
  if (absl::Status s = model.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model shape: ", s.message()));
  }
  if (backend != "host" && backend != "cuda") return bad("backend", backend, "must be host or cuda");
  if (cuda_device < 0) return bad("cuda-device", cuda_device, "must be >= 0");
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
  if (pool_bytes < 0) return bad("pool-bytes", pool_bytes, "must be >= 0");
  if (!(pool_fraction >= 0 && pool_fraction <= 1)) {  // NaN fails too
    return bad("pool-fraction", pool_fraction, "must be in (0, 1]");
  }
  {
    const std::vector<std::string> known = EvictionPolicyNames();
    if (std::find(known.begin(), known.end(), policy) == known.end()) {
      return bad("policy", absl::StrCat("'", policy, "'"),
                 absl::StrCat("must be one of ", absl::StrJoin(known, ", ")));
    }
  }
  if (absl::Status s = chunking.Validate(); !s.ok()) return s;
  if (calibration_budget <= absl::ZeroDuration()) {
    return bad("calibration-budget", absl::FormatDuration(calibration_budget), "must be positive");
  }
  if (lease_timeout <= absl::ZeroDuration()) {
    return bad("lease-timeout", absl::FormatDuration(lease_timeout), "must be positive");
  }
  if (export_timeout <= absl::ZeroDuration()) {
    return bad("export-timeout", absl::FormatDuration(export_timeout), "must be positive");
  }
  if (maintenance_interval <= absl::ZeroDuration()) {
    return bad("maintenance-interval", absl::FormatDuration(maintenance_interval),
               "must be positive");
  }
  if (max_context_tokens < 1 || max_context_tokens > (int64_t{1} << 30)) {
    return bad("max-context-tokens", max_context_tokens, "must be in [1, 2^30]");
  }
  if (max_message_bytes < (1 << 20)) {
    return bad("max-message-bytes", max_message_bytes, "must be >= 1 MiB");
  }
  if (max_context_tokens * 4 + (1 << 16) > max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-message-bytes ", max_message_bytes, " cannot carry --max-context-tokens ",
        max_context_tokens, " (4 bytes a token plus headers)"));
  }
  if (max_transfer_blocks < 1) return bad("max-transfer-blocks", max_transfer_blocks, "must be >= 1");
  if (session_chain_token_budget < 0) {
    return bad("session-chain-tokens", session_chain_token_budget, "must be >= 0");
  }
  if (event_history < 1) return bad("event-history", event_history, "must be >= 1");
  if (max_watchers < 1) return bad("max-watchers", max_watchers, "must be >= 1");
  if (absl::Status s = agent_pins.Validate(); !s.ok()) return s;
  if (shutdown_grace < absl::ZeroDuration() || shutdown_grace > absl::Hours(1)) {
    return bad("shutdown-grace", absl::FormatDuration(shutdown_grace), "must be in [0, 1h]");
  }
  {
    absl::flat_hash_set<std::string> seen;
    for (const std::string& c : coordinators) {
      if (c.empty()) return bad("coordinators", "an empty entry", "must be host:port addresses");
      if (!seen.insert(c).second) {
        return bad("coordinators", absl::StrCat("'", c, "' twice"), "must not repeat an address");
      }
    }
  }
  if (!member_id.empty() && !ValidMemberId(member_id)) {
    return bad("member-id", absl::StrCat("'", member_id, "'"), "must match [A-Za-z0-9._:-]{1,128}");
  }
  if (role != "both" && role != "prefill" && role != "decode") {
    return bad("role", absl::StrCat("'", role, "'"), "must be both, prefill or decode");
  }
  if (gpu.has_value() && *gpu < -1) return bad("gpu", *gpu, "must be >= -1 (or auto)");
  for (const auto& [name, d] :
       {std::pair<const char*, absl::Duration>{"coordinator-rpc-timeout", coordinator_rpc_timeout},
        {"coordinator-retry-max", coordinator_retry_max}}) {
    if (d <= absl::ZeroDuration() || d > absl::Hours(1)) {
      return bad(name, absl::FormatDuration(d), "must be in (0, 1h]");
    }
  }
  for (const auto& [name, d] : {std::pair<const char*, absl::Duration>{"lease-timeout", lease_timeout},
                                {"export-timeout", export_timeout},
                                {"maintenance-interval", maintenance_interval},
                                {"calibration-budget", calibration_budget}}) {
    if (d > absl::Hours(24)) return bad(name, absl::FormatDuration(d), "must be at most 24h");
  }
  return absl::OkStatus();
}

}  // namespace asymcache
