// Bounded load (issue #9, "Load"; docs/reliability.md): a real coordinator,
// cache daemon and worker (tiny model, cpu backend, a 128-block host pool) on
// 127.0.0.1 take a fixed number of Generate requests at a fixed concurrency
// through the coordinator's Generate proxy. Half the prompts share one of a
// few documents (the cache hits), half are unique (the pool evicts).
//
// Checked: every request completes with max_new_tokens tokens and no error;
// requests with the same prompt get the same tokens (greedy decoding: the
// cache, eviction and batching never change an answer); the daemon evicted
// and hit (the load exercised both); afterwards nothing is leaked — the
// daemon's GetStats shows every block free or sealed-evictable (writing 0,
// pinned 0, leases 0, exports 0, agent pins 0) and the worker runs and queues
// nothing. A latency histogram (TTFT and end-to-end) is printed, not asserted.
//
// Size: ASYMCACHE_LOAD_REQUESTS (default 200) requests at
// ASYMCACHE_LOAD_CONCURRENCY (default 8) client threads; each request is
// bounded by a 60 s deadline (a miss is an error).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "tests/reliability/service_cluster.h"

namespace asymcache {
namespace {

using testing::BlockAccounting;
using testing::ServiceCluster;
using testing::ServiceClusterOptions;

constexpr uint32_t kVocab = 1024;  // the tiny shape's
constexpr int kNewTokens = 16;
constexpr int kDocuments = 4;
constexpr int kDocumentTokens = 160;  // 10 blocks
constexpr int kQuestions = 4;
constexpr int kQuestionTokens = 24;
constexpr absl::Duration kRequestDeadline = absl::Seconds(60);

// A positive integer from the environment, `fallback` when unset; a bad value
// fails the test (nullopt).
std::optional<int> EnvCount(const char* name, int fallback, int max) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  int n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < 1 || n > max) {
    ADD_FAILURE() << name << "='" << value << "' is not an integer in [1, " << max << "]";
    return std::nullopt;
  }
  return n;
}

struct LoadRequest {
  v1::GenerateRequest request;
  std::string prompt_key;  // equal prompts, equal keys
  bool shared = false;
};

// Request i: even i share document (i/2) % kDocuments and one of kQuestions
// questions; odd i are unique prompts of 96..224 tokens.
std::vector<LoadRequest> MakeWorkload(int count) {
  std::mt19937 rng(20261128);
  auto tokens = [&](int n) {
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int32_t& t : out) t = static_cast<int32_t>(rng() % kVocab);
    return out;
  };
  std::vector<std::vector<int32_t>> documents, questions;
  for (int d = 0; d < kDocuments; ++d) documents.push_back(tokens(kDocumentTokens));
  for (int q = 0; q < kQuestions; ++q) questions.push_back(tokens(kQuestionTokens));
  std::vector<LoadRequest> workload(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    LoadRequest& r = workload[static_cast<size_t>(i)];
    r.request.set_max_new_tokens(kNewTokens);
    r.request.set_salt("tenant-load");
    if (i % 2 == 0) {
      const int d = (i / 2) % kDocuments;
      const int q = static_cast<int>(rng() % kQuestions);
      for (int32_t t : documents[static_cast<size_t>(d)]) r.request.add_prompt_tokens(t);
      for (int32_t t : questions[static_cast<size_t>(q)]) r.request.add_prompt_tokens(t);
      r.prompt_key = absl::StrCat("doc", d, "-q", q);
      r.shared = true;
    } else {
      for (int32_t t : tokens(96 + static_cast<int>(rng() % 129))) r.request.add_prompt_tokens(t);
      r.prompt_key = absl::StrCat("unique", i);
    }
  }
  return workload;
}

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string finish_reason;
  double ttft_s = -1;
  double latency_s = 0;
};

Outcome RunOne(v1::Worker::Stub& stub, const v1::GenerateRequest& request) {
  Outcome out;
  const absl::Time start = absl::Now();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(start + kRequestDeadline));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (out.ttft_s < 0 && response.tokens_size() > 0) {
      out.ttft_s = absl::ToDoubleSeconds(absl::Now() - start);
    }
    out.tokens.insert(out.tokens.end(), response.tokens().begin(), response.tokens().end());
    if (!response.finish_reason().empty()) out.finish_reason = response.finish_reason();
  }
  out.status = reader->Finish();
  out.latency_s = absl::ToDoubleSeconds(absl::Now() - start);
  return out;
}

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t i = std::min(values.size() - 1, static_cast<size_t>(q * values.size()));
  return values[i];
}

// "name: n=.. p50 .. p90 .. p99 .. max .." and a bucket histogram, in ms.
void PrintHistogram(const char* name, const std::vector<double>& seconds) {
  std::printf("%s: n=%zu p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n", name,
              seconds.size(), 1e3 * Quantile(seconds, 0.50), 1e3 * Quantile(seconds, 0.90),
              1e3 * Quantile(seconds, 0.99), 1e3 * Quantile(seconds, 1.0));
  constexpr double kBoundsMs[] = {10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000};
  constexpr size_t kBuckets = sizeof(kBoundsMs) / sizeof(kBoundsMs[0]) + 1;
  size_t counts[kBuckets] = {};
  size_t most = 1;
  for (double s : seconds) {
    size_t b = 0;
    while (b < kBuckets - 1 && 1e3 * s >= kBoundsMs[b]) ++b;
    most = std::max(most, ++counts[b]);
  }
  for (size_t b = 0; b < kBuckets; ++b) {
    const std::string label =
        b < kBuckets - 1 ? absl::StrCat("< ", kBoundsMs[b], " ms")
                         : absl::StrCat(">= ", kBoundsMs[kBuckets - 2], " ms");
    std::printf("  %-12s %5zu %s\n", label.c_str(), counts[b],
                std::string(counts[b] * 50 / most, '#').c_str());
  }
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/asymcache_load_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
  }
  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) std::fprintf(stderr, "%s", cluster_->Logs().c_str());
    cluster_.reset();
    ::rmdir(log_dir_.c_str());
  }

  std::string log_dir_;
  std::unique_ptr<ServiceCluster> cluster_;
};

TEST_F(LoadTest, FixedRequestsAtFixedConcurrencyCompleteWithoutErrorsOrLeaks) {
  const std::optional<int> requests = EnvCount("ASYMCACHE_LOAD_REQUESTS", 200, 100000);
  const std::optional<int> concurrency = EnvCount("ASYMCACHE_LOAD_CONCURRENCY", 8, 128);
  ASSERT_TRUE(requests.has_value() && concurrency.has_value());

  ServiceClusterOptions options;
  options.log_dir = log_dir_;
  options.coordinator = true;
  options.pool_bytes = "4MiB";  // 128 blocks: the unique prompts evict
  absl::StatusOr<std::unique_ptr<ServiceCluster>> cluster = ServiceCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  cluster_ = *std::move(cluster);
  absl::StatusOr<BlockAccounting> before = cluster_->Accounting();
  ASSERT_TRUE(before.ok()) << before.status();

  const std::vector<LoadRequest> workload = MakeWorkload(*requests);
  std::vector<Outcome> outcomes(workload.size());
  std::atomic<size_t> next{0};
  const absl::Time start = absl::Now();
  std::vector<std::thread> clients;
  for (int c = 0; c < *concurrency; ++c) {
    clients.emplace_back([&] {
      for (size_t i = next++; i < workload.size(); i = next++) {
        outcomes[i] = RunOne(cluster_->coordinator_proxy(), workload[i].request);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  const double wall_s = absl::ToDoubleSeconds(absl::Now() - start);

  // Every request completed, with the same tokens as every other request of
  // the same prompt.
  int completed = 0;
  std::map<grpc::StatusCode, int> errors;
  std::map<std::string, std::vector<int32_t>> answers;
  int mismatches = 0;
  std::vector<double> ttft, latency;
  for (size_t i = 0; i < workload.size(); ++i) {
    const Outcome& o = outcomes[i];
    if (!o.status.ok()) {
      ++errors[o.status.error_code()];
      ADD_FAILURE() << "request " << i << ": " << o.status.error_code() << " "
                    << o.status.error_message();
      continue;
    }
    ++completed;
    EXPECT_EQ(o.tokens.size(), static_cast<size_t>(kNewTokens)) << "request " << i;
    EXPECT_EQ(o.finish_reason, "length") << "request " << i;
    auto [it, first] = answers.emplace(workload[i].prompt_key, o.tokens);
    if (!first && it->second != o.tokens) {
      ++mismatches;
      ADD_FAILURE() << "request " << i << " (" << workload[i].prompt_key
                    << ") got other tokens than an earlier request of the same prompt";
    }
    ttft.push_back(o.ttft_s);
    latency.push_back(o.latency_s);
  }

  // Nothing is held once the load is over: the worker hears of a request's
  // end after its releases, so this settles within a few maintenance ticks.
  absl::StatusOr<BlockAccounting> after = cluster_->WaitForIdlePool(absl::Seconds(15));
  ASSERT_TRUE(after.ok()) << after.status();
  const int64_t leaked = after->capacity - after->free - after->sealed_evictable;

  std::printf("load: %d requests, concurrency %d, %.2f s wall, %.1f requests/s, %.0f tokens/s\n",
              *requests, *concurrency, wall_s, completed / wall_s,
              completed * kNewTokens / wall_s);
  std::printf("load: completed %d, errors %d, answer mismatches %d, blocks leaked %lld\n",
              completed, *requests - completed, mismatches, static_cast<long long>(leaked));
  std::printf("daemon: %s\n", after->DebugString().c_str());
  PrintHistogram("ttft", ttft);
  PrintHistogram("end-to-end", latency);

  EXPECT_EQ(completed, *requests);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(leaked, 0);
  // The load did what it is for: shared documents hit, unique prompts evicted.
  EXPECT_GT(after->hit_tokens - before->hit_tokens, 0) << after->DebugString();
  EXPECT_GT(after->evictions - before->evictions, 0) << after->DebugString();
}

}  // namespace
}  // namespace asymcache
