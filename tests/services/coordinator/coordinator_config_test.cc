// CoordinatorOptions defaults and Validate(), the settings table (flags) and
// the YAML config: every setting round-trips, bad values name the setting.
#include "services/coordinator/coordinator_config.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/coordinator/coordinator_options.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

TEST(CoordinatorOptionsTest, DefaultsAreValidAndDocumented) {
  const CoordinatorOptions o;
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  EXPECT_EQ(o.heartbeat_interval, absl::Seconds(1));
  EXPECT_EQ(o.member_timeout, absl::Seconds(5));
  EXPECT_EQ(o.router.mode, RoutingMode::kHoleAware);
  EXPECT_FALSE(o.expected_model.has_value());
  EXPECT_LE(o.max_members, o.index.max_members);
  EXPECT_EQ(o.proxy_max_buffered_bytes, int64_t{8} << 20);
  EXPECT_EQ(CoordinatorSettingValue("proxy-max-buffered-bytes", o).value(), "8MiB");
}

TEST(CoordinatorOptionsTest, ValidateNamesTheField) {
  auto expect_bad = [](CoordinatorOptions o, absl::string_view field) {
    const absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(s.message(), HasSubstr(std::string(field)));
  };
  CoordinatorOptions o;
  o.member_timeout = absl::Seconds(1);
  expect_bad(o, "--member-timeout");
  o = CoordinatorOptions();
  o.heartbeat_interval = absl::ZeroDuration();
  expect_bad(o, "--heartbeat-interval");
  o = CoordinatorOptions();
  o.watch_connect_timeout = absl::ZeroDuration();
  expect_bad(o, "--watch-connect-timeout");
  o = CoordinatorOptions();
  o.metrics_port = 70000;
  expect_bad(o, "--metrics-port");
  o = CoordinatorOptions();
  o.watch_backoff_initial = absl::Seconds(10);
  expect_bad(o, "--watch-backoff-initial");
  o = CoordinatorOptions();
  o.max_members = o.index.max_members + 1;
  expect_bad(o, "--max-members");
  o = CoordinatorOptions();
  o.max_route_tokens = 0;
  expect_bad(o, "--max-route-tokens");
  o = CoordinatorOptions();
  o.max_message_bytes = 2 << 20;
  expect_bad(o, "--max-message-bytes");
  o = CoordinatorOptions();
  o.route_history = 0;
  expect_bad(o, "--route-history");
  o = CoordinatorOptions();
  o.router.imbalance_relative = 0.5;
  expect_bad(o, "imbalance_relative");
  o = CoordinatorOptions();
  o.index.shards = 3;
  expect_bad(o, "shards");
  o = CoordinatorOptions();
  o.expected_model = ModelConfig::Named("tiny").value();
  o.expected_model->block_tokens = 0;
  expect_bad(o, "--model");
  o = CoordinatorOptions();
  o.listen = "";
  expect_bad(o, "--listen");
}

TEST(CoordinatorOptionsTest, ProxyBufferBoundMustBePositive) {
  for (const int64_t bad : {int64_t{0}, int64_t{-1}, int64_t{-8} << 20}) {
    CoordinatorOptions o;
    o.proxy_max_buffered_bytes = bad;
    const absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message(), absl::StrCat("--proxy-max-buffered-bytes must be > 0 (bytes a proxied "
                                        "Generate queues for its client), got ",
                                        bad));
  }
  CoordinatorOptions o;
  o.proxy_max_buffered_bytes = 1;  // the smallest bound: one message at a time
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
}

TEST(CoordinatorConfigTest, ProxyBufferBoundTakesTheByteSizeSyntax) {
  CoordinatorOptions o;
  ASSERT_TRUE(ApplyCoordinatorSetting("proxy-max-buffered-bytes", "256KiB", &o).ok());
  EXPECT_EQ(o.proxy_max_buffered_bytes, 256 << 10);
  EXPECT_EQ(CoordinatorSettingValue("proxy-max-buffered-bytes", o).value(), "256KiB");
  ASSERT_TRUE(ApplyCoordinatorSetting("proxy-max-buffered-bytes", "3G", &o).ok());
  EXPECT_EQ(o.proxy_max_buffered_bytes, int64_t{3} << 30);  // no 2 GiB limit
  EXPECT_EQ(CoordinatorSettingValue("proxy-max-buffered-bytes", o).value(), "3072MiB");
  ASSERT_TRUE(ApplyCoordinatorSetting("proxy-max-buffered-bytes", "1000", &o).ok());
  EXPECT_EQ(o.proxy_max_buffered_bytes, 1000);
  EXPECT_EQ(CoordinatorSettingValue("proxy-max-buffered-bytes", o).value(), "1000");
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();

  // Parsed but out of range: Validate names the flag.
  ASSERT_TRUE(ApplyCoordinatorSetting("proxy-max-buffered-bytes", "0", &o).ok());
  EXPECT_THAT(o.Validate().message(), HasSubstr("--proxy-max-buffered-bytes must be > 0"));

  // Not a byte size: refused by the parser, naming the setting; unchanged.
  o.proxy_max_buffered_bytes = 4096;
  for (const char* bad : {"-1", "-8MiB", "lots", "8 MB", "1.5MiB", "", "99999999999T"}) {
    const absl::Status s = ApplyCoordinatorSetting("proxy-max-buffered-bytes", bad, &o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s.message(), absl::StrCat("proxy-max-buffered-bytes: '", bad,
                                        "' is not a byte size (e.g. 262144, 256KiB, 8MiB)"));
    EXPECT_EQ(o.proxy_max_buffered_bytes, 4096) << bad;
  }

  // The YAML key is the flag's name.
  ASSERT_TRUE(
      ApplyCoordinatorYamlText("proxy-max-buffered-bytes: 1MiB\n", "test.yaml", &o).ok());
  EXPECT_EQ(o.proxy_max_buffered_bytes, 1 << 20);
  const absl::Status yaml =
      ApplyCoordinatorYamlText("proxy-max-buffered-bytes: plenty\n", "test.yaml", &o);
  EXPECT_EQ(yaml.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(yaml.message(), HasSubstr("test.yaml:1: proxy-max-buffered-bytes: 'plenty'"));
  EXPECT_EQ(o.proxy_max_buffered_bytes, 1 << 20);
}

TEST(CoordinatorConfigTest, EverySettingRoundTripsThroughItsText) {
  const CoordinatorOptions defaults;
  for (const CoordinatorSettingInfo& s : CoordinatorSettings()) {
    absl::StatusOr<std::string> value = CoordinatorSettingValue(s.name, defaults);
    ASSERT_TRUE(value.ok()) << s.name;
    CoordinatorOptions o;
    EXPECT_TRUE(ApplyCoordinatorSetting(s.name, *value, &o).ok()) << s.name << "=" << *value;
    EXPECT_EQ(CoordinatorSettingValue(s.name, o).value(), *value) << s.name;
    EXPECT_FALSE(s.help.empty()) << s.name;
  }
}

TEST(CoordinatorConfigTest, SettingsParseIntoTheOptions) {
  CoordinatorOptions o;
  ASSERT_TRUE(ApplyCoordinatorSetting("member-timeout", "750ms", &o).ok());
  EXPECT_EQ(o.member_timeout, absl::Milliseconds(750));
  ASSERT_TRUE(ApplyCoordinatorSetting("heartbeat-interval", "250ms", &o).ok());
  EXPECT_EQ(o.heartbeat_interval, absl::Milliseconds(250));
  ASSERT_TRUE(ApplyCoordinatorSetting("watch-connect-timeout", "2s", &o).ok());
  EXPECT_EQ(o.watch_connect_timeout, absl::Seconds(2));
  ASSERT_TRUE(ApplyCoordinatorSetting("routing-mode", "contiguous-prefix", &o).ok());
  EXPECT_EQ(o.router.mode, RoutingMode::kContiguousPrefix);
  ASSERT_TRUE(ApplyCoordinatorSetting("allow-fetch", "false", &o).ok());
  EXPECT_FALSE(o.router.allow_fetch);
  ASSERT_TRUE(ApplyCoordinatorSetting("model", "llama-3-8b", &o).ok());
  ASSERT_TRUE(o.expected_model.has_value());
  EXPECT_EQ(o.expected_model->num_layers, 32);
  ASSERT_TRUE(ApplyCoordinatorSetting("model", "", &o).ok());
  EXPECT_FALSE(o.expected_model.has_value());
  ASSERT_TRUE(ApplyCoordinatorSetting("max-message-bytes", "128MiB", &o).ok());
  EXPECT_EQ(o.max_message_bytes, 128 << 20);
  ASSERT_TRUE(ApplyCoordinatorSetting("max-members", "8000", &o).ok());
  EXPECT_EQ(o.max_members, 8000);
  EXPECT_GE(o.index.max_members, 8000);  // the index's slots follow
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
}

TEST(CoordinatorConfigTest, BadValuesNameTheSettingAndChangeNothing) {
  CoordinatorOptions o;
  const CoordinatorOptions before = o;
  auto expect_bad = [&](absl::string_view name, absl::string_view value, absl::string_view want) {
    const absl::Status s = ApplyCoordinatorSetting(name, value, &o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(s.message(), HasSubstr(std::string(want)));
  };
  expect_bad("member-timeout", "5", "member-timeout: '5' is not a duration");
  expect_bad("metrics-port", "x", "metrics-port: 'x' is not an integer");
  expect_bad("routing-mode", "fastest", "unknown routing mode 'fastest'");
  expect_bad("allow-fetch", "maybe", "allow-fetch: 'maybe' is not true or false");
  expect_bad("model", "gpt-9", "model:");
  expect_bad("max-members", "0", "max-members");
  expect_bad("max-message-bytes", "4GiB", "max-message-bytes");
  expect_bad("no-such-setting", "1", "unknown setting 'no-such-setting'");
  EXPECT_EQ(o.member_timeout, before.member_timeout);
  EXPECT_EQ(o.router.mode, before.router.mode);
  EXPECT_EQ(CoordinatorSettingValue("no-such-setting", o).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CoordinatorConfigTest, YamlSetsSettingsAndAModelMapping) {
  CoordinatorOptions o;
  const absl::Status s = ApplyCoordinatorYamlText(R"(
listen: 127.0.0.1:6000
member-timeout: 3s
heartbeat-interval: 500ms
routing-mode: round-robin
model:
  name: tiny
  block_tokens: 32
)",
                                                  "test.yaml", &o);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(o.listen, "127.0.0.1:6000");
  EXPECT_EQ(o.member_timeout, absl::Seconds(3));
  EXPECT_EQ(o.heartbeat_interval, absl::Milliseconds(500));
  EXPECT_EQ(o.router.mode, RoutingMode::kRoundRobin);
  ASSERT_TRUE(o.expected_model.has_value());
  EXPECT_EQ(o.expected_model->block_tokens, 32);
  EXPECT_EQ(o.expected_model->num_layers, ModelConfig::Named("tiny").value().num_layers);
  EXPECT_TRUE(o.Validate().ok());
}

TEST(CoordinatorConfigTest, YamlErrorsCarryTheLineAndChangeNothing) {
  CoordinatorOptions o;
  absl::Status s = ApplyCoordinatorYamlText("member-timeout: 3s\nbogus: 1\n", "c.yaml", &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("c.yaml:2: unknown setting 'bogus'"));
  EXPECT_EQ(o.member_timeout, absl::Seconds(5));  // unchanged: all or nothing
  s = ApplyCoordinatorYamlText("model:\n  block_tokens: x\n", "c.yaml", &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.block_tokens"));
  s = ApplyCoordinatorYamlText("model:\n  flavor: 1\n", "c.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("unknown model field 'flavor'"));
  s = ApplyCoordinatorYamlText("[1, 2]", "c.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("mapping of settings"));
  s = ApplyCoordinatorYamlText("a: [", "c.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("YAML parse error"));
  EXPECT_TRUE(ApplyCoordinatorYamlText("", "empty.yaml", &o).ok());
  EXPECT_EQ(ApplyCoordinatorYaml("/nonexistent/coordinator.yaml", &o).code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace asymcache
