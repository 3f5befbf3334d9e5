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
    if (!s.ok()) {
      EXPECT_THAT(s.message(), HasSubstr(name)) << name;
    }
  }
}

TEST(DaemonConfig, CoordinatorSettingsDefaultToStandalone) {
  const DaemonOptions o;
  EXPECT_TRUE(o.coordinators.empty());
  EXPECT_EQ(o.member_id, "");
  EXPECT_EQ(o.advertise_address, "");
  EXPECT_EQ(o.role, "both");
  EXPECT_FALSE(o.gpu.has_value());
  EXPECT_EQ(o.coordinator_rpc_timeout, absl::Seconds(1));
  EXPECT_EQ(o.coordinator_retry_max, absl::Seconds(2));
}

TEST(DaemonConfig, CoordinatorSettingsParse) {
  DaemonOptions o;
  ASSERT_TRUE(ApplyDaemonSetting("coordinators", "coord-0:7000, coord-1:7000", &o).ok());
  EXPECT_EQ(o.coordinators, (std::vector<std::string>{"coord-0:7000", "coord-1:7000"}));
  ASSERT_TRUE(ApplyDaemonSetting("member-id", "node-3.gpu-1", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("advertise-address", "10.0.0.3:50051", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("role", "prefill", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("gpu", "3", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("coordinator-rpc-timeout", "250ms", &o).ok());
  ASSERT_TRUE(ApplyDaemonSetting("coordinator-retry-max", "500ms", &o).ok());
  EXPECT_EQ(o.member_id, "node-3.gpu-1");
  EXPECT_EQ(o.advertise_address, "10.0.0.3:50051");
  EXPECT_EQ(o.role, "prefill");
  EXPECT_EQ(o.gpu, 3);
  EXPECT_EQ(o.coordinator_rpc_timeout, absl::Milliseconds(250));
  EXPECT_EQ(o.coordinator_retry_max, absl::Milliseconds(500));
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  // "auto" and "" reset.
  ASSERT_TRUE(ApplyDaemonSetting("gpu", "auto", &o).ok());
  EXPECT_FALSE(o.gpu.has_value());
  ASSERT_TRUE(ApplyDaemonSetting("coordinators", "", &o).ok());
  EXPECT_TRUE(o.coordinators.empty());
  EXPECT_THAT(ApplyDaemonSetting("gpu", "first", &o).message(), HasSubstr("gpu"));
}

TEST(DaemonConfig, CoordinatorSettingsAreValidatedByName) {
  DaemonOptions o;
  ASSERT_TRUE(ApplyDaemonSetting("coordinators", "a:1,,b:2", &o).ok());
  EXPECT_THAT(o.Validate().message(), HasSubstr("--coordinators"));
  o = DaemonOptions();
  ASSERT_TRUE(ApplyDaemonSetting("coordinators", "a:1,a:1", &o).ok());
  EXPECT_THAT(o.Validate().message(), HasSubstr("--coordinators"));
  o = DaemonOptions();
  o.member_id = "has space";
  EXPECT_THAT(o.Validate().message(), HasSubstr("--member-id"));
  o = DaemonOptions();
  o.member_id = std::string(129, 'x');
  EXPECT_THAT(o.Validate().message(), HasSubstr("--member-id"));
  o = DaemonOptions();
  o.role = "router";
  EXPECT_THAT(o.Validate().message(), HasSubstr("--role"));
  o = DaemonOptions();
  o.gpu = -2;
  EXPECT_THAT(o.Validate().message(), HasSubstr("--gpu"));
  o = DaemonOptions();
  o.coordinator_retry_max = absl::ZeroDuration();
  EXPECT_THAT(o.Validate().message(), HasSubstr("--coordinator-retry-max"));
  o = DaemonOptions();
  o.coordinator_rpc_timeout = absl::Hours(2);
  EXPECT_THAT(o.Validate().message(), HasSubstr("--coordinator-rpc-timeout"));
}

TEST(DaemonConfig, YamlCoordinatorsMayBeASequenceOrAList) {
  DaemonOptions o;
  absl::Status s = ApplyDaemonYamlText(
      "coordinators:\n"
      "  - coord-0:7000\n"
      "  - coord-1:7000\n"
      "role: decode\n"
      "gpu: -1\n",
      "cluster.yaml", &o);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(o.coordinators, (std::vector<std::string>{"coord-0:7000", "coord-1:7000"}));
  EXPECT_EQ(o.role, "decode");
  EXPECT_EQ(o.gpu, -1);
  s = ApplyDaemonYamlText("coordinators: a:1,b:2\n", "list.yaml", &o);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(o.coordinators, (std::vector<std::string>{"a:1", "b:2"}));
  s = ApplyDaemonYamlText("coordinators:\n  - [nested]\n", "bad.yaml", &o);
  EXPECT_THAT(s.message(), HasSubstr("bad.yaml:2:"));
  EXPECT_EQ(o.coordinators, (std::vector<std::string>{"a:1", "b:2"}));  // unchanged
}

}  // namespace
}  // namespace asymcache
