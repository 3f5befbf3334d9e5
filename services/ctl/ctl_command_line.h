// asymcachectl's command line: `asymcachectl SUBCOMMAND --flag=value ...`
// parsed into CtlOptions, in the flag syntax of every AsymCache binary
// (services/common/command_line.h: --name=value or --name value, a bare
// --name for a boolean, --no-name, underscores as dashes, -h/--help).
//
// Subcommands and their flags (docs/asymcachectl.md has examples):
//   status        --coordinator  [--json]
//   route         --coordinator  PROMPT [--explain] [--json]
//   generate      --target       PROMPT --max-new-tokens [--temperature]
//                                [--top-p] [--json]
//   pins          --daemon       [--json]
//   daemon-stats  --daemon       [--json]
//   worker-stats  --worker       [--json]
//   health        --target       [--service]
// where PROMPT is --tokens=ID,ID,... or --random-tokens=N [--seed] [--vocab],
// plus [--salt]; every subcommand takes --timeout and, for a cluster that
// runs mutual TLS, --tls-cert, --tls-key and --tls-ca (all three, or none:
// plaintext).
//
// Errors (INVALID_ARGUMENT, each naming the subcommand or flag at fault):
// "no subcommand", "unknown subcommand 'X'", "unknown flag --X", "--X is not
// a flag of SUBCOMMAND", a flag's bad value ("--vocab must be in [1,
// 2147483647], got 0"), a missing required flag ("--daemon=HOST:PORT is
// required"), flags that exclude each other, and ParseCommandLine's own.
//
// Contract: pure functions; thread-safe.
#ifndef ASYMCACHE_SERVICES_CTL_CTL_COMMAND_LINE_H_
#define ASYMCACHE_SERVICES_CTL_CTL_COMMAND_LINE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/ctl/ctl_channel.h"

namespace asymcache::ctl {

enum class Subcommand { kStatus, kRoute, kGenerate, kPins, kDaemonStats, kWorkerStats, kHealth };

// The name as typed: "status", "route", "generate", "pins", "daemon-stats",
// "worker-stats", "health".
absl::string_view SubcommandName(Subcommand subcommand);
// The subcommand of that name; nullopt for none.
std::optional<Subcommand> SubcommandNamed(absl::string_view name);

// The flag that names the server a subcommand calls: "coordinator" (status,
// route), "target" (generate, health), "daemon" (pins, daemon-stats),
// "worker" (worker-stats).
absl::string_view TargetFlag(Subcommand subcommand);

// Deadline of a subcommand's RPC when --timeout is not given: 5 s for a unary
// call (far above a healthy answer, which takes milliseconds; short enough that
// a hung server surfaces at once in a script); 60 s for generate, whose
// deadline bounds the whole stream (hundreds of tokens of a large model).
absl::Duration DefaultTimeout(Subcommand subcommand);

// Upper bound of --random-tokens: 16M tokens (64 MiB of ids) is beyond any
// context a server accepts; it keeps a typo from exhausting memory here.
inline constexpr int64_t kMaxRandomTokens = int64_t{1} << 24;

// One invocation's settings. The defaults are those of an invocation that does
// not give the flag.
struct CtlOptions {
  Subcommand subcommand = Subcommand::kStatus;
  // The server's gRPC address (HOST:PORT or a gRPC target URI), from the flag
  // TargetFlag(subcommand). Required: no default.
  std::string target;
  // --timeout: the RPC deadline. nullopt: DefaultTimeout(subcommand).
  std::optional<absl::Duration> timeout;
  // --json: print the response as JSON (protobuf's mapping, proto field
  // names, every field even when zero) instead of text. Default false: text
  // for people; scripts ask for JSON.
  bool json = false;

  // The prompt of route and generate: exactly one of --tokens and
  // --random-tokens.
  std::vector<int32_t> tokens;  // --tokens=ID,ID,...; empty = not given
  int64_t random_tokens = 0;    // --random-tokens=N, in [1, kMaxRandomTokens]; 0 = not given
  // --seed: seeds the random prompt and generate's sampler (SamplingParams.seed),
  // so route and generate with the same flags mean the same prompt. Default 1:
  // a fixed prompt, so that repeating a command hits the cache it filled.
  uint64_t seed = 1;
  // --vocab: random token ids are drawn from [0, vocab). Default 1024: the
  // vocabulary of the tiny shape, the smallest named shape, so a random prompt
  // is valid for every model. In [1, 2^31 - 1].
  int64_t vocab = 1024;
  // --salt: the tenant salt of the request. Default "": the default tenant.
  std::string salt;

  // route --explain: ask for every candidate daemon's score and print them.
  bool explain = false;

  // generate --max-new-tokens: required, >= 1 (0 = not given).
  int32_t max_new_tokens = 0;
  // generate --temperature: <= 0 is greedy. Default 0: greedy, the same
  // tokens on every run. The worker validates the sampling values.
  double temperature = 0;
  // generate --top-p: the nucleus, (0, 1]. Default 0: what the proto reads as 1.
  double top_p = 0;

  // health --service: the service whose status is asked. Default "": the
  // server as a whole (what every AsymCache server marks SERVING).
  std::string service;

  // How channels are made: --tls-cert, --tls-key, --tls-ca set
  // channel.security (TLS when any is given; none: plaintext).
  ChannelOptions channel;

  // The deadline the subcommand's RPC gets.
  absl::Duration EffectiveTimeout() const {
    return timeout.has_value() ? *timeout : DefaultTimeout(subcommand);
  }

  // INVALID_ARGUMENT naming the flag: the target missing, a bad timeout, no
  // prompt or two, generate without --max-new-tokens, TLS files missing one
  // of the three, unreadable or not PEM (TransportSecurityOptions::Validate).
  absl::Status Validate() const;
};

// A parsed command line: help to print, or options to run.
struct CtlCommandLine {
  // -h/--help anywhere, or the subcommand "help": print CtlHelpText(help_for)
  // and exit 0. Help wins over any mistake beside it.
  bool help = false;
  std::optional<Subcommand> help_for;  // nullopt: the overview of every subcommand
  CtlOptions options;                  // valid (Validate() is OK) when !help
};

// Parses argv[1..argc): argv[1] is the subcommand, the rest its flags. The
// result's options are validated. `asymcachectl help [SUBCOMMAND]` is help.
absl::StatusOr<CtlCommandLine> ParseCtlCommandLine(int argc, const char* const* argv);

// The usage text: the overview (nullopt) or one subcommand's flags with their
// defaults.
std::string CtlHelpText(std::optional<Subcommand> subcommand);

}  // namespace asymcache::ctl

#endif  // ASYMCACHE_SERVICES_CTL_CTL_COMMAND_LINE_H_
