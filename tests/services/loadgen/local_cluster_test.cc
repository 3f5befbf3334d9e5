#include "services/loadgen/local_cluster.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache::loadgen {
namespace {

using ::testing::HasSubstr;

TEST(LocalClusterOptionsTest, BadFieldsAreNamed) {
  LocalClusterOptions o;
  EXPECT_THAT(o.Validate().message(), HasSubstr("log_dir"));
  o.log_dir = "/tmp/x";
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  o.split_roles = true;
  EXPECT_THAT(o.Validate().message(), HasSubstr("needs a coordinator"));
  o.coordinator = true;
  EXPECT_THAT(o.Validate().message(), HasSubstr("daemons >= 2"));
  o.daemons = 2;
  EXPECT_TRUE(o.Validate().ok());
  o.backend = "tpu";
  EXPECT_THAT(o.Validate().message(), HasSubstr("backend"));
  o.backend = "host";
  o.fixed_budget_tokens = 100;
  EXPECT_THAT(o.Validate().message(), HasSubstr("multiple of 16"));
  o.fixed_budget_tokens = 2048;
  o.overload_budget_tokens = 100;
  EXPECT_THAT(o.Validate().message(), HasSubstr("overload_budget_tokens"));
  o.overload_budget_tokens = -16;
  EXPECT_THAT(o.Validate().message(), HasSubstr("overload_budget_tokens"));
  o.overload_budget_tokens = 0;  // off
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  o.tpot_slo = "p99";
  EXPECT_THAT(o.Validate().message(),
              HasSubstr("tpot_slo: must be request-mean or per-step, got 'p99'"));
  o.tpot_slo = "per-step";
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  o.prefill_order = "fifo";
  EXPECT_THAT(o.Validate().message(),
              HasSubstr("prefill_order: must be arrival or least-remaining, got 'fifo'"));
  o.prefill_order = "least-remaining";
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
}

TEST(LocalClusterTest, MissingBinaryIsNotFoundAndStartsNothing) {
  LocalClusterOptions o;
  o.log_dir = ::testing::TempDir() + "/local_cluster_missing";
  o.bin_dir = "/nonexistent-asymcache-bin";
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(o);
  EXPECT_EQ(cluster.status().code(), absl::StatusCode::kNotFound) << cluster.status();
  EXPECT_THAT(cluster.status().message(), HasSubstr("/nonexistent-asymcache-bin/asymcache-daemon"));
}

}  // namespace
}  // namespace asymcache::loadgen
