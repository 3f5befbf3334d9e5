#include "services/coordinator/coordinator_options.h"

#include "absl/strings/str_cat.h"
#include "services/common/option_checks.h"

namespace asymcache {

absl::Status CoordinatorOptions::Validate() const {
  if (absl::Status s = client_rate_limit.Validate(); !s.ok()) return s;
  if (listen.empty()) return FlagValueError("listen", "\"\"", "must be HOST:PORT");
  if (metrics_port < -1 || metrics_port > 65535) {
    return FlagValueError("metrics-port", metrics_port, "must be -1 (off), 0 (any) or 1..65535");
  }
  if (metrics_port >= 0 && metrics_host.empty()) {
    return FlagValueError("metrics-host", "\"\"", "must name an address when metrics are on");
  }
  if (absl::Status s = CheckPositiveFinite("heartbeat-interval", heartbeat_interval); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPositiveFinite("member-timeout", member_timeout); !s.ok()) return s;
  if (member_timeout <= heartbeat_interval) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--member-timeout (", absl::FormatDuration(member_timeout),
        ") must be longer than --heartbeat-interval (", absl::FormatDuration(heartbeat_interval),
        "), or every member would expire between two heartbeats"));
  }
  if (absl::Status s = CheckPositiveFinite("maintenance-interval", maintenance_interval); !s.ok()) {
    return s;
  }
  if (absl::Status s = router.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("router options: ", s.message()));
  }
  if (absl::Status s = index.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("index options: ", s.message()));
  }
  if (expected_model.has_value()) {
    if (absl::Status s = expected_model->Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--model: ", s.message()));
    }
  }
  if (absl::Status s = CheckPositiveFinite("watch-backoff-initial", watch_backoff_initial);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPositiveFinite("watch-backoff-max", watch_backoff_max); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckPositiveFinite("watch-connect-timeout", watch_connect_timeout);
      !s.ok()) {
    return s;
  }
  if (watch_backoff_initial > watch_backoff_max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--watch-backoff-initial (", absl::FormatDuration(watch_backoff_initial),
        ") must not exceed --watch-backoff-max (", absl::FormatDuration(watch_backoff_max), ")"));
  }
  if (absl::Status s = CheckPositiveFinite("agent-affinity-ttl", agent_affinity_ttl); !s.ok()) {
    return s;
  }
  if (max_agent_jobs < 1) return FlagValueError("max-agent-jobs", max_agent_jobs, "must be >= 1");
  if (max_members < 1 || max_members > index.max_members) {
    return FlagValueError(
        "max-members", max_members,
        absl::StrCat("must be in [1, ", index.max_members, "] (the index's member slots)"));
  }
  if (max_route_tokens < 1 || max_route_tokens > (int64_t{1} << 30)) {
    return FlagValueError("max-route-tokens", max_route_tokens, "must be in [1, 2^30]");
  }
  if (max_message_bytes < (1 << 20)) {
    return FlagValueError("max-message-bytes", max_message_bytes, "must be >= 1 MiB");
  }
  if (max_route_tokens * 5 + (1 << 16) > max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-message-bytes ", max_message_bytes, " cannot carry a Route of --max-route-tokens ",
        max_route_tokens, " tokens (up to 5 bytes each plus framing)"));
  }
  if (route_history < 1) return FlagValueError("route-history", route_history, "must be >= 1");
  if (rejoin_ramp < absl::ZeroDuration() || rejoin_ramp == absl::InfiniteDuration()) {
    return FlagValueError("rejoin-ramp", absl::FormatDuration(rejoin_ramp),
                          "must be finite and >= 0 (0 = off)");
  }
  if (generate_attempts < 1 || generate_attempts > 16) {
    return FlagValueError("generate-attempts", generate_attempts, "must be in [1, 16]");
  }
  if (proxy_max_buffered_bytes <= 0) {
    return FlagValueError("proxy-max-buffered-bytes", proxy_max_buffered_bytes,
                          "must be > 0 (bytes a proxied Generate queues for its client)");
  }
  if (shutdown_grace < absl::ZeroDuration()) {
    return FlagValueError("shutdown-grace", absl::FormatDuration(shutdown_grace), "must be >= 0");
  }
  if (absl::Status s = security.Validate(); !s.ok()) return s;
  if (security.tls() && security.trusted_peers.empty()) {
    return absl::InvalidArgumentError(
        "--trusted-peers is required with TLS: it names the daemons' and workers' certificate "
        "identities, the only peers allowed to register");
  }
  return absl::OkStatus();
}

}  // namespace asymcache
