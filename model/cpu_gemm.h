// CpuGemm: the CPU backend's fp32 matrix multiply y = x W^T and the worker
// threads it (and the backend's other row loops) run on.
//
// Batch invariance (why this is hand-written instead of BLAS): every output
// element y[r][c] = sum_k x[r][k] * W[c][k] is reduced in ONE fixed order that
// depends only on k's extent: eight interleaved partial sums (lane i takes
// k = 8j + i), combined as ((p0+p4)+(p1+p5))+((p2+p6)+(p3+p7)), then the
// k % 8 tail added one by one. It does not depend on the number of rows, the
// row's index, the tiling or the thread split, so a token's activations are
// bitwise the same whatever else is in the batch. (BLAS kernels change their
// reduction order with the matrix shape.)
//
// Threads: num_threads - 1 helper threads live as long as the object; the
// calling thread works too. Work is split into independent tiles handed out
// by an atomic counter.
//
// Contract: one caller at a time (Multiply / ParallelFor are not reentrant;
// the backend's step thread owns the object). Pointers are borrowed for the
// call. Thread-safety of the internals is checked by the lock annotations.
#ifndef ASYMCACHE_MODEL_CPU_GEMM_H_
#define ASYMCACHE_MODEL_CPU_GEMM_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace asymcache::model {

class CpuGemm {
 public:
  // num_threads >= 1 workers in total (the caller included). Fewer helpers
  // are used when the system refuses to start more threads.
  explicit CpuGemm(int num_threads);
  ~CpuGemm();
  CpuGemm(const CpuGemm&) = delete;
  CpuGemm& operator=(const CpuGemm&) = delete;

  int num_threads() const { return static_cast<int>(helpers_.size()) + 1; }

  // y[r][c] = sum_k x[r][k] * w[c][k] for r < rows, c < cols, k < depth.
  // x: rows x depth (row stride depth), w: cols x depth, y: rows x cols.
  // y must not overlap x or w.
  void Multiply(const float* x, int64_t rows, const float* w, int64_t cols, int64_t depth,
                float* y);

  // Calls fn(i) once for every i in [0, count), spread over the workers;
  // returns when all calls have returned. fn must be safe to call
  // concurrently for distinct i.
  void ParallelFor(int64_t count, absl::FunctionRef<void(int64_t)> fn);

 private:
  void HelperLoop();
  // Claims and runs indices of the current job until none are left.
  static void Drain(absl::FunctionRef<void(int64_t)> fn, int64_t count,
                    std::atomic<int64_t>& next);

  absl::Mutex mu_;
  absl::CondVar job_posted_;   // generation_ advanced or stopping_
  absl::CondVar job_finished_; // busy_helpers_ reached 0
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int busy_helpers_ ABSL_GUARDED_BY(mu_) = 0;
  // The current job (valid while busy_helpers_ > 0 or the caller drains it).
  const absl::FunctionRef<void(int64_t)>* job_fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t job_count_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int64_t> job_next_{0};

  // Immutable after construction.
  std::vector<std::thread> helpers_;
};

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_CPU_GEMM_H_
