// Two daemons with the cuda backend exchange blocks (GPU pools; the transfer
// is staged through host memory when UCX has no CUDA support, which is the
// case for Debian's UCX) and the bytes arrive intact. Skips, saying why, on a
// machine without a CUDA device or in a build without CUDA.
#include <cstring>
#include <random>

#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "gtest/gtest.h"
#include "grpcpp/create_channel.h"
#include "services/daemon/cache_daemon.h"
#include "services/daemon/daemon_state.h"

namespace asymcache {
namespace {

// Llama-3-8B blocks (2 MiB each: 32 layers of 64 KiB pieces), bf16.
DaemonOptions CudaOptions() {
  DaemonOptions o;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
  o.backend = "cuda";
  o.model = *ModelConfig::Named("llama-3-8b");
  o.pool_bytes = int64_t{256} << 20;
  o.calibrate_on_start = false;  // the calibration has its own test
  return o;
}

TEST(CudaDaemon, TwoGpuPoolsExchangeBlocksByteExact) {
  absl::StatusOr<std::unique_ptr<CacheDaemon>> a = CacheDaemon::Start(CudaOptions());
  if (!a.ok() && a.status().code() == absl::StatusCode::kFailedPrecondition) {
    GTEST_SKIP() << "no usable CUDA device: " << a.status();
  }
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<std::unique_ptr<CacheDaemon>> b = CacheDaemon::Start(CudaOptions());
  ASSERT_TRUE(b.ok()) << b.status();
  auto stub_a = v1::CacheDaemon::NewStub(
      grpc::CreateChannel((*a)->local_address(), grpc::InsecureChannelCredentials()));
  auto stub_b = v1::CacheDaemon::NewStub(
      grpc::CreateChannel((*b)->local_address(), grpc::InsecureChannelCredentials()));

  // Two rounds of 64 blocks (128 MiB) written on A through its GPU pool: the
  // first pays for fresh staging areas, the second reuses them.
  for (int round = 0; round < 2; ++round) {
    constexpr int kBlocks = 64;
    const int block_tokens = (*a)->state().model().block_tokens;
    v1::PlanStepRequest plan;
    plan.set_salt("gpu");
    plan.set_sequence_id(static_cast<uint64_t>(round) + 1);
    for (int i = 0; i < kBlocks * block_tokens; ++i) plan.add_tokens((i * 13 + 5 + round * 7777) % 100000);
    v1::PlanStepResponse planned;
    {
      grpc::ClientContext ctx;
      ASSERT_TRUE(stub_a->PlanStep(&ctx, plan, &planned).ok());
    }
    std::vector<int64_t> ids(planned.plan().page_ids().begin(), planned.plan().page_ids().end());
    const int64_t block_bytes = (*a)->state().pool().layout().block_bytes();
    std::vector<uint8_t> written(ids.size() * block_bytes);
    std::mt19937_64 rng(std::random_device{}());
    for (size_t i = 0; i + 8 <= written.size(); i += 8) {
      const uint64_t word = rng();
      std::memcpy(written.data() + i, &word, 8);
    }
    ASSERT_TRUE((*a)->state().pool().CopyBlocksFromHost(ids, written).ok());
    {
      grpc::ClientContext ctx;
      v1::CommitStepRequest commit;
      commit.set_lease_id(planned.lease_id());
      v1::CommitStepResponse committed;
      ASSERT_TRUE(stub_a->CommitStep(&ctx, commit, &committed).ok());
      grpc::ClientContext rctx;
      v1::ReleaseStepRequest release;
      release.set_lease_id(planned.lease_id());
      v1::ReleaseStepResponse released;
      ASSERT_TRUE(stub_a->ReleaseStep(&rctx, release, &released).ok());
    }
    v1::ImportBlocksRequest import;
    import.set_peer((*a)->local_address());
    for (int64_t id : ids) {
      const auto info = (*a)->state().cache().pool().sealed_info(static_cast<BlockId>(id));
      ASSERT_TRUE(info.has_value());
      v1::BlockHash* h = import.add_hashes();
      h->set_lo(info->hash.lo);
      h->set_hi(info->hash.hi);
    }
    v1::ImportBlocksResponse imported;
    {
      grpc::ClientContext ctx;
      const grpc::Status s = stub_b->ImportBlocks(&ctx, import, &imported);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
    EXPECT_EQ(imported.imported(), kBlocks);
    std::printf("[cuda transfer] %s: %d blocks, %lld bytes in %.3f ms (%.2f GB/s), staged=%d\n",
                round == 0 ? "cold (first staging areas)" : "warm (reused areas)", kBlocks,
                static_cast<long long>(imported.bytes()), imported.transfer_seconds() * 1e3,
                imported.bytes() / imported.transfer_seconds() / 1e9,
                (*b)->state().transfer().reads_in_place() ? 0 : 1);

    // B's copies, in A's order, read back from B's GPU pool.
    std::vector<int64_t> b_ids;
    for (const v1::BlockHash& h : import.hashes()) {
      const std::vector<int64_t> pos = (*b)->state().cache().LookupPositions({BlockHash{h.lo(), h.hi()}});
      ASSERT_GE(pos[0], 0);
    }
    auto exported = (*b)->state().cache().PinForExport(
        [&] {
          std::vector<BlockHash> hs;
          for (const v1::BlockHash& h : import.hashes()) hs.push_back(BlockHash{h.lo(), h.hi()});
          return hs;
        }());
    ASSERT_EQ(exported.blocks.size(), ids.size());
    for (const IndexedBlockInfo& info : exported.blocks) b_ids.push_back(info.id);
    std::vector<uint8_t> received(written.size());
    ASSERT_TRUE((*b)->state().pool().CopyBlocksToHost(b_ids, absl::MakeSpan(received)).ok());
    EXPECT_TRUE(received == written) << "bytes differ after the GPU -> GPU transfer";
    exported.pins.Reset();
    EXPECT_TRUE((*a)->state().cache().CheckConsistency().ok());
    EXPECT_TRUE((*b)->state().cache().CheckConsistency().ok());
  }
}

}  // namespace
}  // namespace asymcache
