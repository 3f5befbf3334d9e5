#include "services/common/settings_table.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace asymcache {
namespace {

// A printed number setting parses back to the same double (found by
// fuzz/coordinator_config_fuzz.cc: six significant digits lost 0.1234567).
TEST(FormatNumberSettingTest, RoundTripsExactly) {
  for (double v : {0.1234567, 0.1, 1.0 / 3.0, 5e9, 2.0, 0.0, 1e-300, 123456789.123456789,
                   std::nextafter(0.05, 1.0), std::numeric_limits<double>::max()}) {
    const std::string text = FormatNumberSetting(v);
    absl::StatusOr<double> back = ParseNumberSetting("x", text);
    ASSERT_TRUE(back.ok()) << text << ": " << back.status();
    EXPECT_EQ(*back, v) << text;
  }
  EXPECT_EQ(FormatNumberSetting(0.05), "0.05");  // short when short suffices
  EXPECT_EQ(FormatNumberSetting(5e9), "5000000000");
}

}  // namespace
}  // namespace asymcache
