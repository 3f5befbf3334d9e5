// Random MSA batch structures and tensors for the CPU and GPU kernel tests.
//
// What: a SequenceLayout says which absolute positions of a sequence have K/V in
// the pool (runs, with holes between) and which positions are queries (runs).
// RandomLayout() draws one; BuildTestBatch() turns layouts into a validated
// BatchTablesStorage (pages cut from the KV runs, partial pages where a run ends,
// pages placed at random ids in a pool larger than needed) plus fresh random q
// and kv pool tensors in any dtype. Pool slots no page uses (unused pages, rows
// past a partial page's length) are filled with NaN by default, so a kernel that
// reads outside the tables produces NaN and fails.
//
// Seeds: FreshSeed() returns ASYMCACHE_TEST_SEED from the environment when set
// (to replay a failure), else a random seed; tests log it.
// Header-only (the GPU tests include it); no gtest dependency; functions are
// pure apart from the rng they are given.
#ifndef ASYMCACHE_TESTS_KERNELS_MSA_TEST_UTIL_H_
#define ASYMCACHE_TESTS_KERNELS_MSA_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/msa.h"

namespace asymcache::msa::testing {

// Positions [begin, end).
struct PositionRun {
  int32_t begin = 0;
  int32_t end = 0;
};

struct SequenceLayout {
  std::vector<PositionRun> kv_runs;  // sorted, disjoint: positions whose K/V are in the pool
  std::vector<PositionRun> q_runs;   // sorted, disjoint: query positions
};

inline uint64_t FreshSeed() {
  if (const char* env = std::getenv("ASYMCACHE_TEST_SEED"); env != nullptr && *env != '\0') {
    return std::strtoull(env, nullptr, 10);
  }
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

inline int32_t UniformInt(std::mt19937_64& rng, int32_t low, int32_t high) {  // [low, high]
  return std::uniform_int_distribution<int32_t>(low, high)(rng);
}

// Runs of consecutive set entries of a per-position mask.
inline std::vector<PositionRun> RunsOfMask(const std::vector<char>& mask) {
  std::vector<PositionRun> runs;
  const int32_t size = static_cast<int32_t>(mask.size());
  for (int32_t pos = 0; pos < size;) {
    if (!mask[pos]) {
      ++pos;
      continue;
    }
    const int32_t begin = pos;
    while (pos < size && mask[pos]) ++pos;
    runs.push_back(PositionRun{begin, pos});
  }
  return runs;
}

struct RandomLayoutOptions {
  int32_t context_len = 256;     // the sequence covers positions [0, context_len)
  int32_t num_holes = 2;         // random runs missing from the KV
  int32_t max_hole_len = 48;
  // KV starts after position 0 (kept by drawing the query runs after it,
  // where the context is long enough for a run to fit).
  bool hole_at_front = false;
  bool hole_at_tail = false;     // KV ends before context_len - 1 (likewise)
  int32_t num_q_runs = 2;        // random query runs
  int32_t max_q_run_len = 24;
  bool decode_query = false;     // add a query at context_len - 1
  bool queries_have_kv = true;   // a query position's own K/V is in the pool (appended)
};

inline SequenceLayout RandomLayout(const RandomLayoutOptions& options, std::mt19937_64& rng) {
  const int32_t length = std::max(1, options.context_len);
  std::vector<char> kv(length, 1);
  std::vector<char> query(length, 0);
  const int32_t max_hole = std::max(1, std::min(options.max_hole_len, length));
  auto clear = [&](int32_t begin, int32_t end) {
    std::fill(kv.begin() + std::max(0, begin), kv.begin() + std::min(length, end), 0);
  };
  for (int32_t h = 0; h < options.num_holes; ++h) {
    const int32_t hole = UniformInt(rng, 1, max_hole);
    const int32_t begin = UniformInt(rng, 0, length - hole);
    clear(begin, begin + hole);
  }
  // The front and tail holes stay holes: query runs (whose positions get K/V
  // with queries_have_kv) are drawn between them where they fit.
  int32_t front = 0;
  int32_t tail = 0;
  if (options.hole_at_front) {
    front = UniformInt(rng, 1, max_hole);
    clear(0, front);
  }
  if (options.hole_at_tail) {
    tail = UniformInt(rng, 1, max_hole);
    clear(length - tail, length);
  }
  const int32_t max_run = std::max(1, std::min(options.max_q_run_len, length));
  for (int32_t r = 0; r < options.num_q_runs; ++r) {
    const int32_t run = UniformInt(rng, 1, max_run);
    const int32_t last_begin = length - run;
    const int32_t lo = std::min(front, last_begin);
    const int32_t hi = std::max(lo, std::min(last_begin, length - tail - run));
    const int32_t begin = UniformInt(rng, lo, hi);
    std::fill(query.begin() + begin, query.begin() + begin + run, 1);
  }
  if (options.decode_query) query[length - 1] = 1;
  if (options.queries_have_kv) {
    for (int32_t pos = 0; pos < length; ++pos) kv[pos] |= query[pos];
  }
  return SequenceLayout{RunsOfMask(kv), RunsOfMask(query)};
}

struct BuildOptions {
  // Pages start at multiples of page_size (a run then yields partial pages at
  // both of its ends); otherwise each run is cut from its first position.
  bool aligned_pages = true;
  // Pool pages beyond those the tables use: random in [0, max_extra_pages].
  int32_t max_extra_pages = 8;
  // NaN in every pool slot the tables do not cover.
  bool poison_unused_slots = true;
  double value_stddev = 1.0;  // q, k, v ~ N(0, stddev^2), rounded to the dtype
};

struct TestBatch {
  AttentionShape shape;
  std::vector<SequenceLayout> layouts;
  BatchTablesStorage tables;
  int64_t num_pages = 0;
  std::vector<uint8_t> q;        // [total_q][Hq][D] in shape.dtype
  std::vector<uint8_t> kv_pool;  // [num_pages][2][page_size][Hkv][D] in shape.dtype

  BatchTables view() const { return tables.view(); }
  int64_t total_q() const { return tables.q_indptr.back(); }
  int64_t out_elements() const { return total_q() * shape.num_q_heads * shape.head_dim; }
  int64_t lse_elements() const { return total_q() * shape.num_q_heads; }
};

inline void StoreElement(DType dtype, void* base, int64_t index, float value) {
  switch (dtype) {
    case DType::kFloat32:
      static_cast<float*>(base)[index] = value;
      return;
    case DType::kBFloat16:
      static_cast<bf16_t*>(base)[index] = ToBf16(value);
      return;
    case DType::kFloat16:
      static_cast<fp16_t*>(base)[index] = ToFp16(value);
      return;
  }
}

inline double LoadElement(DType dtype, const void* base, int64_t index) {
  switch (dtype) {
    case DType::kFloat32:
      return static_cast<const float*>(base)[index];
    case DType::kBFloat16:
      return ToFloat(static_cast<const bf16_t*>(base)[index]);
    case DType::kFloat16:
      return ToFloat(static_cast<const fp16_t*>(base)[index]);
  }
  return std::numeric_limits<double>::quiet_NaN();
}

inline void FillNormal(DType dtype, void* base, int64_t count, double stddev,
                       std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, static_cast<float>(stddev));
  for (int64_t i = 0; i < count; ++i) StoreElement(dtype, base, i, normal(rng));
}

inline void FillNaN(DType dtype, void* base, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    StoreElement(dtype, base, i, std::numeric_limits<float>::quiet_NaN());
  }
}

inline std::vector<uint8_t> NaNTensor(DType dtype, int64_t count) {
  std::vector<uint8_t> bytes(static_cast<size_t>(count * DTypeBytes(dtype)));
  FillNaN(dtype, bytes.data(), count);
  return bytes;
}

inline std::vector<double> ToDoubles(DType dtype, const void* base, int64_t count) {
  std::vector<double> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) values[i] = LoadElement(dtype, base, i);
  return values;
}

inline int64_t CountNaN(const std::vector<double>& values) {
  return std::count_if(values.begin(), values.end(), [](double x) { return std::isnan(x); });
}

// ||actual - expected|| / ||expected|| (absolute norm when expected is 0);
// NaN anywhere gives NaN, which fails every `<=` check.
inline double RelativeErrorNorm(const std::vector<double>& actual,
                                const std::vector<double>& expected) {
  if (actual.size() != expected.size()) return std::numeric_limits<double>::quiet_NaN();
  double diff = 0.0;
  double norm = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// Builds tables and tensors for `layouts`. Pages are cut from each KV run
// (BuildOptions), given distinct random ids in a pool of used + extra pages.
inline TestBatch BuildTestBatch(const AttentionShape& shape, std::vector<SequenceLayout> layouts,
                                const BuildOptions& options, std::mt19937_64& rng) {
  TestBatch batch;
  batch.shape = shape;
  batch.layouts = std::move(layouts);
  BatchTablesStorage& tables = batch.tables;
  const int32_t page_size = shape.page_size;
  for (const SequenceLayout& layout : batch.layouts) {
    for (const PositionRun& run : layout.q_runs) {
      for (int32_t pos = run.begin; pos < run.end; ++pos) tables.q_pos.push_back(pos);
    }
    tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
    for (const PositionRun& run : layout.kv_runs) {
      for (int32_t pos = run.begin; pos < run.end;) {
        int32_t page_end = pos + page_size;
        if (options.aligned_pages) page_end = (pos / page_size + 1) * page_size;
        page_end = std::min(page_end, run.end);
        tables.kv_page_pos.push_back(pos);
        tables.kv_page_len.push_back(page_end - pos);
        pos = page_end;
      }
    }
    tables.kv_indptr.push_back(static_cast<int32_t>(tables.kv_page_pos.size()));
  }
  const int64_t used_pages = static_cast<int64_t>(tables.kv_page_pos.size());
  batch.num_pages = used_pages + UniformInt(rng, 0, std::max(0, options.max_extra_pages));
  std::vector<int32_t> page_ids(static_cast<size_t>(batch.num_pages));
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::shuffle(page_ids.begin(), page_ids.end(), rng);
  tables.kv_page_ids.assign(page_ids.begin(), page_ids.begin() + used_pages);

  const DType dtype = shape.dtype;
  const int64_t bytes = DTypeBytes(dtype);
  const int64_t q_count = batch.total_q() * shape.num_q_heads * shape.head_dim;
  batch.q.resize(static_cast<size_t>(q_count * bytes));
  FillNormal(dtype, batch.q.data(), q_count, options.value_stddev, rng);

  const int64_t row_elems = int64_t{shape.num_kv_heads} * shape.head_dim;
  const int64_t page_elems = shape.PageElements();
  batch.kv_pool.resize(static_cast<size_t>(batch.num_pages * page_elems * bytes));
  if (options.poison_unused_slots) {
    FillNaN(dtype, batch.kv_pool.data(), batch.num_pages * page_elems);
    for (int64_t p = 0; p < used_pages; ++p) {
      const int64_t page_base = int64_t{tables.kv_page_ids[p]} * page_elems;
      const int64_t rows = tables.kv_page_len[p];
      for (int64_t block = 0; block < 2; ++block) {  // K then V
        uint8_t* start = batch.kv_pool.data() +
                         (page_base + block * page_size * row_elems) * bytes;
        FillNormal(dtype, start, rows * row_elems, options.value_stddev, rng);
      }
    }
  } else {
    FillNormal(dtype, batch.kv_pool.data(), batch.num_pages * page_elems, options.value_stddev,
               rng);
  }
  return batch;
}

inline std::string DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "fp32";
    case DType::kBFloat16:
      return "bf16";
    case DType::kFloat16:
      return "fp16";
  }
  return "unknown";
}

// An AttentionShape with the given heads, head size, page size and dtype
// (sm_scale left at its default).
inline AttentionShape MakeShape(int32_t q_heads, int32_t kv_heads, int32_t head_dim,
                                int32_t page_size, DType dtype) {
  AttentionShape shape;
  shape.num_q_heads = q_heads;
  shape.num_kv_heads = kv_heads;
  shape.head_dim = head_dim;
  shape.page_size = page_size;
  shape.dtype = dtype;
  return shape;
}

// Largest relative error norm a backend's output may have against the double
// reference, by dtype: fp32 1e-5 (CPU only), bf16 1e-2, fp16 2e-3.
inline double ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 1e-5;
    case DType::kBFloat16:
      return 1e-2;
    case DType::kFloat16:
      return 2e-3;
  }
  return 0.0;
}

}  // namespace asymcache::msa::testing

#endif  // ASYMCACHE_TESTS_KERNELS_MSA_TEST_UTIL_H_
