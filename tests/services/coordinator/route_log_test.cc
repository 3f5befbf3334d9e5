// RouteLog: random non-zero ids, take-once, bounded with the oldest
// forgotten first.
#include "services/coordinator/route_log.h"

#include "absl/container/flat_hash_set.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

TEST(RouteLogTest, IdsAreNonZeroDistinctAndTakenOnce) {
  RouteLog log(1000);
  absl::flat_hash_set<uint64_t> ids;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t id = log.Add(RouteRecord{0.001 * i, "d"});
    EXPECT_NE(id, 0u);
    EXPECT_TRUE(ids.insert(id).second);
  }
  EXPECT_EQ(log.size(), 1000);
  // Not sequential: ids of consecutive routes do not reveal one another.
  int consecutive = 0;
  uint64_t prev = 0;
  for (uint64_t id : ids) {
    if (id == prev + 1) ++consecutive;
    prev = id;
  }
  EXPECT_LT(consecutive, 5);

  const uint64_t id = log.Add(RouteRecord{0.25, "daemon-7"});
  std::optional<RouteRecord> r = log.Take(id);
  ASSERT_TRUE(r.has_value());
  EXPECT_DOUBLE_EQ(r->predicted_ttft_s, 0.25);
  EXPECT_EQ(r->daemon_id, "daemon-7");
  EXPECT_FALSE(log.Take(id).has_value());  // reported once
  EXPECT_FALSE(log.Take(0).has_value());
}

TEST(RouteLogTest, OldestRoutesAreForgottenAtCapacity) {
  RouteLog log(3);
  const uint64_t a = log.Add(RouteRecord{1, "a"});
  const uint64_t b = log.Add(RouteRecord{2, "b"});
  const uint64_t c = log.Add(RouteRecord{3, "c"});
  const uint64_t d = log.Add(RouteRecord{4, "d"});
  EXPECT_EQ(log.size(), 3);
  EXPECT_FALSE(log.Take(a).has_value());
  EXPECT_TRUE(log.Take(b).has_value());
  // Taken routes free their room; the bound holds over many rounds.
  for (int i = 0; i < 100; ++i) {
    const uint64_t id = log.Add(RouteRecord{0, "x"});
    if (i % 2 == 0) {
      EXPECT_TRUE(log.Take(id).has_value());
    }
  }
  EXPECT_LE(log.size(), 3);
  EXPECT_FALSE(log.Take(c).has_value());
  EXPECT_FALSE(log.Take(d).has_value());
}

}  // namespace
}  // namespace asymcache
