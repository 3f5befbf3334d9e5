#include "model/cuda_cublaslt.cuh"

#include <dlfcn.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace asymcache::model::cuda {
namespace {

absl::StatusOr<const CublasLtApi*> Load() {
  void* library = nullptr;
  std::string errors;
  for (const char* name : {"libcublasLt.so.13", "libcublasLt.so"}) {
    library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (library != nullptr) break;
    const char* error = dlerror();
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", error != nullptr ? error : name);
  }
  if (library == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load cuBLASLt (set LD_LIBRARY_PATH to the CUDA libraries): ", errors));
  }
  auto* api = new CublasLtApi();  // lives for the process, like the library
  std::string missing;
  auto bind = [&](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(library, symbol));
    if (fn == nullptr) absl::StrAppend(&missing, missing.empty() ? "" : ", ", symbol);
  };
  bind(api->Create, "cublasLtCreate");
  bind(api->Destroy, "cublasLtDestroy");
  bind(api->GetStatusName, "cublasLtGetStatusName");
  bind(api->GetStatusString, "cublasLtGetStatusString");
  bind(api->Matmul, "cublasLtMatmul");
  bind(api->MatmulAlgoCheck, "cublasLtMatmulAlgoCheck");
  bind(api->MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
  bind(api->MatmulDescCreate, "cublasLtMatmulDescCreate");
  bind(api->MatmulDescDestroy, "cublasLtMatmulDescDestroy");
  bind(api->MatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute");
  bind(api->MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate");
  bind(api->MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
  bind(api->MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
  bind(api->MatrixLayoutCreate, "cublasLtMatrixLayoutCreate");
  bind(api->MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy");
  if (!missing.empty()) {
    delete api;
    return absl::FailedPreconditionError(
        absl::StrCat("the loaded cuBLASLt lacks: ", missing));
  }
  return api;
}

}  // namespace

absl::StatusOr<const CublasLtApi*> CublasLt() {
  static const absl::StatusOr<const CublasLtApi*>* loaded =
      new absl::StatusOr<const CublasLtApi*>(Load());
  return *loaded;
}

}  // namespace asymcache::model::cuda
