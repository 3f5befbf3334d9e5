#include "services/daemon/daemon_config.h"

#include <cstdio>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

TEST(DaemonOptions, DefaultsValidateAndDescribeASmallShape) {
  DaemonOptions o;
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  EXPECT_EQ(o.model.name, "tiny");
  EXPECT_EQ(o.backend, "host");
  EXPECT_EQ(o.policy, "asym");
  EXPECT_EQ(o.pool_bytes, int64_t{256} << 20);
}

TEST(DaemonOptions, ValidateNamesTheField) {
  DaemonOptions o;
  o.pool_fraction = 0.5;  // and pool_bytes still set
  EXPECT_THAT(o.Validate().message(), HasSubstr("exactly one of --pool-bytes"));
  o = DaemonOptions();
  o.metrics_port = 70000;
  EXPECT_THAT(o.Validate().message(), HasSubstr("--metrics-port"));
  o = DaemonOptions();
  o.backend = "tpu";
  EXPECT_THAT(o.Validate().message(), HasSubstr("--backend"));
  o = DaemonOptions();
  o.lease_timeout = absl::ZeroDuration();
  EXPECT_THAT(o.Validate().message(), HasSubstr("--lease-timeout"));
  o = DaemonOptions();
  o.max_context_tokens = int64_t{1} << 28;  // does not fit 64 MiB messages
  EXPECT_THAT(o.Validate().message(), HasSubstr("--max-message-bytes"));
}

TEST(DaemonOptions, NonFiniteAndOutOfRangeValuesAreRefused) {
  DaemonOptions o;
  ASSERT_TRUE(ApplyDaemonSetting("pool-fraction", "nan", &o).ok());
  EXPECT_THAT(o.Validate().message(), HasSubstr("--pool-fraction"));
  o = DaemonOptions();
  ASSERT_TRUE(ApplyDaemonSetting("shutdown-grace", "inf", &o).ok());
  EXPECT_THAT(o.Validate().message(), HasSubstr("--shutdown-grace"));
  o = DaemonOptions();
  ASSERT_TRUE(ApplyDaemonSetting("lease-timeout", "100000h", &o).ok());
  EXPECT_THAT(o.Validate().message(), HasSubstr("--lease-timeout"));
  o = DaemonOptions();
  const absl::Status s =
      ApplyDaemonYamlText("model:\n  num_layers: 4294967298\n", "big.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("big.yaml:2:"));
  EXPECT_THAT(s.message(), HasSubstr("[0, 2^31)"));
}

TEST(DaemonConfig, SettingsParseEveryKind) {
  DaemonOptions o;
  ASSERT_TRUE(ApplyDaemonSetting("listen", "127.0.0.1:0", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("metrics-port", "-1", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("pool-bytes", "64MiB", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("lease-timeout", "250ms", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("calibrate-on-start", "false", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("model", "llama-3-8b", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("chunking", "fixed", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("agent-max-pinned-fraction", "0.5", &o).ok());
  EXPECT_EQ(o.listen, "127.0.0.1:0");
  EXPECT_EQ(o.metrics_port, -1);
  EXPECT_EQ(o.pool_bytes, int64_t{64} << 20);
  EXPECT_EQ(o.lease_timeout, absl::Milliseconds(250));
  EXPECT_FALSE(o.calibrate_on_start);
  EXPECT_EQ(o.model.num_layers, 32);
  EXPECT_EQ(o.chunking.mode, ChunkSchedulerOptions::Mode::kFixed);
  EXPECT_EQ(o.agent_pins.max_pinned_fraction, 0.5);
  // pool-fraction and pool-bytes: the last one given wins.
  ASSERT_TRUE(ApplyDaemonSetting("pool-fraction", "0.25", &o).ok());
  EXPECT_EQ(o.pool_bytes, 0);
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
}

TEST(DaemonConfig, BadValuesAreRefusedAndChangeNothing) {
  DaemonOptions o;
  const DaemonOptions before = o;
  EXPECT_THAT(ApplyDaemonSetting("pool-bytes", "lots", &o).message(), HasSubstr("pool-bytes"));
  EXPECT_THAT(ApplyDaemonSetting("lease-timeout", "soon", &o).message(), HasSubstr("duration"));
  EXPECT_THAT(ApplyDaemonSetting("metrics-port", "1e99", &o).message(), HasSubstr("integer"));
  EXPECT_THAT(ApplyDaemonSetting("calibrate-on-start", "maybe", &o).message(), HasSubstr("true or false"));
  EXPECT_THAT(ApplyDaemonSetting("model", "gpt-9", &o).message(), HasSubstr("model"));
  EXPECT_THAT(ApplyDaemonSetting("chunking", "random", &o).message(), HasSubstr("adaptive or fixed"));
  EXPECT_THAT(ApplyDaemonSetting("no-such-setting", "1", &o).message(), HasSubstr("unknown setting"));
  EXPECT_EQ(o.pool_bytes, before.pool_bytes);
  EXPECT_EQ(o.lease_timeout, before.lease_timeout);
  EXPECT_EQ(o.model.name, before.model.name);
}

TEST(DaemonConfig, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096);
  EXPECT_EQ(*ParseByteSize("1KiB"), 1024);
  EXPECT_EQ(*ParseByteSize("3G"), int64_t{3} << 30);
  EXPECT_FALSE(ParseByteSize("-1").ok());
  EXPECT_FALSE(ParseByteSize("1PiB").ok());
  EXPECT_FALSE(ParseByteSize("99999999999TiB").ok());
}

TEST(DaemonConfig, YamlAppliesSettingsAndAModelMapping) {
  DaemonOptions o;
  const absl::Status s = ApplyDaemonYamlText(
      "listen: 127.0.0.1:7000\n"
      "policy: lru-tail\n"
      "lease-timeout: 5s\n"
      "model:\n"
      "  name: tiny\n"
      "  num_layers: 4\n"
      "  block_tokens: 32\n",
      "test.yaml", &o);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(o.listen, "127.0.0.1:7000");
  EXPECT_EQ(o.policy, "lru-tail");
  EXPECT_EQ(o.lease_timeout, absl::Seconds(5));
  EXPECT_EQ(o.model.num_layers, 4);
  EXPECT_EQ(o.model.block_tokens, 32);
}

TEST(DaemonConfig, YamlErrorsCarryFileAndLineAndChangeNothing) {
  DaemonOptions o;
  absl::Status s = ApplyDaemonYamlText("listen: a:1\npool-bytes: huge\n", "conf.yaml", &o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("conf.yaml:2:"));
  EXPECT_EQ(o.listen, DaemonOptions().listen);  // the first key was not applied either
  s = ApplyDaemonYamlText("listen: [1, 2\n", "broken.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("broken.yaml:"));
  EXPECT_THAT(s.message(), HasSubstr("YAML parse error"));
  s = ApplyDaemonYamlText("- a\n- b\n", "list.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("mapping"));
  s = ApplyDaemonYamlText("model:\n  num_layers: 0\n", "m.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("m.yaml:"));
  s = ApplyDaemonYamlText("model:\n  wings: 2\n", "m.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("unknown model field 'wings'"));
  EXPECT_EQ(ApplyDaemonYaml("/nonexistent/asymcache.yaml", &o).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ApplyDaemonYamlText("", "empty.yaml", &o).ok());
}

TEST(DaemonConfig, EverySettingNameIsAcceptedByTheTable) {
  const std::vector<std::string> names = DaemonSettingNames();
  EXPECT_GE(names.size(), 25u);
  for (const std::string& name : names) {
    DaemonOptions o;
    // An unparsable value must be refused by name (so the name is wired).
    const absl::Status s = ApplyDaemonSetting(name, "\x01not-a-value", &o);
    if (!s.ok()) EXPECT_THAT(s.message(), HasSubstr(name)) << name;
  }
}

}  // namespace
}  // namespace asymcache
