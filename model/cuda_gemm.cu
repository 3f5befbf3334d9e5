// LinearGemm (model/cuda_gemm.cuh): cuBLASLt TN products with cached
// heuristic algorithms.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <memory>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "model/cuda_cublaslt.cuh"
#include "model/cuda_gemm.cuh"
#include "model/gemm_buckets.h"

namespace asymcache::model::cuda {
namespace {

// The loaded table; LinearGemm::Create loads it before any other use.
const CublasLtApi& Lt() { return **CublasLt(); }

absl::Status LtStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", Lt().GetStatusName(status), " (",
                                          Lt().GetStatusString(status), ")"));
}

#define ASYMCACHE_LT_RETURN_IF_ERROR(expr)                                       \
  do {                                                                           \
    const cublasStatus_t lt_status_ = (expr);                                    \
    if (lt_status_ != CUBLAS_STATUS_SUCCESS) return LtStatus(lt_status_, #expr); \
  } while (0)

}  // namespace

struct LinearGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // W: column-major [k][m], ld k (op T)
  cublasLtMatrixLayout_t b = nullptr;  // x: column-major [k][n], ld k
  cublasLtMatrixLayout_t d = nullptr;  // y: column-major [m][n], ld m (C = D)
  cublasLtMatmulAlgo_t algo{};

  ~Plan() {
    if (d != nullptr) Lt().MatrixLayoutDestroy(d);
    if (b != nullptr) Lt().MatrixLayoutDestroy(b);
    if (a != nullptr) Lt().MatrixLayoutDestroy(a);
    if (op != nullptr) Lt().MatmulDescDestroy(op);
  }
};

absl::StatusOr<std::unique_ptr<LinearGemm>> LinearGemm::Create(Options options) {
  if (absl::StatusOr<const CublasLtApi*> lt = CublasLt(); !lt.ok()) return lt.status();
  std::unique_ptr<LinearGemm> gemm(new LinearGemm(options));
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().Create(&gemm->handle_));
  absl::StatusOr<msa::DeviceBuffer> workspace = msa::DeviceBuffer::Allocate(kWorkspaceBytes);
  if (!workspace.ok()) return workspace.status();
  gemm->workspace_ = *std::move(workspace);
  if (options.heuristic_off_thread && !options.bucket_rows) {
    // The helper thread's CUDA calls go to this device, not device 0.
    if (const cudaError_t e = cudaGetDevice(&gemm->device_); e != cudaSuccess) {
      return absl::InternalError(
          absl::StrCat("cudaGetDevice for the GEMM heuristic helper: ", cudaGetErrorString(e)));
    }
    ASYMCACHE_LT_RETURN_IF_ERROR(Lt().Create(&gemm->helper_handle_));
    gemm->helper_ = std::thread([raw = gemm.get()] { raw->HeuristicLoop(); });
  }
  return gemm;
}

LinearGemm::LinearGemm(Options options) : options_(options) {}

LinearGemm::~LinearGemm() {
  if (helper_.joinable()) {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    helper_.join();
  }
  if (helper_handle_ != nullptr) Lt().Destroy(helper_handle_);
  ClearCache();
  if (handle_ != nullptr) Lt().Destroy(handle_);
}

void LinearGemm::ClearCache() {
  cache_.clear();
  provisional_.clear();
  absl::MutexLock lock(&mu_);
  answers_.clear();  // answers for sizes no longer waiting (asked again if used again)
}

void LinearGemm::HeuristicLoop() {
  // A new thread starts on device 0: answer for the backend's own device.
  // Should this fail, every query below fails too and the sizes keep their
  // bucket's algorithm (a failed answer is handled in PlanFor).
  (void)cudaSetDevice(device_);
  while (true) {
    Key key;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !requests_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      key = requests_.front();
      requests_.pop_front();
    }
    absl::StatusOr<cublasLtMatmulAlgo_t> algo = [&]() -> absl::StatusOr<cublasLtMatmulAlgo_t> {
      absl::StatusOr<std::unique_ptr<Plan>> plan = Describe(key);
      if (!plan.ok()) return plan.status();
      return Heuristic(helper_handle_, **plan, key);
    }();
    absl::MutexLock lock(&mu_);
    answers_.insert_or_assign(key, std::move(algo));
  }
}

absl::StatusOr<std::unique_ptr<LinearGemm::Plan>> LinearGemm::Describe(const Key& key) {
  const auto [m, n, k, io, out_fp32, accumulate] = key;
  const cudaDataType_t ab_type =
      static_cast<msa::DType>(io) == msa::DType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
  const cudaDataType_t d_type = out_fp32 ? CUDA_R_32F : ab_type;
  auto plan = std::make_unique<Plan>();
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T;
  const cublasOperation_t trans_b = CUBLAS_OP_N;
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                              &trans_a, sizeof(trans_a)));
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                              &trans_b, sizeof(trans_b)));
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(&plan->a, ab_type, k, m, k));
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(&plan->b, ab_type, k, n, k));
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(&plan->d, d_type, m, n, m));
  return plan;
}

absl::StatusOr<cublasLtMatmulAlgo_t> LinearGemm::Heuristic(cublasLtHandle_t handle,
                                                         const Plan& plan, const Key& key) {
  cublasLtMatmulPreference_t preference = nullptr;
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().MatmulPreferenceCreate(&preference));
  const uint64_t workspace_bytes = workspace_.size();
  cublasStatus_t status =
      Lt().MatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace_bytes, sizeof(workspace_bytes));
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = Lt().MatmulAlgoGetHeuristic(handle, plan.op, plan.a, plan.b, plan.d, plan.d,
                                            preference, 1, &result, &returned);
  }
  Lt().MatmulPreferenceDestroy(preference);
  ASYMCACHE_LT_RETURN_IF_ERROR(status);
  if (returned == 0) {
    const auto [m, n, k, io, out_fp32, accumulate] = key;
    return absl::InternalError(absl::StrCat(
        "cuBLASLt has no algorithm for y[", n, "][", m, "] = x[", n, "][", k, "] W^T (out ",
        out_fp32 ? "fp32" : "16-bit", accumulate ? ", accumulate" : "", ")"));
  }
  return result.algo;
}

absl::StatusOr<const LinearGemm::Plan*> LinearGemm::PlanFor(const Key& key) {
  if (auto it = cache_.find(key); it != cache_.end()) return it->second.get();
  if (auto it = provisional_.find(key); it != provisional_.end()) {
    // Running with the bucket's algorithm: has the helper answered?
    std::optional<absl::StatusOr<cublasLtMatmulAlgo_t>> answer;
    {
      absl::MutexLock lock(&mu_);
      if (auto a = answers_.find(key); a != answers_.end()) {
        answer = std::move(a->second);
        answers_.erase(a);
      }
    }
    if (!answer.has_value()) return it->second.get();
    std::unique_ptr<Plan> plan = std::move(it->second);
    provisional_.erase(it);
    // A failed query keeps the bucket's algorithm (it runs this size).
    if (answer->ok()) plan->algo = **answer;
    if (cache_.size() >= kMaxCachedShapes) ClearCache();
    const Plan* raw = plan.get();
    cache_.emplace(key, std::move(plan));
    return raw;
  }
  if (cache_.size() + provisional_.size() >= kMaxCachedShapes) ClearCache();
  absl::StatusOr<std::unique_ptr<Plan>> plan = Describe(key);
  if (!plan.ok()) return plan.status();
  Key bucket_key = key;
  std::get<1>(bucket_key) = GemmRowBucket(std::get<1>(key));
  const bool own_bucket = bucket_key == key;
  auto bucket = bucket_algos_.find(bucket_key);
  if (options_.bucket_rows && bucket == bucket_algos_.end()) {
    // The heuristic for the bucket's own n (descriptors made for it).
    std::unique_ptr<Plan> bucket_plan;
    if (!own_bucket) {
      absl::StatusOr<std::unique_ptr<Plan>> described = Describe(bucket_key);
      if (!described.ok()) return described.status();
      bucket_plan = *std::move(described);
    }
    absl::StatusOr<cublasLtMatmulAlgo_t> algo =
        Heuristic(handle_, bucket_plan != nullptr ? *bucket_plan : **plan, bucket_key);
    if (!algo.ok()) return algo.status();
    bucket = bucket_algos_.emplace(bucket_key, *algo).first;
  }
  const bool try_bucket =
      bucket != bucket_algos_.end() &&
      (options_.bucket_rows || (options_.heuristic_off_thread && !own_bucket));
  if (try_bucket) {
    // The bucket's algorithm, if cuBLASLt accepts it for this n.
    cublasLtMatmulHeuristicResult_t check{};
    if (Lt().MatmulAlgoCheck(handle_, (*plan)->op, (*plan)->a, (*plan)->b, (*plan)->d,
                             (*plan)->d, &bucket->second, &check) == CUBLAS_STATUS_SUCCESS &&
        check.workspaceSize <= workspace_.size()) {
      (*plan)->algo = bucket->second;
      const Plan* raw = plan->get();
      if (options_.bucket_rows) {
        cache_.emplace(key, *std::move(plan));
      } else {
        // Until the helper answers for this n.
        provisional_.emplace(key, *std::move(plan));
        absl::MutexLock lock(&mu_);
        requests_.push_back(key);
      }
      return raw;
    }
  }
  absl::StatusOr<cublasLtMatmulAlgo_t> algo = Heuristic(handle_, **plan, key);
  if (!algo.ok()) return algo.status();
  (*plan)->algo = *algo;
  // A bucket's own size: later sizes of the bucket start from its algorithm.
  if (own_bucket && bucket == bucket_algos_.end()) bucket_algos_.emplace(bucket_key, *algo);
  const Plan* raw = plan->get();
  cache_.emplace(key, *std::move(plan));
  return raw;
}

absl::Status LinearGemm::Run(const void* weight, const void* x, void* y, int64_t m, int64_t n,
                             int64_t k, msa::DType io_dtype, bool out_fp32, bool accumulate,
                             cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  if (m <= 0 || n < 0 || k <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GEMM sizes must be positive: m=", m, " n=", n, " k=", k));
  }
  if (io_dtype != msa::DType::kBFloat16 && io_dtype != msa::DType::kFloat16) {
    return absl::InvalidArgumentError("GEMM inputs must be bf16 or fp16");
  }
  if (accumulate && !out_fp32) {
    return absl::InvalidArgumentError("GEMM accumulation needs an fp32 output");
  }
  absl::StatusOr<const Plan*> plan =
      PlanFor(Key{m, n, k, static_cast<int>(io_dtype), out_fp32, accumulate});
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;
  ASYMCACHE_LT_RETURN_IF_ERROR(Lt().Matmul(
      handle_, (*plan)->op, &alpha, weight, (*plan)->a, x, (*plan)->b, &beta, y, (*plan)->d, y,
      (*plan)->d, &(*plan)->algo, workspace_.data(), workspace_.size(), stream));
  return absl::OkStatus();
}

}  // namespace asymcache::model::cuda
