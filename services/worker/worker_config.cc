#include "services/worker/worker_config.h"

#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "model/llama_config.h"
#include "services/common/settings_table.h"
#include "services/common/transport_security_settings.h"
#include "yaml-cpp/yaml.h"

namespace asymcache::worker {

namespace {

using Table = SettingsTable<WorkerOptions>;

// Completes "a duration (e.g. ...)" in a bad duration's error.
constexpr char kDurationExamples[] = "250ms, 5s, 10m";

const Table& Settings();

// `rows` followed by the transport security settings (--plaintext,
// --tls-cert, --tls-key, --tls-ca, --trusted-peers).
std::vector<Table::Setting> WithTransportSecurity(std::vector<Table::Setting> rows) {
  for (Table::Setting& row : TransportSecuritySettings<WorkerOptions>(
           [](auto* o) { return &o->security; }, TrustedPeersSetting::kWith)) {
    rows.push_back(std::move(row));
  }
  return rows;
}

// The YAML values that are not one scalar: `coordinators:` and
// `trusted-peers:` as sequences,
// and a null value (`key:` with nothing after it), which sets the empty text.
std::optional<absl::Status> TakeStructuredYaml(const std::string& key, const YAML::Node& key_node,
                                               const YAML::Node& value, absl::string_view origin,
                                               WorkerOptions* options) {
  if ((key == "coordinators" || key == "trusted-peers") && value.IsSequence()) {
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
          Table::String("daemon", "gRPC address of the co-located cache daemon (required)",
                        [](auto* o) { return &o->daemon; }),
          Table::Duration("daemon-connect-timeout", "how long start-up waits for the daemon",
                          kDurationExamples, [](auto* o) { return &o->daemon_connect_timeout; }),
          Table::String("backend", "model backend: cpu (fp32) or cuda (bf16/fp16)",
                        [](auto* o) { return &o->backend; }),
          Table::Integer<int>("gpu", "CUDA device of the cuda backend",
                              [](auto* o) { return &o->gpu; }),
          {"model", "random-weights shape: tiny, llama-3-8b, llama-3-70b-tp (without --model-dir)",
           [](absl::string_view v, WorkerOptions* o) {
             absl::StatusOr<model::LlamaConfig> shape = model::LlamaConfig::Named(v);
             if (!shape.ok()) {
               return absl::InvalidArgumentError(absl::StrCat("model: ", shape.status().message()));
             }
             o->model = std::string(v);
             return absl::OkStatus();
           },
           [](const WorkerOptions& o) { return o.model; }},
          Table::String("model-dir",
                        "Hugging Face model directory (config.json + *.safetensors); "
                        "empty = random weights",
                        [](auto* o) { return &o->model_dir; }),
          {"seed", "seed of the random weights",
           [](absl::string_view v, WorkerOptions* o) {
             uint64_t seed = 0;
             if (!absl::SimpleAtoi(v, &seed)) {
               return SettingValueError("seed", v, "an unsigned 64-bit integer");
             }
             o->seed = seed;
             return absl::OkStatus();
           },
           [](const WorkerOptions& o) { return absl::StrCat(o.seed); }},
          Table::Integer<int>("cpu-threads", "cpu backend threads (0 = all cores)",
                              [](auto* o) { return &o->cpu_threads; }),
          Table::Choice<WorkerRole>(
              "role", "both, prefill (computes prompts for a decode worker) or decode",
              {{"both", WorkerRole::kBoth},
               {"prefill", WorkerRole::kPrefill},
               {"decode", WorkerRole::kDecode}},
              [](auto* o) { return &o->engine.role; }),
          Table::Choice<ChunkSchedulerOptions::Mode>(
              "chunking", "prefill budget per step: adaptive (under --tpot-target) or fixed",
              {{"adaptive", ChunkSchedulerOptions::Mode::kAdaptive},
               {"fixed", ChunkSchedulerOptions::Mode::kFixed}},
              [](auto* o) { return &o->engine.chunking.mode; }),
          Table::Integer<int64_t>("fixed-budget-tokens",
                                  "fixed chunking: prefill tokens per step (multiple of 16)",
                                  [](auto* o) { return &o->engine.chunking.fixed_budget_tokens; }),
          Table::Duration("tpot-target", "adaptive chunking: the TPOT SLO (see --tpot-slo)",
                          kDurationExamples, [](auto* o) { return &o->engine.chunking.tpot_target; }),
          Table::Choice<ChunkSchedulerOptions::TpotSlo>(
              "tpot-slo",
              "adaptive chunking: what --tpot-target bounds: request-mean (each request's mean "
              "TPOT; a step may spend the decodes' banked slack up to --max-step-latency) or "
              "per-step (every step's predicted latency)",
              {{std::string(TpotSloName(ChunkSchedulerOptions::TpotSlo::kRequestMean)),
                ChunkSchedulerOptions::TpotSlo::kRequestMean},
               {std::string(TpotSloName(ChunkSchedulerOptions::TpotSlo::kPerStep)),
                ChunkSchedulerOptions::TpotSlo::kPerStep}},
              [](auto* o) { return &o->engine.chunking.tpot_slo; }),
          Table::Choice<ChunkSchedulerOptions::PrefillOrder>(
              "prefill-order",
              "which request's prefill goes first: arrival (FCFS) or least-remaining (fewest "
              "prefill tokens left first; a request waiting 20 s or more keeps its place)",
              {{std::string(PrefillOrderName(ChunkSchedulerOptions::PrefillOrder::kArrival)),
                ChunkSchedulerOptions::PrefillOrder::kArrival},
               {std::string(PrefillOrderName(ChunkSchedulerOptions::PrefillOrder::kLeastRemaining)),
                ChunkSchedulerOptions::PrefillOrder::kLeastRemaining}},
              [](auto* o) { return &o->engine.chunking.prefill_order; }),
          Table::Duration("max-step-latency",
                          "adaptive chunking, request-mean: the longest step banked slack may buy",
                          kDurationExamples,
                          [](auto* o) { return &o->engine.chunking.max_step_latency; }),
          Table::Integer<int64_t>(
              "overload-budget-tokens",
              "adaptive chunking: least prefill tokens a step takes while requests wait for "
              "admission (0 = off; multiple of 16)",
              [](auto* o) { return &o->engine.chunking.overload_budget_tokens; }),
          Table::Integer<int64_t>("max-chunk-tokens",
                                  "adaptive chunking: prefill tokens per step when no decode waits",
                                  [](auto* o) { return &o->engine.chunking.max_budget_tokens; }),
          Table::Integer<int32_t>("max-running", "sequences in the running batch",
                                  [](auto* o) { return &o->engine.max_running; }),
          Table::Number("client-rate-limit",
                        "Generate requests per second per client (0 = no limit)",
                        [](auto* o) { return &o->client_rate_limit.requests_per_second; }),
          Table::Integer<int64_t>("client-rate-burst",
                                  "requests a client may make at once (0 = 2 s worth)",
                                  [](auto* o) { return &o->client_rate_limit.burst; }),
          Table::Integer<int32_t>("max-queued",
                                  "requests queued (waiting + running) before refusing",
                                  [](auto* o) { return &o->engine.max_queued; }),
          Table::Integer<int32_t>("max-step-tokens", "query tokens of one forward pass",
                                  [](auto* o) { return &o->engine.max_step_tokens; }),
          Table::Integer<int64_t>("max-context-tokens",
                                  "longest context, prompt + generated (0 = the model's)",
                                  [](auto* o) { return &o->engine.max_context_tokens; }),
          Table::Duration("rpc-timeout", "deadline of each daemon RPC of the step loop",
                          kDurationExamples, [](auto* o) { return &o->engine.rpc_timeout; }),
          Table::Bool("extend-leases",
                      "decode page rollover by the daemon's ExtendLease, no plan (false: plan "
                      "the longer context and copy the page)",
                      [](auto* o) { return &o->engine.extend_leases; }),
          Table::String("step-trace",
                        "write one JSON line per step (work, predicted and measured time) to "
                        "this file; empty: none",
                        [](auto* o) { return &o->step_trace; }),
          Table::Duration("admission-timeout",
                          "a request not admitted this long after arriving (pool full) fails",
                          kDurationExamples, [](auto* o) { return &o->engine.admission_timeout; }),
          Table::Duration("admission-retry-interval",
                          "a request refused for pool space is planned again after a release "
                          "of this worker or this long after the refusal (0 = every step)",
                          kDurationExamples,
                          [](auto* o) { return &o->engine.admission_retry_interval; }),
          Table::Integer<int64_t>(
              "defer-pending-tokens",
              "a request whose admission plan has at least this many tokens in pages another "
              "request is computing waits for that prefill's commit and hits them (0 = never)",
              [](auto* o) { return &o->engine.defer_pending_tokens; }),
          Table::Duration("defer-pending-max-wait",
                          "how long one request may wait for pages another is computing, from "
                          "its first deferral; then it computes its own copy",
                          kDurationExamples,
                          [](auto* o) { return &o->engine.defer_pending_max_wait; }),
          Table::Duration("daemon-check-interval",
                          "how often the daemon's run is checked, to follow a restart (0 = never)",
                          kDurationExamples,
                          [](auto* o) { return &o->engine.daemon_check_interval; }),
          Table::CommaList("coordinators",
                           "coordinator addresses, comma-separated (empty = standalone)",
                           [](auto* o) { return &o->coordinators; }),
          Table::String("member-id", "member id for the coordinators (empty = HOST:PORT)",
                        [](auto* o) { return &o->member_id; }),
          Table::String("advertise-address",
                        "address others reach this worker at (empty = HOST:bound port)",
                        [](auto* o) { return &o->advertise_address; }),
          Table::String("daemon-member-id",
                        "member id of the co-located daemon (required with --coordinators)",
                        [](auto* o) { return &o->daemon_member_id; }),
          Table::Duration("coordinator-rpc-timeout", "deadline of one Register/Heartbeat",
                          kDurationExamples, [](auto* o) { return &o->coordinator_rpc_timeout; }),
          Table::Duration("coordinator-retry-max",
                          "longest retry backoff for an unreachable coordinator",
                          kDurationExamples, [](auto* o) { return &o->coordinator_retry_max; }),
          Table::IntByteSize("max-message-bytes", "largest gRPC message accepted and sent",
                             [](auto* o) { return &o->max_message_bytes; }),
          Table::ByteSize("max-stream-buffered-bytes",
                          "responses a Generate stream may hold for a client that does not read "
                          "them; past it the request is cancelled",
                          [](auto* o) { return &o->max_stream_buffered_bytes; }),
          Table::Duration("shutdown-grace",
                          "SIGTERM: time in-flight Generate streams get before being cancelled",
                          kDurationExamples, [](auto* o) { return &o->shutdown_grace; }),
          Table::Duration("stats-interval", "how often engine counters reach the metrics",
                          kDurationExamples, [](auto* o) { return &o->stats_interval; }),
      }),
      TakeStructuredYaml);
  return *table;
}

}  // namespace

const std::vector<WorkerSettingInfo>& WorkerSettings() {
  static const auto* infos = new std::vector<WorkerSettingInfo>(Settings().Infos());
  return *infos;
}

absl::Status ApplyWorkerSetting(absl::string_view name, absl::string_view value,
                                WorkerOptions* options) {
  return Settings().Apply(name, value, options);
}

absl::StatusOr<std::string> WorkerSettingValue(absl::string_view name,
                                               const WorkerOptions& options) {
  return Settings().Value(name, options);
}

bool IsWorkerBoolSetting(absl::string_view name) {
  const absl::StatusOr<std::string> value = WorkerSettingValue(name, WorkerOptions());
  return value.ok() && (*value == "true" || *value == "false");
}

absl::Status ApplyWorkerYamlText(absl::string_view text, absl::string_view origin,
                                 WorkerOptions* options) {
  return Settings().ApplyYamlText(text, origin, options);
}

absl::Status ApplyWorkerYaml(const std::string& path, WorkerOptions* options) {
  return Settings().ApplyYamlFile(path, options);
}

WorkerOptions WorkerBinaryDefaults() {
  WorkerOptions options;
  options.security = BinaryTransportSecurityDefaults();
  return options;
}

absl::StatusOr<WorkerOptions> WorkerOptionsFromFlags(const std::vector<CommandLineFlag>& flags) {
  WorkerOptions options = WorkerBinaryDefaults();
  CommandLineSettings settings;
  settings.apply_config = [&](const std::string& path) { return ApplyWorkerYaml(path, &options); };
  settings.is_known = [&](absl::string_view name) { return Settings().Find(name) != nullptr; };
  settings.apply = [&](absl::string_view name, absl::string_view value) {
    return ApplyWorkerSetting(name, value, &options);
  };
  if (absl::Status s = ApplyCommandLine(flags, settings); !s.ok()) return s;
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return options;
}

}  // namespace asymcache::worker
