// MSA KV append (msa_cuda.h AppendKvCuda): writes new K/V rows into their
// (page, offset) slots of the paged pool with 16-byte vectors. One thread per
// 16-byte chunk of a (token, K|V, kv head) row; out-of-range slots are skipped.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/msa_cuda.h"

namespace asymcache::msa {
namespace {

__global__ void AppendKvKernel(const int32_t* slot_page_ids, const int32_t* slot_offsets,
                               int32_t num_tokens, const uint4* k, const uint4* v, uint4* pool,
                               int64_t num_pool_pages, int32_t page_size, int32_t row_chunks) {
  // row_chunks = Hkv * D * elem / 16: chunks of one token's K (or V) rows.
  const int64_t total = static_cast<int64_t>(num_tokens) * 2 * row_chunks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = i / (2 * row_chunks);
    const int32_t rem = static_cast<int32_t>(i % (2 * row_chunks));
    const int32_t which = rem / row_chunks;  // 0 = K, 1 = V
    const int32_t chunk = rem % row_chunks;
    const int32_t page = slot_page_ids[token];
    const int32_t offset = slot_offsets[token];
    if (page < 0 || page >= num_pool_pages || offset < 0 || offset >= page_size) continue;
    const int64_t dst = ((static_cast<int64_t>(page) * 2 + which) * page_size + offset) * row_chunks + chunk;
    pool[dst] = (which == 0 ? k : v)[token * row_chunks + chunk];
  }
}

}  // namespace

absl::Status AppendKvCuda(const AttentionShape& shape, const int32_t* d_slot_page_ids,
                          const int32_t* d_slot_offsets, int32_t num_tokens, const void* k,
                          const void* v, void* kv_pool, int64_t num_pool_pages, void* stream) {
  if (absl::Status status = shape.Validate(); !status.ok()) return status;
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_tokens must be >= 0, got ", num_tokens));
  }
  if (num_tokens == 0) return absl::OkStatus();
  if (d_slot_page_ids == nullptr || d_slot_offsets == nullptr || k == nullptr || v == nullptr ||
      kv_pool == nullptr) {
    return absl::InvalidArgumentError("slots, k, v and kv_pool must be non-null");
  }
  const int64_t row_bytes =
      static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim * DTypeBytes(shape.dtype);
  if (row_bytes % 16 != 0 || reinterpret_cast<uintptr_t>(k) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(v) % 16 != 0 || reinterpret_cast<uintptr_t>(kv_pool) % 16 != 0) {
    return absl::InvalidArgumentError("k, v and kv_pool must be 16-byte aligned");
  }
  const int32_t row_chunks = static_cast<int32_t>(row_bytes / 16);
  const int64_t total = static_cast<int64_t>(num_tokens) * 2 * row_chunks;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  AppendKvKernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      d_slot_page_ids, d_slot_offsets, num_tokens, static_cast<const uint4*>(k),
      static_cast<const uint4*>(v), static_cast<uint4*>(kv_pool), num_pool_pages,
      shape.page_size, row_chunks);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    return absl::InternalError(absl::StrCat("AppendKvKernel launch: ", cudaGetErrorString(error)));
  }
  return absl::OkStatus();
}

}  // namespace asymcache::msa
