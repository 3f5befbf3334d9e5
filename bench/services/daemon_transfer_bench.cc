// Block transfer between two cache daemons over UCX on loopback (issue 4):
// ImportBlocks end to end (gRPC ExportBlocks round trip, the exporter's copy
// into transport-allocated shared memory, UCX reads, the importer's copy into
// its pool, indexing, ReleaseExport) against memcpy of the same bytes.
//
// Two in-process daemons (host pools, tiny model: 32 KiB blocks); each
// iteration commits a fresh context on A (not timed) and imports all its
// blocks into B. Arg: blocks per import. Counters: GB/s of KV moved
// (bytes_per_second), and the same for memcpy in BM_Memcpy.
#include <cstring>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"

#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "cachecore/block_hash.h"
#include "grpcpp/create_channel.h"
#include "bench/services/daemon_bench_util.h"
#include "services/daemon/cache_daemon.h"
#include "services/daemon/daemon_state.h"

namespace asymcache {
namespace {

// A context of `blocks` full blocks for `sequence`.
std::vector<TokenId> Context(int block_tokens, int64_t blocks, uint64_t sequence) {
  std::vector<TokenId> tokens;
  for (int64_t i = 0; i < blocks * block_tokens; ++i) {
    tokens.push_back(static_cast<TokenId>((i * 7 + sequence * 131) % 1000));
  }
  return tokens;
}

void BM_ImportBlocks(benchmark::State& state, const char* transports) {
  const int64_t blocks = state.range(0);
  const int64_t block_bytes = ModelConfig::Named("tiny")->KvBytesPerBlock();
  // A holds one context at a time (evicted as new ones come); B is wiped by
  // eviction the same way: pools of 3 imports.
  const int64_t pool = 3 * blocks * block_bytes;
  absl::StatusOr<std::unique_ptr<CacheDaemon>> started_a = bench::StartLocalDaemon(pool, transports);
  absl::StatusOr<std::unique_ptr<CacheDaemon>> started_b = bench::StartLocalDaemon(pool, transports);
  if (!started_a.ok() || !started_b.ok()) {
    state.SkipWithError(
        (started_a.ok() ? started_b.status() : started_a.status()).ToString().c_str());
    return;
  }
  std::unique_ptr<CacheDaemon> a = *std::move(started_a);
  std::unique_ptr<CacheDaemon> b = *std::move(started_b);
  auto stub_a = v1::CacheDaemon::NewStub(
      grpc::CreateChannel(a->local_address(), grpc::InsecureChannelCredentials()));
  auto stub_b = v1::CacheDaemon::NewStub(
      grpc::CreateChannel(b->local_address(), grpc::InsecureChannelCredentials()));
  const int block_tokens = a->state().model().block_tokens;
  uint64_t sequence = 1;
  int64_t moved = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::vector<TokenId> tokens = Context(block_tokens, blocks, sequence);
    if (absl::Status s = bench::CommitContext(*stub_a, "bench", sequence++, tokens); !s.ok()) {
      state.SkipWithError(("filling the exporter: " + s.ToString()).c_str());
      break;
    }
    const std::vector<BlockHash> hashes = ChainHashes("bench", tokens, block_tokens);
    v1::ImportBlocksRequest request;
    request.set_peer(a->local_address());
    for (const BlockHash& h : hashes) {
      v1::BlockHash* out = request.add_hashes();
      out->set_lo(h.lo);
      out->set_hi(h.hi);
    }
    state.ResumeTiming();
    v1::ImportBlocksResponse response;
    grpc::ClientContext ctx;
    const grpc::Status s = stub_b->ImportBlocks(&ctx, request, &response);
    if (!s.ok() || response.imported() != blocks) {
      state.SkipWithError(absl::StrCat("ImportBlocks: ", s.error_message(), " imported ",
                                       response.imported(), " of ", blocks, " (already ",
                                       response.already_resident(), ", not on peer ",
                                       response.not_on_peer(), ")")
                              .c_str());
      break;
    }
    moved += response.bytes();
  }
  state.SetBytesProcessed(moved);
  state.counters["blocks"] = static_cast<double>(blocks);
}
BENCHMARK_CAPTURE(BM_ImportBlocks, shm, "")->Arg(64)->Arg(1024)->Arg(4096)->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ImportBlocks, tcp, "tcp")->Arg(1024)->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_Memcpy(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0)) *
                       static_cast<size_t>(ModelConfig::Named("tiny")->KvBytesPerBlock());
  std::vector<uint8_t> src(bytes, 1), dst(bytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Memcpy)->Arg(64)->Arg(1024)->Arg(4096)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
