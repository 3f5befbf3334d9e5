// Test helpers for the coordinator suites: a Coordinator started in-process
// on 127.0.0.1:0 (no metrics unless asked, fast watcher backoff, exact
// scores: no tie tolerance, members that do not expire on the real clock), real cache daemons (tests/services/client/
// test_daemon.h) registered with it over real gRPC, and small RPC wrappers.
#ifndef ASYMCACHE_TESTS_SERVICES_COORDINATOR_COORDINATOR_TEST_UTIL_H_
#define ASYMCACHE_TESTS_SERVICES_COORDINATOR_COORDINATOR_TEST_UTIL_H_

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "services/common/proto_convert.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/coordinator_options.h"
#include "services/coordinator/coordinator_state.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {

inline CoordinatorOptions LocalCoordinatorOptions() {
  CoordinatorOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
  o.metrics_host = "127.0.0.1";
  o.maintenance_interval = absl::Milliseconds(20);
  // On the real clock no member of a test should expire, however loaded the
  // machine (most tests never heartbeat); expiry tests set a FakeClock and
  // their own timeout.
  o.member_timeout = absl::Seconds(60);
  o.watch_backoff_initial = absl::Milliseconds(10);
  o.watch_backoff_max = absl::Milliseconds(100);
  o.shutdown_grace = absl::Seconds(2);
  // The tiny model's predicted times differ by microseconds: compare exactly.
  o.router.tie_absolute = absl::ZeroDuration();
  o.router.tie_relative = 0;
  return o;
}

inline std::unique_ptr<Coordinator> StartCoordinator(const CoordinatorOptions& options) {
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Start(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

inline std::unique_ptr<v1::Coordinator::Stub> CoordinatorStub(const std::string& address) {
  return v1::Coordinator::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

// One unary call with a 10 s deadline.
template <typename Req, typename Resp, typename Method>
grpc::Status Call(v1::Coordinator::Stub& stub, Method method, const Req& request, Resp* response) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return (stub.*method)(&ctx, request, response);
}

// A daemon Register request filled from the daemon's own GetStats (model,
// calibration, instance), as the daemon's registrar sends it.
inline v1::RegisterRequest DaemonRegistration(const std::string& member_id, CacheDaemon& daemon,
                                              Client& client, v1::Role role = v1::ROLE_BOTH) {
  v1::RegisterRequest r;
  r.set_member_id(member_id);
  r.set_kind(v1::MEMBER_KIND_DAEMON);
  r.set_address(daemon.local_address());
  r.set_gpu(-1);
  r.set_role(role);
  absl::StatusOr<DaemonStats> stats = client.GetStats();
  EXPECT_TRUE(stats.ok()) << stats.status();
  if (stats.ok()) {
    ToProto(stats->model, r.mutable_model());
    ToProto(stats->calibration, r.mutable_calibration());
    r.set_instance(stats->daemon_instance);
  }
  return r;
}

// A daemon registration for an address nobody serves (routing-only tests).
inline v1::RegisterRequest SyntheticDaemonRegistration(const std::string& member_id, int port,
                                                       v1::Role role = v1::ROLE_BOTH) {
  v1::RegisterRequest r;
  r.set_member_id(member_id);
  r.set_kind(v1::MEMBER_KIND_DAEMON);
  r.set_address("127.0.0.1:" + std::to_string(port));
  r.set_gpu(0);
  r.set_role(role);
  const ModelConfig tiny = ModelConfig::Named("tiny").value();
  ToProto(tiny, r.mutable_model());
  ToProto(CostModel::DefaultCpu(tiny), r.mutable_calibration());
  r.set_instance("synthetic-" + member_id);
  return r;
}

inline v1::RegisterRequest WorkerRegistration(const std::string& member_id,
                                              const std::string& daemon_id, v1::Role role,
                                              int port) {
  v1::RegisterRequest r;
  r.set_member_id(member_id);
  r.set_kind(v1::MEMBER_KIND_WORKER);
  r.set_address("127.0.0.1:" + std::to_string(port));
  r.set_gpu(0);
  r.set_role(role);
  r.set_daemon_id(daemon_id);
  return r;
}

// A real daemon (tiny model, host pool) plus its client and member id.
struct TestDaemon {
  std::string id;
  std::unique_ptr<CacheDaemon> daemon;
  std::unique_ptr<Client> client;

  static TestDaemon Start(const std::string& id, int64_t pool_blocks = 256) {
    TestDaemon d;
    d.id = id;
    absl::StatusOr<std::unique_ptr<CacheDaemon>> daemon =
        CacheDaemon::Start(SmallDaemonOptions(pool_blocks));
    EXPECT_TRUE(daemon.ok()) << daemon.status();
    if (!daemon.ok()) return d;
    d.daemon = *std::move(daemon);
    d.client = ConnectClient(d.daemon->local_address());
    return d;
  }
  // Plans, commits and releases one step of `tokens`; the plan's block ids.
  std::vector<BlockId> Commit(absl::string_view salt, SequenceId sequence,
                              const std::vector<TokenId>& tokens) {
    std::vector<BlockId> ids;
    absl::StatusOr<LeasedStep> step = client->PlanStep(salt, sequence, tokens);
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return ids;
    EXPECT_TRUE(client->CommitStep(step->lease_id).ok());
    EXPECT_TRUE(client->ReleaseStep(step->lease_id).ok());
    return step->plan.page_ids;
  }
};

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_COORDINATOR_COORDINATOR_TEST_UTIL_H_
