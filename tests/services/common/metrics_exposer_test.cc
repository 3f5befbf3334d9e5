#include "services/common/metrics_exposer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/services/http_get.h"

namespace asymcache {
namespace {

using ::asymcache::testing::HttpGet;

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A listening socket on 127.0.0.1 (port 0 = ephemeral); closes on destruction.
class Listener {
 public:
  explicit Listener(int port = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd_, 4) != 0) {
      close(fd_);
      fd_ = -1;
      return;
    }
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() {
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(MetricsExposerTest, EphemeralPortServesRegistry) {
  auto exposer = MetricsExposer::Start({});
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  ASSERT_GT(port, 0);
  EXPECT_EQ((*exposer)->address(), absl::StrCat("127.0.0.1:", port));

  auto& requests = prometheus::BuildCounter()
                       .Name("asymcache_test_requests_total")
                       .Help("Requests seen by the test.")
                       .Register((*exposer)->registry())
                       .Add({{"method", "Plan"}});
  requests.Increment(3);

  auto response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(*response, HasSubstr("\n# HELP asymcache_test_requests_total Requests seen by the test.\n"
                                   "# TYPE asymcache_test_requests_total counter\n"
                                   "asymcache_test_requests_total{method=\"Plan\"} 3\n"));

  // Every scrape reads the live value.
  requests.Increment();
  response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, HasSubstr("asymcache_test_requests_total{method=\"Plan\"} 4\n"));

  response = HttpGet(port, "/not-metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 404"));
}

TEST(MetricsExposerTest, ExplicitPortIsBound) {
  // Find a free port, release it, bind the exposer to it.
  int port = 0;
  {
    Listener probe;
    ASSERT_TRUE(probe.ok());
    port = probe.port();
  }
  MetricsExposerOptions options;
  options.port = port;
  auto exposer = MetricsExposer::Start(options);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  EXPECT_EQ((*exposer)->port(), port);
  auto response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST(MetricsExposerTest, OccupiedPortIsUnavailableNotAnException) {
  Listener occupant;
  ASSERT_TRUE(occupant.ok());
  MetricsExposerOptions options;
  options.port = occupant.port();
  auto exposer = MetricsExposer::Start(options);
  ASSERT_EQ(exposer.status().code(), absl::StatusCode::kUnavailable) << exposer.status();
  EXPECT_THAT(exposer.status().message(),
              HasSubstr(absl::StrCat("cannot listen on 127.0.0.1:", occupant.port())));
  EXPECT_THAT(exposer.status().message(), HasSubstr("Address already in use"));

  // Same for a port another exposer holds; the first keeps serving.
  auto first = MetricsExposer::Start({});
  ASSERT_TRUE(first.ok()) << first.status();
  options.port = (*first)->port();
  auto second = MetricsExposer::Start(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr((*first)->address()));
  auto response = HttpGet((*first)->port(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(*response, StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST(MetricsExposerTest, NonLocalAddressIsUnavailable) {
  MetricsExposerOptions options;
  options.host = "192.0.2.1";  // TEST-NET-1 (RFC 5737): never a local address
  auto exposer = MetricsExposer::Start(options);
  ASSERT_EQ(exposer.status().code(), absl::StatusCode::kUnavailable) << exposer.status();
  EXPECT_THAT(exposer.status().message(), HasSubstr("192.0.2.1:0"));
  EXPECT_THAT(exposer.status().message(), HasSubstr("Cannot assign requested address"));
}

TEST(MetricsExposerTest, InvalidOptionsAreRejectedBeforeBinding) {
  struct Case {
    MetricsExposerOptions options;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({{.host = ""}, "host is empty"});
  cases.push_back({{.host = "::1"}, "host '::1' must be an IPv4 address or host name"});
  cases.push_back({{.host = "127.0.0.1,0.0.0.0"}, "no ':', ',' or spaces"});
  cases.push_back({{.port = -1}, "port must be in 0..65535 (0 = ephemeral), got -1"});
  cases.push_back({{.port = 65536}, "got 65536"});
  cases.push_back({{.num_threads = 0}, "num_threads must be in 1..64, got 0"});
  for (const Case& c : cases) {
    auto exposer = MetricsExposer::Start(c.options);
    EXPECT_EQ(exposer.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(exposer.status().message(), HasSubstr(c.message));
  }
}

TEST(MetricsExposerTest, DestructionStopsServingAndFreesThePort) {
  auto exposer = MetricsExposer::Start({});
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  ASSERT_TRUE(HttpGet(port, "/metrics").ok());
  exposer->reset();
  EXPECT_EQ(HttpGet(port, "/metrics").status().code(), absl::StatusCode::kUnavailable);
  MetricsExposerOptions options;
  options.port = port;
  auto again = MetricsExposer::Start(options);
  EXPECT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace asymcache
