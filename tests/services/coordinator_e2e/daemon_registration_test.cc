// The cache daemon's cluster membership (DaemonOptions::coordinators), with
// in-process daemons and scriptable coordinator replicas (fake_coordinator.h):
// what it registers (kind, address, model, calibration, instance), the load it
// heartbeats (pool and event sequence follow its state), deregistration on
// shutdown, and standalone mode (no coordinators: no registrar).
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "services/common/proto_convert.h"
#include "services/coordinator/member_registrar.h"
#include "services/daemon/cache_daemon.h"
#include "services/daemon/daemon_state.h"
#include "tests/services/coordinator_e2e/fake_coordinator.h"
#include "tests/services/free_port.h"

namespace asymcache {
namespace {

using ::asymcache::testing::FakeCoordinatorServer;
using ::testing::HasSubstr;
using View = ::asymcache::testing::FakeCoordinator::View;

constexpr absl::Duration kWait = absl::Seconds(5);

DaemonOptions ClusterDaemonOptions(std::vector<std::string> coordinators) {
  DaemonOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_port = -1;
  options.backend = "host";
  options.pool_bytes = 64 * ModelConfig::Named("tiny").value().KvBytesPerBlock();
  options.calibrate_on_start = false;
  options.shutdown_grace = absl::Seconds(1);
  options.coordinators = std::move(coordinators);
  options.coordinator_retry_max = absl::Milliseconds(200);
  return options;
}

TEST(DaemonRegistration, RegistersWithEveryCoordinatorAndHeartbeatsItsLoad) {
  auto a = FakeCoordinatorServer::Start("coord-a", 0, 0.03);
  auto b = FakeCoordinatorServer::Start("coord-b", 0, 0.03);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  DaemonOptions options = ClusterDaemonOptions({a->address(), b->address()});
  options.member_id = "daemon-x";
  options.role = "decode";
  auto daemon = CacheDaemon::Start(options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ASSERT_NE((*daemon)->registrar(), nullptr);
  EXPECT_EQ((*daemon)->member_id(), "daemon-x");
  EXPECT_EQ((*daemon)->advertise_address(), (*daemon)->local_address());
  ASSERT_TRUE((*daemon)->registrar()->WaitRegisteredWithAll(kWait));

  CacheDaemonState& state = (*daemon)->state();
  for (FakeCoordinatorServer* c : {a.get(), b.get()}) {
    const v1::RegisterRequest r = c->fake().last_register();
    EXPECT_EQ(r.member_id(), "daemon-x");
    EXPECT_EQ(r.kind(), v1::MEMBER_KIND_DAEMON);
    EXPECT_EQ(r.address(), (*daemon)->local_address());
    EXPECT_EQ(r.gpu(), -1);  // host backend
    EXPECT_EQ(r.role(), v1::ROLE_DECODE);
    EXPECT_TRUE(CheckSameShape(r.model(), state.model(), "model").ok());
    EXPECT_EQ(r.model().name(), state.model().name);
    EXPECT_EQ(r.calibration().device(), state.calibration().device);
    EXPECT_EQ(r.instance(), state.instance());
  }

  // Commit a context: the heartbeated load follows (fewer free blocks, a
  // later event sequence).
  ClientOptions client_options;
  client_options.target = (*daemon)->local_address();
  auto client = Client::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<TokenId> tokens(64);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(i * 5 % 1000);
  {
    auto lease = (*client)->BeginStep("tenant", 1, tokens);
    ASSERT_TRUE(lease.ok()) << lease.status();
    ASSERT_TRUE(lease->Commit().ok());
    // While the lease is held it counts as one sequence in the decode batch.
    ASSERT_TRUE(a->fake().WaitUntil(
        [](const View& v) { return v.last_load.decode_batch() == 1; },
        kWait));
    ASSERT_TRUE(lease->Release().ok());
  }
  const uint64_t sequence = state.events().last_sequence();
  ASSERT_GT(sequence, 0u);
  for (FakeCoordinatorServer* c : {a.get(), b.get()}) {
    // A heartbeat sent after the commit reports it.
    const int now = c->fake().heartbeats();
    ASSERT_TRUE(c->fake().WaitUntil([now](const View& v) { return v.heartbeats >= now + 2; }, kWait));
    const v1::MemberLoad load = c->fake().last_heartbeat().load();
    EXPECT_EQ(load.capacity_blocks(), 64);
    EXPECT_EQ(load.free_blocks(), state.cache().GetStats().pool.free);
    EXPECT_LT(load.free_blocks(), 64);
    EXPECT_EQ(load.last_event_sequence(), sequence);
    EXPECT_EQ(load.decode_batch(), 0);
    EXPECT_EQ(load.queued_prefill_tokens(), 0);
  }

  // Graceful shutdown deregisters from both.
  (*daemon)->Shutdown();
  EXPECT_EQ(a->fake().deregistered(), std::vector<std::string>{"daemon-x"});
  EXPECT_EQ(b->fake().deregistered(), std::vector<std::string>{"daemon-x"});
}

TEST(DaemonRegistration, DefaultMemberIdIsHostAndPortAndWildcardListenAdvertisesTheHostName) {
  auto a = FakeCoordinatorServer::Start("coord-a");
  ASSERT_NE(a, nullptr);
  DaemonOptions options = ClusterDaemonOptions({a->address()});
  options.listen = "0.0.0.0:0";
  auto daemon = CacheDaemon::Start(options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  const std::string expected = absl::StrCat(host, ":", (*daemon)->grpc_port());
  EXPECT_EQ((*daemon)->member_id(), expected);
  EXPECT_EQ((*daemon)->advertise_address(), expected);
  ASSERT_TRUE((*daemon)->registrar()->WaitRegisteredWithAll(kWait));
  EXPECT_EQ(a->fake().last_register().member_id(), expected);
  EXPECT_EQ(a->fake().last_register().address(), expected);
}

TEST(DaemonRegistration, ExplicitAdvertiseAddressAndGpuAreSentAsGiven) {
  auto a = FakeCoordinatorServer::Start("coord-a");
  ASSERT_NE(a, nullptr);
  DaemonOptions options = ClusterDaemonOptions({a->address()});
  options.advertise_address = "cache-7.example:50051";
  options.gpu = 5;
  auto daemon = CacheDaemon::Start(options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ASSERT_TRUE((*daemon)->registrar()->WaitRegisteredWithAll(kWait));
  EXPECT_EQ(a->fake().last_register().address(), "cache-7.example:50051");
  EXPECT_EQ(a->fake().last_register().gpu(), 5);
  EXPECT_EQ(a->fake().last_register().role(), v1::ROLE_BOTH);
}

TEST(DaemonRegistration, StandaloneDaemonHasNoRegistrar) {
  auto daemon = CacheDaemon::Start(ClusterDaemonOptions({}));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  EXPECT_EQ((*daemon)->registrar(), nullptr);
}

TEST(DaemonRegistration, ShutdownWithAnUnreachableCoordinatorIsBounded) {
  const int dead_port = ::asymcache::testing::FreeLocalPort();
  ASSERT_NE(dead_port, 0);
  auto live = FakeCoordinatorServer::Start("coord-live", 0, 0.03);
  ASSERT_NE(live, nullptr);
  auto daemon = CacheDaemon::Start(
      ClusterDaemonOptions({absl::StrCat("127.0.0.1:", dead_port), live->address()}));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  ASSERT_TRUE(live->fake().WaitUntil([](const View& v) { return v.heartbeats >= 2; }, kWait));
  // Bounded, not fast: the grace period (1 s) plus the deregistrations (all
  // replicas in parallel, 1 s deadline); the cap only catches a shutdown
  // that waits on the unreachable replica without end.
  const absl::Time start = absl::Now();
  (*daemon)->Shutdown();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_EQ(live->fake().deregisters(), 1);
}

}  // namespace
}  // namespace asymcache
