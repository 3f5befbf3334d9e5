// The worker's settings (services/worker/worker_config.h, worker_options.h)
// and the command-line syntax it shares with the coordinator
// (services/common/command_line.h): every setting round-trips through its
// text form, flags and YAML land in the same fields, flags win over the
// config file, and every bad value is refused with a message naming it.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/command_line.h"
#include "services/worker/worker_config.h"
#include "services/worker/worker_options.h"

namespace asymcache::worker {
namespace {

using ::testing::HasSubstr;

// argv for ParseCommandLine: "asymcache-worker" then `args`.
absl::StatusOr<ParsedCommandLine> Parse(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"asymcache-worker"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data(), IsWorkerBoolSetting);
}

// The options the command line `args` asks for, exactly as given.
absl::StatusOr<WorkerOptions> FromArgsAsGiven(const std::vector<std::string>& args) {
  absl::StatusOr<ParsedCommandLine> parsed = Parse(args);
  if (!parsed.ok()) return parsed.status();
  return WorkerOptionsFromFlags(parsed->flags);
}

// The same with --plaintext appended: the transport choice the binary
// requires (TransportSecurityIsAnExplicitChoice tests it), made for the
// tests of the other settings.
absl::StatusOr<WorkerOptions> FromArgs(std::vector<std::string> args) {
  args.push_back("--plaintext");
  return FromArgsAsGiven(args);
}

// Every setting's text under `options`.
std::vector<std::pair<std::string, std::string>> AllValues(const WorkerOptions& options) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const WorkerSettingInfo& s : WorkerSettings()) {
    absl::StatusOr<std::string> value = WorkerSettingValue(s.name, options);
    EXPECT_TRUE(value.ok()) << s.name << ": " << value.status();
    out.emplace_back(s.name, value.value_or("<none>"));
  }
  return out;
}

// A non-default value for every setting (each differs from the default).
const std::vector<std::pair<std::string, std::string>>& NonDefaults() {
  static const auto* values = new std::vector<std::pair<std::string, std::string>>{
      {"listen", "127.0.0.1:7000"},
      {"metrics-port", "9999"},
      {"metrics-host", "127.0.0.1"},
      {"daemon", "10.0.0.1:50051"},
      {"daemon-connect-timeout", "3s"},
      {"backend", "cuda"},
      {"gpu", "3"},
      {"model", "llama-3-8b"},
      {"model-dir", "/models/llama"},
      {"seed", "18446744073709551615"},
      {"cpu-threads", "4"},
      {"role", "prefill"},
      {"chunking", "fixed"},
      {"fixed-budget-tokens", "512"},
      {"tpot-target", "30ms"},
      {"tpot-slo", "per-step"},
      {"max-step-latency", "400ms"},
      {"overload-budget-tokens", "1024"},
      {"max-chunk-tokens", "4096"},
      {"max-running", "64"},
      {"max-queued", "1000"},
      {"client-rate-limit", "12.5"},
      {"client-rate-burst", "40"},
      {"max-step-tokens", "4224"},
      {"max-context-tokens", "32768"},
      {"rpc-timeout", "2s"},
      {"extend-leases", "false"},
      {"admission-timeout", "45s"},
      {"admission-retry-interval", "250ms"},
      {"defer-pending-tokens", "4096"},
      {"defer-pending-max-wait", "3s"},
      {"prefill-order", "least-remaining"},
      {"daemon-check-interval", "250ms"},
      {"coordinators", "c1:50061,c2:50061"},
      {"member-id", "worker-7"},
      {"advertise-address", "w7.example:50071"},
      {"daemon-member-id", "daemon-7"},
      {"coordinator-rpc-timeout", "500ms"},
      {"coordinator-retry-max", "5s"},
      {"max-message-bytes", "8MiB"},
      {"max-stream-buffered-bytes", "256MiB"},
      {"shutdown-grace", "3s"},
      {"stats-interval", "1s"},
      {"plaintext", "false"},
      {"tls-cert", "/etc/asymcache/worker.pem"},
      {"tls-key", "/etc/asymcache/worker.key"},
      {"tls-ca", "/etc/asymcache/ca.pem"},
      {"trusted-peers", "asymcache-component,frontend"},
      {"step-trace", "/var/log/asymcache/steps.jsonl"},
  };
  return *values;
}

TEST(WorkerOptionsTest, DefaultsValidateOnceTheDaemonIsNamed) {
  WorkerOptions options;
  EXPECT_THAT(options.Validate().message(), HasSubstr("--daemon is required"));
  options.daemon = "127.0.0.1:50051";
  EXPECT_TRUE(options.Validate().ok()) << options.Validate();
  // The adaptive cap leaves room for a full decode batch in one pass.
  EXPECT_EQ(options.engine.chunking.max_budget_tokens + options.engine.max_running,
            options.engine.max_step_tokens);
}

TEST(WorkerConfigTest, EverySettingIsListedOnceWithHelp) {
  std::vector<std::string> names;
  for (const WorkerSettingInfo& s : WorkerSettings()) {
    EXPECT_FALSE(s.help.empty()) << s.name;
    EXPECT_EQ(std::count(names.begin(), names.end(), s.name), 0) << s.name << " twice";
    names.push_back(s.name);
  }
  // NonDefaults() covers every setting, and only settings.
  ASSERT_EQ(names.size(), NonDefaults().size());
  for (const auto& [name, value] : NonDefaults()) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  }
}

TEST(WorkerConfigTest, DefaultsRoundTripThroughTheirText) {
  const WorkerOptions defaults;
  WorkerOptions reparsed;
  for (const auto& [name, value] : AllValues(defaults)) {
    ASSERT_TRUE(ApplyWorkerSetting(name, value, &reparsed).ok()) << name << "=" << value;
  }
  EXPECT_EQ(AllValues(reparsed), AllValues(defaults));
}

TEST(WorkerConfigTest, NonDefaultValuesRoundTripAndLandInTheirFields) {
  const WorkerOptions defaults;
  WorkerOptions options;
  for (const auto& [name, value] : NonDefaults()) {
    ASSERT_TRUE(ApplyWorkerSetting(name, value, &options).ok()) << name << "=" << value;
    EXPECT_EQ(WorkerSettingValue(name, options).value(), value) << name;
    EXPECT_NE(WorkerSettingValue(name, defaults).value(), value) << name << " is the default";
  }
  EXPECT_EQ(options.listen, "127.0.0.1:7000");
  EXPECT_EQ(options.metrics_port, 9999);
  EXPECT_EQ(options.daemon, "10.0.0.1:50051");
  EXPECT_EQ(options.daemon_connect_timeout, absl::Seconds(3));
  EXPECT_EQ(options.backend, "cuda");
  EXPECT_EQ(options.gpu, 3);
  EXPECT_EQ(options.model, "llama-3-8b");
  EXPECT_EQ(options.model_dir, "/models/llama");
  EXPECT_EQ(options.seed, 18446744073709551615ull);
  EXPECT_EQ(options.cpu_threads, 4);
  EXPECT_EQ(options.engine.role, WorkerRole::kPrefill);
  EXPECT_EQ(options.engine.chunking.mode, ChunkSchedulerOptions::Mode::kFixed);
  EXPECT_EQ(options.engine.chunking.fixed_budget_tokens, 512);
  EXPECT_EQ(options.engine.chunking.tpot_target, absl::Milliseconds(30));
  EXPECT_EQ(options.engine.chunking.tpot_slo, ChunkSchedulerOptions::TpotSlo::kPerStep);
  EXPECT_EQ(options.engine.chunking.max_step_latency, absl::Milliseconds(400));
  EXPECT_EQ(options.engine.chunking.max_budget_tokens, 4096);
  EXPECT_EQ(options.engine.max_running, 64);
  EXPECT_EQ(options.engine.max_queued, 1000);
  EXPECT_EQ(options.client_rate_limit.requests_per_second, 12.5);
  EXPECT_EQ(options.client_rate_limit.burst, 40);
  EXPECT_EQ(options.engine.max_step_tokens, 4224);
  EXPECT_EQ(options.engine.max_context_tokens, 32768);
  EXPECT_EQ(options.engine.rpc_timeout, absl::Seconds(2));
  EXPECT_EQ(options.engine.daemon_check_interval, absl::Milliseconds(250));
  EXPECT_EQ(options.coordinators, (std::vector<std::string>{"c1:50061", "c2:50061"}));
  EXPECT_EQ(options.member_id, "worker-7");
  EXPECT_EQ(options.advertise_address, "w7.example:50071");
  EXPECT_EQ(options.daemon_member_id, "daemon-7");
  EXPECT_EQ(options.coordinator_rpc_timeout, absl::Milliseconds(500));
  EXPECT_EQ(options.coordinator_retry_max, absl::Seconds(5));
  EXPECT_EQ(options.max_message_bytes, 8 << 20);
  EXPECT_EQ(options.max_stream_buffered_bytes, int64_t{256} << 20);
  EXPECT_EQ(options.shutdown_grace, absl::Seconds(3));
  EXPECT_EQ(options.stats_interval, absl::Seconds(1));
  EXPECT_FALSE(options.security.plaintext);
  EXPECT_EQ(options.security.cert_file, "/etc/asymcache/worker.pem");
  EXPECT_EQ(options.security.key_file, "/etc/asymcache/worker.key");
  EXPECT_EQ(options.security.ca_file, "/etc/asymcache/ca.pem");
  EXPECT_EQ(options.security.trusted_peers,
            (std::vector<std::string>{"asymcache-component", "frontend"}));
  // Those PEM files do not exist here (tests/services/security/ validates
  // real ones): the other settings validate under plaintext.
  EXPECT_THAT(options.Validate().message(), HasSubstr("--tls-cert: cannot read"));
  options.security = TransportSecurityOptions();
  EXPECT_TRUE(options.Validate().ok()) << options.Validate();
}

TEST(WorkerConfigTest, YamlSetsTheSameFieldsAsFlags) {
  std::string yaml;
  for (const auto& [name, value] : NonDefaults()) {
    if (name == "coordinators") continue;  // as a sequence below
    absl::StrAppend(&yaml, name, ": \"", value, "\"\n");
  }
  absl::StrAppend(&yaml, "coordinators:\n  - c1:50061\n  - c2:50061\n");
  WorkerOptions from_yaml;
  ASSERT_TRUE(ApplyWorkerYamlText(yaml, "worker.yaml", &from_yaml).ok())
      << ApplyWorkerYamlText(yaml, "worker.yaml", &from_yaml);
  WorkerOptions from_flags;
  for (const auto& [name, value] : NonDefaults()) {
    ASSERT_TRUE(ApplyWorkerSetting(name, value, &from_flags).ok());
  }
  EXPECT_EQ(AllValues(from_yaml), AllValues(from_flags));

  // A key with no value sets the empty text.
  ASSERT_TRUE(ApplyWorkerYamlText("member-id:\ncoordinators:\n", "w.yaml", &from_yaml).ok());
  EXPECT_EQ(from_yaml.member_id, "");
  EXPECT_TRUE(from_yaml.coordinators.empty());
}

TEST(WorkerConfigTest, YamlErrorsNameTheFileLineAndSetting) {
  WorkerOptions options;
  const std::string before = WorkerSettingValue("max-running", options).value();
  absl::Status s = ApplyWorkerYamlText("max-running: 8\nbogus: 1\n", "w.yaml", &options);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("w.yaml:2"));
  EXPECT_THAT(s.message(), HasSubstr("unknown setting 'bogus'"));
  // All or nothing: the good line before it was not applied.
  EXPECT_EQ(WorkerSettingValue("max-running", options).value(), before);

  s = ApplyWorkerYamlText("role: leader\n", "w.yaml", &options);
  EXPECT_THAT(s.message(), HasSubstr("w.yaml:1"));
  EXPECT_THAT(s.message(), HasSubstr("role: 'leader' is not both, prefill or decode"));
  s = ApplyWorkerYamlText("coordinators:\n  - [a, b]\n", "w.yaml", &options);
  EXPECT_THAT(s.message(), HasSubstr("coordinators: entries must be scalars"));
  s = ApplyWorkerYamlText("max-running: [1, 2]\n", "w.yaml", &options);
  EXPECT_THAT(s.message(), HasSubstr("max-running: expected a scalar value"));
  s = ApplyWorkerYamlText("- a\n", "w.yaml", &options);
  EXPECT_THAT(s.message(), HasSubstr("must be a mapping"));

  s = ApplyWorkerYaml("/nonexistent/worker.yaml", &options);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/worker.yaml"));
}

// Every unparsable value: refused by the setting's parser, options unchanged.
TEST(WorkerConfigTest, UnparsableValuesAreRefusedNamingTheSetting) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"metrics-port", "http"},
      {"metrics-port", "99999999999"},
      {"daemon-connect-timeout", "soon"},
      {"gpu", "first"},
      {"model", "gpt-5"},
      {"seed", "-1"},
      {"seed", "18446744073709551616"},
      {"cpu-threads", "many"},
      {"role", "leader"},
      {"chunking", "sometimes"},
      {"fixed-budget-tokens", "1.5"},
      {"tpot-target", "50"},
      {"max-chunk-tokens", "lots"},
      {"max-running", "3000000000"},
      {"max-queued", "x"},
      {"max-step-tokens", ""},
      {"max-context-tokens", "1e6"},
      {"rpc-timeout", "10"},
      {"coordinator-rpc-timeout", "1"},
      {"coordinator-retry-max", "2"},
      {"max-message-bytes", "4GiB"},
      {"max-message-bytes", "big"},
      {"max-stream-buffered-bytes", "-1MiB"},
      {"max-stream-buffered-bytes", "lots"},
      {"shutdown-grace", "-"},
      {"stats-interval", "often"},
  };
  for (const auto& [name, value] : cases) {
    WorkerOptions options;
    const auto before = AllValues(options);
    const absl::Status s = ApplyWorkerSetting(name, value, &options);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name << "=" << value;
    EXPECT_THAT(s.message(), HasSubstr(name)) << name << "=" << value;
    EXPECT_EQ(AllValues(options), before) << name << "=" << value;
  }
  WorkerOptions options;
  EXPECT_THAT(ApplyWorkerSetting("model", "gpt-5", &options).message(),
              HasSubstr("unknown model shape 'gpt-5'"));
  EXPECT_THAT(ApplyWorkerSetting("max-runing", "1", &options).message(),
              HasSubstr("unknown setting 'max-runing'"));
  EXPECT_EQ(WorkerSettingValue("max-runing", options).status().code(),
            absl::StatusCode::kNotFound);
}

// Every value Validate() refuses, through the command line, with its message.
TEST(WorkerConfigTest, OutOfRangeValuesAreRefusedWithTheirMessage) {
  const std::string daemon = "--daemon=127.0.0.1:50051";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "--daemon is required"},
      {{daemon, "--listen="}, "--listen must be HOST:PORT"},
      {{daemon, "--metrics-port=-2"}, "--metrics-port must be -1 (off), 0 (any) or 1..65535"},
      {{daemon, "--metrics-port=65536"}, "--metrics-port must be -1 (off)"},
      {{daemon, "--metrics-host="}, "--metrics-host must name an address"},
      {{daemon, "--daemon-connect-timeout=0s"},
       "--daemon-connect-timeout must be positive and finite"},
      {{daemon, "--daemon-connect-timeout=inf"},
       "--daemon-connect-timeout must be positive and finite"},
      {{daemon, "--backend=tpu"}, "--backend must be cpu or cuda, got 'tpu'"},
      {{daemon, "--gpu=-1"}, "--gpu must be >= 0"},
      {{daemon, "--model=llama-3-8b"}, "the cpu backend runs fp32 shapes only"},
      {{daemon, "--cpu-threads=-1"}, "--cpu-threads must be >= 0"},
      {{daemon, "--fixed-budget-tokens=100"},
       "--fixed-budget-tokens must be a positive multiple of 16, got 100"},
      {{daemon, "--fixed-budget-tokens=0"}, "--fixed-budget-tokens must be a positive multiple"},
      {{daemon, "--tpot-target=0ms"}, "--tpot-target must be positive and finite"},
      {{daemon, "--max-step-latency=-1ms"}, "--max-step-latency must be finite and >= 0"},
      {{daemon, "--max-step-latency=inf"}, "--max-step-latency must be finite and >= 0"},
      {{daemon, "--overload-budget-tokens=100"},
       "--overload-budget-tokens must be 0 (off) or a positive multiple of 16, got 100"},
      {{daemon, "--overload-budget-tokens=-16"},
       "--overload-budget-tokens must be 0 (off) or a positive multiple of 16"},
      {{daemon, "--max-chunk-tokens=8008"}, "--max-chunk-tokens must be a multiple of 16"},
      {{daemon, "--max-chunk-tokens=0"}, "--max-chunk-tokens must be a multiple of 16 and >= 16"},
      {{daemon, "--max-running=0"}, "--max-running must be >= 1"},
      {{daemon, "--max-queued=10"}, "--max-queued must be >= --max-running (128)"},
      {{daemon, "--max-step-tokens=8", "--max-chunk-tokens=16", "--max-running=1"},
       "--max-step-tokens must be >= 16"},
      {{daemon, "--max-step-tokens=4096"},
       "--max-chunk-tokens (8064) + --max-running (128) must not exceed --max-step-tokens (4096)"},
      {{daemon, "--max-context-tokens=-1"}, "--max-context-tokens must be >= 0"},
      {{daemon, "--rpc-timeout=0s"}, "--rpc-timeout must be positive and finite"},
      {{daemon, "--admission-retry-interval=-1ms"},
       "--admission-retry-interval must be finite and >= 0"},
      {{daemon, "--admission-retry-interval=inf"},
       "--admission-retry-interval must be finite and >= 0"},
      {{daemon, "--defer-pending-tokens=-16"}, "--defer-pending-tokens must be >= 0"},
      {{daemon, "--defer-pending-max-wait=0s"}, "--defer-pending-max-wait must be finite and > 0"},
      {{daemon, "--coordinators=a:1,,b:2", "--daemon-member-id=d"},
       "--coordinators must be host:port addresses"},
      {{daemon, "--coordinators=a:1,a:1", "--daemon-member-id=d"},
       "--coordinators must not repeat an address, got 'a:1' twice"},
      {{daemon, "--coordinators=a:1"}, "--daemon-member-id is required with --coordinators"},
      {{daemon, "--member-id=bad id"}, "--member-id must match [A-Za-z0-9._:-]{1,128}"},
      {{daemon, "--daemon-member-id=bad/id"}, "--daemon-member-id must match"},
      {{daemon, "--member-id=same", "--daemon-member-id=same"},
       "--member-id must differ from --daemon-member-id"},
      {{daemon, "--coordinator-rpc-timeout=0s"},
       "--coordinator-rpc-timeout must be positive and finite"},
      {{daemon, "--coordinator-retry-max=-1s"},
       "--coordinator-retry-max must be positive and finite"},
      {{daemon, "--max-message-bytes=1000"}, "--max-message-bytes must be >= 1 MiB"},
      {{daemon, "--max-stream-buffered-bytes=64KiB"},
       "--max-stream-buffered-bytes must be >= 1 MiB"},
      {{daemon, "--shutdown-grace=-1s"}, "--shutdown-grace must be >= 0"},
      {{daemon, "--stats-interval=0s"}, "--stats-interval must be positive and finite"},
  };
  for (const auto& [args, message] : cases) {
    const absl::StatusOr<WorkerOptions> options = FromArgs(args);
    ASSERT_FALSE(options.ok()) << "accepted: " << ::testing::PrintToString(args);
    EXPECT_EQ(options.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(options.status().message(), HasSubstr(message))
        << ::testing::PrintToString(args);
  }
  // The same bounds pass at their edges.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {daemon, "--metrics-port=-1"},
           {daemon, "--metrics-port=0", "--metrics-host=127.0.0.1"},
           {daemon, "--max-step-tokens=8192", "--max-chunk-tokens=8064", "--max-running=128"},
           {daemon, "--shutdown-grace=0s"},
           {daemon, "--model=llama-3-8b", "--backend=cuda"},
           {daemon, "--model-dir=/models/x", "--model=llama-3-70b-tp"},
           {daemon, "--coordinators=a:1", "--daemon-member-id=d", "--member-id=w"}}) {
    const absl::StatusOr<WorkerOptions> options = FromArgs(args);
    EXPECT_TRUE(options.ok()) << ::testing::PrintToString(args) << ": " << options.status();
  }
}

TEST(CommandLineTest, ParsesEveryFlagForm) {
  absl::StatusOr<ParsedCommandLine> parsed =
      Parse({"--daemon=h:1", "--max_running", "8", "--listen=", "--role=decode"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->help);
  ASSERT_EQ(parsed->flags.size(), 4u);
  EXPECT_EQ(parsed->flags[0].name, "daemon");
  EXPECT_EQ(parsed->flags[0].value, "h:1");
  EXPECT_EQ(parsed->flags[1].name, "max-running");  // underscores read as dashes
  EXPECT_EQ(parsed->flags[1].value, "8");
  EXPECT_EQ(parsed->flags[2].name, "listen");
  EXPECT_EQ(parsed->flags[2].value, "");
  EXPECT_EQ(parsed->flags[3].value, "decode");

  // Boolean settings: bare and --no- forms (the callback decides).
  const char* argv[] = {"prog", "--verbose", "--no-verbose", "--no-such", "x"};
  parsed = ParseCommandLine(5, argv, [](absl::string_view n) { return n == "verbose"; });
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->flags.size(), 3u);
  EXPECT_EQ(parsed->flags[0].value, "true");
  EXPECT_EQ(parsed->flags[1].name, "verbose");
  EXPECT_EQ(parsed->flags[1].value, "false");
  EXPECT_EQ(parsed->flags[2].name, "no-such");  // not a boolean: takes the next argument
  EXPECT_EQ(parsed->flags[2].value, "x");
}

TEST(CommandLineTest, HelpWinsAndMistakesAreNamed) {
  for (const char* help : {"-h", "-help", "--help"}) {
    absl::StatusOr<ParsedCommandLine> parsed = Parse({"stray", "--max-running", help});
    ASSERT_TRUE(parsed.ok()) << help;
    EXPECT_TRUE(parsed->help);
    EXPECT_TRUE(parsed->flags.empty());
  }
  EXPECT_THAT(Parse({"stray"}).status().message(), HasSubstr("unexpected argument 'stray'"));
  EXPECT_THAT(Parse({"--"}).status().message(), HasSubstr("unexpected argument '--'"));
  EXPECT_THAT(Parse({"-x"}).status().message(), HasSubstr("unexpected argument '-x'"));
  EXPECT_THAT(Parse({"--daemon=a", "--max-running"}).status().message(),
              HasSubstr("--max-running needs a value"));
  EXPECT_THAT(FromArgs({"--daemon=a", "--max-runing=4"}).status().message(),
              HasSubstr("unknown flag --max-runing"));
  EXPECT_THAT(FromArgs({"--daemon=a", "--max-running=four"}).status().message(),
              HasSubstr("--max-running: 'four' is not an integer"));
}

TEST(CommandLineTest, TransportSecurityIsAnExplicitChoice) {
  // The library default is plaintext; the binary's parsing is not.
  EXPECT_TRUE(WorkerOptions().security.plaintext);
  const absl::StatusOr<WorkerOptions> unchosen = FromArgsAsGiven({"--daemon=h:1"});
  ASSERT_FALSE(unchosen.ok());
  EXPECT_EQ(unchosen.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unchosen.status().message(), HasSubstr("--plaintext"));
  EXPECT_THAT(unchosen.status().message(), HasSubstr("--tls-cert, --tls-key and --tls-ca"));
  const absl::StatusOr<WorkerOptions> plaintext = FromArgsAsGiven({"--daemon=h:1", "--plaintext"});
  ASSERT_TRUE(plaintext.ok()) << plaintext.status();
  EXPECT_FALSE(plaintext->security.tls());
  EXPECT_THAT(FromArgsAsGiven({"--daemon=h:1", "--plaintext", "--tls-ca=/x"}).status().message(),
              HasSubstr("--plaintext excludes --tls-ca"));
  EXPECT_THAT(FromArgsAsGiven({"--daemon=h:1", "--tls-cert=/x"}).status().message(),
              HasSubstr("mutual TLS needs --tls-key and --tls-ca as well"));
  EXPECT_THAT(
      FromArgsAsGiven({"--daemon=h:1", "--plaintext", "--trusted-peers=a"}).status().message(),
      HasSubstr("--trusted-peers needs TLS"));
  // YAML: trusted-peers as a sequence.
  WorkerOptions options;
  ASSERT_TRUE(ApplyWorkerYamlText("trusted-peers: [coordinator, frontend]\n", "t.yaml", &options)
                  .ok());
  EXPECT_EQ(options.security.trusted_peers,
            (std::vector<std::string>{"coordinator", "frontend"}));
}

TEST(CommandLineTest, FlagsWinOverTheConfigFile) {
  char path[] = "/tmp/asymcache_worker_config_XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string yaml =
      "daemon: 10.0.0.9:50051\nmax-running: 32\nmax-queued: 64\nrole: decode\n";
  ASSERT_EQ(::write(fd, yaml.data(), yaml.size()), static_cast<ssize_t>(yaml.size()));
  ::close(fd);
  // The flag comes before --config on the command line and still wins.
  absl::StatusOr<WorkerOptions> options =
      FromArgs({"--max-running=16", absl::StrCat("--config=", path)});
  ::unlink(path);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->daemon, "10.0.0.9:50051");  // from the file
  EXPECT_EQ(options->engine.max_queued, 64);       // from the file
  EXPECT_EQ(options->engine.role, WorkerRole::kDecode);
  EXPECT_EQ(options->engine.max_running, 16);  // the flag

  EXPECT_EQ(FromArgs({"--config=/nonexistent.yaml"}).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace asymcache::worker
