// CpuGemm (model/cpu_gemm.h): the batch-invariant fp32 GEMM and its worker
// threads.
#include "model/cpu_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <system_error>
#include <thread>

#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace asymcache::model {
namespace {

// Eight fp32 partial sums per output element, held as two 4-lane vectors
// (GCC/clang vector extension; SSE registers on plain x86-64): `lo` holds
// lanes 0-3, `hi` lanes 4-7. Lane-wise mul and add are exactly the scalar fp32
// operations, so the reduction order is the one documented in the header
// whatever instructions the compiler picks.
typedef float Quad __attribute__((vector_size(16)));
constexpr int64_t kLanes = 8;

// Tiles handed to the workers: kTileRows rows x kTileCols columns of y.
constexpr int64_t kTileRows = 32;
constexpr int64_t kTileCols = 64;

inline Quad LoadQuad(const float* p) {
  Quad v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The fixed combination of the eight partial sums
// ((p0+p4)+(p1+p5))+((p2+p6)+(p3+p7)), then the depth % 8 tail in order.
inline float FinishDot(Quad lo, Quad hi, const float* x, const float* w, int64_t vector_depth,
                       int64_t depth) {
  const Quad pair = lo + hi;  // p_i + p_(i+4)
  float sum = (pair[0] + pair[1]) + (pair[2] + pair[3]);
  for (int64_t k = vector_depth; k < depth; ++k) sum += x[k] * w[k];
  return sum;
}

// y[r][c] for r < kRows, c < kCols of a register block. Every element follows
// the same per-element order, so blocks of any size give identical bits.
template <int kRows, int kCols>
inline void MultiplyBlock(const float* x, const float* w, int64_t depth, float* y,
                          int64_t y_stride) {
  Quad lo[kRows][kCols];
  Quad hi[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) lo[r][c] = hi[r][c] = Quad{};
  }
  const int64_t vector_depth = depth - depth % kLanes;
  for (int64_t k = 0; k < vector_depth; k += kLanes) {
    Quad x_lo[kRows];
    Quad x_hi[kRows];
    for (int r = 0; r < kRows; ++r) {
      x_lo[r] = LoadQuad(x + r * depth + k);
      x_hi[r] = LoadQuad(x + r * depth + k + 4);
    }
    for (int c = 0; c < kCols; ++c) {
      const Quad w_lo = LoadQuad(w + c * depth + k);
      const Quad w_hi = LoadQuad(w + c * depth + k + 4);
      for (int r = 0; r < kRows; ++r) {
        lo[r][c] += x_lo[r] * w_lo;
        hi[r][c] += x_hi[r] * w_hi;
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) {
      y[r * y_stride + c] =
          FinishDot(lo[r][c], hi[r][c], x + r * depth, w + c * depth, vector_depth, depth);
    }
  }
}

// Register-block shape of the bulk of a tile (2 x 4: eight accumulators).
constexpr int kBlockRows = 2;
constexpr int kBlockCols = 4;

void MultiplyTile(const float* x, int64_t row_begin, int64_t row_end, const float* w,
                  int64_t col_begin, int64_t col_end, int64_t cols, int64_t depth, float* y) {
  int64_t c = col_begin;
  for (; c + kBlockCols <= col_end; c += kBlockCols) {
    int64_t r = row_begin;
    for (; r + kBlockRows <= row_end; r += kBlockRows) {
      MultiplyBlock<kBlockRows, kBlockCols>(x + r * depth, w + c * depth, depth, y + r * cols + c,
                                            cols);
    }
    for (; r < row_end; ++r) {
      MultiplyBlock<1, kBlockCols>(x + r * depth, w + c * depth, depth, y + r * cols + c, cols);
    }
  }
  for (; c < col_end; ++c) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      MultiplyBlock<1, 1>(x + r * depth, w + c * depth, depth, y + r * cols + c, cols);
    }
  }
}

}  // namespace

CpuGemm::CpuGemm(int num_threads) {
  const int helpers = std::max(num_threads, 1) - 1;
  helpers_.reserve(helpers);
  for (int i = 0; i < helpers; ++i) {
    try {
      helpers_.emplace_back([this] { HelperLoop(); });
    } catch (const std::system_error&) {
      break;  // fewer helpers; ParallelFor works with any number
    }
  }
}

CpuGemm::~CpuGemm() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  job_posted_.SignalAll();
  for (std::thread& helper : helpers_) helper.join();
}

void CpuGemm::Drain(absl::FunctionRef<void(int64_t)> fn, int64_t count,
                    std::atomic<int64_t>& next) {
  for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < count;
       i = next.fetch_add(1, std::memory_order_relaxed)) {
    fn(i);
  }
}

void CpuGemm::HelperLoop() {
  uint64_t seen = 0;
  while (true) {
    const absl::FunctionRef<void(int64_t)>* fn = nullptr;
    int64_t count = 0;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && generation_ == seen) job_posted_.Wait(&mu_);
      if (stopping_) return;
      seen = generation_;
      fn = job_fn_;
      count = job_count_;
    }
    Drain(*fn, count, job_next_);
    absl::MutexLock lock(&mu_);
    if (--busy_helpers_ == 0) job_finished_.Signal();
  }
}

void CpuGemm::ParallelFor(int64_t count, absl::FunctionRef<void(int64_t)> fn) {
  if (count <= 0) return;
  if (helpers_.empty() || count == 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    job_fn_ = &fn;
    job_count_ = count;
    job_next_.store(0, std::memory_order_relaxed);
    busy_helpers_ = static_cast<int>(helpers_.size());
    ++generation_;
  }
  job_posted_.SignalAll();
  Drain(fn, count, job_next_);
  absl::MutexLock lock(&mu_);
  while (busy_helpers_ > 0) job_finished_.Wait(&mu_);
  job_fn_ = nullptr;
}

void CpuGemm::Multiply(const float* x, int64_t rows, const float* w, int64_t cols, int64_t depth,
                       float* y) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t col_tiles = (cols + kTileCols - 1) / kTileCols;
  ParallelFor(row_tiles * col_tiles, [&](int64_t tile) {
    const int64_t row_begin = (tile / col_tiles) * kTileRows;
    const int64_t col_begin = (tile % col_tiles) * kTileCols;
    MultiplyTile(x, row_begin, std::min(rows, row_begin + kTileRows), w, col_begin,
                 std::min(cols, col_begin + kTileCols), cols, depth, y);
  });
}

}  // namespace asymcache::model
