// asymcachectl's command line as the asymcache_ctl library parses it: the
// flags of each subcommand land in CtlOptions, every mistake is refused with
// a message naming it, and the random prompt is a pure function of its flags.
#include "services/ctl/ctl_command_line.h"

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/ctl/ctl_commands.h"
#include "tests/services/security/test_certs.h"

namespace asymcache::ctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

absl::StatusOr<CtlCommandLine> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "asymcachectl");
  std::vector<const char*> argv;
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  return ParseCtlCommandLine(static_cast<int>(argv.size()), argv.data());
}

TEST(CtlCommandLineTest, GenerateFlagsLandInTheOptions) {
  absl::StatusOr<CtlCommandLine> parsed =
      Parse({"generate", "--target=127.0.0.1:50071", "--tokens=5,6,7", "--max-new-tokens", "9",
             "--salt=tenant-a", "--temperature=0.7", "--top_p=0.9", "--seed=42", "--timeout=2s",
             "--json"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->help);
  const CtlOptions& o = parsed->options;
  EXPECT_EQ(o.subcommand, Subcommand::kGenerate);
  EXPECT_EQ(o.target, "127.0.0.1:50071");
  EXPECT_THAT(o.tokens, ElementsAre(5, 6, 7));
  EXPECT_EQ(o.max_new_tokens, 9);
  EXPECT_EQ(o.salt, "tenant-a");
  EXPECT_DOUBLE_EQ(o.temperature, 0.7);
  EXPECT_DOUBLE_EQ(o.top_p, 0.9);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.EffectiveTimeout(), absl::Seconds(2));
  EXPECT_TRUE(o.json);
}

TEST(CtlCommandLineTest, EachSubcommandHasItsTargetFlagAndDefaultTimeout) {
  const std::vector<std::pair<std::vector<std::string>, Subcommand>> cases = {
      {{"status", "--coordinator=c:1"}, Subcommand::kStatus},
      {{"route", "--coordinator=c:1", "--random-tokens=4"}, Subcommand::kRoute},
      {{"generate", "--target=w:1", "--random-tokens=4", "--max-new-tokens=1"},
       Subcommand::kGenerate},
      {{"pins", "--daemon=d:1"}, Subcommand::kPins},
      {{"daemon-stats", "--daemon=d:1"}, Subcommand::kDaemonStats},
      {{"worker-stats", "--worker=w:1"}, Subcommand::kWorkerStats},
      {{"health", "--target=x:1"}, Subcommand::kHealth},
  };
  for (const auto& [args, subcommand] : cases) {
    absl::StatusOr<CtlCommandLine> parsed = Parse(args);
    ASSERT_TRUE(parsed.ok()) << args[0] << ": " << parsed.status();
    EXPECT_EQ(parsed->options.subcommand, subcommand);
    EXPECT_EQ(SubcommandName(subcommand), args[0]);
    EXPECT_FALSE(parsed->options.target.empty()) << args[0];
    EXPECT_EQ(parsed->options.EffectiveTimeout(),
              subcommand == Subcommand::kGenerate ? absl::Seconds(60) : absl::Seconds(5));
  }
}

TEST(CtlCommandLineTest, TlsFilesMakeTheChannelMutualTlsOnEverySubcommand) {
  absl::StatusOr<CtlCommandLine> parsed = Parse({"daemon-stats", "--daemon=d:1"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->options.channel.security.plaintext);  // no TLS file: plaintext

  absl::StatusOr<std::unique_ptr<testing::TestCerts>> certs = testing::TestCerts::Make();
  ASSERT_TRUE(certs.ok()) << certs.status();
  const std::vector<std::string> tls = {absl::StrCat("--tls-cert=", (*certs)->Cert("tenant-a")),
                                        absl::StrCat("--tls-key=", (*certs)->Key("tenant-a")),
                                        absl::StrCat("--tls-ca=", (*certs)->Cert("ca"))};
  const std::vector<std::vector<std::string>> commands = {
      {"status", "--coordinator=c:1"},
      {"route", "--coordinator=c:1", "--tokens=1,2"},
      {"generate", "--target=w:1", "--tokens=1", "--max-new-tokens=2"},
      {"pins", "--daemon=d:1"},
      {"daemon-stats", "--daemon=d:1"},
      {"worker-stats", "--worker=w:1"},
      {"health", "--target=x:1"}};
  for (std::vector<std::string> args : commands) {
    args.insert(args.end(), tls.begin(), tls.end());
    parsed = Parse(args);
    ASSERT_TRUE(parsed.ok()) << args[0] << ": " << parsed.status();
    const TransportSecurityOptions& security = parsed->options.channel.security;
    EXPECT_FALSE(security.plaintext) << args[0];
    EXPECT_EQ(security.cert_file, (*certs)->Cert("tenant-a"));
    EXPECT_EQ(security.key_file, (*certs)->Key("tenant-a"));
    EXPECT_EQ(security.ca_file, (*certs)->Cert("ca"));
  }

  // One or two of the three files, a file that is not PEM, a key of another
  // certificate: usage errors naming the flag.
  const std::vector<std::pair<std::vector<std::string>, std::string>> mistakes = {
      {{"health", "--target=x:1", tls[0]}, "mutual TLS needs --tls-key and --tls-ca as well"},
      {{"health", "--target=x:1", tls[0], tls[1]}, "mutual TLS needs --tls-ca as well"},
      {{"health", "--target=x:1", tls[0], tls[1], "--tls-ca=/nonexistent/ca.pem"}, "--tls-ca"},
      {{"health", "--target=x:1", tls[0], tls[1],
        absl::StrCat("--tls-ca=", (*certs)->Key("ca"))},
       "--tls-ca"},
      {{"health", "--target=x:1", tls[0], absl::StrCat("--tls-key=", (*certs)->Key("tenant-b")),
        tls[2]},
       "--tls-key"},
  };
  for (const auto& [args, message] : mistakes) {
    parsed = Parse(args);
    ASSERT_FALSE(parsed.ok()) << message;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << parsed.status();
    EXPECT_THAT(parsed.status().message(), HasSubstr(absl::StrCat("health: ", message)))
        << parsed.status();
  }
}

TEST(CtlCommandLineTest, MistakesAreRefusedNamingThem) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "no subcommand"},
      {{"frobnicate"}, "unknown subcommand 'frobnicate'"},
      {{"status"}, "status: --coordinator=HOST:PORT is required"},
      {{"pins", "--coordinator=c:1"}, "--coordinator is not a flag of pins"},
      {{"status", "--coordinator=c:1", "--bogus=1"}, "status: unknown flag --bogus"},
      {{"status", "--coordinator=c:1", "stray"}, "status: unexpected argument 'stray'"},
      {{"status", "--coordinator=c:1", "--json=maybe"}, "--json: 'maybe' is not true or false"},
      {{"route", "--coordinator=c:1"}, "--tokens=ID,ID,... or --random-tokens=N is required"},
      {{"route", "--coordinator=c:1", "--tokens=1", "--random-tokens=2"},
       "give --tokens or --random-tokens, not both"},
      {{"route", "--coordinator=c:1", "--tokens=1,x,3"},
       "route: --tokens: entry 2 'x' is not a token id (an integer >= 0)"},
      {{"route", "--coordinator=c:1", "--tokens=1,-4"}, "entry 2 '-4' is not a token id"},
      {{"route", "--coordinator=c:1", "--random-tokens=0"},
       "--random-tokens must be in [1, 16777216], got 0"},
      {{"route", "--coordinator=c:1", "--random-tokens=2", "--vocab=0"},
       "--vocab must be in [1, 2147483647], got 0"},
      {{"generate", "--target=w:1", "--tokens=1"}, "generate: --max-new-tokens=K is required"},
      {{"generate", "--target=w:1", "--tokens=1", "--max-new-tokens=0"},
       "--max-new-tokens must be in [1, 2147483647], got 0"},
      {{"health", "--target=x:1", "--timeout=soon"},
       "health: --timeout: 'soon' is not a duration (e.g. 2s, 500ms)"},
      {{"health", "--target=x:1", "--timeout=0s"}, "--timeout must be positive and finite, got 0s"},
      {{"health", "--target=x:1", "--timeout"}, "--timeout needs a value"},
      {{"help", "nothing"}, "help: unknown subcommand 'nothing'"},
  };
  for (const auto& [args, message] : cases) {
    absl::StatusOr<CtlCommandLine> parsed = Parse(args);
    ASSERT_FALSE(parsed.ok()) << (args.empty() ? "(none)" : args[0]) << " expected: " << message;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(message));
  }
}

TEST(CtlCommandLineTest, HelpWinsOverMistakes) {
  absl::StatusOr<CtlCommandLine> parsed = Parse({"route", "--random-tokens=oops", "--help"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->help);
  EXPECT_EQ(parsed->help_for, Subcommand::kRoute);
  parsed = Parse({"--help"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->help);
  EXPECT_FALSE(parsed->help_for.has_value());
  parsed = Parse({"help", "worker-stats"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->help_for, Subcommand::kWorkerStats);
}

TEST(CtlCommandLineTest, HelpListsOnlyTheSubcommandsFlagsWithDefaults) {
  const std::string route = CtlHelpText(Subcommand::kRoute);
  EXPECT_THAT(route, HasSubstr("Usage: asymcachectl route --coordinator=HOST:PORT"));
  EXPECT_THAT(route, HasSubstr("--random-tokens"));
  EXPECT_THAT(route, HasSubstr("(default: 1024)"));  // --vocab
  EXPECT_THAT(route, HasSubstr("(default: 5s)"));    // --timeout
  EXPECT_THAT(route, Not(HasSubstr("--max-new-tokens")));
  EXPECT_THAT(CtlHelpText(Subcommand::kGenerate), HasSubstr("(default: 1m)"));
  const std::string overview = CtlHelpText(std::nullopt);
  for (const char* name :
       {"status", "route", "generate", "pins", "daemon-stats", "worker-stats", "health"}) {
    EXPECT_THAT(overview, HasSubstr(absl::StrCat("  ", name, " "))) << name;
  }
}

TEST(CtlCommandLineTest, RandomPromptIsAPureFunctionOfItsFlags) {
  CtlOptions options;
  options.subcommand = Subcommand::kRoute;
  options.random_tokens = 500;
  options.vocab = 50;
  options.seed = 3;
  const std::vector<int32_t> first = PromptTokens(options);
  ASSERT_EQ(first.size(), 500u);
  for (int32_t token : first) {
    EXPECT_GE(token, 0);
    EXPECT_LT(token, 50);
  }
  EXPECT_EQ(PromptTokens(options), first);
  options.seed = 4;
  EXPECT_NE(PromptTokens(options), first);
  // Explicit tokens are taken as they are.
  options.tokens = {9, 8, 7};
  EXPECT_THAT(PromptTokens(options), ElementsAre(9, 8, 7));
}

}  // namespace
}  // namespace asymcache::ctl
