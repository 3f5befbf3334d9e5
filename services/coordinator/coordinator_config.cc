#include "services/coordinator/coordinator_config.h"

#include <limits>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "services/common/model_fields.h"
#include "services/common/settings_table.h"
#include "services/common/transport_security_settings.h"
#include "yaml-cpp/yaml.h"

namespace asymcache {

namespace {

using Table = SettingsTable<CoordinatorOptions>;

// Completes "a duration (e.g. ...)" in a bad duration's error.
constexpr char kDurationExamples[] = "250ms, 5s, 10m";

// `model:` as a mapping of ModelShape fields; a known `name` starts from that
// shape, another name is only a label.
absl::Status ApplyModelMap(const YAML::Node& map, absl::string_view origin,
                           CoordinatorOptions* options) {
  ModelConfig model = options->expected_model.value_or(ModelConfig::Named("tiny").value());
  for (const auto& kv : map) {
    if (!kv.first.IsScalar() || !kv.second.IsScalar()) {
      return AtYamlLine(origin, kv.first,
                        absl::InvalidArgumentError("model: keys and values must be scalars"));
    }
    const std::string key = kv.first.as<std::string>();
    const std::string value = kv.second.as<std::string>();
    if (key == "name") {
      ApplyModelName(value, &model);
      continue;
    }
    int64_t n = 0;
    if (!absl::SimpleAtoi(value, &n) || n < 0) {
      return AtYamlLine(
          origin, kv.second,
          SettingValueError(absl::StrCat("model.", key), value, "a non-negative integer"));
    }
    if (!IsWideModelField(key) && n > std::numeric_limits<int>::max()) {
      return AtYamlLine(
          origin, kv.second,
          SettingValueError(absl::StrCat("model.", key), value, "an integer in [0, 2^31)"));
    }
    if (absl::Status s = SetModelField(key, n, &model); !s.ok()) {
      return AtYamlLine(origin, kv.first, s);
    }
  }
  if (absl::Status s = model.Validate(); !s.ok()) {
    return AtYamlLine(origin, map,
                      absl::InvalidArgumentError(absl::StrCat("model: ", s.message())));
  }
  options->expected_model = std::move(model);
  return absl::OkStatus();
}

const Table& Settings();

// `rows` followed by the transport security settings (--plaintext,
// --tls-cert, --tls-key, --tls-ca, --trusted-peers).
std::vector<Table::Setting> WithTransportSecurity(std::vector<Table::Setting> rows) {
  for (Table::Setting& row : TransportSecuritySettings<CoordinatorOptions>(
           [](auto* o) { return &o->security; }, TrustedPeersSetting::kWith)) {
    rows.push_back(std::move(row));
  }
  return rows;
}

// The YAML values that are not one scalar: `model:` as a mapping,
// `trusted-peers:` as a sequence, and a null
// value (`key:` with nothing after it), which sets the empty text.
std::optional<absl::Status> TakeStructuredYaml(const std::string& key, const YAML::Node& key_node,
                                               const YAML::Node& value, absl::string_view origin,
                                               CoordinatorOptions* options) {
  if (key == "model" && value.IsMap()) return ApplyModelMap(value, origin, options);
  if (key == "trusted-peers" && value.IsSequence()) {
    return Settings().ApplyYamlSequence(key, key_node, value, origin, options);
  }
  if (value.IsNull()) return Settings().ApplyYamlNull(key, key_node, origin, options);
  return std::nullopt;
}

// The table: every setting, once.
const Table& Settings() {
  static const auto* table = new Table(
      WithTransportSecurity(std::vector<Table::Setting>{
          Table::String("listen", "gRPC listen address HOST:PORT (port 0 = any free port)",
                        [](auto* o) { return &o->listen; }),
          Table::Integer<int>("metrics-port",
                              "Prometheus /metrics port (0 = any free port, -1 = off)",
                              [](auto* o) { return &o->metrics_port; }),
          Table::String("metrics-host", "address the metrics endpoint binds",
                        [](auto* o) { return &o->metrics_host; }),
          Table::Duration("heartbeat-interval", "members heartbeat at least this often",
                          kDurationExamples, [](auto* o) { return &o->heartbeat_interval; }),
          Table::Duration("member-timeout",
                          "a member without a heartbeat for this long leaves routing",
                          kDurationExamples, [](auto* o) { return &o->member_timeout; }),
          Table::Duration("rejoin-ramp",
                          "a rejoined daemon's share of routes grows from 0 to 1 over this (0 = off)",
                          kDurationExamples, [](auto* o) { return &o->rejoin_ramp; }),
          Table::Integer<int>("generate-attempts",
                              "routes a proxied Generate tries when workers fail with UNAVAILABLE",
                              [](auto* o) { return &o->generate_attempts; }),
          Table::ByteSize("proxy-max-buffered-bytes",
                          "bytes a proxied Generate queues for a slow client before it stops "
                          "reading the worker",
                          [](auto* o) { return &o->proxy_max_buffered_bytes; }),
          Table::Duration("maintenance-interval",
                          "period of member/affinity expiry and gauge updates", kDurationExamples,
                          [](auto* o) { return &o->maintenance_interval; }),
          {"routing-mode", "hole-aware (predicted TTFT), contiguous-prefix or round-robin",
           [](absl::string_view v, CoordinatorOptions* o) {
             absl::StatusOr<RoutingMode> mode = ParseRoutingMode(v);
             if (!mode.ok()) {
               return absl::InvalidArgumentError(
                   absl::StrCat("routing-mode: ", mode.status().message()));
             }
             o->router.mode = *mode;
             return absl::OkStatus();
           },
           [](const CoordinatorOptions& o) { return std::string(RoutingModeName(o.router.mode)); }},
          Table::Bool("allow-fetch", "consider fetching missing blocks from peer daemons",
                      [](auto* o) { return &o->router.allow_fetch; }),
          Table::Number("fetch-bytes-per-s", "daemon-to-daemon block transfer rate (bytes/s)",
                        [](auto* o) { return &o->router.fetch_bytes_per_s; }),
          Table::Duration("fetch-setup", "fixed cost of one fetch", kDurationExamples,
                          [](auto* o) { return &o->router.fetch_setup; }),
          Table::Duration("tie-absolute", "scores this close tie (with tie-relative)",
                          kDurationExamples, [](auto* o) { return &o->router.tie_absolute; }),
          Table::Number("tie-relative", "scores within this fraction of the best tie",
                        [](auto* o) { return &o->router.tie_relative; }),
          Table::Integer<int64_t>("imbalance-abs-tokens",
                                  "load bound: queued prefill tokens above the least loaded",
                                  [](auto* o) { return &o->router.imbalance_abs_tokens; }),
          Table::Number("imbalance-relative", "load bound: times the least loaded's queue",
                        [](auto* o) { return &o->router.imbalance_relative; }),
          Table::Number(
              "memory-imbalance-fraction",
              "memory bound: pool share committed to agent jobs above the least committed",
              [](auto* o) { return &o->router.memory_imbalance_fraction; }),
          Table::Integer<int64_t>("queue-step-tokens",
                                  "queued tokens per modeled step (queueing delay)",
                                  [](auto* o) { return &o->router.queue_step_tokens; }),
          Table::Integer<int>("index-shards", "lock shards of the block index (a power of two)",
                              [](auto* o) { return &o->index.shards; }),
          Table::Integer<int64_t>("index-max-entries",
                                  "bound on (block, daemon) entries in the index",
                                  [](auto* o) { return &o->index.max_entries; }),
          {"model",
           "cluster model shape: tiny, llama-3-8b, llama-3-70b-tp; empty = the first daemon's",
           [](absl::string_view v, CoordinatorOptions* o) {
             if (v.empty()) {
               o->expected_model.reset();
               return absl::OkStatus();
             }
             absl::StatusOr<ModelConfig> model = ModelConfig::Named(v);
             if (!model.ok()) {
               return absl::InvalidArgumentError(absl::StrCat("model: ", model.status().message()));
             }
             o->expected_model = *std::move(model);
             return absl::OkStatus();
           },
           [](const CoordinatorOptions& o) {
             return o.expected_model ? o.expected_model->name : std::string();
           }},
          Table::Duration("watch-backoff-initial", "first KV event stream reconnect delay",
                          kDurationExamples, [](auto* o) { return &o->watch_backoff_initial; }),
          Table::Duration("watch-backoff-max", "longest KV event stream reconnect delay",
                          kDurationExamples, [](auto* o) { return &o->watch_backoff_max; }),
          Table::Duration("watch-connect-timeout",
                          "longest wait for one KV event stream connect attempt",
                          kDurationExamples, [](auto* o) { return &o->watch_connect_timeout; }),
          Table::Duration("agent-affinity-ttl",
                          "an agent job sticks to its daemon this long after its last route",
                          kDurationExamples, [](auto* o) { return &o->agent_affinity_ttl; }),
          Table::Integer<int64_t>("max-agent-jobs", "agent jobs remembered for affinity",
                                  [](auto* o) { return &o->max_agent_jobs; }),
          {"max-members", "registered members (daemons + workers)",
           [](absl::string_view v, CoordinatorOptions* o) {
             int64_t n = 0;
             if (!absl::SimpleAtoi(v, &n) || n < 1 || n > (1 << 20)) {
               return SettingValueError("max-members", v, "an integer in [1, 1048576]");
             }
             o->max_members = static_cast<int>(n);
             // Member slots of the index cover every member.
             if (o->index.max_members < o->max_members) o->index.max_members = o->max_members;
             return absl::OkStatus();
           },
           [](const CoordinatorOptions& o) { return absl::StrCat(o.max_members); }},
          Table::Number("client-rate-limit",
                        "Generate + Route requests per second per client (0 = no limit)",
                        [](auto* o) { return &o->client_rate_limit.requests_per_second; }),
          Table::Integer<int64_t>("client-rate-burst",
                                  "requests a client may make at once (0 = 2 s worth)",
                                  [](auto* o) { return &o->client_rate_limit.burst; }),
          Table::Integer<int64_t>("max-route-tokens", "longest context a Route may carry",
                                  [](auto* o) { return &o->max_route_tokens; }),
          Table::IntByteSize("max-message-bytes", "largest gRPC message accepted",
                             [](auto* o) { return &o->max_message_bytes; }),
          Table::Integer<int64_t>("route-history", "routes remembered for ReportTtft",
                                  [](auto* o) { return &o->route_history; }),
          Table::Duration("shutdown-grace",
                          "SIGTERM: time in-flight RPCs get before being cancelled",
                          kDurationExamples, [](auto* o) { return &o->shutdown_grace; }),
      }),
      TakeStructuredYaml);
  return *table;
}

}  // namespace

const std::vector<CoordinatorSettingInfo>& CoordinatorSettings() {
  static const auto* infos = new std::vector<CoordinatorSettingInfo>(Settings().Infos());
  return *infos;
}

absl::Status ApplyCoordinatorSetting(absl::string_view name, absl::string_view value,
                                     CoordinatorOptions* options) {
  return Settings().Apply(name, value, options);
}

absl::StatusOr<std::string> CoordinatorSettingValue(absl::string_view name,
                                                    const CoordinatorOptions& options) {
  return Settings().Value(name, options);
}

absl::Status ApplyCoordinatorYamlText(absl::string_view text, absl::string_view origin,
                                      CoordinatorOptions* options) {
  return Settings().ApplyYamlText(text, origin, options);
}

absl::Status ApplyCoordinatorYaml(const std::string& path, CoordinatorOptions* options) {
  return Settings().ApplyYamlFile(path, options);
}

}  // namespace asymcache
