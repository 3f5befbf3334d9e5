// MemberRegistrar against scriptable coordinator replicas (fake_coordinator.h)
// on 127.0.0.1: registration with every replica, heartbeats with the load
// callback's values at the interval each replica asked for, re-registration on
// NOT_FOUND, backoff against dead and hung replicas without delaying the live
// ones, a replica restarted on the same port, bounded Deregister on Stop.
#include "services/coordinator/member_registrar.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/services/coordinator_e2e/fake_coordinator.h"
#include "tests/services/free_port.h"

namespace asymcache {
namespace {

using ::asymcache::testing::FakeCoordinator;
using ::asymcache::testing::FakeCoordinatorServer;
using ::testing::HasSubstr;
using View = FakeCoordinator::View;

constexpr absl::Duration kWait = absl::Seconds(5);

MemberRegistrar::Identity DaemonIdentity(const std::string& id = "node-0:50051") {
  MemberRegistrar::Identity identity;
  identity.member_id = id;
  identity.kind = v1::MEMBER_KIND_DAEMON;
  identity.address = "127.0.0.1:50051";
  identity.gpu = 2;
  identity.role = v1::ROLE_PREFILL;
  identity.model = ModelConfig::Named("tiny").value();
  CalibrationParams calibration;
  calibration.device = "test-device";
  identity.calibration = calibration;
  identity.instance = "run-1";
  return identity;
}

MemberRegistrarOptions FastOptions(std::vector<std::string> coordinators) {
  MemberRegistrarOptions options;
  options.coordinators = std::move(coordinators);
  options.rpc_timeout = absl::Milliseconds(500);
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(200);
  options.deregister_timeout = absl::Milliseconds(500);
  return options;
}

// A load whose values change with every call, so heartbeats are seen to
// carry the callback's latest values.
struct CountingLoad {
  std::shared_ptr<std::atomic<int64_t>> calls = std::make_shared<std::atomic<int64_t>>(0);
  MemberRegistrar::LoadFn fn() const {
    return [calls = calls]() {
      const int64_t n = ++*calls;
      MemberRegistrar::Load load;
      load.queued_prefill_tokens = 0;
      load.decode_batch = 3;
      load.free_blocks = 1000 - n;
      load.capacity_blocks = 1000;
      load.last_event_sequence = static_cast<uint64_t>(n);
      return load;
    };
  }
};

TEST(MemberRegistrarOptions, ValidateNamesTheField) {
  MemberRegistrarOptions o;
  EXPECT_THAT(o.Validate().message(), HasSubstr("coordinators"));
  o.coordinators = {"a:1", ""};
  EXPECT_THAT(o.Validate().message(), HasSubstr("coordinators[1]"));
  o.coordinators = {"a:1", "a:1"};
  EXPECT_THAT(o.Validate().message(), HasSubstr("twice"));
  o.coordinators = {"a:1"};
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  o.rpc_timeout = absl::ZeroDuration();
  EXPECT_THAT(o.Validate().message(), HasSubstr("rpc_timeout"));
  o = MemberRegistrarOptions();
  o.coordinators = {"a:1"};
  o.max_backoff = absl::Milliseconds(10);
  EXPECT_THAT(o.Validate().message(), HasSubstr("max_backoff"));
  o.max_backoff = absl::Seconds(2);
  o.deregister_timeout = -absl::Seconds(1);
  EXPECT_THAT(o.Validate().message(), HasSubstr("deregister_timeout"));
}

TEST(MemberRegistrarIdentity, ValidateNamesTheField) {
  MemberRegistrar::Identity id = DaemonIdentity();
  EXPECT_TRUE(id.Validate().ok()) << id.Validate();
  id.member_id = "bad id";
  EXPECT_THAT(id.Validate().message(), HasSubstr("member_id"));
  id = DaemonIdentity(std::string(129, 'a'));
  EXPECT_THAT(id.Validate().message(), HasSubstr("member_id"));
  id = DaemonIdentity();
  id.kind = v1::MEMBER_KIND_UNSPECIFIED;
  EXPECT_THAT(id.Validate().message(), HasSubstr("kind"));
  id = DaemonIdentity();
  id.address.clear();
  EXPECT_THAT(id.Validate().message(), HasSubstr("address"));
  id = DaemonIdentity();
  id.model.reset();
  EXPECT_THAT(id.Validate().message(), HasSubstr("model"));
  id = DaemonIdentity();
  id.gpu = -5;
  EXPECT_THAT(id.Validate().message(), HasSubstr("gpu"));
  // Start refuses the same things, and a missing load callback.
  EXPECT_EQ(MemberRegistrar::Start(FastOptions({"127.0.0.1:1"}), id, CountingLoad().fn())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      MemberRegistrar::Start(FastOptions({"127.0.0.1:1"}), DaemonIdentity(), nullptr).status().message(),
      HasSubstr("load"));
}

TEST(MemberRegistrar, RegistersAndHeartbeatsEveryReplicaThenDeregisters) {
  auto a = FakeCoordinatorServer::Start("coord-a", 0, /*heartbeat_interval_s=*/0.03);
  auto b = FakeCoordinatorServer::Start("coord-b", 0, /*heartbeat_interval_s=*/0.05);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  CountingLoad load;
  auto registrar =
      MemberRegistrar::Start(FastOptions({a->address(), b->address()}), DaemonIdentity(), load.fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE((*registrar)->WaitRegisteredWithAll(kWait));
  for (FakeCoordinatorServer* c : {a.get(), b.get()}) {
    ASSERT_TRUE(c->fake().WaitUntil([](const View& v) { return v.heartbeats >= 3; }, kWait));
    const v1::RegisterRequest r = c->fake().last_register();
    EXPECT_EQ(r.member_id(), "node-0:50051");
    EXPECT_EQ(r.kind(), v1::MEMBER_KIND_DAEMON);
    EXPECT_EQ(r.address(), "127.0.0.1:50051");
    EXPECT_EQ(r.gpu(), 2);
    EXPECT_EQ(r.role(), v1::ROLE_PREFILL);
    EXPECT_EQ(r.model().name(), "tiny");
    EXPECT_EQ(r.model().block_tokens(), ModelConfig::Named("tiny").value().block_tokens);
    EXPECT_EQ(r.calibration().device(), "test-device");
    EXPECT_EQ(r.instance(), "run-1");
    const v1::HeartbeatRequest h = c->fake().last_heartbeat();
    EXPECT_EQ(h.member_id(), "node-0:50051");
    EXPECT_EQ(h.load().capacity_blocks(), 1000);
    EXPECT_EQ(h.load().decode_batch(), 3);
    EXPECT_GT(h.load().last_event_sequence(), 0u);
    EXPECT_EQ(h.load().free_blocks(), 1000 - static_cast<int64_t>(h.load().last_event_sequence()));
    EXPECT_EQ(c->fake().registers(), 1);
    EXPECT_EQ(c->fake().refused_heartbeats(), 0);
  }
  const std::vector<MemberRegistrar::PeerStatus> peers = (*registrar)->Peers();
  ASSERT_EQ(peers.size(), 2u);
  EXPECT_EQ(peers[0].address, a->address());
  EXPECT_EQ(peers[0].coordinator_instance, "coord-a");
  EXPECT_EQ(peers[0].heartbeat_interval, absl::Milliseconds(30));
  EXPECT_EQ(peers[1].coordinator_instance, "coord-b");
  EXPECT_EQ(peers[1].heartbeat_interval, absl::Milliseconds(50));
  EXPECT_TRUE(peers[0].registered);
  EXPECT_GE(peers[0].heartbeats, 3);

  (*registrar)->Stop();
  for (FakeCoordinatorServer* c : {a.get(), b.get()}) {
    EXPECT_EQ(c->fake().deregistered(), std::vector<std::string>{"node-0:50051"});
    EXPECT_FALSE(c->fake().has_member("node-0:50051"));
  }
  // Nothing is sent after Stop.
  const int heartbeats = a->fake().heartbeats();
  EXPECT_FALSE(a->fake().WaitUntil(
      [heartbeats](const View& v) { return v.heartbeats > heartbeats || v.registers > 1; },
      absl::Milliseconds(150)));
  EXPECT_FALSE((*registrar)->Peers()[0].registered);
}

TEST(MemberRegistrar, ReRegistersWhenAReplicaForgetsTheMember) {
  auto a = FakeCoordinatorServer::Start("coord-a", 0, 0.02);
  ASSERT_NE(a, nullptr);
  auto registrar = MemberRegistrar::Start(FastOptions({a->address()}), DaemonIdentity(),
                                          CountingLoad().fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE(a->fake().WaitUntil([](const View& v) { return v.heartbeats >= 2; }, kWait));
  a->fake().Forget("node-0:50051");  // expired there
  ASSERT_TRUE(a->fake().WaitUntil(
      [](const View& v) { return v.registers >= 2 && v.refused_heartbeats >= 1; }, kWait));
  const int before = a->fake().heartbeats();
  ASSERT_TRUE(
      a->fake().WaitUntil([before](const View& v) { return v.heartbeats >= before + 2; }, kWait));
  EXPECT_TRUE(a->fake().has_member("node-0:50051"));
  const MemberRegistrar::PeerStatus peer = (*registrar)->Peers()[0];
  EXPECT_TRUE(peer.registered);
  EXPECT_EQ(peer.registrations, 2);
}

TEST(MemberRegistrar, DeadReplicaIsRetriedWithoutDelayingTheLiveOneAndJoinedWhenItStarts) {
  // Reserve a port, then free it: nothing listens there.
  const int dead_port = ::asymcache::testing::FreeLocalPort();
  ASSERT_NE(dead_port, 0);
  auto live = FakeCoordinatorServer::Start("coord-live", 0, 0.03);
  ASSERT_NE(live, nullptr);
  const std::string dead_address = absl::StrCat("127.0.0.1:", dead_port);
  auto registrar = MemberRegistrar::Start(FastOptions({dead_address, live->address()}),
                                          DaemonIdentity(), CountingLoad().fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE(live->fake().WaitUntil([](const View& v) { return v.heartbeats >= 5; }, kWait));
  std::vector<MemberRegistrar::PeerStatus> peers = (*registrar)->Peers();
  EXPECT_FALSE(peers[0].registered);
  EXPECT_GE(peers[0].failures, 1);
  EXPECT_EQ(peers[0].last_error.code(), absl::StatusCode::kUnavailable) << peers[0].last_error;
  EXPECT_TRUE(peers[1].registered);

  // The replica comes up on that port: joined within the (short) backoff.
  auto revived = FakeCoordinatorServer::Start("coord-revived", dead_port, 0.03);
  ASSERT_NE(revived, nullptr) << "port " << dead_port << " was taken meanwhile";
  ASSERT_TRUE(revived->fake().WaitUntil([](const View& v) { return v.heartbeats >= 1; }, kWait));
  EXPECT_TRUE((*registrar)->WaitRegisteredWithAll(kWait));
  EXPECT_EQ((*registrar)->Peers()[0].coordinator_instance, "coord-revived");
}

TEST(MemberRegistrar, ReplicaRestartedOnTheSamePortGetsTheMemberBack) {
  auto first = FakeCoordinatorServer::Start("coord-1", 0, 0.03);
  ASSERT_NE(first, nullptr);
  const int port = first->port();
  auto registrar =
      MemberRegistrar::Start(FastOptions({first->address()}), DaemonIdentity(), CountingLoad().fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE(first->fake().WaitUntil([](const View& v) { return v.heartbeats >= 2; }, kWait));
  first.reset();  // killed: its member table is gone
  auto second = FakeCoordinatorServer::Start("coord-2", port, 0.03);
  ASSERT_NE(second, nullptr);
  // The next heartbeat is refused (NOT_FOUND: unknown member), so it registers again.
  ASSERT_TRUE(second->fake().WaitUntil(
      [](const View& v) { return v.registers >= 1 && v.heartbeats >= 2; }, kWait));
  EXPECT_EQ(second->fake().last_register().instance(), "run-1");
  EXPECT_EQ((*registrar)->Peers()[0].coordinator_instance, "coord-2");
}

TEST(MemberRegistrar, HungReplicaDoesNotStallTheOthersAndStopIsBounded) {
  auto hung = FakeCoordinatorServer::Start("coord-hung", 0, 0.03);
  auto live = FakeCoordinatorServer::Start("coord-live", 0, 0.03);
  ASSERT_NE(hung, nullptr);
  ASSERT_NE(live, nullptr);
  hung->fake().SetHung(true);
  MemberRegistrarOptions options = FastOptions({hung->address(), live->address()});
  // A hung call stays outstanding far longer than the test waits: only
  // cancelling it lets Stop() return within the bound below.
  options.rpc_timeout = absl::Seconds(20);
  options.deregister_timeout = absl::Milliseconds(300);
  auto registrar = MemberRegistrar::Start(options, DaemonIdentity(), CountingLoad().fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  // The hung replica holds a Register; meanwhile the live one is heartbeated
  // at its interval (many heartbeats within one hung call's deadline).
  ASSERT_TRUE(hung->fake().WaitUntil([](const View& v) { return v.held >= 1; }, kWait));
  ASSERT_TRUE(live->fake().WaitUntil([](const View& v) { return v.heartbeats >= 10; }, kWait));
  EXPECT_GE(hung->fake().held_calls(), 1);  // still outstanding
  EXPECT_FALSE((*registrar)->Peers()[0].registered);

  // Stop cancels the hung call and bounds the Deregister it then sends there
  // (300 ms): a generous bound, far below the hung call's 20 s deadline.
  const absl::Time start = absl::Now();
  (*registrar)->Stop();
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, absl::Seconds(10)) << "Stop took " << took;
  EXPECT_EQ(live->fake().deregistered(), std::vector<std::string>{"node-0:50051"});
}

TEST(MemberRegistrar, RefusedRegistrationIsReportedAndRetried) {
  auto a = FakeCoordinatorServer::Start("coord-a");
  ASSERT_NE(a, nullptr);
  a->fake().FailRegister(
      absl::FailedPreconditionError("model: num_layers 2 differs from the cluster's 32"));
  auto registrar =
      MemberRegistrar::Start(FastOptions({a->address()}), DaemonIdentity(), CountingLoad().fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE(a->fake().WaitUntil([](const View& v) { return v.registers >= 3; }, kWait));
  MemberRegistrar::PeerStatus peer = (*registrar)->Peers()[0];
  EXPECT_FALSE(peer.registered);
  EXPECT_EQ(peer.last_error.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(peer.last_error.message(), HasSubstr("num_layers"));
  EXPECT_EQ(a->fake().heartbeats(), 0);
  // Fixed on the coordinator's side: joins on a later retry.
  a->fake().FailRegister(absl::OkStatus());
  EXPECT_TRUE((*registrar)->WaitRegisteredWithAll(kWait));
}

TEST(MemberRegistrar, StopFromSeveralThreadsAndTheDestructor) {
  auto a = FakeCoordinatorServer::Start("coord-a");
  ASSERT_NE(a, nullptr);
  auto registrar =
      MemberRegistrar::Start(FastOptions({a->address()}), DaemonIdentity(), CountingLoad().fn());
  ASSERT_TRUE(registrar.ok()) << registrar.status();
  ASSERT_TRUE((*registrar)->WaitRegisteredWithAll(kWait));
  std::vector<std::thread> stoppers;
  for (int i = 0; i < 4; ++i) stoppers.emplace_back([&]() { (*registrar)->Stop(); });
  for (std::thread& t : stoppers) t.join();
  EXPECT_EQ(a->fake().deregisters(), 1);
  EXPECT_FALSE((*registrar)->WaitRegisteredWithAll(absl::Milliseconds(10)));
  registrar->reset();  // destructor after Stop: nothing more
  EXPECT_EQ(a->fake().deregisters(), 1);
}

}  // namespace
}  // namespace asymcache
