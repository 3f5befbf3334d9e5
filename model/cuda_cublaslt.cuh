// cuBLASLt, loaded with dlopen on first use instead of linked.
//
// Why: libcublasLt carries ~94 KiB of static thread-local storage. A library
// linked at startup puts its TLS into EVERY thread's stack, and civetweb (the
// Prometheus exposer's HTTP server) starts its threads with ~100 KiB stacks:
// pthread_create then fails and the worker's metrics endpoint cannot start
// ("Cannot create threads"). A dlopen'ed library's TLS is allocated lazily
// per thread instead, so only the CUDA backend pays for it, and binaries that
// link the model library but run on the CPU never load cuBLAS at all.
//
// Contract: CublasLt() loads libcublasLt.so.13 (then libcublasLt.so) once,
// thread-safely, and returns the function table, or FAILED_PRECONDITION
// naming the library and dlerror() when it cannot be loaded or lacks a
// symbol. The table is immutable and lives for the process.
#ifndef ASYMCACHE_MODEL_CUDA_CUBLASLT_CUH_
#define ASYMCACHE_MODEL_CUDA_CUBLASLT_CUH_

#include <cublasLt.h>

#include "absl/status/statusor.h"

namespace asymcache::model::cuda {

struct CublasLtApi {
  decltype(&cublasLtCreate) Create = nullptr;
  decltype(&cublasLtDestroy) Destroy = nullptr;
  decltype(&cublasLtGetStatusName) GetStatusName = nullptr;
  decltype(&cublasLtGetStatusString) GetStatusString = nullptr;
  decltype(&cublasLtMatmul) Matmul = nullptr;
  decltype(&cublasLtMatmulAlgoCheck) MatmulAlgoCheck = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic = nullptr;
  decltype(&cublasLtMatmulDescCreate) MatmulDescCreate = nullptr;
  decltype(&cublasLtMatmulDescDestroy) MatmulDescDestroy = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) MatmulDescSetAttribute = nullptr;
  decltype(&cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate = nullptr;
  decltype(&cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute = nullptr;
  decltype(&cublasLtMatrixLayoutCreate) MatrixLayoutCreate = nullptr;
  decltype(&cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy = nullptr;
};

absl::StatusOr<const CublasLtApi*> CublasLt();

}  // namespace asymcache::model::cuda

#endif  // ASYMCACHE_MODEL_CUDA_CUBLASLT_CUH_
