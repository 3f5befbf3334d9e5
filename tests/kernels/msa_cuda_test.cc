// Tests of the MSA CUDA backend (kernels/msa_cuda.h) and its CPU planner
// (kernels/msa_plan.h).
//
// Planner tests run everywhere. GPU tests skip (GTEST_SKIP, with the reason)
// where QueryGpu() fails: no CUDA in the build or no device. Every GPU test
// draws a fresh random structure and fresh random inputs (seed printed and in
// every failure message; replay with ASYMCACHE_TEST_SEED=<seed>), poisons the
// device outputs with NaN before each run, and compares with the naive double
// reference (tests/kernels/msa_reference.h) by the relative error norm: bf16
// <= 1e-2, fp16 <= 2e-3; NaN never passes; LSE within 2e-3 + 1e-4 |lse|.
// Plain C++: no CUDA header here.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "kernels/msa.h"
#include "kernels/msa_cpu.h"
#include "kernels/msa_cuda.h"
#include "kernels/msa_plan.h"
#include "tests/kernels/msa_expect.h"
#include "tests/kernels/msa_reference.h"
#include "tests/kernels/msa_test_util.h"

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

// Host workspace, 16-byte aligned (operator new alignment).
struct HostWorkspace {
  explicit HostWorkspace(size_t bytes) : words(bytes / 8 + 2) {}
  void* data() { return words.data(); }
  size_t size() const { return words.size() * 8; }
  std::vector<uint64_t> words;
};

struct GpuOutputs {
  std::vector<uint8_t> out;  // shape.dtype
  std::vector<float> lse;
  MsaPlan plan;
  MsaPrefillKernel prefill_kernel = MsaPrefillKernel::kMma;  // what ran the prefill tiles
};

// Uploads q and the pool, plans, runs once with NaN-poisoned outputs, copies
// the outputs back.
absl::StatusOr<GpuOutputs> RunOnGpu(const TestBatch& batch, const MsaPlanOptions& options) {
  const AttentionShape& shape = batch.shape;
  const BatchTables tables = batch.view();
  const MsaWorkspaceSizes sizes = MsaWorkspaceSizesFor(
      shape, tables.batch_size(), tables.total_q(), tables.total_pages(), options);
  HostWorkspace host_ws(sizes.host_bytes);
  absl::StatusOr<MsaPlan> plan =
      PlanMsa(shape, tables, batch.num_pages, options, host_ws.data(), host_ws.size());
  if (!plan.ok()) return plan.status();

  const size_t out_bytes = static_cast<size_t>(batch.out_elements() * DTypeBytes(shape.dtype));
  const size_t lse_bytes = static_cast<size_t>(batch.lse_elements()) * sizeof(float);
  absl::StatusOr<DeviceBuffer> d_q = DeviceBuffer::Allocate(batch.q.size());
  absl::StatusOr<DeviceBuffer> d_kv = DeviceBuffer::Allocate(batch.kv_pool.size());
  absl::StatusOr<DeviceBuffer> d_out = DeviceBuffer::Allocate(out_bytes);
  absl::StatusOr<DeviceBuffer> d_lse = DeviceBuffer::Allocate(lse_bytes);
  absl::StatusOr<DeviceBuffer> d_ws = DeviceBuffer::Allocate(sizes.device_bytes);
  for (const auto* buffer : {&d_q, &d_kv, &d_out, &d_lse, &d_ws}) {
    if (!buffer->ok()) return buffer->status();
  }
  absl::Status status = CopyHostToDevice(d_q->data(), batch.q.data(), batch.q.size());
  status.Update(CopyHostToDevice(d_kv->data(), batch.kv_pool.data(), batch.kv_pool.size()));
  // 0xFF bytes: NaN in bf16, fp16 and fp32.
  status.Update(FillDeviceBytes(d_out->data(), 0xFF, out_bytes));
  status.Update(FillDeviceBytes(d_lse->data(), 0xFF, lse_bytes));
  // Stale partial states must not matter either.
  status.Update(FillDeviceBytes(d_ws->data(), 0xFF, sizes.device_bytes));
  if (!status.ok()) return status;
  status.Update(UploadMsaPlan(*plan, host_ws.data(), d_ws->data(), d_ws->size(), nullptr));
  status.Update(RunMsaCuda(*plan, shape, d_q->data(), d_kv->data(), d_out->data(),
                           static_cast<float*>(d_lse->data()), d_ws->data(), nullptr));
  status.Update(SynchronizeStream(nullptr));
  if (!status.ok()) return status;
  GpuOutputs outputs;
  outputs.plan = *plan;
  outputs.prefill_kernel = ResolvedPrefillKernel(*plan);
  outputs.out.resize(out_bytes);
  outputs.lse.resize(static_cast<size_t>(batch.lse_elements()));
  status.Update(CopyDeviceToHost(outputs.out.data(), d_out->data(), out_bytes));
  status.Update(CopyDeviceToHost(outputs.lse.data(), d_lse->data(), lse_bytes));
  if (!status.ok()) return status;
  return outputs;
}

// Fully written, no NaN, relative error norm within the dtype tolerance, LSE
// close, exact 0 / -inf where no key is visible.
void ExpectMatchesReference(const TestBatch& batch, const GpuOutputs& outputs,
                            const std::string& note) {
  SCOPED_TRACE(note);
  std::vector<double> ref_out;
  std::vector<double> ref_lse;
  testing::ReferenceAttention(batch.shape, batch.view(), batch.q.data(), batch.kv_pool.data(),
                              batch.num_pages, &ref_out, &ref_lse);
  const std::vector<double> out =
      testing::ToDoubles(batch.shape.dtype, outputs.out.data(), batch.out_elements());
  ASSERT_EQ(testing::CountNaN(out), 0) << "output not fully written or NaN produced";
  EXPECT_LE(testing::RelativeErrorNorm(out, ref_out), ToleranceFor(batch.shape.dtype))
      << "dtype " << testing::DTypeName(batch.shape.dtype) << " D=" << batch.shape.head_dim
      << " G=" << batch.shape.group_size() << " page=" << batch.shape.page_size;
  testing::ExpectLseMatchesReference(outputs.lse, ref_lse, 2e-3, 1e-4);
  testing::ExpectRowsWithoutKeysAreZero(out, ref_lse, batch.shape.head_dim);
}

using testing::SeededTest;

// GPU tests: skip without a usable device.
class MsaCudaTest : public SeededTest {
 protected:
  void SetUp() override {
    absl::StatusOr<GpuInfo> gpu = QueryGpu();
    if (!gpu.ok()) GTEST_SKIP() << "no CUDA GPU: " << gpu.status();
    num_sms_ = gpu->sm_count;
    SeededTest::SetUp();
  }
  MsaPlanOptions Options(int32_t forced_chunk = 0, bool allow_split = true,
                         MsaPrefillTiling tiling = MsaPrefillTiling::kLeastWork) const {
    MsaPlanOptions options;
    options.num_sms = num_sms_;
    options.prefill_kernel = prefill_kernel_;
    options.forced_kv_chunk_tokens = forced_chunk;
    options.allow_split_kv = allow_split;
    options.prefill_tiling = tiling;
    return options;
  }
  // Runs unsplit, auto and forced-split plans, with both prefill tilings;
  // each must match the reference.
  void RunAndCheckAllPlans(const TestBatch& batch, const std::string& what) {
    constexpr MsaPrefillTiling kFirstRow = MsaPrefillTiling::kFromFirstRow;
    for (const auto& [name, options] :
         {std::pair<const char*, MsaPlanOptions>{"unsplit", Options(0, false)},
          {"auto", Options()},
          {"chunk64", Options(64)},
          {"chunk192", Options(192)},
          {"unsplit_first_row", Options(0, false, kFirstRow)},
          {"auto_first_row", Options(0, true, kFirstRow)},
          {"chunk64_first_row", Options(64, true, kFirstRow)}}) {
      absl::StatusOr<GpuOutputs> outputs = RunOnGpu(batch, options);
      ASSERT_TRUE(outputs.ok()) << outputs.status();
      ExpectKernelRan(batch.shape, *outputs);
      ExpectMatchesReference(batch, *outputs,
                             absl::StrCat(what, " plan=", name, " chunk=",
                                          outputs->plan.kv_chunk_tokens, " ", SeedNote()));
    }
  }

  // A test that asked for the wgmma kernel must have run it (head dim 128).
  void ExpectKernelRan(const AttentionShape& shape, const GpuOutputs& outputs) const {
    if ((prefill_kernel_ == MsaPrefillKernel::kWgmma ||
         prefill_kernel_ == MsaPrefillKernel::kWgmmaOverlap) &&
        shape.head_dim == 128) {
      EXPECT_EQ(outputs.prefill_kernel, prefill_kernel_);
    }
  }

  int32_t num_sms_ = 132;
  MsaPrefillKernel prefill_kernel_ = MsaPrefillKernel::kAuto;
};

const char* PrefillKernelName(MsaPrefillKernel kernel) {
  switch (kernel) {
    case MsaPrefillKernel::kMma:
      return "Mma";
    case MsaPrefillKernel::kWgmma:
      return "Wgmma";
    case MsaPrefillKernel::kWgmmaOverlap:
      return "WgmmaOverlap";
    default:
      return "Auto";
  }
}

// The structure tests, once per prefill kernel.
class MsaCudaKernelTest : public MsaCudaTest,
                          public ::testing::WithParamInterface<MsaPrefillKernel> {
 protected:
  void SetUp() override {
    MsaCudaTest::SetUp();
    if (IsSkipped()) return;
    prefill_kernel_ = GetParam();
    if (Wgmma() && !MsaWgmmaAvailable()) {
      GTEST_SKIP() << "wgmma prefill kernel not available (no sm_90a code or not a cc 9.0 device)";
    }
  }
  bool Wgmma() const {
    return prefill_kernel_ == MsaPrefillKernel::kWgmma ||
           prefill_kernel_ == MsaPrefillKernel::kWgmmaOverlap;
  }
};

// ---- sweeps: dtype x head dim x GQA group x page size ----------------------

class MsaCudaSweepTest
    : public MsaCudaTest,
      public ::testing::WithParamInterface<std::tuple<DType, int32_t, int32_t, int32_t>> {
 protected:
  // The mma.sync kernel (the fallback on every device without sm_90a code)
  // at every head dim; kAuto would send head dim 128 to the wgmma kernels on
  // an H100, which their own sweeps below cover.
  void SetUp() override {
    MsaCudaTest::SetUp();
    prefill_kernel_ = MsaPrefillKernel::kMma;
  }
  void RunSweep();
};

void MsaCudaSweepTest::RunSweep() {
  const auto [dtype, head_dim, group, page_size] = GetParam();
  const AttentionShape shape = MakeShape(2 * group, 2, head_dim, page_size, dtype);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 4; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng_, 40, 400);
    options.num_holes = testing::UniformInt(rng_, 0, 3);
    options.hole_at_front = i == 1;
    options.hole_at_tail = i == 2;
    options.num_q_runs = i == 3 ? 0 : testing::UniformInt(rng_, 1, 3);
    options.max_q_run_len = 40;
    options.decode_query = i != 0;
    layouts.push_back(RandomLayout(options, rng_));
  }
  BuildOptions build;
  build.aligned_pages = testing::UniformInt(rng_, 0, 1) == 1;
  const TestBatch batch = BuildTestBatch(shape, layouts, build, rng_);
  RunAndCheckAllPlans(batch, "sweep");
}

TEST_P(MsaCudaSweepTest, MatchesReferenceSplitAndUnsplit) { RunSweep(); }

// The same sweep with prefill tiles on the wgmma kernel (head dim 128 only).
class MsaCudaWgmmaSweepTest : public MsaCudaSweepTest {
 protected:
  void SetUp() override {
    MsaCudaSweepTest::SetUp();
    if (IsSkipped()) return;
    if (!MsaWgmmaAvailable()) {
      GTEST_SKIP() << "wgmma prefill kernel not available (no sm_90a code or not a cc 9.0 device)";
    }
    prefill_kernel_ = MsaPrefillKernel::kWgmma;
  }
};

TEST_P(MsaCudaWgmmaSweepTest, MatchesReferenceSplitAndUnsplit) { RunSweep(); }

// And with the overlapped wgmma main loop (MsaPrefillKernel::kWgmmaOverlap).
class MsaCudaWgmmaOverlapSweepTest : public MsaCudaWgmmaSweepTest {
 protected:
  void SetUp() override {
    MsaCudaWgmmaSweepTest::SetUp();
    if (IsSkipped()) return;
    prefill_kernel_ = MsaPrefillKernel::kWgmmaOverlap;
  }
};

TEST_P(MsaCudaWgmmaOverlapSweepTest, MatchesReferenceSplitAndUnsplit) { RunSweep(); }

INSTANTIATE_TEST_SUITE_P(
    DTypeHeadDimGroup, MsaCudaSweepTest,
    ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                       ::testing::Values(64, 128, 256), ::testing::Values(1, 2, 4, 8),
                       ::testing::Values(16)));
INSTANTIATE_TEST_SUITE_P(
    OddPageSizes, MsaCudaSweepTest,
    ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                       ::testing::Values(64, 128), ::testing::Values(1, 4),
                       ::testing::Values(7, 32)));
INSTANTIATE_TEST_SUITE_P(
    Wgmma, MsaCudaWgmmaSweepTest,
    ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16), ::testing::Values(128),
                       ::testing::Values(1, 2, 4, 8), ::testing::Values(16, 7, 32)));

INSTANTIATE_TEST_SUITE_P(
    WgmmaOverlap, MsaCudaWgmmaOverlapSweepTest,
    ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16), ::testing::Values(128),
                       ::testing::Values(1, 2, 4, 8), ::testing::Values(16, 7, 32)));

// ---- structures ---------------------------------------------------------------

TEST_P(MsaCudaKernelTest, HolesAtFrontMiddleAndTail) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    const AttentionShape shape = MakeShape(8, 2, 128, 16, dtype);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      RandomLayoutOptions options;
      options.context_len = testing::UniformInt(rng_, 200, 900);
      options.num_holes = 4;
      options.max_hole_len = 100;
      options.hole_at_front = true;
      options.hole_at_tail = true;
      options.num_q_runs = 3;
      options.decode_query = true;
      layouts.push_back(RandomLayout(options, rng_));
    }
    RunAndCheckAllPlans(BuildTestBatch(shape, layouts, BuildOptions{}, rng_), "holes");
  }
}

TEST_P(MsaCudaKernelTest, InterleavedQuerySegmentsInOneTile) {
  const AttentionShape shape = MakeShape(32, 8, 128, 16, DType::kBFloat16);
  SequenceLayout layout;
  layout.kv_runs = {PositionRun{0, 3000}};
  // Many short query runs spread over the context: tiles mix far-apart positions.
  for (int32_t pos = testing::UniformInt(rng_, 0, 30); pos < 2990;
       pos += testing::UniformInt(rng_, 20, 200)) {
    layout.q_runs.push_back(PositionRun{pos, pos + testing::UniformInt(rng_, 1, 6)});
  }
  RunAndCheckAllPlans(BuildTestBatch(shape, {layout}, BuildOptions{}, rng_), "interleaved");
}

TEST_P(MsaCudaKernelTest, QueryAtPositionZeroAndQueryWithNoVisibleKey) {
  const AttentionShape shape = MakeShape(4, 4, Wgmma() ? 128 : 64, 16, DType::kFloat16);
  std::vector<SequenceLayout> layouts;
  layouts.push_back(SequenceLayout{{PositionRun{0, 40}}, {PositionRun{0, 3}, PositionRun{20, 25}}});
  layouts.push_back(SequenceLayout{{PositionRun{5, 300}}, {PositionRun{0, 3}, PositionRun{5, 8}}});
  layouts.push_back(SequenceLayout{{}, {PositionRun{10, 12}}});
  RunAndCheckAllPlans(BuildTestBatch(shape, layouts, BuildOptions{}, rng_), "pos0/no-key");
}

TEST_P(MsaCudaKernelTest, PartialPagesEverywhere) {
  for (int32_t page_size : {7, 16, 32}) {
    const AttentionShape shape = MakeShape(8, 2, Wgmma() ? 128 : 64, page_size, DType::kBFloat16);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      int32_t length = testing::UniformInt(rng_, 20, 500);
      if (length % page_size == 0) ++length;
      layouts.push_back(SequenceLayout{{PositionRun{0, length / 3}, PositionRun{length / 3 + 5, length}},
                                       {PositionRun{length - 9, length}}});
    }
    BuildOptions build;
    build.aligned_pages = true;  // runs starting mid-page give partial first pages too
    RunAndCheckAllPlans(BuildTestBatch(shape, layouts, build, rng_), "partial pages");
  }
}

TEST_P(MsaCudaKernelTest, TwoHundredFiftySixTinySegments) {
  const AttentionShape shape = MakeShape(8, 2, 128, 16, DType::kBFloat16);
  SequenceLayout layout;
  int32_t pos = testing::UniformInt(rng_, 0, 3);
  for (int i = 0; i < 256; ++i) {
    const int32_t length = testing::UniformInt(rng_, 1, 4);
    layout.kv_runs.push_back(PositionRun{pos, pos + length});
    if (i % 3 == 0) layout.q_runs.push_back(PositionRun{pos, pos + 1});
    pos += length + testing::UniformInt(rng_, 1, 5);
  }
  layout.q_runs.push_back(PositionRun{pos, pos + 1});
  RunAndCheckAllPlans(BuildTestBatch(shape, {layout}, BuildOptions{}, rng_), "256 segments");
}

TEST_F(MsaCudaTest, LongContextDecodeAtBatchOne) {
  const AttentionShape shape = MakeShape(32, 8, 128, 16, DType::kBFloat16);
  RandomLayoutOptions options;
  options.context_len = 128 * 1024;
  options.num_holes = 8;
  options.max_hole_len = 2000;
  options.num_q_runs = 1;
  options.max_q_run_len = 4;
  options.decode_query = true;
  const TestBatch batch =
      BuildTestBatch(shape, {RandomLayout(options, rng_)}, BuildOptions{}, rng_);
  absl::StatusOr<GpuOutputs> outputs = RunOnGpu(batch, Options());
  ASSERT_TRUE(outputs.ok()) << outputs.status();
  EXPECT_GT(outputs->plan.kv_chunk_tokens, 0) << "B=1 long decode must split";
  ExpectMatchesReference(batch, *outputs, SeedNote());
}

// msa_gpu_bench's segmented decode: contexts of ~4k keys in 64 runs, each on
// fresh pages (a partial page per run), split into chunks that start
// mid-page; the decode kernel walks the partial pages tile by tile from each
// chunk's first page (item.kv_begin_page). Page sizes 16, 7 and 32.
TEST_P(MsaCudaKernelTest, SegmentedDecodeContextsSplitMidPage) {
  for (int32_t page_size : {16, 7, 32}) {
    const AttentionShape shape = MakeShape(32, 8, 128, page_size, DType::kBFloat16);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      RandomLayoutOptions options;
      options.context_len = testing::UniformInt(rng_, 3500, 5000);
      options.num_holes = 63;
      options.max_hole_len = 48;
      options.num_q_runs = 0;
      options.decode_query = true;
      layouts.push_back(RandomLayout(options, rng_));
    }
    BuildOptions build;
    build.aligned_pages = false;  // every run starts a fresh page
    RunAndCheckAllPlans(BuildTestBatch(shape, layouts, build, rng_),
                        absl::StrCat("segmented decode page ", page_size));
  }
}

// Decode contexts made of one-key pages (one-key runs, each on a fresh
// page) around longer runs: a 64-key tile then spans 64 pages, and the next
// tile may start on the 65th page from the tile's first, which the decode
// kernel's partial-page walk must look at (TileEntry::start_after).
TEST_P(MsaCudaKernelTest, DecodeOverRunsOfOneKeyPages) {
  for (int32_t page_size : {16, 7}) {
    const AttentionShape shape = MakeShape(32, 8, 128, page_size, DType::kBFloat16);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      SequenceLayout layout;
      int32_t pos = testing::UniformInt(rng_, 0, 5);
      auto add_run = [&](int32_t length) {
        layout.kv_runs.push_back(PositionRun{pos, pos + length});
        pos += length + testing::UniformInt(rng_, 1, 3);
      };
      for (int32_t k = testing::UniformInt(rng_, 60, 200); k > 0; --k) add_run(1);
      add_run(testing::UniformInt(rng_, 20, 150));
      for (int32_t k = testing::UniformInt(rng_, 64, 140); k > 0; --k) add_run(1);
      add_run(testing::UniformInt(rng_, 1, 40));
      const int32_t last_key = layout.kv_runs.back().end - 1;
      layout.q_runs.push_back(PositionRun{last_key, last_key + 1});
      layouts.push_back(std::move(layout));
    }
    BuildOptions build;
    build.aligned_pages = false;  // every run starts a fresh page
    RunAndCheckAllPlans(BuildTestBatch(shape, layouts, build, rng_),
                        absl::StrCat("one-key pages, page ", page_size));
  }
}

TEST_P(MsaCudaKernelTest, MixedDecodePrefillAndRebuildBatch) {
  const AttentionShape shape = MakeShape(32, 8, 128, 16, DType::kBFloat16);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 9; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng_, 50, 2000);
    if (i % 3 == 0) {
      options.num_holes = 0;
      options.num_q_runs = 0;
      options.decode_query = true;
      layouts.push_back(RandomLayout(options, rng_));
    } else if (i % 3 == 1) {
      options.num_holes = 0;
      options.num_q_runs = 0;
      layouts.push_back(RandomLayout(options, rng_));
      const int32_t chunk = testing::UniformInt(rng_, 1, 300);
      const int32_t end = options.context_len;
      layouts.back().q_runs = {PositionRun{std::max(0, end - chunk), end}};
    } else {
      options.num_holes = 3;
      options.num_q_runs = 3;
      options.decode_query = true;
      layouts.push_back(RandomLayout(options, rng_));
    }
  }
  const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
  RunAndCheckAllPlans(batch, "mixed");
}

TEST_P(MsaCudaKernelTest, EmptyBatchAndSequencesWithoutQueries) {
  const AttentionShape shape = MakeShape(4, 2, Wgmma() ? 128 : 64, 16, DType::kBFloat16);
  std::vector<SequenceLayout> layouts;
  layouts.push_back(SequenceLayout{{PositionRun{0, 50}}, {}});
  layouts.push_back(SequenceLayout{{PositionRun{0, 70}}, {PositionRun{60, 70}}});
  layouts.push_back(SequenceLayout{{}, {}});
  layouts.push_back(SequenceLayout{{PositionRun{3, 33}}, {PositionRun{32, 33}}});
  RunAndCheckAllPlans(BuildTestBatch(shape, layouts, BuildOptions{}, rng_), "no-query seqs");
  // B = 0: planning and running are no-ops.
  BatchTablesStorage empty;
  HostWorkspace ws(1024);
  absl::StatusOr<MsaPlan> plan = PlanMsa(shape, empty.view(), 0, Options(), ws.data(), ws.size());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->num_items(), 0);
  EXPECT_TRUE(RunMsaCuda(*plan, shape, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr).ok());
}

TEST_P(MsaCudaKernelTest, SplitAndUnsplitAgree) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    const AttentionShape shape = MakeShape(16, 4, 128, 16, dtype);
    RandomLayoutOptions options;
    options.context_len = 5000;
    options.num_holes = 5;
    options.max_hole_len = 300;
    options.num_q_runs = 4;
    options.max_q_run_len = 30;
    options.decode_query = true;
    const TestBatch batch = BuildTestBatch(
        shape, {RandomLayout(options, rng_), RandomLayout(options, rng_)}, BuildOptions{}, rng_);
    absl::StatusOr<GpuOutputs> unsplit = RunOnGpu(batch, Options(0, false));
    absl::StatusOr<GpuOutputs> split = RunOnGpu(batch, Options(128));
    ASSERT_TRUE(unsplit.ok()) << unsplit.status();
    ASSERT_TRUE(split.ok()) << split.status();
    ExpectKernelRan(shape, *unsplit);
    ExpectKernelRan(shape, *split);
    EXPECT_EQ(unsplit->plan.num_merge_groups, 0);
    EXPECT_GT(split->plan.num_merge_groups, 0);
    const std::vector<double> a = testing::ToDoubles(dtype, unsplit->out.data(), batch.out_elements());
    const std::vector<double> b = testing::ToDoubles(dtype, split->out.data(), batch.out_elements());
    EXPECT_LE(testing::RelativeErrorNorm(b, a), ToleranceFor(dtype)) << SeedNote();
    for (size_t i = 0; i < unsplit->lse.size(); ++i) {
      ASSERT_NEAR(split->lse[i], unsplit->lse[i], 1e-3 + 1e-4 * std::abs(unsplit->lse[i]))
          << "lse " << i << " " << SeedNote();
    }
  }
}

// ---- plan reuse, CUDA graph ------------------------------------------------------

TEST_P(MsaCudaKernelTest, GraphReplayMatchesDirectRunAndPlanIsReusedAcrossLayers) {
  const AttentionShape shape = MakeShape(32, 8, 128, 16, DType::kBFloat16);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 4; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng_, 500, 3000);
    options.num_q_runs = i % 2;
    options.decode_query = true;
    layouts.push_back(RandomLayout(options, rng_));
  }
  // Two "layers": same tables, different q and pool contents.
  const TestBatch layer0 = BuildTestBatch(shape, layouts, BuildOptions{}, rng_);
  std::mt19937_64 rng_copy = rng_;
  TestBatch layer1 = layer0;
  testing::FillNormal(shape.dtype, layer1.q.data(), layer1.out_elements(), 1.0, rng_copy);
  for (size_t p = 0; p < layer1.tables.kv_page_ids.size(); ++p) {
    const int64_t base = int64_t{layer1.tables.kv_page_ids[p]} * shape.PageElements() * 2;
    const int64_t rows = layer1.tables.kv_page_len[p];
    const int64_t row_bytes = int64_t{shape.num_kv_heads} * shape.head_dim * 2;
    for (int block = 0; block < 2; ++block) {
      testing::FillNormal(shape.dtype,
                          layer1.kv_pool.data() + base + block * shape.page_size * row_bytes,
                          rows * row_bytes / 2, 1.0, rng_copy);
    }
  }
  const MsaPlanOptions options = Options();
  const BatchTables tables = layer0.view();
  const MsaWorkspaceSizes sizes = MsaWorkspaceSizesFor(
      shape, tables.batch_size(), tables.total_q(), tables.total_pages(), options);
  absl::StatusOr<PinnedHostBuffer> host_ws = PinnedHostBuffer::Allocate(sizes.host_bytes);
  ASSERT_TRUE(host_ws.ok()) << host_ws.status();
  absl::StatusOr<MsaPlan> plan =
      PlanMsa(shape, tables, layer0.num_pages, options, host_ws->data(), host_ws->size());
  ASSERT_TRUE(plan.ok()) << plan.status();
  if (Wgmma()) {
    EXPECT_EQ(ResolvedPrefillKernel(*plan), prefill_kernel_);
  }
  const size_t out_bytes = static_cast<size_t>(layer0.out_elements()) * 2;
  const size_t lse_bytes = static_cast<size_t>(layer0.lse_elements()) * 4;
  std::vector<DeviceBuffer> q(2), kv(2), out(2), lse(2);
  for (int l = 0; l < 2; ++l) {
    const TestBatch& layer = l == 0 ? layer0 : layer1;
    for (auto [buffer, bytes] : {std::pair{&q[l], layer.q.size()},
                                 std::pair{&kv[l], layer.kv_pool.size()},
                                 std::pair{&out[l], out_bytes}, std::pair{&lse[l], lse_bytes}}) {
      absl::StatusOr<DeviceBuffer> allocated = DeviceBuffer::Allocate(bytes);
      ASSERT_TRUE(allocated.ok()) << allocated.status();
      *buffer = std::move(*allocated);
    }
    ASSERT_TRUE(CopyHostToDevice(q[l].data(), layer.q.data(), layer.q.size()).ok());
    ASSERT_TRUE(CopyHostToDevice(kv[l].data(), layer.kv_pool.data(), layer.kv_pool.size()).ok());
  }
  absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Allocate(sizes.device_bytes);
  ASSERT_TRUE(ws.ok()) << ws.status();

  // Direct run of both layers with one upload.
  auto run_layers = [&](void* stream) -> absl::Status {
    for (int l = 0; l < 2; ++l) {
      absl::Status status = RunMsaCuda(*plan, shape, q[l].data(), kv[l].data(), out[l].data(),
                                       static_cast<float*>(lse[l].data()), ws->data(), stream);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  };
  auto fetch = [&](int l) {
    GpuOutputs o;
    o.plan = *plan;
    o.out.resize(out_bytes);
    o.lse.resize(layer0.lse_elements());
    EXPECT_TRUE(CopyDeviceToHost(o.out.data(), out[l].data(), out_bytes).ok());
    EXPECT_TRUE(CopyDeviceToHost(o.lse.data(), lse[l].data(), lse_bytes).ok());
    return o;
  };
  auto poison = [&]() {
    for (int l = 0; l < 2; ++l) {
      ASSERT_TRUE(FillDeviceBytes(out[l].data(), 0xFF, out_bytes).ok());
      ASSERT_TRUE(FillDeviceBytes(lse[l].data(), 0xFF, lse_bytes).ok());
    }
  };
  poison();
  ASSERT_TRUE(UploadMsaPlan(*plan, host_ws->data(), ws->data(), ws->size(), nullptr).ok());
  ASSERT_TRUE(run_layers(nullptr).ok());
  ASSERT_TRUE(SynchronizeStream(nullptr).ok());
  const GpuOutputs direct0 = fetch(0);
  const GpuOutputs direct1 = fetch(1);
  ExpectMatchesReference(layer0, direct0, absl::StrCat("layer 0 ", SeedNote()));
  ExpectMatchesReference(layer1, direct1, absl::StrCat("layer 1 ", SeedNote()));

  // Captured upload + both layers, replayed: bitwise identical outputs.
  poison();
  absl::Status graph_status = CaptureAndReplay(
      [&](void* stream) -> absl::Status {
        absl::Status status = UploadMsaPlan(*plan, host_ws->data(), ws->data(), ws->size(), stream);
        if (!status.ok()) return status;
        return run_layers(stream);
      },
      3);
  ASSERT_TRUE(graph_status.ok()) << graph_status;
  for (int l = 0; l < 2; ++l) {
    const GpuOutputs replayed = fetch(l);
    const GpuOutputs& direct = l == 0 ? direct0 : direct1;
    EXPECT_EQ(replayed.out, direct.out) << "layer " << l;
    EXPECT_EQ(0, std::memcmp(replayed.lse.data(), direct.lse.data(), lse_bytes)) << "layer " << l;
  }
}

// ---- KV append --------------------------------------------------------------------

// ---- one wgmma tile (layouts and descriptors) -----------------------------------

// Small integers: every product and sum below is exact in fp32, and S fits
// the 16-bit types' integer range used for P (|s| <= 768: exact in fp16; in
// bf16 the host rounds P exactly as the device does, round to nearest even).
struct TileInputs {
  std::vector<uint16_t> a, b, v;  // dtype bits: [128][128], [64][128], [64][128]
  std::vector<double> af, bf, vf;
};

TileInputs MakeTileInputs(DType dtype) {
  TileInputs in;
  auto fill = [&](int rows, int salt, std::vector<uint16_t>* bits, std::vector<double>* values,
                  int range) {
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < 128; ++c) {
        const int value = (r * 7 + c * 3 + salt * (r ^ c)) % (2 * range + 1) - range;
        bits->push_back(dtype == DType::kBFloat16 ? Bf16BitsFromFloat(static_cast<float>(value))
                                                  : Fp16BitsFromFloat(static_cast<float>(value)));
        values->push_back(value);
      }
    }
  };
  fill(128, 1, &in.a, &in.af, 3);
  fill(64, 2, &in.b, &in.bf, 2);
  fill(64, 5, &in.v, &in.vf, 4);
  return in;
}

// Counts mismatches and describes the first few ("(row, col) got x want y").
int CompareTile(const std::vector<float>& got, const std::vector<double>& want, int cols,
                std::string* first) {
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (static_cast<double>(got[i]) != want[i]) {
      if (bad < 4) {
        absl::StrAppend(first, " (", i / cols, ",", i % cols, ") got ", got[i], " want ", want[i]);
      }
      ++bad;
    }
  }
  return bad;
}

TEST(MsaWgmmaTileTest, KnownInputsGiveExactOutputs) {
  absl::StatusOr<GpuInfo> gpu = QueryGpu();
  if (!gpu.ok()) GTEST_SKIP() << "no CUDA GPU: " << gpu.status();
  if (!MsaWgmmaAvailable()) GTEST_SKIP() << "wgmma prefill kernel not available";
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    SCOPED_TRACE(testing::DTypeName(dtype));
    const TileInputs in = MakeTileInputs(dtype);
    std::vector<double> s_ref(128 * 64, 0.0);
    for (int r = 0; r < 128; ++r) {
      for (int n = 0; n < 64; ++n) {
        double acc = 0;
        for (int c = 0; c < 128; ++c) acc += in.af[r * 128 + c] * in.bf[n * 128 + c];
        s_ref[r * 64 + n] = acc;
      }
    }
    std::vector<double> o_ref(128 * 128, 0.0);
    for (int r = 0; r < 128; ++r) {
      for (int n = 0; n < 64; ++n) {
        const float s = static_cast<float>(s_ref[r * 64 + n]);
        const double p = dtype == DType::kBFloat16 ? FloatFromBf16Bits(Bf16BitsFromFloat(s))
                                                   : FloatFromFp16Bits(Fp16BitsFromFloat(s));
        for (int d = 0; d < 128; ++d) o_ref[r * 128 + d] += p * in.vf[n * 128 + d];
      }
    }
    absl::StatusOr<WgmmaTileTestOutput> out =
        RunMsaWgmmaTileTest(dtype, in.a.data(), in.b.data(), in.v.data(), 0);
    ASSERT_TRUE(out.ok()) << out.status();
    std::string s_first;
    std::string o_first;
    EXPECT_EQ(CompareTile(out->s, s_ref, 64, &s_first), 0)
        << "S = Q K^T (Q/K K-major descriptors, row layout):" << s_first;
    const int o_bad = CompareTile(out->o, o_ref, 128, &o_first);
    if (o_bad != 0) {
      // Diagnostic: does the V descriptor with its two byte offsets swapped match?
      absl::StatusOr<WgmmaTileTestOutput> probe =
          RunMsaWgmmaTileTest(dtype, in.a.data(), in.b.data(), in.v.data(), 1);
      std::string probe_first;
      const int probe_bad = probe.ok() ? CompareTile(probe->o, o_ref, 128, &probe_first) : -1;
      ADD_FAILURE() << "O = P V: " << o_bad << " mismatches:" << o_first
                    << "; with the V descriptor's LBO/SBO swapped: " << probe_bad
                    << " mismatches" << probe_first;
    }
  }
}

// ---- the two wgmma main loops agree bit for bit ---------------------------------
//
// MsaWgmmaPrefillKernel (kWgmma, serial) and MsaWgmmaPrefillOverlapKernel
// (kWgmmaOverlap) do the same arithmetic in the same order; only the issue
// order of the asynchronous GEMMs differs. Per key tile both run the same 8
// wgmma for S (same descriptors, fresh accumulator), the same masked base-2
// online softmax on the same fragment (the overlapped loop on a copy, pr),
// and the same O update O = O * alpha_i + P_i V_i: the serial loop scales O
// just before issuing P_i V_i, the overlapped one right after P_{i-1} V_{i-1}
// completes and before P_i V_i is issued (tile 0's scale is skipped there:
// O = 0 and alpha_0 = 0, so the serial 0 * 0 adds nothing). The epilogue is
// the same code. So outputs and LSE must be equal byte for byte, not merely
// within a tolerance. The structures cover 64-row tiles (a warpgroup with no
// rows: the overlapped loop computes on zero Q rows, the serial one skips),
// partial warpgroups, full 128-row tiles, 64-row tiles beside full ones in
// one launch, holes, partial and non-uniform pages (page size 7), GQA 4,
// unsplit and split (fp32 partials + merge) plans, bf16 and fp16.
class MsaWgmmaLoopsTest : public MsaCudaTest {
 protected:
  void SetUp() override {
    MsaCudaTest::SetUp();
    if (IsSkipped()) return;
    if (!MsaWgmmaAvailable()) {
      GTEST_SKIP() << "wgmma prefill kernels not available (no sm_90a code in the build or not "
                      "a compute capability 9.0 device)";
    }
  }

  // Runs the batch with both loops under the same plan options and expects
  // identical output and LSE bytes.
  void ExpectLoopsBitIdentical(const TestBatch& batch, const std::string& what) {
    for (const int32_t forced_chunk : {0, 128}) {
      prefill_kernel_ = MsaPrefillKernel::kWgmma;
      absl::StatusOr<GpuOutputs> serial = RunOnGpu(batch, Options(forced_chunk, forced_chunk > 0));
      prefill_kernel_ = MsaPrefillKernel::kWgmmaOverlap;
      absl::StatusOr<GpuOutputs> overlap =
          RunOnGpu(batch, Options(forced_chunk, forced_chunk > 0));
      ASSERT_TRUE(serial.ok()) << serial.status();
      ASSERT_TRUE(overlap.ok()) << overlap.status();
      const std::string note = absl::StrCat(
          what, " ", testing::DTypeName(batch.shape.dtype), " G=", batch.shape.group_size(),
          " page=", batch.shape.page_size, " chunk=", forced_chunk, " prefill items=",
          serial->plan.num_prefill_items, " max tile rows=", serial->plan.max_prefill_tile_rows,
          " ", SeedNote());
      ASSERT_GT(serial->plan.num_prefill_items, 0) << note;
      ASSERT_EQ(serial->prefill_kernel, MsaPrefillKernel::kWgmma) << note;
      ASSERT_EQ(overlap->prefill_kernel, MsaPrefillKernel::kWgmmaOverlap) << note;
      ASSERT_EQ(serial->out.size(), overlap->out.size());
      ASSERT_EQ(serial->lse.size(), overlap->lse.size());
      // The serial loop is right (its sweeps check it against the reference),
      // and nothing may be left unwritten in either.
      const std::vector<double> out =
          testing::ToDoubles(batch.shape.dtype, serial->out.data(), batch.out_elements());
      ASSERT_EQ(testing::CountNaN(out), 0) << note;
      const int element_bytes = DTypeBytes(batch.shape.dtype);
      int64_t out_diff = 0;
      int64_t first_out = -1;
      for (size_t i = 0; i < serial->out.size(); i += element_bytes) {
        if (std::memcmp(&serial->out[i], &overlap->out[i], element_bytes) != 0) {
          if (first_out < 0) first_out = static_cast<int64_t>(i / element_bytes);
          ++out_diff;
        }
      }
      int64_t lse_diff = 0;
      int64_t first_lse = -1;
      for (size_t i = 0; i < serial->lse.size(); ++i) {
        if (std::memcmp(&serial->lse[i], &overlap->lse[i], sizeof(float)) != 0) {
          if (first_lse < 0) first_lse = static_cast<int64_t>(i);
          ++lse_diff;
        }
      }
      EXPECT_EQ(out_diff, 0) << note << ": first differing output element " << first_out
                             << " (row " << first_out / batch.shape.head_dim << ")";
      EXPECT_EQ(lse_diff, 0) << note << ": first differing LSE " << first_lse
                             << (first_lse >= 0 ? absl::StrCat(" serial ", serial->lse[first_lse],
                                                               " overlap ", overlap->lse[first_lse])
                                                : "");
    }
  }
};

TEST_F(MsaWgmmaLoopsTest, SerialAndOverlappedLoopsGiveBitIdenticalOutputs) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    // GQA 4 (Hq 8, Hkv 2): 16 query tokens make a 64-row tile.
    const AttentionShape shape = MakeShape(8, 2, 128, 16, dtype);
    {
      // 64-row tiles only (the second warpgroup has no rows), holes in the context.
      std::vector<SequenceLayout> layouts;
      for (int i = 0; i < 3; ++i) {
        RandomLayoutOptions options;
        options.context_len = testing::UniformInt(rng_, 300, 1500);
        options.num_holes = 3;
        options.max_hole_len = 90;
        options.num_q_runs = 0;
        layouts.push_back(RandomLayout(options, rng_));
        const int32_t end = options.context_len;
        layouts.back().q_runs = {PositionRun{end - 16, end}};
      }
      ExpectLoopsBitIdentical(BuildTestBatch(shape, layouts, BuildOptions{}, rng_), "64-row tiles");
    }
    {
      // Full 128-row tiles (32 and 96 tokens), a partial warpgroup (24
      // tokens: 96 rows; 10 tokens: 40 rows) and 64-row tiles in one launch.
      std::vector<SequenceLayout> layouts;
      for (const int32_t tokens : {32, 96, 24, 10, 16}) {
        RandomLayoutOptions options;
        options.context_len = testing::UniformInt(rng_, 200, 1200);
        options.num_holes = 2;
        options.num_q_runs = 0;
        layouts.push_back(RandomLayout(options, rng_));
        const int32_t end = options.context_len;
        layouts.back().q_runs = {PositionRun{end - tokens, end}};
      }
      ExpectLoopsBitIdentical(BuildTestBatch(shape, layouts, BuildOptions{}, rng_),
                              "full and partial tiles");
    }
    {
      // Holes at the front, middle and tail, several query segments per
      // sequence (rows of far-apart positions share a tile), a decode query.
      std::vector<SequenceLayout> layouts;
      for (int i = 0; i < 3; ++i) {
        RandomLayoutOptions options;
        options.context_len = testing::UniformInt(rng_, 400, 2000);
        options.num_holes = 4;
        options.max_hole_len = 120;
        options.hole_at_front = true;
        options.hole_at_tail = true;
        options.num_q_runs = 3;
        options.max_q_run_len = 40;
        options.decode_query = true;
        layouts.push_back(RandomLayout(options, rng_));
      }
      ExpectLoopsBitIdentical(BuildTestBatch(shape, layouts, BuildOptions{}, rng_), "holes");
    }
  }
  // Partial pages: page size 7, pages cut at page boundaries (partial pages
  // at both ends of every run) and cut from each run's start (partial last
  // pages only); holes make the key -> page map a binary search.
  for (const bool aligned : {true, false}) {
    const AttentionShape shape = MakeShape(8, 2, 128, 7, DType::kBFloat16);
    std::vector<SequenceLayout> layouts;
    for (int i = 0; i < 3; ++i) {
      RandomLayoutOptions options;
      options.context_len = testing::UniformInt(rng_, 100, 900);
      options.num_holes = 3;
      options.max_hole_len = 30;
      options.num_q_runs = 2;
      options.max_q_run_len = 40;
      layouts.push_back(RandomLayout(options, rng_));
    }
    BuildOptions build;
    build.aligned_pages = aligned;
    ExpectLoopsBitIdentical(BuildTestBatch(shape, layouts, build, rng_),
                            aligned ? "partial pages (aligned)" : "partial pages (from run start)");
  }
}

INSTANTIATE_TEST_SUITE_P(PrefillKernel, MsaCudaKernelTest,
                         ::testing::Values(MsaPrefillKernel::kMma, MsaPrefillKernel::kWgmma,
                                           MsaPrefillKernel::kWgmmaOverlap),
                         [](const ::testing::TestParamInfo<MsaPrefillKernel>& info) {
                           return std::string(PrefillKernelName(info.param));
                         });

TEST_F(MsaCudaTest, AppendRoundTripMatchesCpuAppend) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    for (int32_t page_size : {16, 7}) {
      const AttentionShape shape = MakeShape(8, 2, 128, page_size, dtype);
      const int64_t num_pages = 40;
      const int64_t pool_elems = num_pages * shape.PageElements();
      std::vector<uint8_t> pool = testing::NaNTensor(dtype, pool_elems);
      // Distinct random slots.
      std::vector<std::pair<int32_t, int32_t>> slots;
      for (int32_t p = 0; p < num_pages; ++p) {
        for (int32_t o = 0; o < page_size; ++o) slots.push_back({p, o});
      }
      std::shuffle(slots.begin(), slots.end(), rng_);
      const int32_t tokens = testing::UniformInt(rng_, 1, static_cast<int32_t>(slots.size()));
      std::vector<int32_t> slot_pages, slot_offsets;
      for (int32_t t = 0; t < tokens; ++t) {
        slot_pages.push_back(slots[t].first);
        slot_offsets.push_back(slots[t].second);
      }
      const int64_t row_elems = int64_t{shape.num_kv_heads} * shape.head_dim;
      std::vector<uint8_t> k(tokens * row_elems * 2), v(tokens * row_elems * 2);
      testing::FillNormal(dtype, k.data(), tokens * row_elems, 1.0, rng_);
      testing::FillNormal(dtype, v.data(), tokens * row_elems, 1.0, rng_);

      std::vector<uint8_t> expected = pool;
      ASSERT_TRUE(AppendKvCpu(shape, slot_pages, slot_offsets, k.data(), v.data(),
                              expected.data(), num_pages)
                      .ok());
      absl::StatusOr<DeviceBuffer> d_pool = DeviceBuffer::Allocate(pool.size());
      absl::StatusOr<DeviceBuffer> d_k = DeviceBuffer::Allocate(k.size());
      absl::StatusOr<DeviceBuffer> d_v = DeviceBuffer::Allocate(v.size());
      absl::StatusOr<DeviceBuffer> d_pages = DeviceBuffer::Allocate(tokens * 4);
      absl::StatusOr<DeviceBuffer> d_offsets = DeviceBuffer::Allocate(tokens * 4);
      ASSERT_TRUE(d_pool.ok() && d_k.ok() && d_v.ok() && d_pages.ok() && d_offsets.ok());
      ASSERT_TRUE(CopyHostToDevice(d_pool->data(), pool.data(), pool.size()).ok());
      ASSERT_TRUE(CopyHostToDevice(d_k->data(), k.data(), k.size()).ok());
      ASSERT_TRUE(CopyHostToDevice(d_v->data(), v.data(), v.size()).ok());
      ASSERT_TRUE(CopyHostToDevice(d_pages->data(), slot_pages.data(), tokens * 4).ok());
      ASSERT_TRUE(CopyHostToDevice(d_offsets->data(), slot_offsets.data(), tokens * 4).ok());
      ASSERT_TRUE(AppendKvCuda(shape, static_cast<const int32_t*>(d_pages->data()),
                               static_cast<const int32_t*>(d_offsets->data()), tokens,
                               d_k->data(), d_v->data(), d_pool->data(), num_pages, nullptr)
                      .ok());
      ASSERT_TRUE(SynchronizeStream(nullptr).ok());
      std::vector<uint8_t> actual(pool.size());
      ASSERT_TRUE(CopyDeviceToHost(actual.data(), d_pool->data(), actual.size()).ok());
      EXPECT_EQ(0, std::memcmp(actual.data(), expected.data(), actual.size()))
          << "GPU append differs from CPU append; " << SeedNote();
    }
  }
}

// ---- planner (runs everywhere) -----------------------------------------------------

TEST(MsaPlanTest, RejectsBadBatchesShapesAndOptions) {
  const AttentionShape shape = MakeShape(8, 2, 128, 16, DType::kBFloat16);
  BatchTablesStorage good;
  good.q_indptr = {0, 2};
  good.q_pos = {5, 9};
  good.kv_indptr = {0, 1};
  good.kv_page_ids = {0};
  good.kv_page_pos = {0};
  good.kv_page_len = {10};
  HostWorkspace ws(1 << 16);
  EXPECT_TRUE(PlanMsa(shape, good.view(), 1, MsaPlanOptions{}, ws.data(), ws.size()).ok());

  BatchTablesStorage bad = good;
  bad.q_pos = {9, 5};  // not increasing
  EXPECT_EQ(PlanMsa(shape, bad.view(), 1, MsaPlanOptions{}, ws.data(), ws.size()).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.kv_page_ids = {3};  // outside the pool
  EXPECT_EQ(PlanMsa(shape, bad.view(), 1, MsaPlanOptions{}, ws.data(), ws.size()).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.kv_page_len = {17};  // longer than a page
  EXPECT_EQ(PlanMsa(shape, bad.view(), 1, MsaPlanOptions{}, ws.data(), ws.size()).status().code(),
            absl::StatusCode::kInvalidArgument);

  AttentionShape fp32 = shape;
  fp32.dtype = DType::kFloat32;
  EXPECT_EQ(PlanMsa(fp32, good.view(), 1, MsaPlanOptions{}, ws.data(), ws.size()).status().code(),
            absl::StatusCode::kInvalidArgument);
  MsaPlanOptions options;
  options.forced_kv_chunk_tokens = 100;  // not a multiple of 64
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanMsa(shape, good.view(), 1, options, ws.data(), ws.size()).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = MsaPlanOptions{};
  options.num_sms = 0;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  for (int32_t ctas : {0, -1}) {
    options = MsaPlanOptions{};
    options.target_ctas_per_sm = ctas;
    EXPECT_THAT(options.Validate().message(), HasSubstr("target_ctas_per_sm")) << ctas;
    EXPECT_EQ(PlanMsa(shape, good.view(), 1, options, ws.data(), ws.size()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << ctas;
  }
  for (int32_t chunk : {0, -128, 64, 200}) {
    options = MsaPlanOptions{};
    options.min_kv_chunk_tokens = chunk;
    EXPECT_THAT(options.Validate().message(), HasSubstr("min_kv_chunk_tokens")) << chunk;
    EXPECT_EQ(PlanMsa(shape, good.view(), 1, options, ws.data(), ws.size()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << chunk;
  }
  options = MsaPlanOptions{};
  options.min_kv_chunk_tokens = 256;
  EXPECT_TRUE(options.Validate().ok());
  for (int32_t tiling : {-1, 2}) {
    options = MsaPlanOptions{};
    options.prefill_tiling = static_cast<MsaPrefillTiling>(tiling);
    EXPECT_THAT(options.Validate().message(), HasSubstr("prefill_tiling")) << tiling;
    EXPECT_EQ(PlanMsa(shape, good.view(), 1, options, ws.data(), ws.size()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << tiling;
  }

  // Workspace: null with bytes, misaligned, too small.
  absl::Status status =
      PlanMsa(shape, good.view(), 1, MsaPlanOptions{}, nullptr, ws.size()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("host_ws is null"));
  status = PlanMsa(shape, good.view(), 1, MsaPlanOptions{},
                   static_cast<unsigned char*>(ws.data()) + 4, ws.size() - 16)
               .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("aligned"));
  EXPECT_EQ(PlanMsa(shape, good.view(), 1, MsaPlanOptions{}, ws.data(), 64).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(PlanMsa(shape, good.view(), 1, MsaPlanOptions{}, nullptr, 0).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(MsaPlanTest, ItemsCoverEveryRowAndStopAtTheTilesLastQuery) {
  const uint64_t seed = testing::FreshSeed();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  const AttentionShape shape = MakeShape(16, 4, 128, 16, DType::kBFloat16);
  std::vector<SequenceLayout> layouts;
  for (int i = 0; i < 6; ++i) {
    RandomLayoutOptions options;
    options.context_len = testing::UniformInt(rng, 10, 3000);
    options.num_q_runs = testing::UniformInt(rng, 0, 4);
    options.max_q_run_len = 100;
    options.decode_query = i % 2 == 0;
    layouts.push_back(RandomLayout(options, rng));
  }
  const TestBatch batch = BuildTestBatch(shape, layouts, BuildOptions{}, rng);
  const BatchTables tables = batch.view();
  for (auto [chunk, tiling] : {std::pair{0, MsaPrefillTiling::kLeastWork},
                               std::pair{64, MsaPrefillTiling::kLeastWork},
                               std::pair{256, MsaPrefillTiling::kLeastWork},
                               std::pair{0, MsaPrefillTiling::kFromFirstRow},
                               std::pair{256, MsaPrefillTiling::kFromFirstRow}}) {
    MsaPlanOptions options;
    options.forced_kv_chunk_tokens = chunk;
    options.allow_split_kv = false;
    options.prefill_tiling = tiling;
    const MsaWorkspaceSizes sizes = MsaWorkspaceSizesFor(
        shape, tables.batch_size(), tables.total_q(), tables.total_pages(), options);
    HostWorkspace ws(sizes.host_bytes);
    absl::StatusOr<MsaPlan> plan =
        PlanMsa(shape, tables, batch.num_pages, options, ws.data(), ws.size());
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_LE(plan->device_bytes_used, sizes.device_bytes);
    const auto* items = reinterpret_cast<const MsaWorkItem*>(
        reinterpret_cast<const uint8_t*>(ws.data()) + plan->items_offset);
    // Every (token, q head) row is covered by exactly the items whose KV
    // ranges tile [0, keys visible to the tile's last query).
    std::vector<int64_t> covered_keys(tables.total_q() * shape.num_q_heads, 0);
    for (int32_t i = 0; i < plan->num_items(); ++i) {
      const MsaWorkItem& item = items[i];
      const int32_t tile = i < plan->num_prefill_items ? kMsaPrefillTileRows : kMsaDecodeTileRows;
      ASSERT_LE(item.num_rows, tile);
      ASSERT_LE(item.kv_begin, item.kv_end);
      if (chunk > 0) {
        ASSERT_LE(item.kv_end - item.kv_begin, chunk);
      }
      for (int32_t r = 0; r < item.num_rows; ++r) {
        const int32_t token = item.q_token_begin + r / shape.group_size();
        const int32_t head = item.kv_head * shape.group_size() + r % shape.group_size();
        covered_keys[token * shape.num_q_heads + head] += item.kv_end - item.kv_begin;
      }
    }
    for (int32_t s = 0; s < tables.batch_size(); ++s) {
      int32_t keys = 0;
      for (int32_t p = tables.kv_indptr[s]; p < tables.kv_indptr[s + 1]; ++p) {
        keys += tables.kv_page_len[p];
      }
      for (int32_t t = tables.q_indptr[s]; t < tables.q_indptr[s + 1]; ++t) {
        // Keys visible to this token <= covered <= keys of the sequence.
        int32_t visible = 0;
        for (int32_t p = tables.kv_indptr[s]; p < tables.kv_indptr[s + 1]; ++p) {
          visible += std::clamp(tables.q_pos[t] - tables.kv_page_pos[p] + 1, 0,
                                tables.kv_page_len[p]);
        }
        for (int32_t h = 0; h < shape.num_q_heads; ++h) {
          const int64_t covered = covered_keys[t * shape.num_q_heads + h];
          ASSERT_GE(covered, visible) << "token " << t << " head " << h << " chunk " << chunk;
          ASSERT_LE(covered, keys) << "token " << t << " head " << h;
        }
      }
    }
  }
}

TEST(MsaPlanTest, SplitsSmallDecodeBatchesOnlyAndChunksAre128Aligned) {
  const AttentionShape shape = MakeShape(32, 8, 128, 16, DType::kBFloat16);
  auto decode_batch = [](int32_t batch_size, int32_t context) {
    BatchTablesStorage tables;
    int32_t page = 0;
    for (int32_t s = 0; s < batch_size; ++s) {
      tables.q_pos.push_back(context - 1);
      tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
      for (int32_t pos = 0; pos < context; pos += 16) {
        tables.kv_page_ids.push_back(page++);
        tables.kv_page_pos.push_back(pos);
        tables.kv_page_len.push_back(std::min(16, context - pos));
      }
      tables.kv_indptr.push_back(static_cast<int32_t>(tables.kv_page_ids.size()));
    }
    return tables;
  };
  MsaPlanOptions options;  // 132 SMs, 2 CTAs per SM
  for (auto [batch_size, expect_split] : {std::pair{1, true}, std::pair{8, true},
                                          std::pair{64, false}}) {
    const BatchTablesStorage tables = decode_batch(batch_size, 16384);
    const MsaWorkspaceSizes sizes =
        MsaWorkspaceSizesFor(shape, batch_size, batch_size,
                             static_cast<int32_t>(tables.kv_page_ids.size()), options);
    HostWorkspace ws(sizes.host_bytes);
    absl::StatusOr<MsaPlan> plan = PlanMsa(shape, tables.view(),
                                           static_cast<int64_t>(tables.kv_page_ids.size()),
                                           options, ws.data(), ws.size());
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->num_decode_items > batch_size * shape.num_kv_heads, expect_split)
        << "B=" << batch_size;
    EXPECT_EQ(plan->num_prefill_items, 0);
    EXPECT_LE(plan->num_items(), std::max(batch_size * shape.num_kv_heads,
                                          options.num_sms * options.target_ctas_per_sm));
    if (expect_split) {
      EXPECT_EQ(plan->kv_chunk_tokens % 128, 0);
      EXPECT_EQ(plan->num_merge_groups, batch_size * shape.num_kv_heads);
    }
  }
}

// Builds without CUDA link kernels/cuda_unavailable.cc: every msa_cuda.h entry
// point must answer UNAVAILABLE (and never touch its arguments). CUDA builds
// compile the real backend (msa_cuda.cu), whose answers depend on the device,
// so the test skips there.
TEST(MsaCudaUnavailableTest, EveryEntryPointReportsUnavailableWithoutCuda) {
#if defined(ASYMCACHE_WITH_CUDA)
  GTEST_SKIP() << "built with CUDA (ASYMCACHE_WITH_CUDA): the real backend is linked, not "
                  "kernels/cuda_unavailable.cc";
#else
  constexpr absl::StatusCode kUnavailable = absl::StatusCode::kUnavailable;
  const AttentionShape shape = MakeShape(8, 2, 128, 16, DType::kBFloat16);
  BatchTablesStorage tables;
  tables.q_indptr = {0, 1};
  tables.q_pos = {3};
  tables.kv_indptr = {0, 1};
  tables.kv_page_ids = {0};
  tables.kv_page_pos = {0};
  tables.kv_page_len = {4};
  HostWorkspace ws(1 << 16);
  absl::StatusOr<MsaPlan> plan =
      PlanMsa(shape, tables.view(), 1, MsaPlanOptions{}, ws.data(), ws.size());
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<uint64_t> host(1024, 0);
  std::vector<float> lse(8, 0.0f);
  const int32_t slot[] = {0};

  EXPECT_EQ(QueryGpu().status().code(), kUnavailable);
  EXPECT_EQ(QueryGpu(1).status().code(), kUnavailable);
  EXPECT_FALSE(MsaWgmmaAvailable());
  EXPECT_FALSE(MsaWgmmaAvailable(0));
  EXPECT_EQ(ResolvedPrefillKernel(*plan), MsaPrefillKernel::kMma);
  EXPECT_EQ(UploadMsaPlan(*plan, ws.data(), host.data(), 1 << 16, nullptr).code(), kUnavailable);
  EXPECT_EQ(RunMsaCuda(*plan, shape, host.data(), host.data(), host.data(), lse.data(),
                       host.data(), nullptr)
                .code(),
            kUnavailable);
  EXPECT_EQ(AppendKvCuda(shape, slot, slot, 1, host.data(), host.data(), host.data(), 1, nullptr)
                .code(),
            kUnavailable);
  EXPECT_EQ(DeviceBuffer::Allocate(16).status().code(), kUnavailable);
  EXPECT_EQ(PinnedHostBuffer::Allocate(16).status().code(), kUnavailable);
  EXPECT_EQ(CudaStream::Create().status().code(), kUnavailable);
  EXPECT_EQ(CopyHostToDevice(host.data(), host.data() + 8, 8).code(), kUnavailable);
  EXPECT_EQ(CopyDeviceToHost(host.data(), host.data() + 8, 8).code(), kUnavailable);
  EXPECT_EQ(FillDeviceBytes(host.data(), 0xFF, 8).code(), kUnavailable);
  EXPECT_EQ(SynchronizeStream(nullptr).code(), kUnavailable);
  int body_calls = 0;
  const auto body = [&body_calls](void*) {
    ++body_calls;
    return absl::OkStatus();
  };
  EXPECT_EQ(CaptureAndReplay(body, 3).code(), kUnavailable);
  EXPECT_EQ(TimeOnStream(body, 1, 3).status().code(), kUnavailable);
  EXPECT_EQ(body_calls, 0);
  // Nothing was written through the pointers.
  EXPECT_THAT(host, ::testing::Each(uint64_t{0}));
  EXPECT_THAT(lse, ::testing::Each(0.0f));

  // Default-constructed and moved-from handles are empty.
  DeviceBuffer device_buffer;
  EXPECT_EQ(device_buffer.data(), nullptr);
  EXPECT_EQ(DeviceBuffer(std::move(device_buffer)).size(), 0u);
  PinnedHostBuffer pinned;
  EXPECT_EQ(PinnedHostBuffer(std::move(pinned)).data(), nullptr);
  CudaStream stream;
  EXPECT_EQ(CudaStream(std::move(stream)).get(), nullptr);
#endif
}

}  // namespace
}  // namespace asymcache::msa
