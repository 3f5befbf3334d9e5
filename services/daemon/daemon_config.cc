#include "services/daemon/daemon_config.h"

#include <limits>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "services/common/model_fields.h"
#include "services/common/transport_security_settings.h"
#include "yaml-cpp/yaml.h"

namespace asymcache {

namespace {

using Table = SettingsTable<DaemonOptions>;

// Completes "a duration (e.g. ...)" in a bad duration's error.
constexpr char kDurationExamples[] = "250ms, 30s, 2m";

// `model:` as a mapping of ModelShape fields.
absl::Status ApplyModelMap(const YAML::Node& map, absl::string_view origin,
                           DaemonOptions* options) {
  ModelConfig model = options->model;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) {
      return AtYamlLine(origin, kv.first,
                        absl::InvalidArgumentError("model: keys must be scalars"));
    }
    const std::string key = kv.first.as<std::string>();
    if (!kv.second.IsScalar()) {
      return AtYamlLine(
          origin, kv.second,
          absl::InvalidArgumentError(absl::StrCat("model.", key, " must be a scalar")));
    }
    const std::string value = kv.second.as<std::string>();
    if (key == "name") {
      ApplyModelName(value, &model);
      continue;
    }
    int64_t n = 0;
    if (!absl::SimpleAtoi(value, &n)) {
      return AtYamlLine(origin, kv.second,
                        SettingValueError(absl::StrCat("model.", key), value, "an integer"));
    }
    if (!IsWideModelField(key) && (n < 0 || n > std::numeric_limits<int>::max())) {
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
  options->model = model;
  return absl::OkStatus();
}

const Table& Settings();

// `rows` followed by the transport security settings (--plaintext,
// --tls-cert, --tls-key, --tls-ca).
std::vector<Table::Setting> WithTransportSecurity(std::vector<Table::Setting> rows) {
  for (Table::Setting& row : TransportSecuritySettings<DaemonOptions>(
           [](auto* o) { return &o->security; }, TrustedPeersSetting::kWithout)) {
    rows.push_back(std::move(row));
  }
  return rows;
}

// The YAML values that are not one scalar: `model:` as a mapping,
// `coordinators:` as a sequence.
std::optional<absl::Status> TakeStructuredYaml(const std::string& key, const YAML::Node& key_node,
                                               const YAML::Node& value, absl::string_view origin,
                                               DaemonOptions* options) {
  if (key == "model" && value.IsMap()) return ApplyModelMap(value, origin, options);
  if (key == "coordinators" && value.IsSequence()) {
    return Settings().ApplyYamlSequence(key, key_node, value, origin, options);
  }
  return std::nullopt;
}

// The table: every setting, once. Help texts live with the ABSL_FLAGs in
// daemon_main.cc; the hand-written setters have no printer (nullptr): the
// daemon prints no values from the table (the typed ones have theirs,
// unused).
const Table& Settings() {
  static const auto* table = new Table(WithTransportSecurity(std::vector<Table::Setting>{
      Table::String("listen", "", [](auto* o) { return &o->listen; }),
      Table::Integer<int>("metrics-port", "", [](auto* o) { return &o->metrics_port; }),
      Table::String("metrics-host", "", [](auto* o) { return &o->metrics_host; }),
      {"model", "",
       [](absl::string_view v, DaemonOptions* o) {
         absl::StatusOr<ModelConfig> model = ModelConfig::Named(v);
         if (!model.ok()) {
           return absl::InvalidArgumentError(absl::StrCat("model: ", model.status().message()));
         }
         o->model = *std::move(model);
         return absl::OkStatus();
       },
       nullptr},
      Table::String("backend", "", [](auto* o) { return &o->backend; }),
      Table::Integer<int>("cuda-device", "", [](auto* o) { return &o->cuda_device; }),
      {"pool-bytes", "",
       [](absl::string_view v, DaemonOptions* o) {
         absl::StatusOr<int64_t> bytes = ParseByteSize(v);
         if (!bytes.ok()) {
           return absl::InvalidArgumentError(
               absl::StrCat("pool-bytes: ", bytes.status().message()));
         }
         o->pool_bytes = *bytes;
         if (*bytes > 0) o->pool_fraction = 0;  // the two are exclusive; the last one given wins
         return absl::OkStatus();
       },
       nullptr},
      {"pool-fraction", "",
       [](absl::string_view v, DaemonOptions* o) {
         absl::StatusOr<double> f = ParseNumberSetting("pool-fraction", v);
         if (!f.ok()) return f.status();
         o->pool_fraction = *f;
         if (*f > 0) o->pool_bytes = 0;
         return absl::OkStatus();
       },
       nullptr},
      Table::String("shm-name", "", [](auto* o) { return &o->shm_name; }),
      Table::String("policy", "", [](auto* o) { return &o->policy; }),
      Table::Choice<ChunkSchedulerOptions::Mode>(
          "chunking", "",
          {{"adaptive", ChunkSchedulerOptions::Mode::kAdaptive},
           {"fixed", ChunkSchedulerOptions::Mode::kFixed}},
          [](auto* o) { return &o->chunking.mode; }),
      Table::Integer<int64_t>("chunk-budget-tokens", "",
                              [](auto* o) { return &o->chunking.fixed_budget_tokens; }),
      Table::Duration("tpot-target", "", kDurationExamples,
                      [](auto* o) { return &o->chunking.tpot_target; }),
      Table::String("calibration", "", [](auto* o) { return &o->calibration_file; }),
      Table::String("calibration-out", "", [](auto* o) { return &o->calibration_out; }),
      Table::String("calibrator", "", [](auto* o) { return &o->calibrator; }),
      Table::Bool("calibrate-on-start", "", [](auto* o) { return &o->calibrate_on_start; }),
      Table::Duration("calibration-budget", "", kDurationExamples,
                      [](auto* o) { return &o->calibration_budget; }),
      Table::Duration("lease-timeout", "", kDurationExamples,
                      [](auto* o) { return &o->lease_timeout; }),
      Table::Duration("export-timeout", "", kDurationExamples,
                      [](auto* o) { return &o->export_timeout; }),
      Table::Duration("maintenance-interval", "", kDurationExamples,
                      [](auto* o) { return &o->maintenance_interval; }),
      Table::Integer<int64_t>("max-context-tokens", "",
                              [](auto* o) { return &o->max_context_tokens; }),
      Table::IntByteSize("max-message-bytes", "", [](auto* o) { return &o->max_message_bytes; }),
      Table::Integer<int64_t>("max-transfer-blocks", "",
                              [](auto* o) { return &o->max_transfer_blocks; }),
      Table::Integer<int64_t>("session-chain-tokens", "",
                              [](auto* o) { return &o->session_chain_token_budget; }),
      Table::Integer<int64_t>("event-history", "", [](auto* o) { return &o->event_history; }),
      Table::Integer<int>("max-watchers", "", [](auto* o) { return &o->max_watchers; }),
      Table::Number("agent-max-pinned-fraction", "",
                    [](auto* o) { return &o->agent_pins.max_pinned_fraction; }),
      Table::Duration("agent-default-ttl", "", kDurationExamples,
                      [](auto* o) { return &o->agent_pins.default_ttl; }),
      Table::Duration("agent-max-ttl", "", kDurationExamples,
                      [](auto* o) { return &o->agent_pins.max_ttl; }),
      Table::String("ucx-transports", "", [](auto* o) { return &o->ucx_transports; }),
      Table::Duration("shutdown-grace", "", kDurationExamples,
                      [](auto* o) { return &o->shutdown_grace; }),
      // Cluster membership: a comma-separated list of coordinator addresses
      // ("" = standalone); in YAML also a sequence.
      Table::CommaList("coordinators", "", [](auto* o) { return &o->coordinators; }),
      Table::String("member-id", "", [](auto* o) { return &o->member_id; }),
      Table::String("advertise-address", "", [](auto* o) { return &o->advertise_address; }),
      Table::String("role", "", [](auto* o) { return &o->role; }),
      {"gpu", "",
       [](absl::string_view v, DaemonOptions* o) {
         if (v == "auto") {
           o->gpu.reset();
           return absl::OkStatus();
         }
         int parsed = 0;
         if (!absl::SimpleAtoi(v, &parsed)) {
           return SettingValueError("gpu", v, "an integer or auto");
         }
         o->gpu = parsed;
         return absl::OkStatus();
       },
       nullptr},
      Table::Duration("coordinator-rpc-timeout", "", kDurationExamples,
                      [](auto* o) { return &o->coordinator_rpc_timeout; }),
      Table::Duration("coordinator-retry-max", "", kDurationExamples,
                      [](auto* o) { return &o->coordinator_retry_max; }),
  }), TakeStructuredYaml);
  return *table;
}

}  // namespace

std::vector<std::string> DaemonSettingNames() {
  std::vector<std::string> names;
  for (const Table::Setting& s : Settings().settings()) names.push_back(s.name);
  return names;
}

absl::Status ApplyDaemonSetting(absl::string_view name, absl::string_view value,
                                DaemonOptions* options) {
  return Settings().Apply(name, value, options);
}

absl::Status ApplyDaemonYamlText(absl::string_view text, absl::string_view origin,
                                 DaemonOptions* options) {
  return Settings().ApplyYamlText(text, origin, options);
}

absl::Status ApplyDaemonYaml(const std::string& path, DaemonOptions* options) {
  return Settings().ApplyYamlFile(path, options);
}

}  // namespace asymcache
