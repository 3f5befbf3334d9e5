// LinearGemm: the linear layers of the CUDA model backend on cuBLASLt.
//
// What: y = x W^T for row-major x [n][k] and a weight W stored as Hugging Face
// does, row-major [m][k] (out, in); y row-major [n][m]. x and W are 16-bit
// (bf16 or fp16), accumulation fp32. The output is either 16-bit (overwritten)
// or fp32, optionally accumulated in place (y += x W^T: the residual add fused
// into the GEMM epilogue). In cuBLASLt's column-major terms this is the "TN"
// product D[m][n] = op_T(W) x with ld = k for both operands.
//
// Algorithms come from cuBLASLt's heuristic. With Options::bucket_rows the
// heuristic is asked once per row bucket (model/gemm_buckets.h:
// n rounded up, at most 25%) and the algorithm is reused for every n in the
// bucket after cublasLtMatmulAlgoCheck accepts it for that n (else the
// heuristic is asked for that n); without it, once per distinct n. Plans
// (descriptors + algorithm) are cached per (m, n, k, types, accumulate), so
// a decode step reuses them every layer and every step without host cost
// beyond a map lookup; the plan cache holds at most kMaxCachedShapes entries
// and is cleared when full, the bucket algorithms are kept. The CUDA
// backend runs every bucket once at creation (CudaBackendOptions::
// warm_gemm_buckets) so engine steps find those plans and kernels ready.
//
// Ownership: owns the cuBLASLt handle, its workspace and the cached
// descriptors, and with Options::heuristic_off_thread a helper thread (its
// own cuBLASLt handle; joined by the destructor). Pointers passed to Run are
// borrowed for the (asynchronous) call; they must be 256-byte aligned
// (cuBLASLt's default alignment assumption for the heuristic). Thread-safety:
// Run from one thread at a time (the
// backend's step thread); Run enqueues on the caller's stream and never
// synchronizes.
//
// Included only by .cu files (CUDA headers).
#ifndef ASYMCACHE_MODEL_CUDA_GEMM_CUH_
#define ASYMCACHE_MODEL_CUDA_GEMM_CUH_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <thread>
#include <tuple>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/msa.h"
#include "kernels/msa_cuda.h"

namespace asymcache::model::cuda {

class LinearGemm {
 public:
  // cuBLASLt workspace: 32 MiB, what NVIDIA recommends for Hopper so that
  // split-K and stream-K algorithms are not excluded.
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  static constexpr size_t kMaxCachedShapes = 4096;

  struct Options {
    // Reuse one heuristic algorithm per row bucket (model/gemm_buckets.h).
    // Default false: the heuristic is asked for every distinct n (the best
    // algorithm for each; see CudaBackendOptions::gemm_row_buckets).
    bool bucket_rows = false;
    // Without bucket_rows: a size seen for the first time runs with its row
    // bucket's algorithm (when that bucket has run, e.g. in the CUDA
    // backend's warm-up, and cublasLtMatmulAlgoCheck accepts it) while a
    // helper thread asks the heuristic for the size itself, which the calls
    // after the answer use, so the heuristic query (~1 ms per GEMM shape on
    // an H100) leaves the step thread. Default false here; the CUDA backend
    // sets it from CudaBackendOptions::gemm_heuristic_off_thread (default
    // true, measured: docs/worker.md, "Steps of new sizes").
    bool heuristic_off_thread = false;
  };

  // INTERNAL when cuBLASLt cannot be initialised or the workspace not allocated.
  static absl::StatusOr<std::unique_ptr<LinearGemm>> Create(Options options);
  static absl::StatusOr<std::unique_ptr<LinearGemm>> Create() { return Create(Options{}); }
  ~LinearGemm();
  LinearGemm(const LinearGemm&) = delete;
  LinearGemm& operator=(const LinearGemm&) = delete;

  // y[n][m] (=|+=) x[n][k] W[m][k]^T. io_dtype: kBFloat16 or kFloat16 (x, W);
  // out_fp32: y is fp32 (else io_dtype); accumulate: y += (needs out_fp32).
  // n == 0 is a no-op. INVALID_ARGUMENT for bad sizes/types, INTERNAL when
  // cuBLASLt has no algorithm or fails.
  absl::Status Run(const void* weight, const void* x, void* y, int64_t m, int64_t n, int64_t k,
                   msa::DType io_dtype, bool out_fp32, bool accumulate, cudaStream_t stream);

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int, bool, bool>;

  explicit LinearGemm(Options options);  // in the .cu: Plan is complete there
  absl::StatusOr<const Plan*> PlanFor(const Key& key);
  // The heuristic's algorithm (asked on `handle`) for `key`'s shape with its
  // layouts `plan`.
  absl::StatusOr<cublasLtMatmulAlgo_t> Heuristic(cublasLtHandle_t handle, const Plan& plan,
                                                 const Key& key);
  // Plan descriptors (no algorithm) for `key`.
  absl::StatusOr<std::unique_ptr<Plan>> Describe(const Key& key);
  void ClearCache();
  // The helper thread: answers requests_ until stopping_.
  void HeuristicLoop();

  const Options options_;
  cublasLtHandle_t handle_ = nullptr;
  msa::DeviceBuffer workspace_;
  // Run's thread only.
  std::map<Key, std::unique_ptr<Plan>> cache_;
  std::map<Key, cublasLtMatmulAlgo_t> bucket_algos_;  // key n = the bucket
  // Sizes running with their bucket's algorithm until the helper answers.
  std::map<Key, std::unique_ptr<Plan>> provisional_;
  // Shared with the helper thread.
  absl::Mutex mu_;
  std::deque<Key> requests_ ABSL_GUARDED_BY(mu_);
  std::map<Key, absl::StatusOr<cublasLtMatmulAlgo_t>> answers_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  cublasLtHandle_t helper_handle_ = nullptr;
  std::thread helper_;
  int device_ = 0;  // the device current at Create; the helper thread makes it current
};

}  // namespace asymcache::model::cuda

#endif  // ASYMCACHE_MODEL_CUDA_GEMM_CUH_
