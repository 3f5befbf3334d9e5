// The daemon process shell over real gRPC on 127.0.0.1: start-up errors,
// grpc.health.v1 (server reflection: tests/services/python), graceful shutdown (event streams end
// after delivering, new RPCs refused), and the request validation of the
// RPCs that the client tests do not reach.
#include "services/daemon/cache_daemon.h"

#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "services/common/proto_convert.h"
#include "services/daemon/daemon_state.h"
#include "tests/services/test_binaries.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

DaemonOptions LocalOptions() {
  DaemonOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
  o.pool_bytes = 8 << 20;
  return o;
}

std::unique_ptr<CacheDaemon> StartOrDie(const DaemonOptions& o) {
  absl::StatusOr<std::unique_ptr<CacheDaemon>> d = CacheDaemon::Start(o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *std::move(d) : nullptr;
}

std::shared_ptr<grpc::Channel> Channel(const CacheDaemon& d) {
  return grpc::CreateChannel(d.local_address(), grpc::InsecureChannelCredentials());
}

template <typename Stub, typename Req, typename Resp, typename Method>
grpc::Status Call(Stub& stub, Method method, const Req& req, Resp* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  return (stub.*method)(&ctx, req, resp);
}

// Plans tokens 0..n-1 of salt "s" for `sequence` and commits the lease
// (left open); the plan in *planned, CommitStep's answer in *committed.
grpc::Status PlanAndCommit(v1::CacheDaemon::Stub& stub, uint64_t sequence, int n,
                           v1::PlanStepResponse* planned, v1::CommitStepResponse* committed) {
  v1::PlanStepRequest plan;
  plan.set_salt("s");
  plan.set_sequence_id(sequence);
  for (int i = 0; i < n; ++i) plan.add_tokens(i);
  if (grpc::Status s = Call(stub, &v1::CacheDaemon::Stub::PlanStep, plan, planned); !s.ok()) {
    return s;
  }
  v1::CommitStepRequest commit;
  commit.set_lease_id(planned->lease_id());
  return Call(stub, &v1::CacheDaemon::Stub::CommitStep, commit, committed);
}

// Releases the lease (no agent fields).
grpc::Status Release(v1::CacheDaemon::Stub& stub, uint64_t lease_id) {
  v1::ReleaseStepRequest release;
  release.set_lease_id(lease_id);
  v1::ReleaseStepResponse released;
  return Call(stub, &v1::CacheDaemon::Stub::ReleaseStep, release, &released);
}

// A TCP port bound (and held) by this process.
class HeldPort {
 public:
  HeldPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd_, 1);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~HeldPort() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(CacheDaemonStart, BadOptionsAreInvalidArgument) {
  DaemonOptions o = LocalOptions();
  o.policy = "random";
  EXPECT_EQ(CacheDaemon::Start(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = LocalOptions();
  o.pool_bytes = 1;  // less than one block
  EXPECT_FALSE(CacheDaemon::Start(o).ok());
  o = LocalOptions();
  o.calibration_file = "/nonexistent/cal.json";
  absl::Status s = CacheDaemon::Start(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("--calibration"));
}

TEST(CacheDaemonStart, CudaBackendWithoutAGpuFailsPrecisely) {
  DaemonOptions o = LocalOptions();
  o.backend = "cuda";
  o.model = *ModelConfig::Named("llama-3-8b");  // MSA (the calibration) needs 16-bit KV
  o.calibrator = testing::CalibratorBinary();
  if (o.calibrator.empty()) GTEST_SKIP() << "asymcache-calibrate is not built";
  absl::StatusOr<std::unique_ptr<CacheDaemon>> d = CacheDaemon::Start(o);
  if (d.ok()) GTEST_SKIP() << "a CUDA device is present: covered by the GPU tests";
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition) << d.status();
  // The tiny shape stores fp32 KV: MSA cannot calibrate it, said up front.
  o.model = *ModelConfig::Named("tiny");
  d = CacheDaemon::Start(o);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << d.status();
  EXPECT_THAT(d.status().message(), HasSubstr("16-bit"));
  // A calibrator that is not there is named.
  o.model = *ModelConfig::Named("llama-3-8b");
  o.calibrator = "/nonexistent/asymcache-calibrate";
  d = CacheDaemon::Start(o);
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition) << d.status();
  EXPECT_THAT(d.status().message(), HasSubstr("/nonexistent/asymcache-calibrate"));
}

TEST(CacheDaemonStart, CancelDuringTheOnStartCalibrationStopsItPromptly) {
  // A calibrator that would take a minute; the start is cancelled after 200 ms.
  char dir_template[] = "/tmp/asymcache-slowcal-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string script = std::string(dir_template) + "/slow-calibrate";
  {
    std::FILE* f = std::fopen(script.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("#!/bin/sh\nexec sleep 60\n", f);
    std::fclose(f);
  }
  ASSERT_EQ(chmod(script.c_str(), 0755), 0);
  DaemonOptions o = LocalOptions();
  o.backend = "cuda";
  o.model = *ModelConfig::Named("llama-3-8b");
  o.calibrator = script;
  std::atomic<bool> cancel{false};
  o.cancel = &cancel;
  std::thread canceller([&cancel]() {
    absl::SleepFor(absl::Milliseconds(200));
    cancel.store(true);
  });
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<CacheDaemon>> d = CacheDaemon::Start(o);
  const absl::Duration took = absl::Now() - start;
  canceller.join();
  EXPECT_EQ(d.status().code(), absl::StatusCode::kCancelled) << d.status();
  EXPECT_LT(took, absl::Seconds(10)) << "the calibration child was not stopped";
  unlink(script.c_str());
  rmdir(dir_template);
}

TEST(CacheDaemonStart, OccupiedPortsAreUnavailable) {
  HeldPort held;
  DaemonOptions o = LocalOptions();
  o.listen = absl::StrCat("127.0.0.1:", held.port());
  absl::Status s = CacheDaemon::Start(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("--listen"));
  o = LocalOptions();
  o.metrics_host = "127.0.0.1";
  o.metrics_port = held.port();
  s = CacheDaemon::Start(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(s.message(), HasSubstr("--metrics-port"));
}

TEST(CacheDaemon, HealthServiceReportsServing) {
  auto d = StartOrDie(LocalOptions());
  ASSERT_NE(d, nullptr);
  auto channel = Channel(*d);
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(Call(*health, &grpc::health::v1::Health::Stub::Check, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

}

TEST(CacheDaemon, GracefulShutdownEndsStreamsAndRefusesNewWork) {
  auto d = StartOrDie(LocalOptions());
  ASSERT_NE(d, nullptr);
  auto channel = Channel(*d);
  auto stub = v1::CacheDaemon::NewStub(channel);

  // A committed context, and a lease left open (a worker mid-step).
  v1::PlanStepResponse planned;
  v1::CommitStepResponse committed;
  ASSERT_TRUE(PlanAndCommit(*stub, 7, 40, &planned, &committed).ok());
  EXPECT_EQ(committed.sealed_blocks(), 3);

  // A watcher with a snapshot sees the three blocks, then the stream ends.
  grpc::ClientContext watch_ctx;
  v1::WatchEventsRequest watch;
  watch.set_snapshot(true);
  auto reader = stub->WatchEvents(&watch_ctx, watch);
  v1::KvEventBatch batch;
  ASSERT_TRUE(reader->Read(&batch));
  EXPECT_TRUE(batch.snapshot_begin());
  EXPECT_EQ(batch.events_size(), 3);
  for (const v1::KvEvent& e : batch.events()) {  // each names its block in the pool
    EXPECT_GE(e.block_id(), 0);
    EXPECT_LT(e.block_id(), d->state().cache().pool().capacity());
  }
  EXPECT_FALSE(batch.daemon_instance().empty());

  std::thread stopper([&d]() { d->Shutdown(); });
  while (reader->Read(&batch)) {
  }
  const grpc::Status ended = reader->Finish();
  stopper.join();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE) << ended.error_message();
  // The server is gone: new RPCs fail fast.
  v1::GetStatsResponse stats;
  grpc::ClientContext late;
  late.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  EXPECT_FALSE(stub->GetStats(&late, v1::GetStatsRequest(), &stats).ok());
  d->Shutdown();  // idempotent
}

class CacheDaemonRpc : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = StartOrDie(LocalOptions());
    ASSERT_NE(daemon_, nullptr);
    stub_ = v1::CacheDaemon::NewStub(Channel(*daemon_));
  }
  v1::GetStatsResponse Stats() {
    v1::GetStatsResponse s;
    EXPECT_TRUE(Call(*stub_, &v1::CacheDaemon::Stub::GetStats, v1::GetStatsRequest(), &s).ok());
    s.clear_uptime_s();
    return s;
  }
  std::unique_ptr<CacheDaemon> daemon_;
  std::unique_ptr<v1::CacheDaemon::Stub> stub_;
};

TEST_F(CacheDaemonRpc, BadRequestsGetPreciseCodesAndChangeNothing) {
  const std::string before = Stats().SerializeAsString();
  auto expect = [&](grpc::Status s, grpc::StatusCode code, absl::string_view text) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(std::string(text)));
  };
  v1::PlanStepRequest plan;
  plan.set_sequence_id(1);
  v1::PlanStepResponse planned;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::PlanStep, plan, &planned),
         grpc::StatusCode::INVALID_ARGUMENT, "tokens is empty");
  plan.add_tokens(5000);  // the tiny vocabulary is 1024
  expect(Call(*stub_, &v1::CacheDaemon::Stub::PlanStep, plan, &planned),
         grpc::StatusCode::INVALID_ARGUMENT, "outside the vocabulary");
  plan.set_tokens(0, 5);
  plan.mutable_expected_model()->set_num_layers(80);
  expect(Call(*stub_, &v1::CacheDaemon::Stub::PlanStep, plan, &planned),
         grpc::StatusCode::FAILED_PRECONDITION, "num_layers");
  plan.clear_expected_model();
  plan.add_block_hashes()->set_lo(1);
  expect(Call(*stub_, &v1::CacheDaemon::Stub::PlanStep, plan, &planned),
         grpc::StatusCode::INVALID_ARGUMENT, "block_hashes[0] does not match");

  v1::LookupResponse looked;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::Lookup, v1::LookupRequest(), &looked),
         grpc::StatusCode::INVALID_ARGUMENT, "hashes is empty");
  v1::InvalidateBlocksRequest inval;
  inval.add_block_ids(1 << 30);
  v1::InvalidateBlocksResponse invalidated;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::InvalidateBlocks, inval, &invalidated),
         grpc::StatusCode::OUT_OF_RANGE, "outside the pool");
  inval.set_block_ids(0, 0);  // free, not sealed
  expect(Call(*stub_, &v1::CacheDaemon::Stub::InvalidateBlocks, inval, &invalidated),
         grpc::StatusCode::FAILED_PRECONDITION, "only sealed");
  v1::ReleaseStepRequest release;
  release.set_lease_id(42);
  release.mutable_agent()->set_tool("grep");
  v1::ReleaseStepResponse released;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::ReleaseStep, release, &released),
         grpc::StatusCode::INVALID_ARGUMENT, "without agent.job_id");
  release.mutable_agent()->set_job_id("j");
  expect(Call(*stub_, &v1::CacheDaemon::Stub::ReleaseStep, release, &released),
         grpc::StatusCode::NOT_FOUND, "no lease 42");
  v1::RenewLeaseRequest renew;
  renew.set_lease_id(42);
  v1::RenewLeaseResponse renewed;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::RenewLease, renew, &renewed),
         grpc::StatusCode::NOT_FOUND, "no lease 42");
  v1::PinJobRequest pin;
  v1::PinJobResponse pinned;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::PinJob, pin, &pinned),
         grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty");
  v1::RefreshPinRequest refresh;
  refresh.set_job_id("nobody");
  refresh.set_ttl_ms(1000);
  v1::RefreshPinResponse refreshed;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::RefreshPin, refresh, &refreshed),
         grpc::StatusCode::NOT_FOUND, "RefreshPin");
  v1::ExportBlocksResponse exported;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::ExportBlocks, v1::ExportBlocksRequest(), &exported),
         grpc::StatusCode::INVALID_ARGUMENT, "hashes is empty");
  v1::ReleaseExportRequest rel_export;
  rel_export.set_export_id(9);
  v1::ReleaseExportResponse rel_exported;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::ReleaseExport, rel_export, &rel_exported),
         grpc::StatusCode::NOT_FOUND, "no export 9");
  v1::ImportBlocksResponse imported;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::ImportBlocks, v1::ImportBlocksRequest(), &imported),
         grpc::StatusCode::INVALID_ARGUMENT, "peer is empty");
  v1::AttachPoolRequest attach;
  ToProto(daemon_->state().model(), attach.mutable_expected_model());
  attach.mutable_expected_model()->set_head_dim(256);
  v1::AttachPoolResponse attached;
  expect(Call(*stub_, &v1::CacheDaemon::Stub::AttachPool, attach, &attached),
         grpc::StatusCode::FAILED_PRECONDITION, "head_dim");
  EXPECT_EQ(Stats().SerializeAsString(), before);
}

TEST_F(CacheDaemonRpc, ExportPinsUntilReleasedAndLookupSeesResidency) {
  v1::PlanStepResponse planned;
  v1::CommitStepResponse committed;
  ASSERT_TRUE(PlanAndCommit(*stub_, 3, 32, &planned, &committed).ok());
  v1::CommitStepRequest commit;
  commit.set_lease_id(planned.lease_id());
  // Double commit: FAILED_PRECONDITION.
  grpc::Status again = Call(*stub_, &v1::CacheDaemon::Stub::CommitStep, commit, &committed);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(Release(*stub_, planned.lease_id()).ok());

  // The two block hashes, from the daemon's own state.
  const std::vector<int64_t> positions = daemon_->state().cache().LookupPositions(
      {daemon_->state().cache().pool().sealed_info(planned.plan().page_ids(0))->hash,
       daemon_->state().cache().pool().sealed_info(planned.plan().page_ids(1))->hash});
  EXPECT_EQ(positions, (std::vector<int64_t>{0, 16}));

  v1::ExportBlocksRequest exp;
  for (int page = 0; page < 2; ++page) {
    const auto info = daemon_->state().cache().pool().sealed_info(planned.plan().page_ids(page));
    exp.add_hashes()->set_lo(info->hash.lo);
    exp.mutable_hashes(page)->set_hi(info->hash.hi);
  }
  exp.add_hashes()->set_lo(12345);  // not resident: left out
  v1::LookupRequest lookup;
  *lookup.mutable_hashes() = exp.hashes();
  v1::LookupResponse looked;
  ASSERT_TRUE(Call(*stub_, &v1::CacheDaemon::Stub::Lookup, lookup, &looked).ok());
  EXPECT_THAT(looked.resident(), ::testing::ElementsAre(true, true, false));
  EXPECT_THAT(looked.positions(), ::testing::ElementsAre(0, 16, -1));

  v1::ExportBlocksResponse exported;
  ASSERT_TRUE(Call(*stub_, &v1::CacheDaemon::Stub::ExportBlocks, exp, &exported).ok());
  EXPECT_EQ(exported.blocks_size(), 2);
  EXPECT_FALSE(exported.ucx_worker_address().empty());
  EXPECT_FALSE(exported.ucx_rkey().empty());
  EXPECT_EQ(Stats().pinned_blocks(), 2);
  EXPECT_EQ(Stats().active_exports(), 1);
  // Pinned blocks cannot be invalidated.
  v1::InvalidateBlocksRequest inval;
  inval.add_block_ids(planned.plan().page_ids(0));
  v1::InvalidateBlocksResponse invalidated;
  EXPECT_EQ(Call(*stub_, &v1::CacheDaemon::Stub::InvalidateBlocks, inval, &invalidated).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::ReleaseExportRequest rel;
  rel.set_export_id(exported.export_id());
  v1::ReleaseExportResponse rel_done;
  ASSERT_TRUE(Call(*stub_, &v1::CacheDaemon::Stub::ReleaseExport, rel, &rel_done).ok());
  EXPECT_EQ(Stats().pinned_blocks(), 0);
  EXPECT_EQ(Stats().active_exports(), 0);
  // Now it can be invalidated, and Lookup sees it gone.
  ASSERT_TRUE(Call(*stub_, &v1::CacheDaemon::Stub::InvalidateBlocks, inval, &invalidated).ok());
  EXPECT_EQ(invalidated.invalidated(), 1);
  ASSERT_TRUE(Call(*stub_, &v1::CacheDaemon::Stub::Lookup, lookup, &looked).ok());
  EXPECT_FALSE(looked.resident(0));
  EXPECT_TRUE(daemon_->state().cache().CheckConsistency().ok());
}

TEST(CacheDaemonExports, ExpireWhenTheImporterVanishes) {
  DaemonOptions o = LocalOptions();
  o.export_timeout = absl::Milliseconds(200);
  o.maintenance_interval = absl::Milliseconds(10);
  auto d = StartOrDie(o);
  ASSERT_NE(d, nullptr);
  auto stub = v1::CacheDaemon::NewStub(Channel(*d));
  v1::PlanStepResponse planned;
  v1::CommitStepResponse committed;
  ASSERT_TRUE(PlanAndCommit(*stub, 3, 16, &planned, &committed).ok());
  ASSERT_TRUE(Release(*stub, planned.lease_id()).ok());
  const auto info = d->state().cache().pool().sealed_info(planned.plan().page_ids(0));
  v1::ExportBlocksRequest exp;
  exp.add_hashes()->set_lo(info->hash.lo);
  exp.mutable_hashes(0)->set_hi(info->hash.hi);
  v1::ExportBlocksResponse exported;
  ASSERT_TRUE(Call(*stub, &v1::CacheDaemon::Stub::ExportBlocks, exp, &exported).ok());
  EXPECT_EQ(d->state().transfer().active_exports(), 1);
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (d->state().transfer().active_exports() != 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(d->state().transfer().active_exports(), 0);
  EXPECT_EQ(d->state().cache().GetStats().pool.pinned, 0);
}

}  // namespace
}  // namespace asymcache
