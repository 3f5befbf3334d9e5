#include "services/daemon/daemon_config.h"

#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "yaml-cpp/yaml.h"

namespace asymcache {

namespace {

using Setter = std::function<absl::Status(absl::string_view, DaemonOptions*)>;

absl::Status BadValue(absl::string_view name, absl::string_view value, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": '", value, "' is not ", want));
}

Setter String(std::string DaemonOptions::*field) {
  return [field](absl::string_view v, DaemonOptions* o) {
    o->*field = std::string(v);
    return absl::OkStatus();
  };
}

template <typename Int, typename Get>
Setter IntAt(absl::string_view name, Get get) {
  return [name, get](absl::string_view v, DaemonOptions* o) {
    int64_t parsed = 0;
    if (!absl::SimpleAtoi(v, &parsed) || parsed < std::numeric_limits<Int>::min() ||
        parsed > std::numeric_limits<Int>::max()) {
      return BadValue(name, v, "an integer");
    }
    *get(o) = static_cast<Int>(parsed);
    return absl::OkStatus();
  };
}

template <typename Get>
Setter DoubleAt(absl::string_view name, Get get) {
  return [name, get](absl::string_view v, DaemonOptions* o) {
    double parsed = 0;
    if (!absl::SimpleAtod(v, &parsed)) return BadValue(name, v, "a number");
    *get(o) = parsed;
    return absl::OkStatus();
  };
}

template <typename Get>
Setter DurationAt(absl::string_view name, Get get) {
  return [name, get](absl::string_view v, DaemonOptions* o) {
    absl::Duration parsed;
    if (!absl::ParseDuration(v, &parsed)) {
      return BadValue(name, v, "a duration (e.g. 250ms, 30s, 2m)");
    }
    *get(o) = parsed;
    return absl::OkStatus();
  };
}

template <typename Get>
Setter BoolAt(absl::string_view name, Get get) {
  return [name, get](absl::string_view v, DaemonOptions* o) {
    bool parsed = false;
    if (!absl::SimpleAtob(v, &parsed)) return BadValue(name, v, "true or false");
    *get(o) = parsed;
    return absl::OkStatus();
  };
}

struct Setting {
  const char* name;
  Setter set;
};

// The table: every setting, once.
const std::vector<Setting>& Settings() {
  static const auto* settings = new std::vector<Setting>{
      {"listen", String(&DaemonOptions::listen)},
      {"metrics-port", IntAt<int>("metrics-port", [](DaemonOptions* o) { return &o->metrics_port; })},
      {"metrics-host", String(&DaemonOptions::metrics_host)},
      {"model",
       [](absl::string_view v, DaemonOptions* o) {
         absl::StatusOr<ModelConfig> model = ModelConfig::Named(v);
         if (!model.ok()) return absl::InvalidArgumentError(absl::StrCat("model: ", model.status().message()));
         o->model = *std::move(model);
         return absl::OkStatus();
       }},
      {"backend", String(&DaemonOptions::backend)},
      {"cuda-device", IntAt<int>("cuda-device", [](DaemonOptions* o) { return &o->cuda_device; })},
      {"pool-bytes",
       [](absl::string_view v, DaemonOptions* o) {
         absl::StatusOr<int64_t> bytes = ParseByteSize(v);
         if (!bytes.ok()) return absl::InvalidArgumentError(absl::StrCat("pool-bytes: ", bytes.status().message()));
         o->pool_bytes = *bytes;
         if (*bytes > 0) o->pool_fraction = 0;  // the two are exclusive; the last one given wins
         return absl::OkStatus();
       }},
      {"pool-fraction",
       [](absl::string_view v, DaemonOptions* o) {
         double f = 0;
         if (!absl::SimpleAtod(v, &f)) return BadValue("pool-fraction", v, "a number");
         o->pool_fraction = f;
         if (f > 0) o->pool_bytes = 0;
         return absl::OkStatus();
       }},
      {"shm-name", String(&DaemonOptions::shm_name)},
      {"policy", String(&DaemonOptions::policy)},
      {"chunking",
       [](absl::string_view v, DaemonOptions* o) {
         if (v == "adaptive") {
           o->chunking.mode = ChunkSchedulerOptions::Mode::kAdaptive;
         } else if (v == "fixed") {
           o->chunking.mode = ChunkSchedulerOptions::Mode::kFixed;
         } else {
           return BadValue("chunking", v, "adaptive or fixed");
         }
         return absl::OkStatus();
       }},
      {"chunk-budget-tokens", IntAt<int64_t>("chunk-budget-tokens", [](DaemonOptions* o) {
         return &o->chunking.fixed_budget_tokens;
       })},
      {"tpot-target",
       DurationAt("tpot-target", [](DaemonOptions* o) { return &o->chunking.tpot_target; })},
      {"calibration", String(&DaemonOptions::calibration_file)},
      {"calibration-out", String(&DaemonOptions::calibration_out)},
      {"calibrator", String(&DaemonOptions::calibrator)},
      {"calibrate-on-start",
       BoolAt("calibrate-on-start", [](DaemonOptions* o) { return &o->calibrate_on_start; })},
      {"calibration-budget",
       DurationAt("calibration-budget", [](DaemonOptions* o) { return &o->calibration_budget; })},
      {"lease-timeout", DurationAt("lease-timeout", [](DaemonOptions* o) { return &o->lease_timeout; })},
      {"export-timeout",
       DurationAt("export-timeout", [](DaemonOptions* o) { return &o->export_timeout; })},
      {"maintenance-interval",
       DurationAt("maintenance-interval", [](DaemonOptions* o) { return &o->maintenance_interval; })},
      {"max-context-tokens", IntAt<int64_t>("max-context-tokens", [](DaemonOptions* o) {
         return &o->max_context_tokens;
       })},
      {"max-message-bytes",
       [](absl::string_view v, DaemonOptions* o) {
         absl::StatusOr<int64_t> bytes = ParseByteSize(v);
         if (!bytes.ok() || *bytes > std::numeric_limits<int>::max()) {
           return BadValue("max-message-bytes", v, "a size below 2 GiB");
         }
         o->max_message_bytes = static_cast<int>(*bytes);
         return absl::OkStatus();
       }},
      {"max-transfer-blocks", IntAt<int64_t>("max-transfer-blocks", [](DaemonOptions* o) {
         return &o->max_transfer_blocks;
       })},
      {"session-chain-tokens", IntAt<int64_t>("session-chain-tokens", [](DaemonOptions* o) {
         return &o->session_chain_token_budget;
       })},
      {"event-history",
       IntAt<int64_t>("event-history", [](DaemonOptions* o) { return &o->event_history; })},
      {"max-watchers", IntAt<int>("max-watchers", [](DaemonOptions* o) { return &o->max_watchers; })},
      {"agent-max-pinned-fraction", DoubleAt("agent-max-pinned-fraction", [](DaemonOptions* o) {
         return &o->agent_pins.max_pinned_fraction;
       })},
      {"agent-default-ttl",
       DurationAt("agent-default-ttl", [](DaemonOptions* o) { return &o->agent_pins.default_ttl; })},
      {"agent-max-ttl",
       DurationAt("agent-max-ttl", [](DaemonOptions* o) { return &o->agent_pins.max_ttl; })},
      {"ucx-transports", String(&DaemonOptions::ucx_transports)},
      {"shutdown-grace",
       DurationAt("shutdown-grace", [](DaemonOptions* o) { return &o->shutdown_grace; })},
      // Cluster membership: a comma-separated list of coordinator addresses
      // ("" = standalone); in YAML also a sequence.
      {"coordinators",
       [](absl::string_view v, DaemonOptions* o) {
         o->coordinators.clear();
         if (v.empty()) return absl::OkStatus();
         for (absl::string_view part : absl::StrSplit(v, ',')) {
           o->coordinators.emplace_back(absl::StripAsciiWhitespace(part));
         }
         return absl::OkStatus();
       }},
      {"member-id", String(&DaemonOptions::member_id)},
      {"advertise-address", String(&DaemonOptions::advertise_address)},
      {"role", String(&DaemonOptions::role)},
      {"gpu",
       [](absl::string_view v, DaemonOptions* o) {
         if (v == "auto") {
           o->gpu.reset();
           return absl::OkStatus();
         }
         int parsed = 0;
         if (!absl::SimpleAtoi(v, &parsed)) return BadValue("gpu", v, "an integer or auto");
         o->gpu = parsed;
         return absl::OkStatus();
       }},
      {"coordinator-rpc-timeout", DurationAt("coordinator-rpc-timeout", [](DaemonOptions* o) {
         return &o->coordinator_rpc_timeout;
       })},
      {"coordinator-retry-max", DurationAt("coordinator-retry-max", [](DaemonOptions* o) {
         return &o->coordinator_retry_max;
       })},
  };
  return *settings;
}

absl::Status AtLine(absl::string_view origin, const YAML::Node& node, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(origin, ":", node.Mark().line + 1, ": ", s.message()));
}

absl::Status ApplyModelMap(const YAML::Node& map, absl::string_view origin, DaemonOptions* options) {
  ModelConfig model = options->model;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) {
      return AtLine(origin, kv.first, absl::InvalidArgumentError("model: keys must be scalars"));
    }
    const std::string key = kv.first.as<std::string>();
    if (!kv.second.IsScalar()) {
      return AtLine(origin, kv.second, absl::InvalidArgumentError(absl::StrCat("model.", key, " must be a scalar")));
    }
    const std::string value = kv.second.as<std::string>();
    if (key == "name") {
      absl::StatusOr<ModelConfig> named = ModelConfig::Named(value);
      // A known name starts from that shape; another name is just a label.
      if (named.ok()) {
        model = *named;
      } else {
        model.name = value;
      }
      continue;
    }
    int64_t n = 0;
    if (!absl::SimpleAtoi(value, &n)) {
      return AtLine(origin, kv.second, BadValue(absl::StrCat("model.", key), value, "an integer"));
    }
    const bool wide = key == "hidden_size" || key == "intermediate_size" || key == "vocab_size";
    if (!wide && (n < 0 || n > std::numeric_limits<int>::max())) {
      return AtLine(origin, kv.second,
                    BadValue(absl::StrCat("model.", key), value, "an integer in [0, 2^31)"));
    }
    if (key == "num_layers") model.num_layers = static_cast<int>(n);
    else if (key == "num_q_heads") model.num_q_heads = static_cast<int>(n);
    else if (key == "num_kv_heads") model.num_kv_heads = static_cast<int>(n);
    else if (key == "head_dim") model.head_dim = static_cast<int>(n);
    else if (key == "dtype_bytes") model.dtype_bytes = static_cast<int>(n);
    else if (key == "block_tokens") model.block_tokens = static_cast<int>(n);
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
  options->model = model;
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> DaemonSettingNames() {
  std::vector<std::string> names;
  for (const Setting& s : Settings()) names.emplace_back(s.name);
  return names;
}

absl::Status ApplyDaemonSetting(absl::string_view name, absl::string_view value,
                                DaemonOptions* options) {
  for (const Setting& s : Settings()) {
    if (name == s.name) {
      DaemonOptions updated = *options;
      if (absl::Status st = s.set(absl::StripAsciiWhitespace(value), &updated); !st.ok()) return st;
      *options = std::move(updated);
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown setting '", name, "'"));
}

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  static const std::pair<const char*, int>* const kSuffixes = new std::pair<const char*, int>[8]{
      {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}, {"K", 10}, {"M", 20}, {"G", 30}, {"T", 40}};
  int shift = 0;
  for (int i = 0; i < 8; ++i) {
    if (absl::EndsWith(t, kSuffixes[i].first)) {
      shift = kSuffixes[i].second;
      t.remove_suffix(std::char_traits<char>::length(kSuffixes[i].first));
      break;
    }
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(t, &n) || n < 0 || (shift > 0 && n > (std::numeric_limits<int64_t>::max() >> shift))) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a byte size (e.g. 268435456, 256MiB, 1GiB)"));
  }
  return n << shift;
}

absl::Status ApplyDaemonYamlText(absl::string_view text, absl::string_view origin,
                                 DaemonOptions* options) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ":", e.mark.line + 1, ": YAML parse error: ", e.msg));
  }
  if (root.IsNull()) return absl::OkStatus();  // an empty file sets nothing
  if (!root.IsMap()) {
    return AtLine(origin, root, absl::InvalidArgumentError("the config must be a mapping of settings"));
  }
  DaemonOptions updated = *options;
  for (const auto& kv : root) {
    if (!kv.first.IsScalar()) {
      return AtLine(origin, kv.first, absl::InvalidArgumentError("setting names must be scalars"));
    }
    const std::string key = kv.first.as<std::string>();
    if (key == "model" && kv.second.IsMap()) {
      if (absl::Status s = ApplyModelMap(kv.second, origin, &updated); !s.ok()) return s;
      continue;
    }
    if (key == "coordinators" && kv.second.IsSequence()) {
      std::vector<std::string> addresses;
      for (const YAML::Node& item : kv.second) {
        if (!item.IsScalar()) {
          return AtLine(origin, item,
                        absl::InvalidArgumentError("coordinators: entries must be scalars"));
        }
        addresses.push_back(item.as<std::string>());
      }
      if (absl::Status s =
              ApplyDaemonSetting(key, absl::StrJoin(addresses, ","), &updated);
          !s.ok()) {
        return AtLine(origin, kv.first, s);
      }
      continue;
    }
    if (!kv.second.IsScalar()) {
      return AtLine(origin, kv.second,
                    absl::InvalidArgumentError(absl::StrCat(key, ": expected a scalar value")));
    }
    if (absl::Status s = ApplyDaemonSetting(key, kv.second.as<std::string>(), &updated); !s.ok()) {
      return AtLine(origin, kv.first, s);
    }
  }
  *options = std::move(updated);
  return absl::OkStatus();
}

absl::Status ApplyDaemonYaml(const std::string& path, DaemonOptions* options) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--config: cannot open '", path, "'"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ApplyDaemonYamlText(buffer.str(), path, options);
}

}  // namespace asymcache
