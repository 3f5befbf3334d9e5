// Tests of the CPU model backend (model/model_backend.h CreateCpuBackend)
// against the dense reference (model/dense_reference.h): random tiny weights,
// a NaN-poisoned host pool with pages at random block ids, and steps built the
// way the engine builds them (per-sequence page lists truncated at the largest
// query position).
//
//   - whole-prompt prefill, then decode steps (greedy and seeded sampling);
//   - the same prompt in chunks over several steps (not block-aligned);
//   - holes: a second sequence shares the first's pages except some middle
//     pages, which it recomputes together with a new tail;
//   - batch invariance: a sequence alone vs batched with three others gives
//     bitwise-identical logits and pool rows (and another thread count);
//   - malformed batches: INVALID_ARGUMENT and the pool unchanged;
//   - CopyPageRows and creation errors.
// Logits match the dense reference within 1e-5 relative (max |a - b| over the
// vocabulary divided by max |b|); sampled tokens are equal.
//
// Seeds are fresh each run (ASYMCACHE_TEST_SEED replays one) and printed in
// every failure message.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/msa.h"
#include "model/dense_reference.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/weight_source.h"
#include "tests/kernels/msa_test_util.h"
#include "tests/model/step_arrays.h"

namespace asymcache::model {
namespace {

constexpr double kLogitTolerance = 1e-5;
constexpr int64_t kNumBlocks = 160;

// "tiny" as named, or with Llama-3 rope scaling (a short original context, so
// that positions of a few hundred use all three frequency bands) and a tied LM
// head.
LlamaConfig TestConfig(bool llama3_variant) {
  absl::StatusOr<LlamaConfig> config = LlamaConfig::Named("tiny");
  EXPECT_TRUE(config.ok()) << config.status();
  if (llama3_variant) {
    config->rope_scaling.enabled = true;
    config->rope_scaling.factor = 4.0;
    config->rope_scaling.low_freq_factor = 1.0;
    config->rope_scaling.high_freq_factor = 4.0;
    config->rope_scaling.original_max_position_embeddings = 256;
    config->tie_word_embeddings = true;
  }
  EXPECT_TRUE(config->Validate().ok());
  return *config;
}

double MaxRelativeError(absl::Span<const float> actual, absl::Span<const float> expected) {
  double max_diff = 0.0;
  double max_ref = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(actual[i]) - expected[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(expected[i])));
    if (std::isnan(actual[i])) return std::numeric_limits<double>::infinity();
  }
  return max_diff / std::max(max_ref, 1e-30);
}

// A host fp32 pool [layers][blocks][2][B][Hkv][D], NaN-filled so that reading
// a row nobody wrote poisons the result.
struct HostPool {
  HostPool(const LlamaConfig& config, int64_t blocks)
      : page_elems(config.attention_shape().PageElements()),
        num_blocks(blocks),
        data(static_cast<size_t>(config.num_layers * blocks * page_elems),
             std::numeric_limits<float>::quiet_NaN()) {}
  KvPoolView view() {
    return KvPoolView{data.data(), num_blocks,
                      num_blocks * page_elems * static_cast<int64_t>(sizeof(float))};
  }
  // Page `page` of layer `layer` ([2][B][Hkv][D]).
  std::vector<float> Page(int32_t layer, int32_t page) const {
    const float* begin = data.data() + (layer * num_blocks + page) * page_elems;
    return std::vector<float>(begin, begin + page_elems);
  }
  bool BitwiseEqual(const HostPool& other) const {
    return data.size() == other.data.size() &&
           std::memcmp(data.data(), other.data.data(), sizeof(float) * data.size()) == 0;
  }

  int64_t page_elems;
  int64_t num_blocks;
  std::vector<float> data;
};

// Block ids handed out in a random order.
class PageAllocator {
 public:
  PageAllocator(int64_t num_blocks, std::mt19937_64& rng) : ids_(num_blocks) {
    std::iota(ids_.begin(), ids_.end(), 0);
    std::shuffle(ids_.begin(), ids_.end(), rng);
  }
  int32_t Take() {
    EXPECT_LT(next_, ids_.size()) << "test pool too small";
    return ids_[next_++];
  }

 private:
  std::vector<int32_t> ids_;
  size_t next_ = 0;
};

// A sequence's tokens (by position) and the page of each block of positions.
struct Sequence {
  std::vector<int32_t> tokens;
  std::vector<int32_t> pages;  // pages[b] holds positions [b * B, (b + 1) * B)

  void EnsurePages(int32_t last_position, int32_t block_tokens, PageAllocator& allocator) {
    while (static_cast<int64_t>(pages.size()) * block_tokens <= last_position) {
      pages.push_back(allocator.Take());
    }
  }
};

// One sequence's share of a step.
struct Part {
  Part(const Sequence* sequence_in, std::vector<int32_t> positions_in, bool sample_in = true,
       SamplingParams sampling_in = {})
      : sequence(sequence_in),
        positions(std::move(positions_in)),
        sample(sample_in),
        sampling(sampling_in) {}

  const Sequence* sequence = nullptr;
  std::vector<int32_t> positions;  // query positions, increasing
  bool sample = true;              // sample the token after the last query
  SamplingParams sampling;
};

using Step = StepArrays;

Step BuildStep(const std::vector<Part>& parts, int32_t block_tokens) {
  Step step;
  for (const Part& part : parts) {
    step.Append(part.sequence->tokens, part.sequence->pages, part.positions, block_tokens,
                part.sample ? SampleRows::kLast : SampleRows::kNone, part.sampling);
  }
  return step;
}

absl::Span<const float> LogitsOf(const ForwardResult& result, size_t sample, int64_t vocab) {
  return absl::MakeConstSpan(result.logits).subspan(sample * vocab, vocab);
}

class CpuBackendTest : public ::testing::TestWithParam<bool> {
 protected:
  CpuBackendTest()
      : seed_(msa::testing::FreshSeed()), rng_(seed_), config_(TestConfig(GetParam())) {}

  // The weights, and for most tests a NaN pool, a backend over it and page
  // ids in a random order (the tests that need other pools make their own).
  void SetUp() override {
    absl::StatusOr<WeightSource> weights = WeightSource::Random(config_, rng_());
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::make_unique<WeightSource>(std::move(*weights));
    pool_ = std::make_unique<HostPool>(config_, kNumBlocks);
    backend_ = MakeBackend(*pool_);
    ASSERT_NE(backend_, nullptr);
    allocator_ = std::make_unique<PageAllocator>(kNumBlocks, rng_);
  }

  std::unique_ptr<ModelBackend> MakeBackend(HostPool& pool, int num_threads = 0) {
    CpuBackendOptions options;
    options.num_threads = num_threads;
    absl::StatusOr<std::unique_ptr<ModelBackend>> backend =
        CreateCpuBackend(*weights_, pool.view(), options);
    EXPECT_TRUE(backend.ok()) << backend.status();
    return backend.ok() ? std::move(*backend) : nullptr;
  }

  std::vector<int32_t> RandomTokens(int32_t count) {
    return model::RandomTokens(rng_, config_.vocab_size, count);
  }

  int32_t UniformInt(int32_t low, int32_t high) {
    return std::uniform_int_distribution<int32_t>(low, high)(rng_);
  }

  DenseGeneration Dense(absl::Span<const int32_t> prompt, int32_t new_tokens,
                        SamplingParams sampling = {}) {
    DenseGenerateOptions options;
    options.max_new_tokens = new_tokens;
    options.sampling = sampling;
    absl::StatusOr<DenseGeneration> dense = GenerateDense(*weights_, prompt, options);
    EXPECT_TRUE(dense.ok()) << dense.status();
    return dense.ok() ? *dense : DenseGeneration{};
  }

  ForwardResult Run(ModelBackend& backend, const Step& step) {
    ForwardResult result;
    const absl::Status status = backend.Forward(step.batch(), &result);
    EXPECT_TRUE(status.ok()) << status << " seed " << seed_;
    return result;
  }

  int32_t B() const { return config_.block_tokens; }
  int64_t V() const { return config_.vocab_size; }

  uint64_t seed_;
  std::mt19937_64 rng_;
  LlamaConfig config_;
  std::unique_ptr<WeightSource> weights_;
  std::unique_ptr<HostPool> pool_;
  std::unique_ptr<ModelBackend> backend_;
  std::unique_ptr<PageAllocator> allocator_;
};

TEST_P(CpuBackendTest, PrefillThenDecodeMatchesDense) {
  for (bool sampled : {false, true}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed_ << " sampled " << sampled);
    HostPool pool(config_, kNumBlocks);
    std::unique_ptr<ModelBackend> backend = MakeBackend(pool);
    ASSERT_NE(backend, nullptr);
    PageAllocator allocator(kNumBlocks, rng_);
    const int32_t prompt_len = UniformInt(120, 260);
    constexpr int32_t kNewTokens = 6;
    SamplingParams sampling;
    if (sampled) {
      sampling.temperature = 0.9f;
      sampling.top_p = 0.9f;
      sampling.seed = rng_();
    }
    Sequence seq;
    seq.tokens = RandomTokens(prompt_len);
    const DenseGeneration dense = Dense(seq.tokens, kNewTokens, sampling);
    ASSERT_EQ(dense.tokens.size(), static_cast<size_t>(kNewTokens));

    seq.EnsurePages(prompt_len - 1, B(), allocator);
    Step step = BuildStep({Part{&seq, Range(0, prompt_len), true, sampling}}, B());
    ForwardResult result = Run(*backend, step);
    ASSERT_EQ(result.tokens.size(), 1u);
    ASSERT_EQ(result.logits.size(), static_cast<size_t>(V()));
    EXPECT_LE(MaxRelativeError(result.logits, dense.logits[0]), kLogitTolerance);
    EXPECT_EQ(result.tokens[0], dense.tokens[0]);

    for (int32_t i = 1; i < kNewTokens; ++i) {
      const int32_t position = static_cast<int32_t>(seq.tokens.size());
      seq.tokens.push_back(result.tokens[0]);
      seq.EnsurePages(position, B(), allocator);
      step = BuildStep({Part{&seq, {position}, true, sampling}}, B());
      result = Run(*backend, step);
      ASSERT_EQ(result.tokens.size(), 1u);
      EXPECT_LE(MaxRelativeError(result.logits, dense.logits[i]), kLogitTolerance)
          << "decode step " << i;
      EXPECT_EQ(result.tokens[0], dense.tokens[i]) << "decode step " << i;
    }
  }
}

// A fully cached context's last token is run again only for its logits:
// slot page -1 writes nothing, and the logits equal those of the step that
// wrote it.
TEST_P(CpuBackendTest, NoWriteSlotRerunsTheLastTokenForItsLogits) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  Sequence seq;
  seq.tokens = RandomTokens(UniformInt(20, 90));
  const int32_t n = static_cast<int32_t>(seq.tokens.size());
  seq.EnsurePages(n - 1, B(), *allocator_);
  const ForwardResult first = Run(*backend_, BuildStep({Part{&seq, Range(0, n)}}, B()));
  const std::vector<float> before = pool_->data;
  Step again = BuildStep({Part{&seq, {n - 1}}}, B());
  again.slot_page_ids[0] = -1;
  again.slot_offsets[0] = 0;
  const ForwardResult rerun = Run(*backend_, again);
  ASSERT_EQ(rerun.tokens.size(), 1u);
  EXPECT_EQ(rerun.tokens[0], first.tokens[0]);
  EXPECT_LE(MaxRelativeError(rerun.logits, first.logits), kLogitTolerance);
  EXPECT_EQ(std::memcmp(before.data(), pool_->data.data(), sizeof(float) * before.size()), 0)
      << "a no-write slot changed the pool";
  // Below -1 is still refused.
  again.slot_page_ids[0] = -2;
  ForwardResult refused;
  EXPECT_EQ(backend_->Forward(again.batch(), &refused).code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(CpuBackendTest, ChunkedPrefillMatchesDense) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  const int32_t prompt_len = UniformInt(150, 260);
  Sequence seq;
  seq.tokens = RandomTokens(prompt_len);
  seq.EnsurePages(prompt_len - 1, B(), *allocator_);

  // Random chunk ends (not block-aligned: a page is finished by a later step).
  std::vector<int32_t> ends;
  for (int32_t end = 0; end < prompt_len;) {
    end = std::min(prompt_len, end + UniformInt(1, 70));
    ends.push_back(end);
  }
  const size_t checked_chunk = ends.size() / 2;  // also compared with a dense run of its prefix
  std::vector<float> checked_logits;
  ForwardResult result;
  int32_t begin = 0;
  for (size_t c = 0; c < ends.size(); ++c) {
    const Step step = BuildStep({Part{&seq, Range(begin, ends[c])}}, B());
    result = Run(*backend_, step);
    ASSERT_EQ(result.logits.size(), static_cast<size_t>(V())) << "chunk " << c;
    if (c == checked_chunk) checked_logits = result.logits;
    begin = ends[c];
  }
  const DenseGeneration dense = Dense(seq.tokens, 1);
  EXPECT_LE(MaxRelativeError(result.logits, dense.logits[0]), kLogitTolerance);
  EXPECT_EQ(result.tokens[0], dense.tokens[0]);
  const std::vector<int32_t> prefix(seq.tokens.begin(), seq.tokens.begin() + ends[checked_chunk]);
  const DenseGeneration dense_prefix = Dense(prefix, 1);
  EXPECT_LE(MaxRelativeError(checked_logits, dense_prefix.logits[0]), kLogitTolerance)
      << "chunk " << checked_chunk << " ending at " << ends[checked_chunk];
}

TEST_P(CpuBackendTest, RecomputedHolesMatchDense) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);

  // Sequence A: a prompt of whole blocks, prefilled in one step.
  const int32_t full_blocks = UniformInt(8, 14);
  Sequence a;
  a.tokens = RandomTokens(full_blocks * B());
  a.EnsurePages(full_blocks * B() - 1, B(), *allocator_);
  Run(*backend_, BuildStep({Part{&a, Range(0, full_blocks * B())}}, B()));

  // Sequence B: A's tokens plus a tail; shares A's pages except the holes
  // [hole_begin, hole_end), which get fresh (NaN) pages and are recomputed in
  // the same step as the tail.
  const int32_t hole_begin = UniformInt(1, full_blocks - 3);
  const int32_t hole_end = UniformInt(hole_begin + 1, full_blocks - 1);
  const int32_t tail = UniformInt(1, 40);
  Sequence b;
  b.tokens = a.tokens;
  const std::vector<int32_t> extra = RandomTokens(tail);
  b.tokens.insert(b.tokens.end(), extra.begin(), extra.end());
  b.pages = a.pages;
  for (int32_t blk = hole_begin; blk < hole_end; ++blk) b.pages[blk] = allocator_->Take();
  b.EnsurePages(static_cast<int32_t>(b.tokens.size()) - 1, B(), *allocator_);
  std::vector<int32_t> queries = Range(hole_begin * B(), hole_end * B());
  const std::vector<int32_t> tail_positions =
      Range(full_blocks * B(), static_cast<int32_t>(b.tokens.size()));
  queries.insert(queries.end(), tail_positions.begin(), tail_positions.end());

  // Sample the last hole row and the last tail row (two parts of one sequence
  // would be two sequences; sample via explicit rows instead).
  Step step = BuildStep({Part{&b, queries}}, B());
  const int32_t last_hole_row = (hole_end - hole_begin) * B() - 1;
  step.sample_rows.insert(step.sample_rows.begin(), last_hole_row);
  step.sampling.insert(step.sampling.begin(), SamplingParams{});
  const ForwardResult result = Run(*backend_, step);
  ASSERT_EQ(result.tokens.size(), 2u);

  const DenseGeneration dense = Dense(b.tokens, 1);
  EXPECT_LE(MaxRelativeError(LogitsOf(result, 1, V()), dense.logits[0]), kLogitTolerance);
  EXPECT_EQ(result.tokens[1], dense.tokens[0]);
  const std::vector<int32_t> hole_prefix(b.tokens.begin(), b.tokens.begin() + hole_end * B());
  const DenseGeneration dense_hole = Dense(hole_prefix, 1);
  EXPECT_LE(MaxRelativeError(LogitsOf(result, 0, V()), dense_hole.logits[0]), kLogitTolerance);
  EXPECT_EQ(result.tokens[0], dense_hole.tokens[0]);

  // The rebuilt pages hold A's K/V: bitwise in layer 0 (a function of token
  // and position only), to rounding in later layers.
  for (int32_t blk = hole_begin; blk < hole_end; ++blk) {
    EXPECT_EQ(std::memcmp(pool_->Page(0, a.pages[blk]).data(), pool_->Page(0, b.pages[blk]).data(),
                          sizeof(float) * pool_->page_elems),
              0)
        << "block " << blk;
    for (int32_t layer = 1; layer < config_.num_layers; ++layer) {
      EXPECT_LE(
          MaxRelativeError(pool_->Page(layer, b.pages[blk]), pool_->Page(layer, a.pages[blk])),
          kLogitTolerance)
          << "block " << blk << " layer " << layer;
    }
  }
}

TEST_P(CpuBackendTest, BatchedSequenceIsBitwiseIdenticalToAlone) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  // Two pools with identical page assignments: one runs the subject alone
  // (one thread), the other batched with three other sequences (default
  // threads).
  HostPool alone_pool(config_, kNumBlocks);
  HostPool batched_pool(config_, kNumBlocks);
  std::unique_ptr<ModelBackend> alone = MakeBackend(alone_pool, 1);
  std::unique_ptr<ModelBackend> batched = MakeBackend(batched_pool, 0);
  ASSERT_NE(alone, nullptr);
  ASSERT_NE(batched, nullptr);
  PageAllocator allocator(kNumBlocks, rng_);

  Sequence subject;
  subject.tokens = RandomTokens(UniformInt(60, 140));
  std::vector<Sequence> others(3);
  for (Sequence& other : others) other.tokens = RandomTokens(UniformInt(40, 120));
  subject.EnsurePages(static_cast<int32_t>(subject.tokens.size()) - 1, B(), allocator);
  for (Sequence& other : others) {
    other.EnsurePages(static_cast<int32_t>(other.tokens.size()) - 1, B(), allocator);
  }

  // Step 1: the subject's prompt in one chunk minus its last token; the others
  // prefill theirs in chunks of their own.
  const int32_t subject_len = static_cast<int32_t>(subject.tokens.size());
  SamplingParams sampling;
  sampling.temperature = 0.7f;
  sampling.seed = rng_();
  auto subject_part = [&](std::vector<int32_t> positions) {
    return Part{&subject, std::move(positions), true, sampling};
  };
  auto other_part = [&](int i, std::vector<int32_t> positions) {
    return Part{&others[i], std::move(positions), i != 1, SamplingParams{}};
  };
  const Step alone1 = BuildStep({subject_part(Range(0, subject_len - 1))}, B());
  const Step batched1 = BuildStep(
      {other_part(0, Range(0, 17)), other_part(1, Range(0, 9)),
       subject_part(Range(0, subject_len - 1)), other_part(2, Range(0, 33))},
      B());
  // Step 2: the subject's last prompt token as a decode; the others continue.
  const Step alone2 = BuildStep({subject_part({subject_len - 1})}, B());
  const Step batched2 = BuildStep(
      {subject_part({subject_len - 1}), other_part(0, Range(17, 20)),
       other_part(2, Range(33, static_cast<int32_t>(others[2].tokens.size())))},
      B());

  const ForwardResult a1 = Run(*alone, alone1);
  const ForwardResult b1 = Run(*batched, batched1);
  const ForwardResult a2 = Run(*alone, alone2);
  const ForwardResult b2 = Run(*batched, batched2);
  ASSERT_EQ(a1.tokens.size(), 1u);
  ASSERT_EQ(b1.tokens.size(), 3u);  // others 0 and 2 and the subject (row 2 of the sample list)
  ASSERT_EQ(b2.tokens.size(), 3u);
  EXPECT_EQ(a1.tokens[0], b1.tokens[1]);
  EXPECT_EQ(std::memcmp(a1.logits.data(), LogitsOf(b1, 1, V()).data(), sizeof(float) * V()), 0);
  EXPECT_EQ(a2.tokens[0], b2.tokens[0]);
  EXPECT_EQ(std::memcmp(a2.logits.data(), LogitsOf(b2, 0, V()).data(), sizeof(float) * V()), 0);
  for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
    for (int32_t page : subject.pages) {
      EXPECT_EQ(std::memcmp(alone_pool.Page(layer, page).data(),
                            batched_pool.Page(layer, page).data(),
                            sizeof(float) * alone_pool.page_elems),
                0)
          << "layer " << layer << " page " << page;
    }
  }
  // And the subject's logits are right, not only consistent.
  const DenseGeneration dense = Dense(subject.tokens, 1, sampling);
  EXPECT_LE(MaxRelativeError(a2.logits, dense.logits[0]), kLogitTolerance);
  EXPECT_EQ(a2.tokens[0], dense.tokens[0]);
}

TEST_P(CpuBackendTest, MalformedBatchesAreRejectedWithoutTouchingThePool) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  Sequence first;
  first.tokens = RandomTokens(40);
  first.EnsurePages(39, B(), *allocator_);
  Sequence second;
  second.tokens = RandomTokens(30);
  second.EnsurePages(29, B(), *allocator_);
  Run(*backend_, BuildStep({Part{&first, Range(0, 20)}}, B()));
  const Step good = BuildStep({Part{&first, Range(20, 40)}, Part{&second, Range(0, 30)}}, B());
  const std::vector<float> before = pool_->data;

  struct Case {
    const char* what;
    void (*mutate)(Step&, const LlamaConfig&);
  };
  const Case cases[] = {
      {"token id too large", [](Step& s, const LlamaConfig& c) {
         s.token_ids[3] = static_cast<int32_t>(c.vocab_size);
       }},
      {"negative token id", [](Step& s, const LlamaConfig&) { s.token_ids[0] = -1; }},
      {"token_ids too short", [](Step& s, const LlamaConfig&) { s.token_ids.pop_back(); }},
      {"slot page outside the pool", [](Step& s, const LlamaConfig&) {
         s.slot_page_ids.back() = static_cast<int32_t>(kNumBlocks);
       }},
      {"slot offset outside the page", [](Step& s, const LlamaConfig& c) {
         s.slot_offsets[5] = c.block_tokens;
       }},
      {"slot of another page than listed", [](Step& s, const LlamaConfig&) {
         s.slot_page_ids[25] = s.slot_page_ids[0];  // second sequence writes into the first's page
       }},
      {"slot row disagrees with position", [](Step& s, const LlamaConfig& c) {
         s.slot_offsets[1] = (s.slot_offsets[1] + 1) % c.block_tokens;
       }},
      {"slot_offsets too long", [](Step& s, const LlamaConfig&) { s.slot_offsets.push_back(0); }},
      {"query outside its pages", [](Step& s, const LlamaConfig&) {
         s.tables.kv_page_len[s.tables.kv_indptr[1] - 1] -= 1;  // first sequence's last page
       }},
      {"q_pos not increasing", [](Step& s, const LlamaConfig&) {
         std::swap(s.tables.q_pos[2], s.tables.q_pos[3]);
       }},
      {"sample row outside the batch", [](Step& s, const LlamaConfig&) {
         s.sample_rows[0] = static_cast<int32_t>(s.token_ids.size());
       }},
      {"sample row twice", [](Step& s, const LlamaConfig&) { s.sample_rows[1] = s.sample_rows[0]; }},
      {"sampling size mismatch", [](Step& s, const LlamaConfig&) { s.sampling.pop_back(); }},
      {"top_p zero", [](Step& s, const LlamaConfig&) { s.sampling[0].top_p = 0.0f; }},
      {"top_p above one", [](Step& s, const LlamaConfig&) { s.sampling[1].top_p = 1.5f; }},
      {"temperature NaN", [](Step& s, const LlamaConfig&) {
         s.sampling[0].temperature = std::numeric_limits<float>::quiet_NaN();
       }},
  };
  for (const Case& c : cases) {
    Step bad = good;
    c.mutate(bad, config_);
    ForwardResult result;
    const absl::Status status = backend_->Forward(bad.batch(), &result);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << status;
    EXPECT_EQ(std::memcmp(pool_->data.data(), before.data(), sizeof(float) * before.size()), 0)
        << c.what << " changed the pool";
  }
  EXPECT_EQ(backend_->Forward(good.batch(), nullptr).code(), absl::StatusCode::kInvalidArgument);
  // The good batch still runs after all that.
  const ForwardResult result = Run(*backend_, good);
  EXPECT_EQ(result.tokens.size(), 2u);
}

TEST_P(CpuBackendTest, CopyPageRowsCopiesKAndVOfEveryLayer) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  Sequence seq;
  seq.tokens = RandomTokens(B() + 5);
  seq.EnsurePages(B() + 4, B(), *allocator_);
  Run(*backend_, BuildStep({Part{&seq, Range(0, B() + 5)}}, B()));
  const int32_t src = seq.pages[1];
  const int32_t dst = allocator_->Take();
  const int32_t rows = 5;
  ASSERT_TRUE(backend_->CopyPageRows(src, dst, rows).ok());
  const int64_t row_elems = config_.kv_dim();
  const int64_t half = int64_t{B()} * row_elems;
  for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
    const std::vector<float> from = pool_->Page(layer, src);
    const std::vector<float> to = pool_->Page(layer, dst);
    for (int64_t kv = 0; kv < 2; ++kv) {
      EXPECT_EQ(std::memcmp(from.data() + kv * half, to.data() + kv * half,
                            sizeof(float) * rows * row_elems),
                0)
          << "layer " << layer << " kv " << kv;
      // Rows past `rows` stay untouched (NaN).
      EXPECT_TRUE(std::isnan(to[kv * half + rows * row_elems])) << "layer " << layer;
    }
  }
  EXPECT_EQ(backend_->CopyPageRows(src, src, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->CopyPageRows(-1, dst, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->CopyPageRows(src, static_cast<int32_t>(kNumBlocks), 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->CopyPageRows(src, dst, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->CopyPageRows(src, dst, B() + 1).code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuBackendTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "TinyLlama3RopeTied" : "Tiny";
                         });

TEST(CpuBackendCreateTest, RejectsBadOptionsPoolsAndDtypes) {
  LlamaConfig config = TestConfig(false);
  absl::StatusOr<WeightSource> weights = WeightSource::Random(config, 7);
  ASSERT_TRUE(weights.ok()) << weights.status();
  HostPool pool(config, 8);

  CpuBackendOptions bad_options;
  bad_options.num_threads = -1;
  EXPECT_EQ(bad_options.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateCpuBackend(*weights, pool.view(), bad_options).status().code(),
            absl::StatusCode::kInvalidArgument);

  KvPoolView null_pool = pool.view();
  null_pool.base = nullptr;
  EXPECT_EQ(CreateCpuBackend(*weights, null_pool).status().code(),
            absl::StatusCode::kInvalidArgument);
  KvPoolView short_stride = pool.view();
  short_stride.layer_stride_bytes -= 4;
  EXPECT_EQ(CreateCpuBackend(*weights, short_stride).status().code(),
            absl::StatusCode::kInvalidArgument);
  KvPoolView no_blocks = pool.view();
  no_blocks.num_blocks = 0;
  EXPECT_EQ(CreateCpuBackend(*weights, no_blocks).status().code(),
            absl::StatusCode::kInvalidArgument);

  LlamaConfig bf16 = config;
  bf16.dtype = msa::DType::kBFloat16;
  absl::StatusOr<WeightSource> bf16_weights = WeightSource::Random(bf16, 7);
  ASSERT_TRUE(bf16_weights.ok()) << bf16_weights.status();
  EXPECT_EQ(CreateCpuBackend(*bf16_weights, pool.view()).status().code(),
            absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::unique_ptr<ModelBackend>> backend = CreateCpuBackend(*weights, pool.view());
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
  EXPECT_EQ((*backend)->config().name, "tiny");
}

}  // namespace
}  // namespace asymcache::model
