// Prefill -> decode disaggregation through the engine: a prefill-role engine
// on daemon A computes the prompt and its first token and seals every block;
// a decode engine on daemon B imports the prompt's blocks from A over UCX
// (kv_source) and goes on. The tokens equal the no-cache reference, and B
// computes only the positions after the prompt. When the import cannot
// happen (an unreachable source), B rebuilds and the tokens are still equal.
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/llama_config.h"
#include "tests/kernels/msa_test_util.h"
#include "tests/services/worker/engine_harness.h"

namespace asymcache::worker::testing {
namespace {

class EngineDisaggregationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const uint64_t seed = msa::testing::FreshSeed();
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    rng_.seed(seed);
    absl::StatusOr<model::LlamaConfig> config = model::LlamaConfig::Named("tiny");
    ASSERT_TRUE(config.ok());
    absl::StatusOr<model::WeightSource> weights = model::WeightSource::Random(*config, seed);
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::make_unique<model::WeightSource>(*std::move(weights));
    EngineOptions prefill_options;
    prefill_options.role = WorkerRole::kPrefill;
    absl::StatusOr<EngineStack> prefill = StartStack(SmallDaemonOptions(64), *weights_, prefill_options);
    ASSERT_TRUE(prefill.ok()) << prefill.status();
    prefill_ = std::make_unique<EngineStack>(*std::move(prefill));
    EngineOptions decode_options;
    decode_options.role = WorkerRole::kDecode;
    absl::StatusOr<EngineStack> decode = StartStack(SmallDaemonOptions(64), *weights_, decode_options);
    ASSERT_TRUE(decode.ok()) << decode.status();
    decode_ = std::make_unique<EngineStack>(*std::move(decode));
  }

  // Runs `request` split across the two engines; returns every token.
  std::vector<int32_t> RunSplit(GenerationRequest request, const std::string& kv_source,
                                RequestStats* decode_stats) {
    GenerationRequest first = request;
    first.max_new_tokens = 1;
    auto prefill_sink = std::make_shared<CollectingSink>();
    EXPECT_TRUE(prefill_->engine->Submit(first, prefill_sink).ok());
    EXPECT_TRUE(prefill_sink->Wait());
    EXPECT_TRUE(prefill_sink->status().ok()) << prefill_sink->status();
    std::vector<int32_t> tokens = prefill_sink->tokens();
    EXPECT_EQ(tokens.size(), 1u);
    if (tokens.size() != 1) return tokens;
    GenerationRequest rest = request;
    rest.kv_source = kv_source;
    rest.kv_source_tokens = static_cast<int32_t>(request.prompt.size());
    rest.prompt.push_back(tokens[0]);
    rest.max_new_tokens = request.max_new_tokens - 1;
    auto decode_sink = std::make_shared<CollectingSink>();
    EXPECT_TRUE(decode_->engine->Submit(rest, decode_sink).ok());
    EXPECT_TRUE(decode_sink->Wait());
    EXPECT_TRUE(decode_sink->status().ok()) << decode_sink->status();
    for (int32_t t : decode_sink->tokens()) tokens.push_back(t);
    *decode_stats = decode_sink->stats();
    return tokens;
  }

  std::vector<int32_t> RandomPrompt(int n) {
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = static_cast<int32_t>(rng_() % 1024);
    return out;
  }

  std::mt19937_64 rng_;
  std::unique_ptr<model::WeightSource> weights_;
  std::unique_ptr<EngineStack> prefill_;
  std::unique_ptr<EngineStack> decode_;
};

TEST_F(EngineDisaggregationTest, DecodeImportsThePromptAndMatchesTheReference) {
  for (int n : {45, 64, 100}) {  // partial, block-aligned and partial last pages
    GenerationRequest request;
    request.prompt = RandomPrompt(n);
    request.max_new_tokens = 12;
    if (n == 100) request.sampling = {0.8f, 0.9f, 1234};
    RequestStats stats;
    const std::vector<int32_t> tokens = RunSplit(request, prefill_->address(), &stats);
    EXPECT_EQ(tokens, Reference(*weights_, request).tokens) << "prompt of " << n;
    EXPECT_EQ(stats.imported_blocks, (n + 15) / 16) << "prompt of " << n;
    // Only the first generated token's position is computed on the decode side.
    EXPECT_EQ(stats.computed_prompt_tokens, 1) << "prompt of " << n;
  }
  const DaemonStats prefill_stats = prefill_->Stats();
  EXPECT_EQ(prefill_stats.active_exports, 0);
  EXPECT_EQ(prefill_stats.active_leases, 0);
  const DaemonStats decode_stats = decode_->Stats();
  EXPECT_EQ(decode_stats.active_leases, 0);
  EXPECT_EQ(decode_stats.writing_blocks, 0);
  EXPECT_EQ(decode_stats.in_transfer_blocks, 0);
}

TEST_F(EngineDisaggregationTest, AnUnreachableSourceFallsBackToRebuilding) {
  GenerationRequest request;
  request.prompt = RandomPrompt(70);
  request.max_new_tokens = 6;
  RequestStats stats;
  // A port nobody listens on (the prefill daemon's port + a large offset is
  // not guaranteed free; use the reserved discard port on loopback).
  const std::vector<int32_t> tokens = RunSplit(request, "127.0.0.1:9", &stats);
  EXPECT_EQ(tokens, Reference(*weights_, request).tokens);
  EXPECT_EQ(stats.imported_blocks, 0);
  EXPECT_EQ(stats.computed_prompt_tokens, 71);  // everything rebuilt, plus the first token
}

}  // namespace
}  // namespace asymcache::worker::testing
