// Route latency of the coordinator (DESIGN.md §3.6, §5: service paths must
// stay far below a decode step; the goal is p99 < 1 ms on 2 cores).
//
// One in-process coordinator (services/coordinator/coordinator.h) on
// 127.0.0.1 with 64 daemon members, registered through the Register RPC
// (llama-3-8b shape, the built-in H100 calibration; their addresses accept no
// connections, so the event watchers only back off) and heartbeated every
// second over gRPC with varied load, like real daemons. Each daemon's index
// holds 100,000 blocks filled directly through state().index():
// conversations of 2k, 4k, 8k, 16k and 32k tokens, every other one opening
// with one of 32 shared 2k-token documents (each document on 8 daemons),
// the rest distinct — about 6 M (block, daemon) entries in all.
//
// Queries: for each context length L in {2k, 8k, 32k} tokens, 64 requests
// (one per daemon): the first 3/4 of a conversation stored on that daemon
// followed by L/4 new tokens; half of them open with a shared document (hits
// on several daemons). routed_to_holder reports how many routes went to the
// daemon holding the conversation (a check that routing uses the index).
//
// BM_RouteGrpc/L      one client, back to back, Route over gRPC with
//                     token_ids (the coordinator hashes): end-to-end latency.
// BM_RouteCore/L      CoordinatorState::Route in-process (hashing, the
//                     routing view, the router, bookkeeping): no gRPC.
// BM_RouterOnly/L     Router::Route over precomputed hashes and the
//                     coordinator's candidates (each member's own cost
//                     model): the index lookup and the 64 candidates' scoring.
// BM_RouterSharedCost/L  the same with one CostModel object for all 64 (the
//                     router scores candidates without a hit once per
//                     distinct cost model): what sharing equal calibrations
//                     would save.
// BM_HashOnly/L       ChainHashes of the context (the coordinator's share of
//                     a Route with token_ids, for the breakdown).
// Counters: p50_us, p99_us, routes_per_s, routed_to_holder, errors.
// scripts/bench_route.sh runs it pinned to 2 cores and writes the results.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "cachecore/block_hash.h"
#include "cachecore/cost_model.h"
#include "cachecore/mix64.h"
#include "cachecore/model_config.h"
#include "cachecore/router.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/coordinator_state.h"

namespace asymcache {
namespace {

constexpr int kDaemons = 64;
constexpr int64_t kBlocksPerDaemon = 100000;
constexpr int kDaemonsPerDocument = 8;
constexpr int kDocumentsPerGroup = 4;  // 32 documents in all
constexpr int kDocumentTokens = 2048;
constexpr int kConversationTokens[] = {2048, 4096, 8192, 16384, 32768};
constexpr int kLengthKinds = 5;
constexpr char kSalt[] = "bench-tenant";

std::string DaemonId(int i) { return absl::StrFormat("daemon-%02d", i); }

// Deterministic token streams.
TokenId Token(uint64_t stream, uint64_t i, int64_t vocab) {
  return static_cast<TokenId>(Mix64(stream * 0x9E3779B97F4A7C15ull + i) % static_cast<uint64_t>(vocab));
}
void AppendTokens(uint64_t stream, int count, int64_t vocab, std::vector<TokenId>* out) {
  for (int i = 0; i < count; ++i) out->push_back(Token(stream, static_cast<uint64_t>(i), vocab));
}
// Conversation j on daemon i: for even j one of the 4 documents of the
// daemon's group of 8 (so each document sits on 8 of the 64 daemons), then
// its own tokens.
std::vector<TokenId> Conversation(int daemon, int j, int64_t vocab) {
  const int length = kConversationTokens[j % kLengthKinds];
  std::vector<TokenId> tokens;
  tokens.reserve(static_cast<size_t>(length));
  if (j % 2 == 0) {
    const int document = (daemon / kDaemonsPerDocument) * kDocumentsPerGroup +
                         (j / 2) % kDocumentsPerGroup;
    AppendTokens(1000 + static_cast<uint64_t>(document), kDocumentTokens, vocab, &tokens);
  }
  AppendTokens(uint64_t{1} << 32 | static_cast<uint64_t>(daemon) << 16 | static_cast<uint64_t>(j),
               length - static_cast<int>(tokens.size()), vocab, &tokens);
  return tokens;
}

struct Query {
  std::vector<TokenId> tokens;
  std::vector<BlockHash> hashes;
  std::string holder;  // the daemon holding its first 3/4
};

struct Cluster {
  std::unique_ptr<Coordinator> coordinator;
  std::unique_ptr<v1::Coordinator::Stub> stub;
  ModelConfig model;
  std::unique_ptr<CostModel> cost;  // the daemons' shape and calibration (BM_RouterSharedCost)
  std::vector<Query> queries[3];    // 2k, 8k, 32k
  absl::Notification stop_heartbeats;
  std::thread heartbeats;
};

int LengthIndex(int tokens) { return tokens == 2048 ? 0 : tokens == 8192 ? 1 : 2; }

void HeartbeatAll(v1::Coordinator::Stub& stub, uint64_t round) {
  for (int i = 0; i < kDaemons; ++i) {
    v1::HeartbeatRequest request;
    request.set_member_id(DaemonId(i));
    v1::MemberLoad* load = request.mutable_load();
    // Varied queues (0-2k tokens) so load shapes the choice as in a cluster.
    load->set_queued_prefill_tokens(static_cast<int64_t>(Mix64(round * 131 + i) % 2048));
    load->set_decode_batch(static_cast<int64_t>(Mix64(round * 7 + i) % 64));
    load->set_capacity_blocks(262144);
    load->set_free_blocks(262144 - kBlocksPerDaemon);
    v1::HeartbeatResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    stub.Heartbeat(&ctx, request, &response);
  }
}

absl::StatusOr<Cluster*> Build() {
  auto cluster = std::make_unique<Cluster>();
  absl::StatusOr<ModelConfig> model = ModelConfig::Named("llama-3-8b");
  if (!model.ok()) return model.status();
  cluster->model = *model;
  const CalibrationParams calibration = CostModel::DefaultH100Llama3_8B();
  cluster->cost = std::make_unique<CostModel>(cluster->model, calibration);

  CoordinatorOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_port = -1;
  options.member_timeout = absl::Hours(1);     // members live from their registration on
  options.watch_backoff_max = absl::Seconds(30);  // unreachable daemons: rare reconnects
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start(options);
  if (!coordinator.ok()) return coordinator.status();
  cluster->coordinator = *std::move(coordinator);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  cluster->stub = v1::Coordinator::NewStub(grpc::CreateCustomChannel(
      cluster->coordinator->local_address(), grpc::InsecureChannelCredentials(), args));

  // Members, through the Register RPC. Nothing listens on port 1.
  for (int i = 0; i < kDaemons; ++i) {
    v1::RegisterRequest request;
    request.set_member_id(DaemonId(i));
    request.set_kind(v1::MEMBER_KIND_DAEMON);
    request.set_address(absl::StrCat("127.0.0.1:1"));
    request.set_gpu(i % 8);
    request.set_role(v1::ROLE_BOTH);
    ToProto(cluster->model, request.mutable_model());
    ToProto(calibration, request.mutable_calibration());
    request.set_instance(absl::StrCat("bench-", i));
    v1::RegisterResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (absl::Status s = FromGrpcStatus(cluster->stub->Register(&ctx, request, &response));
        !s.ok()) {
      return s;
    }
  }
  HeartbeatAll(*cluster->stub, 0);

  // The index: 100k blocks per daemon, by slot.
  CoordinatorState& state = cluster->coordinator->state();
  std::vector<MemberSlot> slots(kDaemons);
  for (const MemberSnapshot& m : state.registry().List()) {
    if (!m.slot.has_value()) continue;
    for (int i = 0; i < kDaemons; ++i) {
      if (m.member_id == DaemonId(i)) slots[static_cast<size_t>(i)] = *m.slot;
    }
  }
  const int block_tokens = cluster->model.block_tokens;
  const int64_t vocab = cluster->model.vocab_size;
  const int targets[3] = {2048, 8192, 32768};
  for (int i = 0; i < kDaemons; ++i) {
    int64_t filled = 0;
    int eligible[3] = {0, 0, 0};  // complete conversations of each query length so far
    for (int j = 0; filled < kBlocksPerDaemon; ++j) {
      const std::vector<TokenId> tokens = Conversation(i, j, vocab);
      const std::vector<BlockHash> hashes = ChainHashes(kSalt, tokens, block_tokens);
      const int64_t take = std::min<int64_t>(static_cast<int64_t>(hashes.size()),
                                             kBlocksPerDaemon - filled);
      for (int64_t b = 0; b < take; ++b) {
        if (!state.index().AddStored(slots[static_cast<size_t>(i)], hashes[static_cast<size_t>(b)],
                                     static_cast<BlockId>(filled + b), b * block_tokens)) {
          return absl::ResourceExhaustedError("the block index is full");
        }
      }
      filled += take;
      // One complete conversation of each query length on this daemon becomes
      // its query (3/4 of it, then new tokens): the first on even daemons (it
      // opens with a shared document), the second on odd ones (it does not).
      const int length = kConversationTokens[j % kLengthKinds];
      for (int t = 0; t < 3; ++t) {
        if (length != targets[t] || take != static_cast<int64_t>(hashes.size()) ||
            eligible[t]++ != i % 2) {
          continue;
        }
        Query q;
        q.tokens.assign(tokens.begin(), tokens.begin() + length * 3 / 4);
        AppendTokens(uint64_t{2} << 40 | static_cast<uint64_t>(i) << 8 | static_cast<uint64_t>(t),
                     length / 4, vocab, &q.tokens);
        q.hashes = ChainHashes(kSalt, q.tokens, block_tokens);
        q.holder = DaemonId(i);
        cluster->queries[t].push_back(std::move(q));
      }
    }
  }
  for (int t = 0; t < 3; ++t) {
    if (cluster->queries[t].size() != kDaemons) {
      return absl::InternalError(absl::StrCat("only ", cluster->queries[t].size(),
                                              " queries of ", targets[t], " tokens"));
    }
  }
  std::fprintf(stderr, "route_bench: %d daemons, %lld index entries\n", kDaemons,
               static_cast<long long>(state.index().size()));

  // Heartbeats every second, as the daemons' registrars send them (they also
  // clear the work routes charged to each daemon since the last one).
  Cluster* raw = cluster.get();
  cluster->heartbeats = std::thread([raw]() {
    for (uint64_t round = 1; !raw->stop_heartbeats.WaitForNotificationWithTimeout(absl::Seconds(1));
         ++round) {
      HeartbeatAll(*raw->stub, round);
    }
  });
  return cluster.release();  // lives for the whole run (the heartbeat thread uses it)
}

absl::StatusOr<Cluster*> TheCluster() {
  static absl::StatusOr<Cluster*> cluster = Build();
  return cluster;
}

void Report(benchmark::State& state, std::vector<double>& us, double seconds, int64_t to_holder,
            int64_t errors) {
  std::sort(us.begin(), us.end());
  state.counters["routes_per_s"] = static_cast<double>(us.size()) / seconds;
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  state.counters["routed_to_holder"] = static_cast<double>(to_holder) / static_cast<double>(us.size());
  state.counters["errors"] = static_cast<double>(errors);
}

// Runs `route(query) -> routed daemon id (or "" on error)` `n` times over the
// length's queries (after a warm-up pass) and reports.
template <typename RouteFn>
void Measure(benchmark::State& state, int requests, RouteFn route) {
  absl::StatusOr<Cluster*> cluster = TheCluster();
  if (!cluster.ok()) {
    state.SkipWithError(cluster.status().ToString().c_str());
    return;
  }
  const std::vector<Query>& queries = (*cluster)->queries[LengthIndex(static_cast<int>(state.range(0)))];
  for (const Query& q : queries) route(**cluster, q);  // warm-up: connections, caches
  std::vector<double> us;
  us.reserve(static_cast<size_t>(requests));
  int64_t to_holder = 0;
  int64_t errors = 0;
  double seconds = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < requests; ++r) {
      const Query& q = queries[static_cast<size_t>(r) % queries.size()];
      const auto t0 = std::chrono::steady_clock::now();
      const std::string routed = route(**cluster, q);
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                       .count());
      if (routed.empty()) ++errors;
      if (routed == q.holder) ++to_holder;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(s);
    seconds += s;
  }
  Report(state, us, seconds, to_holder, errors);
}

int RequestsFor(int64_t tokens) { return tokens >= 32768 ? 1000 : 3000; }

void BM_RouteGrpc(benchmark::State& state) {
  Measure(state, RequestsFor(state.range(0)), [](Cluster& c, const Query& q) -> std::string {
    v1::RouteRequest request;
    request.set_salt(kSalt);
    request.mutable_token_ids()->Assign(q.tokens.begin(), q.tokens.end());
    v1::RouteResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status s = c.stub->Route(&ctx, request, &response);
    if (!s.ok()) {
      std::fprintf(stderr, "Route: %s\n", s.error_message().c_str());
      return "";
    }
    return response.prefill().daemon_id();
  });
}
BENCHMARK(BM_RouteGrpc)->Arg(2048)->Arg(8192)->Arg(32768)->UseManualTime()->Iterations(1)
    ->Unit(benchmark::kMillisecond);

void BM_RouteCore(benchmark::State& state) {
  Measure(state, RequestsFor(state.range(0)), [](Cluster& c, const Query& q) -> std::string {
    RouteInput input;
    input.salt = kSalt;
    input.tokens = q.tokens;
    absl::StatusOr<RouteOutcome> out = c.coordinator->state().Route(input);
    if (!out.ok() || out->prefill.daemon == nullptr) return "";
    return out->prefill.daemon->member_id;
  });
}
BENCHMARK(BM_RouteCore)->Arg(2048)->Arg(8192)->Arg(32768)->UseManualTime()->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// Router::Route alone over the coordinator's candidates. `shared_cost`: every
// candidate uses one CostModel object instead of its member's own (the router
// scores all candidates without a hit once per distinct cost model).
void RouterOnly(benchmark::State& state, bool shared_cost) {
  absl::StatusOr<Cluster*> cluster = TheCluster();
  if (!cluster.ok()) {
    state.SkipWithError(cluster.status().ToString().c_str());
    return;
  }
  // The candidates as CoordinatorState::Route builds them (from the routing
  // view), with each member's cost model or the shared one.
  const RoutingView view = (*cluster)->coordinator->state().registry().View();
  std::vector<RouteCandidate> candidates;
  std::vector<std::string> ids;
  for (const RoutingMember& m : view.prefill) {
    RouteCandidate c;
    c.member = m.slot;
    c.cost = shared_cost ? (*cluster)->cost.get() : m.cost.get();
    c.queued_prefill_tokens = m.queued_prefill_tokens;
    c.decode_batch = m.decode_batch;
    c.free_blocks = m.free_blocks;
    candidates.push_back(c);
    ids.push_back(m.daemon->member_id);
  }
  Measure(state, RequestsFor(state.range(0)), [&](Cluster& c, const Query& q) -> std::string {
    RouteQuery query;
    query.hashes = q.hashes;
    query.tokens = static_cast<int64_t>(q.tokens.size());
    absl::StatusOr<RouteDecision> decision =
        c.coordinator->state().router().Route(query, candidates, c.coordinator->state().index());
    if (!decision.ok()) return "";
    return ids[decision->candidate];
  });
}
void BM_RouterOnly(benchmark::State& state) { RouterOnly(state, /*shared_cost=*/false); }
BENCHMARK(BM_RouterOnly)->Arg(2048)->Arg(8192)->Arg(32768)->UseManualTime()->Iterations(1)
    ->Unit(benchmark::kMillisecond);
void BM_RouterSharedCost(benchmark::State& state) { RouterOnly(state, /*shared_cost=*/true); }
BENCHMARK(BM_RouterSharedCost)->Arg(2048)->Arg(8192)->Arg(32768)->UseManualTime()->Iterations(1)
    ->Unit(benchmark::kMillisecond);

void BM_HashOnly(benchmark::State& state) {
  Measure(state, RequestsFor(state.range(0)), [](Cluster& c, const Query& q) -> std::string {
    const std::vector<BlockHash> hashes = ChainHashes(kSalt, q.tokens, c.model.block_tokens);
    benchmark::DoNotOptimize(hashes.data());
    return hashes == q.hashes ? q.holder : "";
  });
}
BENCHMARK(BM_HashOnly)->Arg(2048)->Arg(8192)->Arg(32768)->UseManualTime()->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
