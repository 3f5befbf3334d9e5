#include "services/coordinator/coordinator_config.h"

#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "services/daemon/daemon_config.h"
#include "yaml-cpp/yaml.h"

namespace asymcache {

namespace {

using Options = CoordinatorOptions;
using Setter = std::function<absl::Status(absl::string_view, Options*)>;
using Getter = std::function<std::string(const Options&)>;

absl::Status BadValue(absl::string_view name, absl::string_view value, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": '", value, "' is not ", want));
}

// A setting: name, help, how to parse it into the options and print it back.
struct Setting {
  const char* name;
  const char* help;
  Setter set;
  Getter get;
};

template <typename Field>
Setting StringSetting(const char* name, const char* help, Field field) {
  return {name, help,
          [field](absl::string_view v, Options* o) {
            *field(o) = std::string(v);
            return absl::OkStatus();
          },
          [field](const Options& o) { return *field(&o); }};
}

template <typename Int, typename Field>
Setting IntSetting(const char* name, const char* help, Field field) {
  return {name, help,
          [name, field](absl::string_view v, Options* o) {
            int64_t parsed = 0;
            if (!absl::SimpleAtoi(v, &parsed) || parsed < std::numeric_limits<Int>::min() ||
                parsed > std::numeric_limits<Int>::max()) {
              return BadValue(name, v, "an integer");
            }
            *field(o) = static_cast<Int>(parsed);
            return absl::OkStatus();
          },
          [field](const Options& o) { return absl::StrCat(*field(&o)); }};
}

template <typename Field>
Setting DoubleSetting(const char* name, const char* help, Field field) {
  return {name, help,
          [name, field](absl::string_view v, Options* o) {
            double parsed = 0;
            if (!absl::SimpleAtod(v, &parsed)) return BadValue(name, v, "a number");
            *field(o) = parsed;
            return absl::OkStatus();
          },
          [field](const Options& o) { return absl::StrCat(*field(&o)); }};
}

template <typename Field>
Setting DurationSetting(const char* name, const char* help, Field field) {
  return {name, help,
          [name, field](absl::string_view v, Options* o) {
            absl::Duration parsed;
            if (!absl::ParseDuration(v, &parsed)) {
              return BadValue(name, v, "a duration (e.g. 250ms, 5s, 10m)");
            }
            *field(o) = parsed;
            return absl::OkStatus();
          },
          [field](const Options& o) {
            return absl::FormatDuration(*field(&o));
          }};
}

template <typename Field>
Setting BoolSetting(const char* name, const char* help, Field field) {
  return {name, help,
          [name, field](absl::string_view v, Options* o) {
            bool parsed = false;
            if (!absl::SimpleAtob(v, &parsed)) return BadValue(name, v, "true or false");
            *field(o) = parsed;
            return absl::OkStatus();
          },
          [field](const Options& o) {
            return std::string(*field(&o) ? "true" : "false");
          }};
}

// The table: every setting, once.
const std::vector<Setting>& Settings() {
  static const auto* settings = new std::vector<Setting>{
      StringSetting("listen", "gRPC listen address HOST:PORT (port 0 = any free port)",
                    [](auto* o) { return &o->listen; }),
      IntSetting<int>("metrics-port", "Prometheus /metrics port (0 = any free port, -1 = off)",
                      [](auto* o) { return &o->metrics_port; }),
      StringSetting("metrics-host", "address the metrics endpoint binds",
                    [](auto* o) { return &o->metrics_host; }),
      DurationSetting("heartbeat-interval", "members heartbeat at least this often",
                      [](auto* o) { return &o->heartbeat_interval; }),
      DurationSetting("member-timeout",
                      "a member without a heartbeat for this long leaves routing",
                      [](auto* o) { return &o->member_timeout; }),
      DurationSetting("maintenance-interval",
                      "period of member/affinity expiry and gauge updates",
                      [](auto* o) { return &o->maintenance_interval; }),
      {"routing-mode", "hole-aware (predicted TTFT), contiguous-prefix or round-robin",
       [](absl::string_view v, Options* o) {
         absl::StatusOr<RoutingMode> mode = ParseRoutingMode(v);
         if (!mode.ok()) {
           return absl::InvalidArgumentError(absl::StrCat("routing-mode: ", mode.status().message()));
         }
         o->router.mode = *mode;
         return absl::OkStatus();
       },
       [](const Options& o) { return std::string(RoutingModeName(o.router.mode)); }},
      BoolSetting("allow-fetch", "consider fetching missing blocks from peer daemons",
                  [](auto* o) { return &o->router.allow_fetch; }),
      DoubleSetting("fetch-bytes-per-s", "daemon-to-daemon block transfer rate (bytes/s)",
                    [](auto* o) { return &o->router.fetch_bytes_per_s; }),
      DurationSetting("fetch-setup", "fixed cost of one fetch",
                      [](auto* o) { return &o->router.fetch_setup; }),
      DurationSetting("tie-absolute", "scores this close tie (with tie-relative)",
                      [](auto* o) { return &o->router.tie_absolute; }),
      DoubleSetting("tie-relative", "scores within this fraction of the best tie",
                    [](auto* o) { return &o->router.tie_relative; }),
      IntSetting<int64_t>("imbalance-abs-tokens",
                          "load bound: queued prefill tokens above the least loaded",
                          [](auto* o) { return &o->router.imbalance_abs_tokens; }),
      DoubleSetting("imbalance-relative", "load bound: times the least loaded's queue",
                    [](auto* o) { return &o->router.imbalance_relative; }),
      DoubleSetting("memory-imbalance-fraction",
                    "memory bound: pool share committed to agent jobs above the least committed",
                    [](auto* o) { return &o->router.memory_imbalance_fraction; }),
      IntSetting<int64_t>("queue-step-tokens",
                          "queued tokens per modeled step (queueing delay)",
                          [](auto* o) { return &o->router.queue_step_tokens; }),
      IntSetting<int>("index-shards", "lock shards of the block index (a power of two)",
                      [](auto* o) { return &o->index.shards; }),
      IntSetting<int64_t>("index-max-entries", "bound on (block, daemon) entries in the index",
                          [](auto* o) { return &o->index.max_entries; }),
      {"model", "cluster model shape: tiny, llama-3-8b, llama-3-70b-tp; empty = the first daemon's",
       [](absl::string_view v, Options* o) {
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
       [](const Options& o) { return o.expected_model ? o.expected_model->name : std::string(); }},
      DurationSetting("watch-backoff-initial", "first KV event stream reconnect delay",
                      [](auto* o) { return &o->watch_backoff_initial; }),
      DurationSetting("watch-backoff-max", "longest KV event stream reconnect delay",
                      [](auto* o) { return &o->watch_backoff_max; }),
      DurationSetting("agent-affinity-ttl",
                      "an agent job sticks to its daemon this long after its last route",
                      [](auto* o) { return &o->agent_affinity_ttl; }),
      IntSetting<int64_t>("max-agent-jobs", "agent jobs remembered for affinity",
                          [](auto* o) { return &o->max_agent_jobs; }),
      {"max-members", "registered members (daemons + workers)",
       [](absl::string_view v, Options* o) {
         int64_t n = 0;
         if (!absl::SimpleAtoi(v, &n) || n < 1 || n > (1 << 20)) {
           return BadValue("max-members", v, "an integer in [1, 1048576]");
         }
         o->max_members = static_cast<int>(n);
         // Member slots of the index cover every member.
         if (o->index.max_members < o->max_members) o->index.max_members = o->max_members;
         return absl::OkStatus();
       },
       [](const Options& o) { return absl::StrCat(o.max_members); }},
      IntSetting<int64_t>("max-route-tokens", "longest context a Route may carry",
                          [](auto* o) { return &o->max_route_tokens; }),
      {"max-message-bytes", "largest gRPC message accepted",
       [](absl::string_view v, Options* o) {
         absl::StatusOr<int64_t> bytes = ParseByteSize(v);
         if (!bytes.ok() || *bytes > std::numeric_limits<int>::max()) {
           return BadValue("max-message-bytes", v, "a size below 2 GiB");
         }
         o->max_message_bytes = static_cast<int>(*bytes);
         return absl::OkStatus();
       },
       [](const Options& o) {
         return o.max_message_bytes % (1 << 20) == 0 ? absl::StrCat(o.max_message_bytes >> 20, "MiB")
                                                      : absl::StrCat(o.max_message_bytes);
       }},
      IntSetting<int64_t>("route-history", "routes remembered for ReportTtft",
                          [](auto* o) { return &o->route_history; }),
      DurationSetting("shutdown-grace", "SIGTERM: time in-flight RPCs get before being cancelled",
                      [](auto* o) { return &o->shutdown_grace; }),
  };
  return *settings;
}

const Setting* FindSetting(absl::string_view name) {
  for (const Setting& s : Settings()) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

absl::Status AtLine(absl::string_view origin, const YAML::Node& node, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(origin, ":", node.Mark().line + 1, ": ", s.message()));
}

// `model:` as a mapping of ModelShape fields; a known `name` starts from that
// shape, another name is only a label.
absl::Status ApplyModelMap(const YAML::Node& map, absl::string_view origin, Options* options) {
  ModelConfig model = options->expected_model.value_or(ModelConfig::Named("tiny").value());
  for (const auto& kv : map) {
    if (!kv.first.IsScalar() || !kv.second.IsScalar()) {
      return AtLine(origin, kv.first,
                    absl::InvalidArgumentError("model: keys and values must be scalars"));
    }
    const std::string key = kv.first.as<std::string>();
    const std::string value = kv.second.as<std::string>();
    if (key == "name") {
      absl::StatusOr<ModelConfig> named = ModelConfig::Named(value);
      if (named.ok()) {
        model = *named;
      } else {
        model.name = value;
      }
      continue;
    }
    int64_t n = 0;
    if (!absl::SimpleAtoi(value, &n) || n < 0) {
      return AtLine(origin, kv.second,
                    BadValue(absl::StrCat("model.", key), value, "a non-negative integer"));
    }
    const bool wide = key == "hidden_size" || key == "intermediate_size" || key == "vocab_size";
    if (!wide && n > std::numeric_limits<int>::max()) {
      return AtLine(origin, kv.second,
                    BadValue(absl::StrCat("model.", key), value, "an integer in [0, 2^31)"));
    }
    const int narrow = static_cast<int>(n);
    if (key == "num_layers") model.num_layers = narrow;
    else if (key == "num_q_heads") model.num_q_heads = narrow;
    else if (key == "num_kv_heads") model.num_kv_heads = narrow;
    else if (key == "head_dim") model.head_dim = narrow;
    else if (key == "dtype_bytes") model.dtype_bytes = narrow;
    else if (key == "block_tokens") model.block_tokens = narrow;
    else if (key == "hidden_size") model.hidden_size = n;
    else if (key == "intermediate_size") model.intermediate_size = n;
    else if (key == "vocab_size") model.vocab_size = n;
    else {
      return AtLine(origin, kv.first,
                    absl::InvalidArgumentError(absl::StrCat("unknown model field '", key, "'")));
    }
  }
  if (absl::Status s = model.Validate(); !s.ok()) {
    return AtLine(origin, map, absl::InvalidArgumentError(absl::StrCat("model: ", s.message())));
  }
  options->expected_model = std::move(model);
  return absl::OkStatus();
}

}  // namespace

const std::vector<CoordinatorSettingInfo>& CoordinatorSettings() {
  static const auto* infos = [] {
    auto* out = new std::vector<CoordinatorSettingInfo>();
    for (const Setting& s : Settings()) out->push_back({s.name, s.help});
    return out;
  }();
  return *infos;
}

absl::Status ApplyCoordinatorSetting(absl::string_view name, absl::string_view value,
                                     CoordinatorOptions* options) {
  const Setting* setting = FindSetting(name);
  if (setting == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown setting '", name, "'"));
  }
  CoordinatorOptions updated = *options;
  if (absl::Status s = setting->set(absl::StripAsciiWhitespace(value), &updated); !s.ok()) return s;
  *options = std::move(updated);
  return absl::OkStatus();
}

absl::StatusOr<std::string> CoordinatorSettingValue(absl::string_view name,
                                                    const CoordinatorOptions& options) {
  const Setting* setting = FindSetting(name);
  if (setting == nullptr) return absl::NotFoundError(absl::StrCat("unknown setting '", name, "'"));
  return setting->get(options);
}

absl::Status ApplyCoordinatorYamlText(absl::string_view text, absl::string_view origin,
                                      CoordinatorOptions* options) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ":", e.mark.line + 1, ": YAML parse error: ", e.msg));
  }
  if (root.IsNull()) return absl::OkStatus();  // an empty file sets nothing
  if (!root.IsMap()) {
    return AtLine(origin, root,
                  absl::InvalidArgumentError("the config must be a mapping of settings"));
  }
  CoordinatorOptions updated = *options;
  for (const auto& kv : root) {
    if (!kv.first.IsScalar()) {
      return AtLine(origin, kv.first, absl::InvalidArgumentError("setting names must be scalars"));
    }
    const std::string key = kv.first.as<std::string>();
    if (key == "model" && kv.second.IsMap()) {
      if (absl::Status s = ApplyModelMap(kv.second, origin, &updated); !s.ok()) return s;
      continue;
    }
    if (!kv.second.IsScalar() && !kv.second.IsNull()) {
      return AtLine(origin, kv.second,
                    absl::InvalidArgumentError(absl::StrCat(key, ": expected a scalar value")));
    }
    const std::string value = kv.second.IsNull() ? std::string() : kv.second.as<std::string>();
    if (absl::Status s = ApplyCoordinatorSetting(key, value, &updated); !s.ok()) {
      return AtLine(origin, kv.first, s);
    }
  }
  *options = std::move(updated);
  return absl::OkStatus();
}

absl::Status ApplyCoordinatorYaml(const std::string& path, CoordinatorOptions* options) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--config: cannot open '", path, "'"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ApplyCoordinatorYamlText(buffer.str(), path, options);
}

}  // namespace asymcache
