#include "services/common/client_rate_limiter.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

class FakeNow {
 public:
  absl::Time operator()() const { return *now_; }
  void Advance(absl::Duration d) { *now_ += d; }

 private:
  std::shared_ptr<absl::Time> now_ = std::make_shared<absl::Time>(absl::UnixEpoch());
};

TEST(ClientRateLimiterTest, BurstThenRefusedThenRefilledPerClient) {
  ClientRateLimitOptions options;
  options.requests_per_second = 2;
  options.burst = 3;
  FakeNow now;
  ClientRateLimiter limiter(options, {}, now);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Admit("ip:10.0.0.1", "Generate").ok()) << i;
  const absl::Status refused = limiter.Admit("ip:10.0.0.1", "Generate");
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.message(), HasSubstr("Generate: client 'ip:10.0.0.1' is over its limit of 2 "
                                           "requests/s (burst 3)"));
  // Another client has its own bucket.
  EXPECT_TRUE(limiter.Admit("ip:10.0.0.2", "Generate").ok());
  // Half a second refills one token (2/s), not two.
  now.Advance(absl::Milliseconds(500));
  EXPECT_TRUE(limiter.Admit("ip:10.0.0.1", "Generate").ok());
  EXPECT_FALSE(limiter.Admit("ip:10.0.0.1", "Generate").ok());
  // A long idle period refills at most the burst.
  now.Advance(absl::Hours(1));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Admit("ip:10.0.0.1", "Generate").ok()) << i;
  EXPECT_FALSE(limiter.Admit("ip:10.0.0.1", "Generate").ok());
}

TEST(ClientRateLimiterTest, OffAdmitsEverythingAndDefaultBurstIsTwoSeconds) {
  ClientRateLimitOptions off;
  ClientRateLimiter unlimited(off, {});
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(unlimited.Admit("ip:1.2.3.4", "Route").ok());

  ClientRateLimitOptions options;
  options.requests_per_second = 5;
  EXPECT_EQ(options.effective_burst(), 10);
  options.requests_per_second = 0.1;
  EXPECT_EQ(options.effective_burst(), 1);
}

TEST(ClientRateLimiterTest, TableIsBoundedByDroppingTheIdlestClient) {
  ClientRateLimitOptions options;
  options.requests_per_second = 1;
  options.burst = 1;
  options.max_clients = 2;
  FakeNow now;
  ClientRateLimiter limiter(options, {}, now);
  EXPECT_TRUE(limiter.Admit("a", "x").ok());
  now.Advance(absl::Milliseconds(10));
  EXPECT_TRUE(limiter.Admit("b", "x").ok());
  EXPECT_FALSE(limiter.Admit("b", "x").ok());
  now.Advance(absl::Milliseconds(10));
  EXPECT_TRUE(limiter.Admit("c", "x").ok());  // drops "a", the idlest
  // "a" comes back with a full burst (forgetting only admits); "b" was kept.
  EXPECT_TRUE(limiter.Admit("a", "x").ok());
}

TEST(ClientRateLimiterTest, BadOptionsNameTheFlag) {
  ClientRateLimitOptions options;
  options.requests_per_second = -1;
  EXPECT_THAT(options.Validate().message(), HasSubstr("--client-rate-limit"));
  options.requests_per_second = 1;
  options.burst = -2;
  EXPECT_THAT(options.Validate().message(), HasSubstr("--client-rate-burst"));
}

}  // namespace
}  // namespace asymcache
