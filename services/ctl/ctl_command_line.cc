#include "services/ctl/ctl_command_line.h"

#include <initializer_list>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "services/common/command_line.h"
#include "services/common/option_checks.h"
#include "services/common/settings_table.h"

namespace asymcache::ctl {
namespace {

using Table = SettingsTable<CtlOptions>;

// What a subcommand is and which flags it takes (beyond its target flag and
// --timeout, which every subcommand takes).
struct SubcommandSpec {
  Subcommand subcommand;
  const char* name;
  const char* summary;  // one line, for the overview
  const char* usage;    // the arguments after the name
  std::vector<absl::string_view> flags;
};

// The flags of a prompt (route, generate) followed by `more`.
std::vector<absl::string_view> PromptFlagsAnd(std::initializer_list<absl::string_view> more) {
  std::vector<absl::string_view> flags = {"tokens", "random-tokens", "seed", "vocab", "salt"};
  flags.insert(flags.end(), more.begin(), more.end());
  return flags;
}

const std::vector<SubcommandSpec>& Specs() {
  static const auto* specs = new std::vector<SubcommandSpec>{
      {Subcommand::kStatus,
       "status",
       "cluster members with their load, and the coordinator's counters (ListMembers)",
       "--coordinator=HOST:PORT [--json]",
       {"json"}},
      {Subcommand::kRoute, "route",
       "where the coordinator would run a prompt, and its predicted TTFT (Route)",
       "--coordinator=HOST:PORT (--tokens=ID,ID,... | --random-tokens=N [--seed=S]) [--salt=T] "
       "[--explain] [--json]",
       PromptFlagsAnd({"explain", "json"})},
      {Subcommand::kGenerate, "generate",
       "a prompt's tokens streamed by a coordinator or worker, with TTFT, TPOT, stats (Generate)",
       "--target=HOST:PORT (--tokens=ID,ID,... | --random-tokens=N [--seed=S]) "
       "--max-new-tokens=K [--salt=T] [--temperature=X --top-p=P] [--json]",
       PromptFlagsAnd({"max-new-tokens", "temperature", "top-p", "json"})},
      {Subcommand::kPins,
       "pins",
       "a cache daemon's agent pins (ListPins)",
       "--daemon=HOST:PORT [--json]",
       {"json"}},
      {Subcommand::kDaemonStats,
       "daemon-stats",
       "a cache daemon's pool, index and counters (GetStats)",
       "--daemon=HOST:PORT [--json]",
       {"json"}},
      {Subcommand::kWorkerStats,
       "worker-stats",
       "a worker's batch and counters (GetWorkerStats)",
       "--worker=HOST:PORT [--json]",
       {"json"}},
      {Subcommand::kHealth,
       "health",
       "grpc.health.v1 Check of any server: exit 0 when SERVING, 1 otherwise",
       "--target=HOST:PORT [--service=NAME]",
       {"service"}},
  };
  return *specs;
}

const SubcommandSpec& SpecOf(Subcommand subcommand) {
  for (const SubcommandSpec& spec : Specs()) {
    if (spec.subcommand == subcommand) return spec;
  }
  return Specs().front();  // unreachable: every enumerator has a spec
}

// An integer setting in [min, max] (text outside: "NAME must be in [MIN,
// MAX], got VALUE"), stored as Int. Without `has_default` (a flag whose
// absence is a state of its own, such as "no random prompt") --help shows no
// default.
template <typename Int, typename Field>
Table::Setting RangedInteger(const char* name, const char* help, int64_t min, int64_t max,
                             bool has_default, Field field) {
  Table::Printer print;
  if (has_default) print = [field](const CtlOptions& o) { return absl::StrCat(*field(&o)); };
  return {name, help,
          [name, min, max, field](absl::string_view v, CtlOptions* o) -> absl::Status {
            int64_t parsed = 0;
            if (!absl::SimpleAtoi(v, &parsed)) return SettingValueError(name, v, "an integer");
            if (parsed < min || parsed > max) {
              return absl::InvalidArgumentError(
                  absl::StrCat(name, " must be in [", min, ", ", max, "], got ", v));
            }
            *field(o) = static_cast<Int>(parsed);
            return absl::OkStatus();
          },
          std::move(print)};
}

// The target flags: each sets CtlOptions::target (which one a subcommand
// takes is its TargetFlag).
Table::Setting TargetSetting(const char* name, const char* help) {
  return Table::String(name, help, [](auto* o) { return &o->target; });
}

const Table& CtlSettings() {
  static const auto* table = new Table({
      TargetSetting("coordinator", "the coordinator's gRPC address, HOST:PORT (required)"),
      TargetSetting("target", "the server's gRPC address, HOST:PORT (required)"),
      TargetSetting("daemon", "the cache daemon's gRPC address, HOST:PORT (required)"),
      TargetSetting("worker", "the worker's gRPC address, HOST:PORT (required)"),
      {"tokens", "the prompt's token ids, comma-separated (or --random-tokens)",
       [](absl::string_view v, CtlOptions* o) -> absl::Status {
         std::vector<int32_t> tokens;
         int index = 0;
         for (absl::string_view entry : absl::StrSplit(v, ',')) {
           ++index;
           int32_t id = 0;
           if (!absl::SimpleAtoi(entry, &id) || id < 0) {
             return absl::InvalidArgumentError(absl::StrCat(
                 "tokens: entry ", index, " '", entry, "' is not a token id (an integer >= 0)"));
           }
           tokens.push_back(id);
         }
         o->tokens = std::move(tokens);
         return absl::OkStatus();
       },
       [](const CtlOptions& o) { return absl::StrJoin(o.tokens, ","); }},
      RangedInteger<int64_t>(
          "random-tokens", "a prompt of N random token ids drawn from [0, --vocab) (or --tokens)",
          1, kMaxRandomTokens, /*has_default=*/false, [](auto* o) { return &o->random_tokens; }),
      {"seed", "seeds the random prompt (and generate's sampler)",
       [](absl::string_view v, CtlOptions* o) -> absl::Status {
         uint64_t seed = 0;
         if (!absl::SimpleAtoi(v, &seed)) {
           return SettingValueError("seed", v, "an integer in [0, 2^64)");
         }
         o->seed = seed;
         return absl::OkStatus();
       },
       [](const CtlOptions& o) { return absl::StrCat(o.seed); }},
      RangedInteger<int64_t>("vocab", "random token ids are below this", 1,
                             std::numeric_limits<int32_t>::max(), /*has_default=*/true,
                             [](auto* o) { return &o->vocab; }),
      Table::String("salt", "the tenant salt (blocks are shared only within one salt)",
                    [](auto* o) { return &o->salt; }),
      Table::Bool("explain", "also print every candidate daemon's predicted TTFT",
                  [](auto* o) { return &o->explain; }),
      RangedInteger<int32_t>("max-new-tokens", "tokens to generate (required)", 1,
                             std::numeric_limits<int32_t>::max(), /*has_default=*/false,
                             [](auto* o) { return &o->max_new_tokens; }),
      Table::Number("temperature", "sampling temperature; <= 0 is greedy",
                    [](auto* o) { return &o->temperature; }),
      Table::Number("top-p", "sampling nucleus in (0, 1]; 0 means 1",
                    [](auto* o) { return &o->top_p; }),
      Table::String("service", "the service asked about; \"\" = the server as a whole",
                    [](auto* o) { return &o->service; }),
      {"timeout", "deadline of the RPC (generate: of the whole stream), e.g. 500ms, 2s, 1m",
       [](absl::string_view v, CtlOptions* o) -> absl::Status {
         absl::StatusOr<absl::Duration> parsed = ParseDurationSetting("timeout", v, "2s, 500ms");
         if (!parsed.ok()) return parsed.status();
         if (*parsed <= absl::ZeroDuration() || *parsed == absl::InfiniteDuration()) {
           return absl::InvalidArgumentError(
               absl::StrCat("timeout must be positive and finite, got ", v));
         }
         o->timeout = *parsed;
         return absl::OkStatus();
       },
       [](const CtlOptions& o) { return absl::FormatDuration(o.EffectiveTimeout()); }},
      Table::Bool("json", "print the response as JSON (proto field names, every field)",
                  [](auto* o) { return &o->json; }),
      Table::String("tls-cert",
                    "PEM certificate this client presents (mutual TLS, with --tls-key and "
                    "--tls-ca; none of the three: plaintext)",
                    [](auto* o) { return &o->channel.security.cert_file; }),
      Table::String("tls-key", "PEM private key of --tls-cert",
                    [](auto* o) { return &o->channel.security.key_file; }),
      Table::String("tls-ca", "PEM CA bundle the server's certificate must chain to",
                    [](auto* o) { return &o->channel.security.ca_file; }),
  });
  return *table;
}

// The Table::Bool settings: a bare --NAME sets them (command_line.h).
bool IsBoolFlag(absl::string_view name) { return name == "json" || name == "explain"; }

// Flags of every subcommand besides its target flag.
bool IsCommonFlag(absl::string_view flag) {
  return flag == "timeout" || flag == "tls-cert" || flag == "tls-key" || flag == "tls-ca";
}

bool TakesFlag(const SubcommandSpec& spec, absl::string_view flag) {
  if (flag == TargetFlag(spec.subcommand) || IsCommonFlag(flag)) return true;
  for (absl::string_view f : spec.flags) {
    if (f == flag) return true;
  }
  return false;
}

// "NAME: message" errors of a subcommand.
absl::Status InSubcommand(const SubcommandSpec& spec, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(spec.name, ": ", status.message()));
}

}  // namespace

absl::string_view SubcommandName(Subcommand subcommand) { return SpecOf(subcommand).name; }

std::optional<Subcommand> SubcommandNamed(absl::string_view name) {
  for (const SubcommandSpec& spec : Specs()) {
    if (name == spec.name) return spec.subcommand;
  }
  return std::nullopt;
}

absl::string_view TargetFlag(Subcommand subcommand) {
  switch (subcommand) {
    case Subcommand::kStatus:
    case Subcommand::kRoute:
      return "coordinator";
    case Subcommand::kGenerate:
    case Subcommand::kHealth:
      return "target";
    case Subcommand::kPins:
    case Subcommand::kDaemonStats:
      return "daemon";
    case Subcommand::kWorkerStats:
      return "worker";
  }
  return "target";
}

absl::Duration DefaultTimeout(Subcommand subcommand) {
  return subcommand == Subcommand::kGenerate ? absl::Seconds(60) : absl::Seconds(5);
}

absl::Status CtlOptions::Validate() const {
  if (target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", TargetFlag(subcommand), "=HOST:PORT is required"));
  }
  if (timeout.has_value()) {
    if (absl::Status s = CheckPositiveFinite("timeout", *timeout); !s.ok()) return s;
  }
  if (random_tokens < 0 || random_tokens > kMaxRandomTokens) {
    return FlagValueError("random-tokens", random_tokens,
                          absl::StrCat("must be in [1, ", kMaxRandomTokens, "]"));
  }
  if (vocab < 1 || vocab > std::numeric_limits<int32_t>::max()) {
    return FlagValueError(
        "vocab", vocab, absl::StrCat("must be in [1, ", std::numeric_limits<int32_t>::max(), "]"));
  }
  const bool takes_prompt = subcommand == Subcommand::kRoute || subcommand == Subcommand::kGenerate;
  if (takes_prompt) {
    if (!tokens.empty() && random_tokens > 0) {
      return absl::InvalidArgumentError("give --tokens or --random-tokens, not both");
    }
    if (tokens.empty() && random_tokens == 0) {
      return absl::InvalidArgumentError("--tokens=ID,ID,... or --random-tokens=N is required");
    }
  }
  if (subcommand == Subcommand::kGenerate && max_new_tokens < 1) {
    return max_new_tokens == 0 ? absl::InvalidArgumentError("--max-new-tokens=K is required")
                               : FlagValueError("max-new-tokens", max_new_tokens, "must be >= 1");
  }
  return channel.Validate();
}

absl::StatusOr<CtlCommandLine> ParseCtlCommandLine(int argc, const char* const* argv) {
  CtlCommandLine parsed;
  if (argc < 2) {
    return absl::InvalidArgumentError(
        "no subcommand (status, route, generate, pins, daemon-stats, worker-stats or health)");
  }
  const absl::string_view first = argv[1];
  if (first == "help" || first == "-h" || first == "-help" || first == "--help") {
    parsed.help = true;
    if (first == "help" && argc > 2) {
      parsed.help_for = SubcommandNamed(argv[2]);
      if (!parsed.help_for.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat("help: unknown subcommand '", argv[2], "'"));
      }
    }
    return parsed;
  }
  const std::optional<Subcommand> subcommand = SubcommandNamed(first);
  if (!subcommand.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown subcommand '", first,
                     "' (status, route, generate, pins, daemon-stats, worker-stats or health)"));
  }
  const SubcommandSpec& spec = SpecOf(*subcommand);
  // argv[1] (the subcommand) takes argv[0]'s place: its flags are argv[2..).
  absl::StatusOr<ParsedCommandLine> flags = ParseCommandLine(argc - 1, argv + 1, IsBoolFlag);
  if (!flags.ok()) return InSubcommand(spec, flags.status());
  if (flags->help) {
    parsed.help = true;
    parsed.help_for = *subcommand;
    return parsed;
  }
  CtlOptions& options = parsed.options;
  options.subcommand = *subcommand;
  const Table& table = CtlSettings();
  for (const CommandLineFlag& flag : flags->flags) {
    if (table.Find(flag.name) == nullptr) {
      return InSubcommand(spec,
                          absl::InvalidArgumentError(absl::StrCat("unknown flag --", flag.name)));
    }
    if (!TakesFlag(spec, flag.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag.name, " is not a flag of ", spec.name));
    }
    if (absl::Status s = table.Apply(flag.name, flag.value, &options); !s.ok()) {
      return InSubcommand(spec, absl::Status(s.code(), absl::StrCat("--", s.message())));
    }
  }
  // TLS when any of its files is given (Validate then requires all three).
  TransportSecurityOptions& security = options.channel.security;
  security.plaintext =
      security.cert_file.empty() && security.key_file.empty() && security.ca_file.empty();
  if (absl::Status valid = options.Validate(); !valid.ok()) return InSubcommand(spec, valid);
  return parsed;
}

std::string CtlHelpText(std::optional<Subcommand> subcommand) {
  if (!subcommand.has_value()) {
    std::string text =
        "asymcachectl: the operator CLI of an AsymCache cluster (gRPC: coordinator, cache "
        "daemons, workers).\n\n"
        "Usage: asymcachectl SUBCOMMAND --flag=value ...\n\n";
    for (const SubcommandSpec& spec : Specs()) {
      absl::StrAppend(&text, absl::StrFormat("  %-13s %s\n", spec.name, spec.summary));
    }
    absl::StrAppend(&text,
                    "\n`asymcachectl SUBCOMMAND --help` lists a subcommand's flags.\n"
                    "Exit status: 0 ok; 1 the server answered an error or could not be reached "
                    "(the gRPC code and message\non stderr), or health is not SERVING; 2 bad "
                    "usage.\n");
    return text;
  }
  const SubcommandSpec& spec = SpecOf(*subcommand);
  CtlOptions defaults;
  defaults.subcommand = *subcommand;
  std::string text = absl::StrCat("asymcachectl ", spec.name, ": ", spec.summary, ".\n\n",
                                  "Usage: asymcachectl ", spec.name, " ", spec.usage, "\n\n");
  for (const Table::Setting& setting : CtlSettings().settings()) {
    if (!TakesFlag(spec, setting.name)) continue;
    std::string value = setting.print ? setting.print(defaults) : "";
    absl::StrAppend(&text, absl::StrFormat("  --%-16s %s", setting.name, setting.help));
    if (!value.empty() && setting.name != TargetFlag(*subcommand)) {
      absl::StrAppend(&text, " (default: ", value, ")");
    }
    absl::StrAppend(&text, "\n");
  }
  absl::StrAppend(&text, absl::StrFormat("  --%-16s %s\n", "help", "this text"));
  return text;
}

}  // namespace asymcache::ctl
