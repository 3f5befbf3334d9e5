// The product is lossless: under every eviction policy, with a pool small
// enough that blocks are evicted, rebuilt and preempted all the time, with
// multi-turn sessions, shared documents, chunked prefill, greedy and seeded
// sampling, every request gets the tokens (and, within 1e-5, the logits) of
// the dense no-cache reference run (model/dense_reference.h).
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cachecore/eviction_policy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/llama_config.h"
#include "tests/kernels/msa_test_util.h"
#include "tests/services/worker/engine_harness.h"

namespace asymcache::worker::testing {
namespace {

constexpr double kLogitTolerance = 1e-5;

model::WeightSource TinyWeights(uint64_t seed) {
  absl::StatusOr<model::LlamaConfig> config = model::LlamaConfig::Named("tiny");
  EXPECT_TRUE(config.ok());
  absl::StatusOr<model::WeightSource> weights = model::WeightSource::Random(*config, seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  return *std::move(weights);
}

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int n) {
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = static_cast<int32_t>(rng() % 1024);
  return out;
}

// Compares a finished request with its reference; returns a description of
// the first difference ("" when equal).
std::string Compare(const CollectingSink& sink, const model::DenseGeneration& want,
                    const std::string& what) {
  if (!sink.status().ok()) return absl::StrCat(what, ": failed: ", sink.status().ToString());
  const std::vector<int32_t> got = sink.tokens();
  if (got != want.tokens) {
    std::string message = absl::StrCat(what, ": tokens differ (got ", got.size(), ", want ",
                                       want.tokens.size(), ")");
    const auto logits = sink.logits();
    for (size_t i = 0; i < std::min(got.size(), want.tokens.size()); ++i) {
      if (got[i] != want.tokens[i]) {
        absl::StrAppend(&message, "; first at ", i, ": ", got[i], " vs ", want.tokens[i]);
        if (i < logits.size() && i < want.logits.size()) {
          absl::StrAppend(&message, "; logits there differ by ",
                          RelativeError(logits[i], want.logits[i]), " (relative); got[",
                          got[i], "]=", logits[i][got[i]], " want[", want.tokens[i],
                          "]=", want.logits[i][want.tokens[i]]);
        }
        break;
      }
    }
    return message;
  }
  const auto logits = sink.logits();
  if (logits.size() != want.logits.size()) {
    return absl::StrCat(what, ": ", logits.size(), " logit vectors, want ", want.logits.size());
  }
  for (size_t i = 0; i < logits.size(); ++i) {
    const double error = RelativeError(logits[i], want.logits[i]);
    if (!(error <= kLogitTolerance)) {
      return absl::StrCat(what, ": token ", i, " logits relative error ", error);
    }
  }
  return "";
}

struct Job {
  GenerationRequest request;
  std::shared_ptr<CollectingSink> sink;
  std::string name;
};

class EngineExactnessTest : public ::testing::TestWithParam<std::string> {};

// Conversations of three turns and shared-document questions, all in flight
// at once, on a pool of 48 blocks (768 tokens) that cannot hold them.
TEST_P(EngineExactnessTest, EveryRequestMatchesTheNoCacheRunUnderPressure) {
  const uint64_t seed = msa::testing::FreshSeed();
  SCOPED_TRACE(absl::StrCat("policy ", GetParam(), " seed ", seed));
  std::mt19937_64 rng(seed);
  const model::WeightSource weights = TinyWeights(seed);
  DaemonOptions daemon_options = SmallDaemonOptions(48);
  daemon_options.policy = GetParam();
  EngineOptions engine_options;
  engine_options.max_running = 6;
  engine_options.max_step_tokens = 512;
  engine_options.chunking.max_budget_tokens = 256;  // prompts take several steps
  absl::StatusOr<EngineStack> stack = StartStack(daemon_options, weights, engine_options);
  ASSERT_TRUE(stack.ok()) << stack.status();

  const std::vector<int32_t> document = RandomTokens(rng, 200);
  constexpr int kConversations = 4;
  std::vector<std::vector<int32_t>> contexts(kConversations);
  for (int c = 0; c < kConversations; ++c) contexts[c] = RandomTokens(rng, 40 + rng() % 60);

  for (int turn = 0; turn < 3; ++turn) {
    std::vector<Job> jobs;
    for (int c = 0; c < kConversations; ++c) {
      Job job;
      job.name = absl::StrCat("conversation ", c, " turn ", turn);
      job.request.prompt = contexts[c];
      job.request.max_new_tokens = 6 + static_cast<int32_t>(rng() % 14);
      job.request.session_id = absl::StrCat("conv-", c);
      job.request.salt = c % 2 == 0 ? "tenant-a" : "tenant-b";
      if (c % 2 == 1) job.request.sampling = {0.9f, 0.95f, rng()};
      job.request.return_logits = true;
      jobs.push_back(std::move(job));
    }
    for (int q = 0; q < 3; ++q) {
      Job job;
      job.name = absl::StrCat("document question ", q, " turn ", turn);
      job.request.prompt = document;
      const std::vector<int32_t> question = RandomTokens(rng, 5 + rng() % 30);
      job.request.prompt.insert(job.request.prompt.end(), question.begin(), question.end());
      job.request.max_new_tokens = 4 + static_cast<int32_t>(rng() % 8);
      job.request.salt = "tenant-a";
      job.request.return_logits = true;
      if (q == 2) job.request.sampling = {0.7f, 0.8f, rng()};
      jobs.push_back(std::move(job));
    }
    for (Job& job : jobs) {
      job.sink = std::make_shared<CollectingSink>();
      ASSERT_TRUE(stack->engine->Submit(job.request, job.sink).ok());
    }
    for (Job& job : jobs) {
      ASSERT_TRUE(job.sink->Wait()) << job.name << " did not finish";
      const std::string difference = Compare(*job.sink, Reference(weights, job.request), job.name);
      EXPECT_EQ(difference, "");
    }
    // The next turn: the whole conversation so far plus a new message.
    for (int c = 0; c < kConversations; ++c) {
      const std::vector<int32_t> reply = jobs[c].sink->tokens();
      contexts[c].insert(contexts[c].end(), reply.begin(), reply.end());
      const std::vector<int32_t> message = RandomTokens(rng, 10 + rng() % 30);
      contexts[c].insert(contexts[c].end(), message.begin(), message.end());
    }
  }
  // The cache was under pressure and reused what it could.
  const DaemonStats stats = stack->Stats();
  EXPECT_GT(stats.evictions, 0);
  EXPECT_GT(stats.hit_tokens, 0);
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  stack->engine->Shutdown();
}

INSTANTIATE_TEST_SUITE_P(Policies, EngineExactnessTest,
                         ::testing::ValuesIn(EvictionPolicyNames()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

TEST(EngineTest, FullyCachedPromptRecomputesOnlyItsLastTokenForLogits) {
  const model::WeightSource weights = TinyWeights(7);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(64), weights, {});
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(11);
  GenerationRequest request;
  request.prompt = RandomTokens(rng, 37);  // 2 full blocks + 5
  request.max_new_tokens = 5;
  request.return_logits = true;
  const model::DenseGeneration want = Reference(weights, request);
  GenerationRequest first_token_only = request;
  first_token_only.max_new_tokens = 1;
  model::DenseGeneration want_first = want;
  want_first.tokens.resize(1);
  want_first.logits.resize(1);
  for (int round = 0; round < 2; ++round) {
    auto sink = std::make_shared<CollectingSink>();
    // Round 0 ends right after the prompt, so its commit seals every page,
    // the partial last one too (a decoding request keeps that one private).
    ASSERT_TRUE(stack->engine->Submit(round == 0 ? first_token_only : request, sink).ok());
    ASSERT_TRUE(sink->Wait());
    EXPECT_EQ(Compare(*sink, round == 0 ? want_first : want, absl::StrCat("round ", round)), "");
    if (round == 1) {
      // All of the prompt hits; only its last token runs again, for logits.
      EXPECT_EQ(sink->stats().hit_tokens, 37);
      EXPECT_EQ(sink->stats().computed_prompt_tokens, 0);
      EXPECT_EQ(sink->reason(), "length");
    }
  }
}

// Decode page rollover both ways: the daemon's ExtendLease (no plan, no
// copy) and, with extend_leases off, a plan of the longer context that copies
// the full page's rows. Both are exact.
class EngineRolloverTest : public ::testing::TestWithParam<bool> {};

TEST_P(EngineRolloverTest, FixedSmallChunksAndDecodePageRolloversStayExact) {
  const bool extend = GetParam();
  const model::WeightSource weights = TinyWeights(21);
  EngineOptions options;
  options.chunking.mode = ChunkSchedulerOptions::Mode::kFixed;
  options.chunking.fixed_budget_tokens = 32;
  options.max_step_tokens = 512;
  options.chunking.max_budget_tokens = 256;
  options.extend_leases = extend;
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(64), weights, options);
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(5);
  GenerationRequest request;
  request.prompt = RandomTokens(rng, 150);
  request.max_new_tokens = 40;  // positions 150..188: pages roll over at 160 and 176
  request.return_logits = true;
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(request, sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(Compare(*sink, Reference(weights, request), "chunked"), "");
  EXPECT_GE(sink->stats().steps, 150 / 32 + 40 - 1);
  const DaemonStats stats = stack->Stats();
  const EngineStats engine = stack->engine->stats();
  if (extend) {
    EXPECT_EQ(sink->stats().copied_tokens, 0);
    EXPECT_EQ(engine.page_rollovers, 2);
    // The first waits for its answer; the second starts in the spare that
    // answer reserved and seals the full page off the step thread.
    EXPECT_EQ(engine.waited_rollovers, 1);
    EXPECT_EQ(stats.lease_extensions, 2);
  } else {
    EXPECT_EQ(sink->stats().copied_tokens, 2 * 16);  // the full page, at each rollover
    EXPECT_EQ(engine.page_rollovers, 0);
    EXPECT_EQ(engine.waited_rollovers, 0);
    EXPECT_EQ(stats.lease_extensions, 0);
  }
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  // The pages sealed at the rollovers serve the same context again.
  GenerationRequest again;
  again.prompt = request.prompt;
  const std::vector<int32_t> generated = sink->tokens();
  again.prompt.insert(again.prompt.end(), generated.begin(), generated.begin() + 26);  // 176
  again.max_new_tokens = 1;
  again.return_logits = true;
  auto second = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(again, second).ok());
  ASSERT_TRUE(second->Wait());
  EXPECT_EQ(second->stats().hit_tokens, 176);
  // Its logits come from the rolled-over pages' K/V alone: exact or not.
  EXPECT_EQ(Compare(*second, Reference(weights, again), "from the sealed pages"), "");
  EXPECT_EQ(second->tokens(), std::vector<int32_t>{generated[26]});
}

INSTANTIATE_TEST_SUITE_P(Rollover, EngineRolloverTest, ::testing::Bool(),
                         [](const auto& info) {
                           return std::string(info.param ? "ExtendLease" : "PlanAndCopy");
                         });

TEST(EngineTest, StopTokenEndsTheRequest) {
  const model::WeightSource weights = TinyWeights(3);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(64), weights, {});
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(9);
  GenerationRequest request;
  request.prompt = RandomTokens(rng, 20);
  request.max_new_tokens = 12;
  const model::DenseGeneration free_run = Reference(weights, request);
  ASSERT_GE(free_run.tokens.size(), 4u);
  request.stop_tokens = {free_run.tokens[3]};
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(request, sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->reason(), "stop");
  const std::vector<int32_t> got = sink->tokens();
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), free_run.tokens[3]);
  EXPECT_LE(got.size(), 4u);
}

TEST(EngineTest, CancelAndShutdownReleaseEveryBlock) {
  const model::WeightSource weights = TinyWeights(4);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(64), weights, {});
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(1);
  GenerationRequest request;
  request.prompt = RandomTokens(rng, 60);
  request.max_new_tokens = 500;
  auto sink = std::make_shared<CollectingSink>();
  absl::StatusOr<uint64_t> id = stack->engine->Submit(request, sink);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(::asymcache::testing::WaitUntil([&] { return sink->tokens().size() >= 3; }));
  stack->engine->Cancel(*id);
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->status().code(), absl::StatusCode::kCancelled);
  DaemonStats stats = stack->Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);

  auto running = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(request, running).ok());
  ASSERT_TRUE(::asymcache::testing::WaitUntil([&] { return !running->tokens().empty(); }));
  stack->engine->Shutdown();
  ASSERT_TRUE(running->Wait());
  EXPECT_EQ(running->status().code(), absl::StatusCode::kUnavailable);
  stats = stack->Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stack->engine->Submit(request, std::make_shared<CollectingSink>()).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(EngineTest, ARequestThePoolCannotAdmitInTimeEndsWithResourceExhausted) {
  const model::WeightSource weights = TinyWeights(8);
  EngineOptions options;
  options.admission_timeout = absl::Milliseconds(300);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(8), weights, options);
  ASSERT_TRUE(stack.ok()) << stack.status();
  // Another client holds 6 of the 8 blocks.
  absl::StatusOr<LeasedStep> held =
      stack->client->PlanStep("other", 99, ::asymcache::testing::Tokens(96, 5));
  ASSERT_TRUE(held.ok()) << held.status();
  GenerationRequest request;
  request.prompt = ::asymcache::testing::Tokens(60, 9);  // 4 blocks: does not fit beside them
  request.max_new_tokens = 2;
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(request, sink).ok());
  ASSERT_TRUE(sink->Wait(absl::Seconds(20)));
  EXPECT_EQ(sink->status().code(), absl::StatusCode::kResourceExhausted) << sink->status();
  ASSERT_TRUE(stack->client->ReleaseStep(held->lease_id).ok());
  // With the blocks back, the same request runs.
  auto again = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(request, again).ok());
  ASSERT_TRUE(again->Wait());
  EXPECT_TRUE(again->status().ok()) << again->status();
  EXPECT_EQ(again->tokens().size(), 2u);
}

// A request that does not fit beside a decoding one is planned again once the
// decoding one's blocks are released, not at every step in between (unless
// admission_retry_interval is 0); either way its tokens are exact.
TEST(EngineTest, ARefusedAdmissionIsPlannedAgainAfterARelease) {
  const model::WeightSource weights = TinyWeights(13);
  std::mt19937_64 rng(17);
  GenerationRequest first;
  first.prompt = RandomTokens(rng, 40 * 16);  // 40 of the pool's 64 blocks, 44 at the end
  first.max_new_tokens = 60;
  first.return_logits = true;
  GenerationRequest second;
  second.prompt = RandomTokens(rng, 25 * 16);  // does not fit beside the first
  second.max_new_tokens = 3;
  second.return_logits = true;
  for (const absl::Duration interval : {absl::Hours(1), absl::ZeroDuration()}) {
    SCOPED_TRACE(absl::StrCat("admission_retry_interval ", absl::FormatDuration(interval)));
    EngineOptions options;
    options.admission_retry_interval = interval;
    absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(64), weights, options);
    ASSERT_TRUE(stack.ok()) << stack.status();
    auto a = std::make_shared<CollectingSink>();
    auto b = std::make_shared<CollectingSink>();
    ASSERT_TRUE(stack->engine->Submit(first, a).ok());
    ASSERT_TRUE(stack->engine->Submit(second, b).ok());
    ASSERT_TRUE(a->Wait());
    ASSERT_TRUE(b->Wait());
    EXPECT_EQ(Compare(*a, Reference(weights, first), "first"), "");
    EXPECT_EQ(Compare(*b, Reference(weights, second), "second"), "");
    const EngineStats stats = stack->engine->stats();
    EXPECT_GE(stats.admission_refusals, 1);
    if (interval == absl::Hours(1)) {
      // Refused while the first decodes (its pages roll over by ExtendLease;
      // the re-plan of its block-aligned prompt's first decode token releases
      // a lease but frees nothing net), planned again after the first ends.
      EXPECT_LE(stats.admission_refusals, 2);
    } else {
      EXPECT_GE(stats.admission_refusals, 20);  // once a step while the first decodes
    }
    stack->engine->Shutdown();
  }
}

// Submits every request at once (each with max_new_tokens and logits), waits
// for all and checks each against the dense reference; returns their sinks.
std::vector<std::shared_ptr<CollectingSink>> SubmitAllExact(EngineStack& stack,
                                                            const model::WeightSource& weights,
                                                            std::vector<GenerationRequest>& requests,
                                                            int32_t max_new_tokens) {
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (GenerationRequest& request : requests) {
    request.max_new_tokens = max_new_tokens;
    request.return_logits = true;
    sinks.push_back(std::make_shared<CollectingSink>());
    EXPECT_TRUE(stack.engine->Submit(request, sinks.back()).ok());
  }
  for (size_t i = 0; i < sinks.size(); ++i) {
    EXPECT_TRUE(sinks[i]->Wait());
    EXPECT_EQ(Compare(*sinks[i], Reference(weights, requests[i]), absl::StrCat("request ", i)),
              "");
  }
  return sinks;
}

// Two requests on one document, the second submitted while the first's
// prefill runs: with defer_pending_tokens the second waits for the first's
// commit and hits the document instead of computing a second copy at the same
// time (without it, it computes its own); exact either way.
class EngineDeferralTest : public ::testing::TestWithParam<bool> {};

TEST_P(EngineDeferralTest, ASecondRequestOnADocumentBeingComputedWaitsAndHitsIt) {
  const bool defer = GetParam();
  const model::WeightSource weights = TinyWeights(23);
  EngineOptions options;
  options.chunking.mode = ChunkSchedulerOptions::Mode::kFixed;
  options.chunking.fixed_budget_tokens = 16;  // the document takes 40 steps
  options.defer_pending_tokens = defer ? 64 : 0;
  // Only the first request's commit may wake the deferred one.
  options.admission_retry_interval = absl::Hours(1);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(128), weights, options);
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(29);
  const std::vector<int32_t> document = RandomTokens(rng, 40 * 16);
  std::vector<GenerationRequest> requests(2);
  for (GenerationRequest& request : requests) {
    request.prompt = document;
    const std::vector<int32_t> question = RandomTokens(rng, 9);
    request.prompt.insert(request.prompt.end(), question.begin(), question.end());
  }
  const std::vector<std::shared_ptr<CollectingSink>> sinks =
      SubmitAllExact(*stack, weights, requests, /*max_new_tokens=*/4);
  const EngineStats engine = stack->engine->stats();
  const DaemonStats daemon = stack->Stats();
  const int64_t prompt = static_cast<int64_t>(requests[0].prompt.size());
  if (defer) {
    EXPECT_EQ(engine.deferred_admissions, 1);  // planned again once, after that commit
    EXPECT_EQ(daemon.deferred_plans, 1);
    EXPECT_EQ(sinks[1]->stats().hit_tokens, static_cast<int64_t>(document.size()));
    EXPECT_EQ(engine.prefill_tokens, prompt + 9);  // the document once, both questions
  } else {
    EXPECT_EQ(engine.deferred_admissions, 0);
    EXPECT_EQ(daemon.deferred_plans, 0);
    EXPECT_EQ(sinks[1]->stats().hit_tokens, 0);
    EXPECT_EQ(engine.prefill_tokens, 2 * prompt);  // a second copy of the document
  }
  EXPECT_EQ(daemon.active_leases, 0);
  EXPECT_EQ(daemon.writing_blocks, 0);
  EXPECT_EQ(daemon.writing_pages, 0);
  stack->engine->Shutdown();
}

INSTANTIATE_TEST_SUITE_P(Deferral, EngineDeferralTest, ::testing::Bool(),
                         [](const auto& info) {
                           return std::string(info.param ? "Deferred" : "Duplicated");
                         });

// --prefill-order: a short prompt submitted behind a long one waits for the
// whole long prefill under arrival order (FCFS) and goes first under
// least-remaining; exact either way.
class EnginePrefillOrderTest : public ::testing::TestWithParam<bool> {};

TEST_P(EnginePrefillOrderTest, LeastRemainingServesAShortPromptBeforeALongOne) {
  const bool least_remaining = GetParam();
  const model::WeightSource weights = TinyWeights(31);
  EngineOptions options;
  options.chunking.mode = ChunkSchedulerOptions::Mode::kFixed;
  options.chunking.fixed_budget_tokens = 16;  // the long prompt takes 40 steps
  options.chunking.prefill_order = least_remaining
                                       ? ChunkSchedulerOptions::PrefillOrder::kLeastRemaining
                                       : ChunkSchedulerOptions::PrefillOrder::kArrival;
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(128), weights, options);
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(37);
  std::vector<GenerationRequest> requests(2);
  requests[0].prompt = RandomTokens(rng, 40 * 16);
  requests[1].prompt = RandomTokens(rng, 12);
  const std::vector<std::shared_ptr<CollectingSink>> sinks =
      SubmitAllExact(*stack, weights, requests, /*max_new_tokens=*/3);
  const double long_ttft = sinks[0]->stats().ttft_seconds;
  const double short_ttft = sinks[1]->stats().ttft_seconds;
  if (least_remaining) {
    EXPECT_LT(short_ttft, long_ttft);
  } else {
    EXPECT_GT(short_ttft, long_ttft);  // behind all 40 steps of the long prefill
  }
  stack->engine->Shutdown();
}

INSTANTIATE_TEST_SUITE_P(PrefillOrder, EnginePrefillOrderTest, ::testing::Bool(),
                         [](const auto& info) {
                           return std::string(info.param ? "LeastRemaining" : "Arrival");
                         });

// A decode longer than the daemon's lease timeout: the engine renews its lease
// (off the step thread, every third of the timeout) and the rollovers renew it
// too; the request ends normally, exact, and leaves nothing behind.
TEST(EngineTest, ADecodeLongerThanTheLeaseTimeoutKeepsItsLease) {
  const model::WeightSource weights = TinyWeights(14);
  DaemonOptions daemon_options = SmallDaemonOptions(64);
  daemon_options.lease_timeout = absl::Milliseconds(400);
  absl::StatusOr<EngineStack> stack = StartStack(daemon_options, weights, {});
  ASSERT_TRUE(stack.ok()) << stack.status();
  std::mt19937_64 rng(19);
  GenerationRequest request;
  request.prompt = RandomTokens(rng, 37);
  request.max_new_tokens = 300;
  request.return_logits = true;
  auto sink = std::make_shared<CollectingSink>();
  const absl::Time start = absl::Now();
  ASSERT_TRUE(stack->engine->Submit(request, sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_TRUE(sink->status().ok()) << sink->status();
  EXPECT_EQ(Compare(*sink, Reference(weights, request), "long decode"), "");
  if (absl::Now() - start < absl::Milliseconds(400)) {
    GTEST_LOG_(INFO) << "the decode took less than one lease timeout: renewals not needed";
  }
  const DaemonStats stats = stack->Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
}

TEST(EngineTest, AGenerationThatOutgrowsThePoolEndsWithResourceExhausted) {
  const model::WeightSource weights = TinyWeights(12);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(8), weights, {});
  ASSERT_TRUE(stack.ok()) << stack.status();
  GenerationRequest request;
  request.prompt = ::asymcache::testing::Tokens(100, 3);
  request.max_new_tokens = 200;  // 300 tokens would need 19 blocks; the pool has 8
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE(stack->engine->Submit(request, sink).ok());
  ASSERT_TRUE(sink->Wait());
  EXPECT_EQ(sink->status().code(), absl::StatusCode::kResourceExhausted) << sink->status();
  EXPECT_THAT(std::string(sink->status().message()), ::testing::HasSubstr("whole pool"));
  // Positions up to the pool's 128 tokens were computed; the token sampled
  // from the last of them (position 128) could not be fed.
  EXPECT_EQ(sink->tokens().size(), 128u + 1u - 100u);
  const DaemonStats stats = stack->Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
}

TEST(EngineTest, BadRequestsAreRefusedWithTheField) {
  const model::WeightSource weights = TinyWeights(2);
  absl::StatusOr<EngineStack> stack = StartStack(SmallDaemonOptions(16), weights, {});
  ASSERT_TRUE(stack.ok()) << stack.status();
  auto refused = [&](GenerationRequest r) {
    return stack->engine->Submit(std::move(r), std::make_shared<CollectingSink>()).status();
  };
  GenerationRequest ok;
  ok.prompt = {1, 2, 3};
  GenerationRequest r = ok;
  r.prompt.clear();
  EXPECT_EQ(refused(r).code(), absl::StatusCode::kInvalidArgument);
  r = ok;
  r.prompt[1] = 1024;
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("prompt_tokens[1]"));
  r = ok;
  r.max_new_tokens = 0;
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("max_new_tokens"));
  r = ok;
  r.sampling.top_p = 1.5f;
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("top_p"));
  r = ok;
  r.kv_source_tokens = 2;
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("kv_source_tokens"));
  r = ok;
  r.stop_tokens = {-1};
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("stop_tokens[0]"));
  r = ok;
  r.stop_tokens.assign(kMaxStopTokens + 1, 1);
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("stop_tokens: 1025 tokens"));
  r = ok;
  r.salt.assign(kMaxRequestStringBytes + 1, 's');
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("salt: 1025 bytes"));
  r = ok;
  r.session_id.assign(kMaxRequestStringBytes + 1, 's');
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("session_id: 1025 bytes"));
  r = ok;
  r.max_new_tokens = 1 << 30;
  EXPECT_THAT(std::string(refused(r).message()), ::testing::HasSubstr("context limit"));
  r = ok;
  r.prompt.assign(16 * 16, 7);  // 256 tokens + the first generated = 17 blocks > 16
  const absl::Status too_big = refused(r);
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(too_big.message()), ::testing::HasSubstr("whole pool has 16"));
  EXPECT_EQ(stack->Stats().steps, 0);  // nothing reached the daemon
}

}  // namespace
}  // namespace asymcache::worker::testing
