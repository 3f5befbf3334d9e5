// ModelBackend: runs the Llama forward pass for one engine step over the
// daemon's paged KV pool, on the CPU (fp32) or on a GPU (CUDA, bf16/fp16).
//
// One step (DESIGN.md §3.3): a batch of sequences, each with some query
// tokens (decode: one; prefill/rebuild chunks: many, in position order) and
// the pages of its context that the queries may see. For every layer the
// backend computes Q/K/V of the query tokens, applies rotary embeddings at
// their ABSOLUTE positions, appends K/V into the pool (token i -> page
// slot_page_ids[i], row slot_offsets[i]) BEFORE attention, then runs MSA over
// the listed pages with the causal mask kv_pos <= q_pos. Rows of a page that
// the step has not written and no earlier step wrote must not be listed (the
// engine truncates each sequence's page list at its largest query position).
// After the last layer it samples the next token of each `sample_rows` entry
// (and returns fp32 logits when asked).
//
// Pool: layer-major [num_layers][num_blocks][2][block_tokens][Hkv][D] in
// config.kv_dtype() (services/daemon/pool_layout.h, docs/pool.md); a host
// pointer on the CPU backend, a device pointer (CUDA IPC mapping of the
// daemon's pool) on the CUDA backend.
//
// Sampling (both backends, the same rule; their choices agree except where
// exp/log rounding decides, model/cuda_sampling.cuh; model/sampling.h):
// temperature <= 0 is greedy (argmax, lowest index on ties); otherwise
// softmax(logits / temperature) restricted to the smallest set of tokens, in
// descending probability (ties: lower index first), whose mass reaches top_p,
// sampled by Gumbel-max over that set: the token maximising
// (logit - max logit) / temperature + SampleGumbel(seed, position, token)
// (as stable as greedy when logits differ in the last bits; model/sampling.cc
// says why), where `position` is the absolute position the sampled token will
// occupy (the sample row's query position + 1). The noise depends on
// (seed, position, token id) only, never on batching, so a cached and an
// uncached run sample the same token from the same logits.
//
// Contract: a backend is used by one thread at a time (the engine's step
// thread). Forward() and CopyPageRows() are synchronous: when they return the
// pool holds the new rows. Errors: INVALID_ARGUMENT for a malformed batch
// (naming the field), RESOURCE_EXHAUSTED when the batch exceeds the limits
// the backend was created with, INTERNAL for a device failure. A failed call
// may have written rows of the batch's own slots, nothing else.
#ifndef ASYMCACHE_MODEL_MODEL_BACKEND_H_
#define ASYMCACHE_MODEL_MODEL_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/msa.h"
#include "model/llama_config.h"
#include "model/weight_source.h"

namespace asymcache::model {

struct SamplingParams {
  float temperature = 0.0f;  // <= 0: greedy
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;
};

// The KV pool as the backend sees it (a mapping owned by someone else that
// outlives the backend).
struct KvPoolView {
  void* base = nullptr;            // host (CPU) or device (CUDA) pointer to byte 0
  int64_t num_blocks = 0;          // pages per layer
  int64_t layer_stride_bytes = 0;  // num_blocks * page bytes
};

struct ForwardBatch {
  absl::Span<const int32_t> token_ids;      // [total_q] input token of each query
  msa::BatchTables tables;                  // q_indptr, q_pos, kv pages per sequence
  // [total_q] page receiving the token's K/V; -1: do not write it (the listed
  // pages already hold this position's K/V, e.g. a fully cached prompt whose
  // last token is run again only for its logits).
  absl::Span<const int32_t> slot_page_ids;
  absl::Span<const int32_t> slot_offsets;   // [total_q] row in that page
  absl::Span<const int32_t> sample_rows;    // query indices whose next token is sampled
  absl::Span<const SamplingParams> sampling;  // [sample_rows.size()]
  bool want_logits = false;                 // also return fp32 logits of sample_rows
};

struct ForwardResult {
  std::vector<int32_t> tokens;  // [sample_rows.size()] sampled next tokens
  std::vector<float> logits;    // [sample_rows.size()][vocab] when want_logits, else empty
};

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual const LlamaConfig& config() const = 0;
  virtual absl::string_view name() const = 0;  // "cpu" or "cuda"
  // One step; see the file comment.
  virtual absl::Status Forward(const ForwardBatch& batch, ForwardResult* result) = 0;
  // Copies rows [0, rows) of K and of V of page `src` into page `dst` in every
  // layer (a decode page rolling over into a block the cache can seal; the
  // bytes are the same K/V, nothing is recomputed). INVALID_ARGUMENT for
  // pages outside the pool, src == dst, or rows outside [1, block_tokens].
  virtual absl::Status CopyPageRows(int32_t src, int32_t dst, int32_t rows) = 0;
};

struct CpuBackendOptions {
  // Worker threads for GEMMs and MSA; 0 = hardware concurrency.
  int num_threads = 0;
  absl::Status Validate() const;
};

// fp32 math over weights converted to fp32 (config.dtype must be kFloat32,
// the pool fp32: the CPU backend is the exactness reference and runs the
// tiny/demo shapes). GEMMs reduce in a fixed order per output element, so a
// token's results do not depend on what else is in the batch (bitwise).
absl::StatusOr<std::unique_ptr<ModelBackend>> CreateCpuBackend(const WeightSource& weights,
                                                               KvPoolView pool,
                                                               CpuBackendOptions options = {});

struct CudaBackendOptions {
  int device = 0;
  // Largest step the backend is sized for (activation buffers, MSA workspace),
  // allocated once at creation. 8192 query tokens: an adaptive-chunking step of
  // the default budget plus decodes. > 0.
  int32_t max_step_tokens = 8192;
  // Largest number of sequences in a step. 256. > 0.
  int32_t max_batch = 256;
  // Largest number of pages a step lists (all sequences). 1 Mi (16 Mi tokens of
  // context at 16-token pages). > 0.
  int32_t max_step_pages = 1 << 20;
  // Linear layers reuse one cuBLASLt algorithm per row bucket (n rounded up
  // at most 25%, model/gemm_buckets.h) instead of asking the heuristic for
  // every distinct step size. Default false: with the warm-up below it
  // removes the first-step cost of new sizes entirely but made repeated
  // prefill steps 2-17% slower (mean 7%; the bucket's algorithm is not the
  // best for every n), measured on an H100 (docs/results/first_step_h100/).
  bool gemm_row_buckets = false;
  // At creation, run every linear layer's GEMM once per row bucket up to
  // max_step_tokens (and the LM head's up to max_batch rows): the kernels
  // those sizes use are loaded and their plans cached before any engine
  // step. Default true: on an H100 it cut the first step of a new size from
  // +15.9 ms to +10.2 ms over its repeats (sizes up to 2048; up to 8192:
  // +6.2 -> +2.6 ms) for ~0.5 s more at creation; what remains is mostly
  // cuBLASLt's heuristic query for the new size.
  bool warm_gemm_buckets = true;
  // Without gemm_row_buckets: the first step of a new size runs its linear
  // layers with their row bucket's algorithm (ready after the warm-up) while
  // a helper thread asks cuBLASLt's heuristic for the size itself, which
  // later steps of that size use (model/cuda_gemm.cuh), so the ~1 ms
  // heuristic query per GEMM shape leaves the step. Default true: on an
  // H100 it cut the first step of a new size from +6.5 to +3.6 ms over its
  // repeats (16 sizes up to 2048, two runs each; up to 8192: +2.7 -> +1.5
  // ms) with repeats unchanged (bench/gpu/first_step_bench, docs/worker.md).
  // Costs one more cuBLASLt handle and a helper thread per backend.
  bool gemm_heuristic_off_thread = true;
  absl::Status Validate() const;
};

// bf16/fp16 on one GPU: cuBLAS(Lt) GEMMs, fused small kernels, MSA CUDA,
// on-device sampling. FAILED_PRECONDITION when built without CUDA or no GPU is
// present (the message says which); INVALID_ARGUMENT for config.dtype fp32.
absl::StatusOr<std::unique_ptr<ModelBackend>> CreateCudaBackend(const WeightSource& weights,
                                                                KvPoolView pool,
                                                                CudaBackendOptions options = {});

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_MODEL_BACKEND_H_
