// Plan RPC latency of the cache daemon over gRPC on loopback (issue 4).
//
// One in-process asymcache daemon (host backend, tiny model, asym policy,
// 256 MiB pool) on 127.0.0.1. Each client has its own channel (its own TCP
// connection) and replays follow-up turns: a 2,048-token shared document +
// a per-client 64-token question, growing by 16 tokens a turn, so every plan
// hits the document's blocks (committed once before the runs) and allocates
// the new tail. A request is PlanStep (timed) then ReleaseStep (not timed).
//
// BM_PlanClosedLoop/C: C clients issue back to back (throughput and latency
//   at saturation). Counters: plans_per_s, p50_us, p99_us.
// BM_PlanOpenLoop/R/C: C clients together offer R plans/s on a fixed schedule;
//   latency runs from the scheduled send time (queueing included, no
//   coordinated omission). Counters: offered/achieved plans_per_s, p50_us,
//   p99_us. The goal of issue 4 is p99 < 500 µs at 5k plans/s on 2 cores.
// ASYMCACHE_BENCH_TARGET=host:port runs against an external daemon (tiny
// model, default settings), e.g. one pinned to core 0 while this runs on core 1.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <memory>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "bench/services/daemon_bench_util.h"
#include "services/daemon/cache_daemon.h"

namespace asymcache {
namespace {

constexpr int kDocTokens = 2048;
constexpr int kQuestionTokens = 64;
constexpr int kTurnTokens = 16;
constexpr int kTurnsPerSession = 32;

// The in-process daemon (started once), or its start error.
absl::StatusOr<CacheDaemon*> Daemon() {
  static absl::StatusOr<CacheDaemon*> daemon =
      []() -> absl::StatusOr<CacheDaemon*> {
    absl::StatusOr<std::unique_ptr<CacheDaemon>> started = bench::StartLocalDaemon(256 << 20);
    if (!started.ok()) return started.status();
    return started->release();  // lives for the whole run
  }();
  return daemon;
}

// ASYMCACHE_BENCH_TARGET=host:port measures a daemon started elsewhere (e.g.
// pinned to its own core with taskset) instead of the in-process one.
absl::StatusOr<std::string> Target() {
  const char* target = std::getenv("ASYMCACHE_BENCH_TARGET");
  if (target != nullptr && *target != '\0') return std::string(target);
  absl::StatusOr<CacheDaemon*> daemon = Daemon();
  if (!daemon.ok()) return daemon.status();
  return (*daemon)->local_address();
}

// The shared document, committed once before any run (every plan then hits
// it); the status of doing so.
absl::Status SeedDocument(v1::CacheDaemon::Stub& stub, const std::vector<TokenId>& doc) {
  static const absl::Status seeded = bench::CommitContext(stub, "bench", 1, doc);
  return seeded;
}

std::unique_ptr<v1::CacheDaemon::Stub> NewStub(const std::string& target, int client) {
  grpc::ChannelArguments args;
  args.SetInt("asymcache.bench_client", client);  // distinct args: a connection per client
  return v1::CacheDaemon::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

// One client's request stream.
class Client {
 public:
  Client(int id, const std::string& target) : id_(id), stub_(NewStub(target, id)) {
    for (int i = 0; i < kDocTokens; ++i) doc_.push_back((i * 7 + 3) % 1000);
  }
  absl::Status Seed() { return SeedDocument(*stub_, doc_); }

  // Issues one plan; returns its latency in µs measured from `scheduled`.
  double PlanOnce(std::chrono::steady_clock::time_point scheduled) {
    if (turn_ == kTurnsPerSession) {
      turn_ = 0;
      ++session_;
    }
    v1::PlanStepRequest request;
    request.set_salt("bench");
    request.set_sequence_id(static_cast<uint64_t>(id_) * 1000000 + session_ + 1);
    request.mutable_tokens()->Reserve(kDocTokens + kQuestionTokens + kTurnsPerSession * kTurnTokens);
    for (int t : doc_) request.add_tokens(t);
    const int tail = kQuestionTokens + turn_ * kTurnTokens;
    for (int i = 0; i < tail; ++i) request.add_tokens((id_ * 131 + session_ * 17 + i * 3) % 1000);
    ++turn_;
    v1::PlanStepResponse response;
    grpc::ClientContext ctx;
    const grpc::Status s = stub_->PlanStep(&ctx, request, &response);
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - scheduled)
            .count();
    if (!s.ok()) {
      if (errors_++ == 0) {
        std::fprintf(stderr, "client %d: PlanStep failed: %d %s\n", id_,
                     static_cast<int>(s.error_code()), s.error_message().c_str());
      }
      return us;
    }
    v1::ReleaseStepRequest release;
    release.set_lease_id(response.lease_id());
    v1::ReleaseStepResponse released;
    grpc::ClientContext rctx;
    if (const grpc::Status r = stub_->ReleaseStep(&rctx, release, &released); !r.ok()) {
      if (errors_++ == 0) {
        std::fprintf(stderr, "client %d: ReleaseStep failed: %d %s\n", id_,
                     static_cast<int>(r.error_code()), r.error_message().c_str());
      }
    }
    return us;
  }
  int errors() const { return errors_; }

 private:
  int id_;
  std::unique_ptr<v1::CacheDaemon::Stub> stub_;
  std::vector<TokenId> doc_;
  uint64_t session_ = 0;
  int turn_ = 0;
  int errors_ = 0;
};

// `n` clients with ids first_id.., connected, the document seeded, each
// having issued one plan (connection set up, session chain cached).
absl::StatusOr<std::vector<std::unique_ptr<Client>>> MakeClients(int n, int first_id) {
  absl::StatusOr<std::string> target = Target();
  if (!target.ok()) return target.status();
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < n; ++c) clients.push_back(std::make_unique<Client>(first_id + c, *target));
  if (absl::Status s = clients.front()->Seed(); !s.ok()) return s;
  for (auto& c : clients) c->PlanOnce(std::chrono::steady_clock::now());
  return clients;
}

void Report(benchmark::State& state, std::vector<double>& us, double seconds, int errors) {
  std::sort(us.begin(), us.end());
  state.counters["plans_per_s"] = static_cast<double>(us.size()) / seconds;
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  state.counters["errors"] = errors;
}

void BM_PlanClosedLoop(benchmark::State& state) {
  const int clients = static_cast<int>(state.range(0));
  const int per_client = std::max(200, 4000 / clients);
  absl::StatusOr<std::vector<std::unique_ptr<Client>>> made = MakeClients(clients, 0);
  if (!made.ok()) {
    state.SkipWithError(made.status().ToString().c_str());
    return;
  }
  std::vector<std::unique_ptr<Client>>& pool = *made;
  std::vector<double> all;
  double seconds = 0;
  for (auto _ : state) {
    std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c]() {
        for (int i = 0; i < per_client; ++i) {
          lat[c].push_back(pool[c]->PlanOnce(std::chrono::steady_clock::now()));
        }
      });
    }
    for (auto& t : threads) t.join();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(s);
    seconds += s;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  }
  int errors = 0;
  for (auto& c : pool) errors += c->errors();
  Report(state, all, seconds, errors);
}
BENCHMARK(BM_PlanClosedLoop)->Arg(1)->Arg(16)->Arg(64)->UseManualTime()->Iterations(1)
    ->Unit(benchmark::kMillisecond);

void BM_PlanOpenLoop(benchmark::State& state) {
  const double rate = static_cast<double>(state.range(0));
  const int clients = static_cast<int>(state.range(1));
  const absl::Duration duration = absl::Seconds(4);
  const int per_client = static_cast<int>(rate * absl::ToDoubleSeconds(duration) / clients);
  const auto interval = std::chrono::duration<double>(clients / rate);
  absl::StatusOr<std::vector<std::unique_ptr<Client>>> made = MakeClients(clients, 1000);
  if (!made.ok()) {
    state.SkipWithError(made.status().ToString().c_str());
    return;
  }
  std::vector<std::unique_ptr<Client>>& pool = *made;
  std::vector<double> all;
  double seconds = 0;
  for (auto _ : state) {
    std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&, c]() {
        // Clients are staggered evenly inside one interval.
        const auto offset = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            interval * (static_cast<double>(c) / clients));
        for (int i = 0; i < per_client; ++i) {
          const auto scheduled =
              start + offset +
              std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval * i);
          std::this_thread::sleep_until(scheduled);
          lat[c].push_back(pool[c]->PlanOnce(scheduled));
        }
      });
    }
    for (auto& t : threads) t.join();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(s);
    seconds += s;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  }
  int errors = 0;
  for (auto& c : pool) errors += c->errors();
  Report(state, all, seconds, errors);
  state.counters["offered_per_s"] = rate;
}
BENCHMARK(BM_PlanOpenLoop)
    ->Args({1000, 4})->Args({5000, 16})->Args({5000, 64})
    ->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
