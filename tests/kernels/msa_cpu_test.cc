// Tests of the MSA CPU backend (kernels/msa_cpu.h), the shared validation
// (kernels/msa.h) and the dtype conversions (kernels/dtype.h).
//
// Every attention test draws a fresh random structure and fresh random inputs
// (the seed is printed and is part of every failure message; replay with
// ASYMCACHE_TEST_SEED=<seed>), poisons the outputs with NaN, runs the backend
// and compares against the naive double reference over the gathered context
// (tests/kernels/msa_reference.h).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "kernels/msa.h"
#include "kernels/msa_cpu.h"
#include "tests/kernels/msa_expect.h"
#include "tests/kernels/msa_reference.h"
#include "tests/kernels/msa_test_util.h"

#if defined(__SANITIZE_ADDRESS__)
#define MSA_CPU_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MSA_CPU_TEST_UNDER_ASAN 1
#endif
#endif
#ifndef MSA_CPU_TEST_UNDER_ASAN
#define MSA_CPU_TEST_UNDER_ASAN 0
#endif

namespace asymcache::msa {
namespace {

using ::testing::HasSubstr;
using testing::BuildOptions;
using testing::BuildTestBatch;
using testing::MakeShape;
using testing::PositionRun;
using testing::RandomLayout;
using testing::RandomLayoutOptions;
using testing::SequenceLayout;
using testing::TestBatch;
using testing::ToleranceFor;

constexpr float kInf = std::numeric_limits<float>::infinity();

using testing::SeededTest;

struct MsaOutputs {
  std::vector<uint8_t> out;  // shape.dtype
  std::vector<float> lse;
};

// Runs the backend with NaN-poisoned outputs and expects OK.
MsaOutputs RunPoisoned(const TestBatch& batch, int num_threads = 0) {
  MsaOutputs outputs;
  outputs.out = testing::NaNTensor(batch.shape.dtype, batch.out_elements());
  outputs.lse.assign(static_cast<size_t>(batch.lse_elements()),
                     std::numeric_limits<float>::quiet_NaN());
  CpuRunOptions options;
  options.num_threads = num_threads;
  const absl::Status status =
      RunMsaCpu(batch.shape, batch.view(), batch.q.data(), batch.kv_pool.data(), batch.num_pages,
                outputs.out.data(), outputs.lse.data(), options);
  EXPECT_TRUE(status.ok()) << status;
  return outputs;
}

// Checks outputs (fully written, no NaN) against the double reference: relative
// error norm within the dtype tolerance, LSE within 2e-5 + 2e-6 |lse|, -inf
// exactly where the reference has no visible key.
void ExpectMatchesReference(const TestBatch& batch, const MsaOutputs& outputs,
                            const std::string& note, double tolerance = -1.0) {
  SCOPED_TRACE(note);
  ASSERT_TRUE(ValidateBatch(batch.shape, batch.view(), batch.num_pages).ok());
  std::vector<double> ref_out;
  std::vector<double> ref_lse;
  testing::ReferenceAttention(batch.shape, batch.view(), batch.q.data(), batch.kv_pool.data(),
                              batch.num_pages, &ref_out, &ref_lse);
  const std::vector<double> out =
      testing::ToDoubles(batch.shape.dtype, outputs.out.data(), batch.out_elements());
  ASSERT_EQ(testing::CountNaN(out), 0) << "output not fully written (NaN poison left)";
  if (tolerance < 0) tolerance = ToleranceFor(batch.shape.dtype);
  EXPECT_LE(testing::RelativeErrorNorm(out, ref_out), tolerance)
      << "dtype " << testing::DTypeName(batch.shape.dtype);
  testing::ExpectLseMatchesReference(outputs.lse, ref_lse, 2e-5, 2e-6);
  testing::ExpectRowsWithoutKeysAreZero(out, ref_lse, batch.shape.head_dim);
}

void RunAndCheck(const TestBatch& batch, const std::string& note, int num_threads = 0) {
  const MsaOutputs outputs = RunPoisoned(batch, num_threads);
  ExpectMatchesReference(batch, outputs, note);
}

// ---- structures ----------------------------------------------------------------

class MsaCpuStructureTest : public SeededTest {};

TEST_F(MsaCpuStructureTest, HolesAtFrontMiddleAndTail) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    const AttentionShape shape = MakeShape(8, 2, 128, 16, dtype);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 4; ++i) {
      RandomLayoutOptions options;
      options.context_len = testing::UniformInt(rng_, 100, 400);
      options.num_holes = 3;
      options.hole_at_front = true;
      options.hole_at_tail = (i % 2 == 0);
      options.num_q_runs = 2;
      layouts.push_back(RandomLayout(options, rng_));
    }
    const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
    ASSERT_GT(batch.view().kv_page_pos[0], 0) << "front hole expected";
    RunAndCheck(batch, SeedNote());
  }
}

TEST_F(MsaCpuStructureTest, InterleavedQuerySegments) {
  const AttentionShape shape = MakeShape(8, 2, 64, 16, DType::kFloat32);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 3; ++i) {
    RandomLayoutOptions options;
    options.context_len = 600;
    options.num_holes = 6;
    options.num_q_runs = 10;
    options.max_q_run_len = 12;
    options.queries_have_kv = (i != 1);  // one sequence queries positions missing from the KV
    layouts.push_back(RandomLayout(options, rng_));
  }
  BuildOptions build;
  build.aligned_pages = false;
  const TestBatch batch = BuildTestBatch(shape, layouts, build, rng_);
  RunAndCheck(batch, SeedNote());
}

TEST_F(MsaCpuStructureTest, QueryAtPositionZeroAndQueryWithNoVisibleKey) {
  const AttentionShape shape = MakeShape(4, 4, 64, 16, DType::kFloat32);
  std::vector<SequenceLayout> layouts;
  // Sequence 0: query at 0 sees exactly the key at 0.
  layouts.push_back(SequenceLayout{{PositionRun{0, 40}}, {PositionRun{0, 3}, PositionRun{20, 25}}});
  // Sequence 1: KV starts at 5; queries 0..2 see nothing (0 / -inf), 5..7 see keys.
  layouts.push_back(SequenceLayout{{PositionRun{5, 30}}, {PositionRun{0, 3}, PositionRun{5, 8}}});
  // Sequence 2: no KV at all.
  layouts.push_back(SequenceLayout{{}, {PositionRun{10, 12}}});
  const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
  const MsaOutputs outputs = RunPoisoned(batch);
  ExpectMatchesReference(batch, outputs, SeedNote());
  // Explicit: rows of sequence 1's first three queries and sequence 2 are 0 / -inf.
  for (int32_t token : {8, 9, 10, 14, 15}) {
    for (int32_t head = 0; head < shape.num_q_heads; ++head) {
      EXPECT_EQ(outputs.lse[token * shape.num_q_heads + head], -kInf) << "token " << token;
    }
  }
  EXPECT_TRUE(std::isfinite(outputs.lse[0]));  // query at position 0 sees key 0
}

TEST_F(MsaCpuStructureTest, PartialLastPage) {
  for (int32_t page_size : {7, 16}) {
    const AttentionShape shape = MakeShape(4, 2, 64, page_size, DType::kBFloat16);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      int32_t length = testing::UniformInt(rng_, 20, 200);
      if (length % page_size == 0) ++length;
      // Prefill of the last 9 tokens plus a decode-style last query; last page partial.
      layouts.push_back(
          SequenceLayout{{PositionRun{0, length}}, {PositionRun{length - 9, length}}});
    }
    BuildOptions build;
    build.aligned_pages = false;
    const TestBatch batch = BuildTestBatch(shape, layouts, build, rng_);
    for (int32_t seq = 0; seq < 3; ++seq) {
      const int32_t last_page = batch.tables.kv_indptr[seq + 1] - 1;
      ASSERT_LT(batch.tables.kv_page_len[last_page], page_size);
    }
    RunAndCheck(batch, SeedNote());
  }
}

TEST_F(MsaCpuStructureTest, TwoHundredFiftySixTinySegments) {
  const AttentionShape shape = MakeShape(8, 2, 128, 16, DType::kFloat32);
  SequenceLayout layout;
  int32_t pos = testing::UniformInt(rng_, 0, 3);
  for (int i = 0; i < 256; ++i) {
    const int32_t length = testing::UniformInt(rng_, 1, 4);
    layout.kv_runs.push_back(PositionRun{pos, pos + length});
    if (i % 3 == 0) layout.q_runs.push_back(PositionRun{pos, pos + 1});  // rebuilt token
    pos += length + testing::UniformInt(rng_, 1, 5);                    // hole
  }
  layout.q_runs.push_back(PositionRun{pos, pos + 1});  // trailing query in a hole
  const TestBatch batch = BuildTestBatch(shape, {layout}, BuildOptions{}, rng_);
  ASSERT_GE(batch.tables.kv_page_ids.size(), 256u);
  RunAndCheck(batch, SeedNote());
}

TEST_F(MsaCpuStructureTest, LongContext) {
  const int32_t context = MSA_CPU_TEST_UNDER_ASAN ? 32 * 1024 : 128 * 1024;
  const AttentionShape shape = MakeShape(4, 1, 64, 16, DType::kFloat32);
  RandomLayoutOptions options;
  options.context_len = context;
  options.num_holes = 8;
  options.max_hole_len = 2000;
  options.num_q_runs = 2;
  options.max_q_run_len = 8;
  options.decode_query = true;
  const TestBatch batch =
      BuildTestBatch(shape, {RandomLayout(options, rng_)}, BuildOptions{}, rng_);
  ExpectMatchesReference(batch, RunPoisoned(batch), SeedNote());
}

TEST_F(MsaCpuStructureTest, EmptyBatchAndSequencesWithoutQueries) {
  const AttentionShape shape = MakeShape(4, 2, 64, 16, DType::kFloat32);
  // B = 0, both spellings; null tensors are fine when there is nothing to do.
  EXPECT_TRUE(RunMsaCpu(shape, BatchTables{}, nullptr, nullptr, 0, nullptr, nullptr).ok());
  BatchTablesStorage empty;
  EXPECT_TRUE(RunMsaCpu(shape, empty.view(), nullptr, nullptr, 0, nullptr, nullptr).ok());
  // Sequences without queries (with and without pages) around ones with queries.
  std::vector<SequenceLayout> layouts;
  layouts.push_back(SequenceLayout{{PositionRun{0, 50}}, {}});
  layouts.push_back(SequenceLayout{{PositionRun{0, 70}}, {PositionRun{60, 70}}});
  layouts.push_back(SequenceLayout{{}, {}});
  layouts.push_back(SequenceLayout{{PositionRun{3, 33}}, {PositionRun{32, 33}}});
  layouts.push_back(SequenceLayout{{PositionRun{0, 20}}, {}});
  const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
  RunAndCheck(batch, SeedNote());
  // Only query-less sequences: OK, nothing written.
  const TestBatch no_queries =
      BuildTestBatch(shape, {SequenceLayout{{PositionRun{0, 50}}, {}}}, BuildOptions{}, rng_);
  EXPECT_TRUE(RunMsaCpu(shape, no_queries.view(), nullptr, no_queries.kv_pool.data(),
                        no_queries.num_pages, nullptr, nullptr)
                  .ok());
}

TEST_F(MsaCpuStructureTest, DecodeMixedWithPrefillAndRebuild) {
  const AttentionShape shape = MakeShape(8, 2, 128, 16, DType::kBFloat16);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 6; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng_, 50, 700);
    if (i % 3 == 0) {  // decode: one query at the end
      options.num_holes = 0;
      options.num_q_runs = 0;
      options.decode_query = true;
    } else if (i % 3 == 1) {  // prefill chunk at the tail
      options.num_holes = 0;
      options.num_q_runs = 0;
      layouts.push_back(RandomLayout(options, rng_));
      const int32_t chunk = testing::UniformInt(rng_, 1, 64);
      const int32_t end = options.context_len;
      layouts.back().q_runs = {PositionRun{std::max(0, end - chunk), end}};
      continue;
    } else {  // rebuild of holes plus the next token
      options.num_holes = 3;
      options.num_q_runs = 3;
      options.decode_query = true;
    }
    layouts.push_back(RandomLayout(options, rng_));
  }
  const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
  RunAndCheck(batch, SeedNote());
}

TEST_F(MsaCpuStructureTest, ExplicitScaleAndNullLse) {
  AttentionShape shape = MakeShape(4, 2, 64, 16, DType::kFloat32);
  shape.sm_scale = 0.37f;
  RandomLayoutOptions options;
  options.context_len = 300;
  const TestBatch batch =
      BuildTestBatch(shape, {RandomLayout(options, rng_)}, BuildOptions{}, rng_);
  const MsaOutputs with_lse = RunPoisoned(batch);
  ExpectMatchesReference(batch, with_lse, SeedNote());
  std::vector<uint8_t> out = testing::NaNTensor(shape.dtype, batch.out_elements());
  ASSERT_TRUE(RunMsaCpu(shape, batch.view(), batch.q.data(), batch.kv_pool.data(), batch.num_pages,
                        out.data(), nullptr)
                  .ok());
  EXPECT_EQ(out, with_lse.out);
}

// ---- sweep: page size x group size x head dim x dtype ------------------------------

class MsaCpuSweepTest
    : public SeededTest,
      public ::testing::WithParamInterface<std::tuple<int32_t, int32_t, int32_t, DType>> {};

TEST_P(MsaCpuSweepTest, MatchesReference) {
  const auto [page_size, group, head_dim, dtype] = GetParam();
  const int32_t kv_heads = group == 8 ? 1 : 2;
  const AttentionShape shape = MakeShape(kv_heads * group, kv_heads, head_dim, page_size, dtype);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 2; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng_, 30, 160);
    options.num_holes = testing::UniformInt(rng_, 0, 3);
    options.max_hole_len = 20;
    options.hole_at_front = testing::UniformInt(rng_, 0, 1) == 1;
    options.num_q_runs = testing::UniformInt(rng_, 1, 3);
    options.max_q_run_len = 8;
    options.decode_query = true;
    layouts.push_back(RandomLayout(options, rng_));
  }
  BuildOptions build;
  build.aligned_pages = testing::UniformInt(rng_, 0, 1) == 1;
  const TestBatch batch = BuildTestBatch(shape, layouts, build, rng_);
  RunAndCheck(batch, SeedNote());
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MsaCpuSweepTest,
    ::testing::Combine(::testing::Values(1, 7, 16, 32), ::testing::Values(1, 2, 4, 8),
                       ::testing::Values(64, 128, 256),
                       ::testing::Values(DType::kFloat32, DType::kBFloat16, DType::kFloat16)),
    [](const auto& info) {
      return absl::StrCat("page", std::get<0>(info.param), "_g", std::get<1>(info.param), "_d",
                          std::get<2>(info.param), "_",
                          testing::DTypeName(std::get<3>(info.param)));
    });

// ---- threads ----------------------------------------------------------------------

TEST_F(MsaCpuStructureTest, ThreadCountDoesNotChangeBits) {
  const AttentionShape shape = MakeShape(8, 2, 128, 16, DType::kBFloat16);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 5; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng_, 60, 300);
    options.num_q_runs = 3;
    options.decode_query = true;
    layouts.push_back(RandomLayout(options, rng_));
  }
  const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
  const MsaOutputs single = RunPoisoned(batch, 1);
  ExpectMatchesReference(batch, single, SeedNote());
  for (int threads : {2, 3, 8}) {
    const MsaOutputs multi = RunPoisoned(batch, threads);
    EXPECT_EQ(multi.out, single.out) << threads << " threads";
    EXPECT_EQ(0, std::memcmp(multi.lse.data(), single.lse.data(),
                             sizeof(float) * single.lse.size()))
        << threads << " threads";
  }
}

// ---- merge --------------------------------------------------------------------------

// Keeps the pages of each sequence whose index within the sequence has parity `parity`.
BatchTablesStorage KeepPagesWithParity(const BatchTablesStorage& tables, int parity) {
  BatchTablesStorage half;
  half.q_indptr = tables.q_indptr;
  half.q_pos = tables.q_pos;
  for (size_t seq = 0; seq + 1 < tables.kv_indptr.size(); ++seq) {
    for (int32_t p = tables.kv_indptr[seq]; p < tables.kv_indptr[seq + 1]; ++p) {
      if ((p - tables.kv_indptr[seq]) % 2 != parity) continue;
      half.kv_page_ids.push_back(tables.kv_page_ids[p]);
      half.kv_page_pos.push_back(tables.kv_page_pos[p]);
      half.kv_page_len.push_back(tables.kv_page_len[p]);
    }
    half.kv_indptr.push_back(static_cast<int32_t>(half.kv_page_ids.size()));
  }
  return half;
}

class MsaCpuMergeTest : public SeededTest {};

TEST_F(MsaCpuMergeTest, MergeOfTwoHalvesEqualsWhole) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    const AttentionShape shape = MakeShape(8, 2, 64, 16, dtype);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      RandomLayoutOptions options;
      options.context_len = testing::UniformInt(rng_, 40, 300);
      options.num_q_runs = 3;
      options.decode_query = true;
      layouts.push_back(RandomLayout(options, rng_));
    }
    // Sequence 3: its first page holds only position 0, so the query at 0 sees
    // nothing in the odd half: that merge combines a real state with an empty one.
    layouts.push_back(
        SequenceLayout{{PositionRun{0, 1}, PositionRun{5, 100}},
                       {PositionRun{0, 1}, PositionRun{50, 60}, PositionRun{99, 100}}});
    const TestBatch whole = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
    const MsaOutputs whole_outputs = RunPoisoned(whole);
    ExpectMatchesReference(whole, whole_outputs, SeedNote());

    std::vector<MsaOutputs> halves;
    for (int parity : {0, 1}) {
      TestBatch half = whole;
      half.tables = KeepPagesWithParity(whole.tables, parity);
      halves.push_back(RunPoisoned(half));
    }
    const int64_t rows = whole.lse_elements();
    std::vector<uint8_t> merged = testing::NaNTensor(dtype, whole.out_elements());
    std::vector<float> merged_lse(rows, std::numeric_limits<float>::quiet_NaN());
    const PartialState states[] = {{halves[0].out.data(), halves[0].lse.data()},
                                   {halves[1].out.data(), halves[1].lse.data()}};
    ASSERT_TRUE(
        MergeStatesCpu(dtype, rows, shape.head_dim, states, merged.data(), merged_lse.data())
            .ok());
    ExpectMatchesReference(whole, MsaOutputs{merged, merged_lse}, SeedNote(),
                           dtype == DType::kFloat32 ? 1e-5 : 2e-2);
  }
}

TEST(MsaCpuMergeStatesTest, EmptyStatesMergeToZeroAndMinusInfinity) {
  const int32_t dim = 4;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Row 0: both empty (values are garbage and must not be read into the result).
  // Row 1: first empty, second real. Row 2: both real, equal LSE.
  const std::vector<float> a_values = {nan, nan, nan, nan, nan, nan, nan, nan, 1, 2, 3, 4};
  const std::vector<float> a_lse = {-kInf, -kInf, 1.0f};
  const std::vector<float> b_values = {nan, nan, nan, nan, 5, 6, 7, 8, 3, 4, 5, 6};
  const std::vector<float> b_lse = {-kInf, 2.5f, 1.0f};
  const PartialState states[] = {{a_values.data(), a_lse.data()}, {b_values.data(), b_lse.data()}};
  std::vector<float> out(12, nan);
  std::vector<float> lse(3, nan);
  ASSERT_TRUE(MergeStatesCpu(DType::kFloat32, 3, dim, states, out.data(), lse.data()).ok());
  EXPECT_THAT(std::vector<float>(out.begin(), out.begin() + 4), ::testing::Each(0.0f));
  EXPECT_EQ(lse[0], -kInf);
  EXPECT_THAT(std::vector<float>(out.begin() + 4, out.begin() + 8),
              ::testing::ElementsAre(5, 6, 7, 8));
  EXPECT_FLOAT_EQ(lse[1], 2.5f);
  EXPECT_THAT(std::vector<float>(out.begin() + 8, out.end()), ::testing::ElementsAre(2, 3, 4, 5));
  EXPECT_FLOAT_EQ(lse[2], 2.0f);  // log2(2^1 + 2^1)

  // No states at all: 0 / -inf as well.
  std::fill(out.begin(), out.end(), nan);
  ASSERT_TRUE(MergeStatesCpu(DType::kFloat32, 3, dim, {}, out.data(), lse.data()).ok());
  EXPECT_THAT(out, ::testing::Each(0.0f));
  EXPECT_THAT(lse, ::testing::Each(-kInf));

  // In place into the first state.
  std::vector<float> in_place_values = {1, 1, 1, 1};
  std::vector<float> in_place_lse = {0.0f};
  const std::vector<float> other_values = {3, 3, 3, 3};
  const std::vector<float> other_lse = {0.0f};
  const PartialState pair[] = {{in_place_values.data(), in_place_lse.data()},
                               {other_values.data(), other_lse.data()}};
  ASSERT_TRUE(MergeStatesCpu(DType::kFloat32, 1, dim, pair, in_place_values.data(),
                             in_place_lse.data())
                  .ok());
  EXPECT_THAT(in_place_values, ::testing::Each(2.0f));
  EXPECT_FLOAT_EQ(in_place_lse[0], 1.0f);

  EXPECT_EQ(MergeStatesCpu(DType::kFloat32, 1, 0, pair, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  const PartialState null_state[] = {{nullptr, a_lse.data()}};
  EXPECT_EQ(MergeStatesCpu(DType::kFloat32, 1, dim, null_state, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);

  // Bad dtype, negative row count, null output: INVALID_ARGUMENT, outputs untouched.
  std::fill(out.begin(), out.end(), nan);
  std::fill(lse.begin(), lse.end(), nan);
  absl::Status status =
      MergeStatesCpu(static_cast<DType>(7), 3, dim, states, out.data(), lse.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("dtype"));
  status = MergeStatesCpu(DType::kFloat32, -1, dim, states, out.data(), lse.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("num_rows"));
  status = MergeStatesCpu(DType::kFloat32, 3, dim, states, nullptr, lse.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("out_values is null"));
  EXPECT_EQ(testing::CountNaN(std::vector<double>(out.begin(), out.end())),
            static_cast<int64_t>(out.size()));
  EXPECT_EQ(testing::CountNaN(std::vector<double>(lse.begin(), lse.end())),
            static_cast<int64_t>(lse.size()));
}

// ---- KV append --------------------------------------------------------------------

class MsaCpuAppendTest : public SeededTest {};

TEST_F(MsaCpuAppendTest, RoundTripThroughAttention) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16}) {
    const AttentionShape shape = MakeShape(8, 2, 64, 7, dtype);
    // Layout to fill: the tables and a pool whose covered slots we overwrite by append.
    RandomLayoutOptions options;
    options.context_len = 90;
    options.decode_query = true;
    TestBatch batch = BuildTestBatch(shape, {RandomLayout(options, rng_)}, BuildOptions{}, rng_);
    const int64_t row_elems = int64_t{shape.num_kv_heads} * shape.head_dim;
    const int64_t bytes = DTypeBytes(dtype);
    std::vector<int32_t> slot_pages;
    std::vector<int32_t> slot_offsets;
    for (size_t p = 0; p < batch.tables.kv_page_ids.size(); ++p) {
      for (int32_t i = 0; i < batch.tables.kv_page_len[p]; ++i) {
        slot_pages.push_back(batch.tables.kv_page_ids[p]);
        slot_offsets.push_back(i);
      }
    }
    const int64_t tokens = static_cast<int64_t>(slot_pages.size());
    std::vector<uint8_t> k(tokens * row_elems * bytes);
    std::vector<uint8_t> v(tokens * row_elems * bytes);
    testing::FillNormal(dtype, k.data(), tokens * row_elems, 1.0, rng_);
    testing::FillNormal(dtype, v.data(), tokens * row_elems, 1.0, rng_);
    testing::FillNaN(dtype, batch.kv_pool.data(), batch.num_pages * shape.PageElements());
    ASSERT_TRUE(AppendKvCpu(shape, slot_pages, slot_offsets, k.data(), v.data(),
                            batch.kv_pool.data(), batch.num_pages)
                    .ok());
    // Bitwise round trip of every row.
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t k_elem = (int64_t{slot_pages[t]} * 2 * shape.page_size + slot_offsets[t]) *
                             row_elems;
      const int64_t v_elem = k_elem + int64_t{shape.page_size} * row_elems;
      ASSERT_EQ(0, std::memcmp(batch.kv_pool.data() + k_elem * bytes,
                               k.data() + t * row_elems * bytes, row_elems * bytes))
          << "K of token " << t;
      ASSERT_EQ(0, std::memcmp(batch.kv_pool.data() + v_elem * bytes,
                               v.data() + t * row_elems * bytes, row_elems * bytes))
          << "V of token " << t;
    }
    // Attention over the appended pool (the rest of it is NaN) matches the reference.
    RunAndCheck(batch, SeedNote());

    // Invalid slots: INVALID_ARGUMENT naming the token, and the pool untouched.
    const std::vector<uint8_t> before = batch.kv_pool;
    const std::vector<int32_t> bad_pages = {slot_pages[0], static_cast<int32_t>(batch.num_pages)};
    const std::vector<int32_t> bad_offsets = {0, 0};
    absl::Status status = AppendKvCpu(shape, bad_pages, bad_offsets, k.data(), v.data(),
                                      batch.kv_pool.data(), batch.num_pages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("token 1"));
    const std::vector<int32_t> bad_offset_values = {0, shape.page_size};
    const std::vector<int32_t> good_pages = {slot_pages[0], slot_pages[0]};
    status = AppendKvCpu(shape, good_pages, bad_offset_values, k.data(), v.data(),
                         batch.kv_pool.data(), batch.num_pages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("slot_offsets[1]"));
    status = AppendKvCpu(shape, good_pages, std::vector<int32_t>{0}, k.data(), v.data(),
                         batch.kv_pool.data(), batch.num_pages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    const std::vector<int32_t> zero_offsets = {0, 0};  // valid slots
    // Invalid shape, negative num_pages, negative page id, negative offset.
    AttentionShape bad_shape = shape;
    bad_shape.head_dim = 96;
    status = AppendKvCpu(bad_shape, good_pages, zero_offsets, k.data(), v.data(),
                         batch.kv_pool.data(), batch.num_pages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("head_dim"));
    status = AppendKvCpu(shape, good_pages, zero_offsets, k.data(), v.data(),
                         batch.kv_pool.data(), -1);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("num_pages"));
    status = AppendKvCpu(shape, std::vector<int32_t>{slot_pages[0], -1}, zero_offsets, k.data(),
                         v.data(), batch.kv_pool.data(), batch.num_pages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("slot_page_ids[1]=-1"));
    status = AppendKvCpu(shape, good_pages, std::vector<int32_t>{0, -1}, k.data(), v.data(),
                         batch.kv_pool.data(), batch.num_pages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("slot_offsets[1]=-1"));
    // Null k, v or pool with tokens to write.
    EXPECT_EQ(AppendKvCpu(shape, good_pages, zero_offsets, nullptr, v.data(),
                          batch.kv_pool.data(), batch.num_pages)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(AppendKvCpu(shape, good_pages, zero_offsets, k.data(), nullptr,
                          batch.kv_pool.data(), batch.num_pages)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(AppendKvCpu(shape, good_pages, zero_offsets, k.data(), v.data(), nullptr,
                          batch.num_pages)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(batch.kv_pool, before);
  }
}

// ---- validation ----------------------------------------------------------------------

// A valid two-sequence batch for mutation: page size 4, 10 pool pages.
struct ValidTables {
  BatchTablesStorage tables;
  ValidTables() {
    tables.q_indptr = {0, 2, 5};
    tables.q_pos = {3, 9, 0, 4, 20};
    tables.kv_indptr = {0, 3, 6};
    tables.kv_page_ids = {4, 1, 7, 0, 2, 9};
    tables.kv_page_pos = {0, 4, 8, 0, 8, 16};
    tables.kv_page_len = {4, 4, 2, 4, 3, 4};
  }
};

class MsaCpuValidationTest : public SeededTest {};

TEST_F(MsaCpuValidationTest, EveryBatchFailureModeIsInvalidArgumentNamingTheIndex) {
  AttentionShape shape = MakeShape(4, 2, 64, 4, DType::kFloat32);
  constexpr int64_t kNumPages = 10;
  ASSERT_TRUE(ValidateBatch(shape, ValidTables().tables.view(), kNumPages).ok());

  struct Case {
    std::string name;
    std::function<void(BatchTablesStorage&)> mutate;
    std::string message;  // substring the error must contain
  };
  const std::vector<Case> cases = {
      {"indptr sizes differ", [](BatchTablesStorage& t) { t.kv_indptr = {0, 6}; }, "B+1"},
      {"q_indptr[0] not 0", [](BatchTablesStorage& t) { t.q_indptr[0] = 1; }, "q_indptr[0]"},
      {"q_indptr decreasing", [](BatchTablesStorage& t) { t.q_indptr = {0, 6, 5}; },
       "decreases at sequence 1"},
      {"q_indptr end != q_pos size", [](BatchTablesStorage& t) { t.q_pos.push_back(30); },
       "q_pos has 6"},
      {"kv_indptr decreasing", [](BatchTablesStorage& t) { t.kv_indptr = {0, 7, 6}; },
       "kv_indptr decreases at sequence 1"},
      {"kv_indptr end != pages", [](BatchTablesStorage& t) { t.kv_indptr[2] = 5; },
       "kv_page_ids has 6"},
      {"page arrays differ", [](BatchTablesStorage& t) { t.kv_page_len.pop_back(); },
       "equal sizes"},
      {"negative q_pos", [](BatchTablesStorage& t) { t.q_pos[2] = -1; },
       "sequence 1: q_pos[2]=-1"},
      {"q_pos not increasing", [](BatchTablesStorage& t) { t.q_pos[4] = 4; },
       "sequence 1: q_pos not strictly increasing at index 4"},
      {"page id negative", [](BatchTablesStorage& t) { t.kv_page_ids[1] = -2; },
       "sequence 0: kv_page_ids[1]=-2"},
      {"page id too large", [](BatchTablesStorage& t) { t.kv_page_ids[5] = 10; },
       "sequence 1: kv_page_ids[5]=10"},
      {"page len zero", [](BatchTablesStorage& t) { t.kv_page_len[3] = 0; },
       "sequence 1: kv_page_len[3]=0"},
      {"page len too large", [](BatchTablesStorage& t) { t.kv_page_len[0] = 5; },
       "sequence 0: kv_page_len[0]=5"},
      {"page pos negative", [](BatchTablesStorage& t) { t.kv_page_pos[0] = -4; },
       "sequence 0: kv_page_pos[0]=-4"},
      {"pages overlap", [](BatchTablesStorage& t) { t.kv_page_pos[4] = 3; },
       "sequence 1: page 4 starts at 3 before page 3"},
      {"pages out of order", [](BatchTablesStorage& t) { t.kv_page_pos[2] = 2; },
       "sequence 0: page 2"},
      {"page end overflows",
       [](BatchTablesStorage& t) { t.kv_page_pos[5] = std::numeric_limits<int32_t>::max() - 1; },
       "sequence 1: page 5"},
  };

  const AttentionShape fp32_shape = shape;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ValidTables valid;
    c.mutate(valid.tables);
    const absl::Status status = ValidateBatch(fp32_shape, valid.tables.view(), kNumPages);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(c.message));

    // The backend refuses the same batch and leaves its outputs poisoned.
    const int64_t total_q = static_cast<int64_t>(valid.tables.q_pos.size());
    std::vector<float> q(total_q * 4 * 64 + 64, 1.0f);
    std::vector<float> pool(kNumPages * fp32_shape.PageElements(), 1.0f);
    std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
    std::vector<float> lse(total_q * 4 + 4, std::numeric_limits<float>::quiet_NaN());
    const absl::Status run_status = RunMsaCpu(fp32_shape, valid.tables.view(), q.data(),
                                              pool.data(), kNumPages, out.data(), lse.data());
    EXPECT_EQ(run_status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(testing::CountNaN(std::vector<double>(out.begin(), out.end())),
              static_cast<int64_t>(out.size()));
    EXPECT_EQ(testing::CountNaN(std::vector<double>(lse.begin(), lse.end())),
              static_cast<int64_t>(lse.size()));
  }

  // Non-table failures.
  const BatchTablesStorage good = ValidTables().tables;
  EXPECT_THAT(ValidateBatch(shape, good.view(), -1).message(), HasSubstr("num_pages"));
  BatchTablesStorage half_empty;
  half_empty.kv_indptr.clear();
  half_empty.q_indptr = {0, 1};
  half_empty.q_pos = {0};
  EXPECT_EQ(ValidateBatch(shape, half_empty.view(), kNumPages).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> buffer(kNumPages * shape.PageElements(), 0.0f);
  EXPECT_THAT(RunMsaCpu(shape, good.view(), nullptr, buffer.data(), kNumPages, buffer.data(),
                        nullptr)
                  .message(),
              HasSubstr("q is null"));
  EXPECT_THAT(RunMsaCpu(shape, good.view(), buffer.data(), nullptr, kNumPages, buffer.data(),
                        nullptr)
                  .message(),
              HasSubstr("kv_pool is null"));
  EXPECT_THAT(RunMsaCpu(shape, good.view(), buffer.data(), buffer.data(), kNumPages, nullptr,
                        nullptr)
                  .message(),
              HasSubstr("out is null"));
  CpuRunOptions bad_options;
  bad_options.num_threads = -1;
  EXPECT_THAT(RunMsaCpu(shape, good.view(), buffer.data(), buffer.data(), kNumPages, buffer.data(),
                        nullptr, bad_options)
                  .message(),
              HasSubstr("num_threads"));
}

TEST(MsaShapeTest, ValidateNamesTheField) {
  AttentionShape shape;
  EXPECT_TRUE(shape.Validate().ok());
  EXPECT_FLOAT_EQ(shape.EffectiveScale(), 1.0f / std::sqrt(128.0f));
  EXPECT_EQ(shape.PageElements(), 2 * 16 * 8 * 128);
  EXPECT_EQ(shape.group_size(), 4);
  shape.sm_scale = 0.5f;
  EXPECT_FLOAT_EQ(shape.EffectiveScale(), 0.5f);

  const std::vector<std::pair<std::function<void(AttentionShape&)>, std::string>> cases = {
      {[](AttentionShape& s) { s.num_q_heads = 0; }, "num_q_heads"},
      {[](AttentionShape& s) { s.num_kv_heads = -1; }, "num_kv_heads"},
      {[](AttentionShape& s) { s.num_q_heads = 12; }, "multiple of num_kv_heads"},
      {[](AttentionShape& s) { s.num_q_heads = 48; }, "1, 2, 4 or 8"},
      {[](AttentionShape& s) { s.head_dim = 96; }, "head_dim"},
      {[](AttentionShape& s) { s.page_size = 0; }, "page_size"},
      {[](AttentionShape& s) { s.dtype = static_cast<DType>(7); }, "dtype"},
      {[](AttentionShape& s) { s.sm_scale = std::nanf(""); }, "sm_scale"},
      {[](AttentionShape& s) { s.sm_scale = -1.0f; }, "sm_scale"},
  };
  for (const auto& [mutate, field] : cases) {
    AttentionShape bad;
    mutate(bad);
    const absl::Status status = bad.Validate();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(status.message(), HasSubstr(field));
    // The batch validator and the backend check the shape first.
    EXPECT_EQ(ValidateBatch(bad, BatchTablesStorage{}.view(), 0).code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(DTypeBytes(DType::kFloat32), 4);
  EXPECT_EQ(DTypeBytes(DType::kBFloat16), 2);
  EXPECT_EQ(DTypeBytes(DType::kFloat16), 2);
}

// ---- dtype conversions ------------------------------------------------------------------

TEST(DTypeTest, SixteenBitValuesRoundTripExactly) {
  for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const uint16_t value = static_cast<uint16_t>(bits);
    const float as_bf16 = FloatFromBf16Bits(value);
    const float as_fp16 = FloatFromFp16Bits(value);
    if (std::isnan(as_bf16)) {
      EXPECT_TRUE(std::isnan(FloatFromBf16Bits(Bf16BitsFromFloat(as_bf16))));
    } else {
      ASSERT_EQ(Bf16BitsFromFloat(as_bf16), value) << std::hex << bits;
    }
    if (std::isnan(as_fp16)) {
      EXPECT_TRUE(std::isnan(FloatFromFp16Bits(Fp16BitsFromFloat(as_fp16))));
    } else {
      ASSERT_EQ(Fp16BitsFromFloat(as_fp16), value) << std::hex << bits;
    }
  }
}

TEST(DTypeTest, RoundsToNearestEvenAndSaturatesToInfinity) {
  // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
  EXPECT_EQ(Bf16BitsFromFloat(1.0f + 0x1p-8f), 0x3F80);
  EXPECT_EQ(Bf16BitsFromFloat(1.0f + 0x1p-7f + 0x1p-8f), 0x3F82);  // tie to even, upward
  EXPECT_EQ(Bf16BitsFromFloat(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // above the tie
  EXPECT_EQ(Bf16BitsFromFloat(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_EQ(Bf16BitsFromFloat(-kInf), 0xFF80);
  // fp16.
  EXPECT_EQ(Fp16BitsFromFloat(1.0f), 0x3C00);
  EXPECT_EQ(Fp16BitsFromFloat(1.0f + 0x1p-11f), 0x3C00);                 // tie to even
  EXPECT_EQ(Fp16BitsFromFloat(1.0f + 0x1p-10f + 0x1p-11f), 0x3C02);      // tie to even, upward
  EXPECT_EQ(Fp16BitsFromFloat(65504.0f), 0x7BFF);
  EXPECT_EQ(Fp16BitsFromFloat(65519.0f), 0x7BFF);
  EXPECT_EQ(Fp16BitsFromFloat(65520.0f), 0x7C00);
  EXPECT_EQ(Fp16BitsFromFloat(-1e9f), 0xFC00);
  EXPECT_EQ(Fp16BitsFromFloat(0x1p-24f), 0x0001);                        // smallest subnormal
  EXPECT_EQ(Fp16BitsFromFloat(0x1p-25f), 0x0000);                        // tie to even zero
  EXPECT_EQ(Fp16BitsFromFloat(0x1.8p-25f), 0x0001);
  EXPECT_EQ(Fp16BitsFromFloat(0x1.8p-24f), 0x0002);                      // 1.5 -> 2 (even)
  EXPECT_EQ(Fp16BitsFromFloat(-0x1p-30f), 0x8000);                       // signed zero
  EXPECT_EQ(Fp16BitsFromFloat(0x1.ffcp-15f), 0x0400);  // rounds up into the smallest normal
  EXPECT_EQ(Fp16BitsFromFloat(1e-45f), 0x0000);        // float subnormal
}

TEST(DTypeTest, NaNStaysNaN) {
  for (uint32_t payload : {0x7FC00000u, 0x7F800001u, 0xFFC00001u, 0x7FBFFFFFu, 0x7F802000u}) {
    const float nan = FloatOfBits(payload);
    ASSERT_TRUE(std::isnan(nan));
    EXPECT_TRUE(std::isnan(FloatFromBf16Bits(Bf16BitsFromFloat(nan)))) << std::hex << payload;
    EXPECT_TRUE(std::isnan(FloatFromFp16Bits(Fp16BitsFromFloat(nan)))) << std::hex << payload;
    EXPECT_EQ(Bf16BitsFromFloat(nan) & 0x8000, (payload >> 16) & 0x8000);
    EXPECT_EQ(Fp16BitsFromFloat(nan) & 0x8000, (payload >> 16) & 0x8000);
  }
  EXPECT_EQ(ToFloat(ToFp16(0.5f)), 0.5f);
  EXPECT_EQ(ToFloat(ToBf16(-2.0f)), -2.0f);
}

}  // namespace
}  // namespace asymcache::msa
