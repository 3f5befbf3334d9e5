// The CUDA model backend (model/model_backend.h CreateCudaBackend): the Llama
// forward pass in bf16/fp16 on one GPU over the daemon's paged KV pool.
//
// Creation allocates everything once (STYLE.md §11: plan on the CPU, run
// without allocating): the weights (one allocation; QKV fused into one
// [q_dim + 2 kv_dim, hidden] matrix and gate/up into one [2 I, hidden]; norms
// kept in fp32), activation buffers for max_step_tokens, the rotary cos/sin
// table (model/rope.h, host-built, fp32) up to max_position_embeddings, the
// MSA workspaces, a pinned staging area and the sampler; it also probes the
// wgmma prefill kernels (msa::MsaWgmmaAvailable). Random weights are
// generated on the device from RandomWeightValue (no host copy of the model);
// stored weights are converted per tensor on the host and uploaded.
//
// One step (Forward), all on one stream, one host synchronization at the end:
//   host: validate the batch; write the step's tables (tokens, positions,
//         slots, sample rows and their sampling parameters) into the pinned
//         staging area, PlanMsa into the same area right behind them; ONE
//         host->device copy of tables + plan.
//   device: embedding gather -> fp32 residual; per layer: RMSNorm -> QKV GEMM
//         -> rotary + KV append into the layer's pool slice -> MSA -> O GEMM
//         accumulated into the residual (fp32 epilogue, beta = 1) -> RMSNorm
//         -> gate/up GEMM -> SwiGLU -> down GEMM accumulated into the
//         residual; then, per chunk of at most max_batch sample rows: gather +
//         final RMSNorm -> LM-head GEMM (fp32 logits) -> sampling.
//   host: copy back the sampled ids (and the logits when asked), synchronize.
//
// The residual stream stays fp32 between layers (the GEMMs add into it), so
// the only 16-bit roundings are those of the GEMM inputs/outputs, Q/K/V and
// the MLP activations.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"
#include "kernels/msa.h"
#include "kernels/msa_cuda.h"
#include "kernels/msa_plan.h"
#include "model/cuda_gemm.cuh"
#include "model/gemm_buckets.h"
#include "model/cuda_kernels.cuh"
#include "model/cuda_sampling.cuh"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/rope.h"
#include "model/weight_source.h"

namespace asymcache::model {
namespace {

using cuda::DeviceSampler;
using cuda::LinearGemm;
using cuda::SampleRowParams;

constexpr size_t kAlign = 256;
size_t AlignUp(size_t value) { return (value + kAlign - 1) / kAlign * kAlign; }

absl::Status CudaStatus(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA backend: ", what, ": ", cudaGetErrorName(error),
                                          " (", cudaGetErrorString(error), ")"));
}

#define ASYMCACHE_RETURN_IF_ERROR(expr) \
  do {                                  \
    absl::Status status_ = (expr);      \
    if (!status_.ok()) return status_;  \
  } while (0)

#define ASYMCACHE_CUDA_OK(expr) ASYMCACHE_RETURN_IF_ERROR(CudaStatus((expr), #expr))

absl::Status AllocateInto(size_t bytes, msa::DeviceBuffer* out, absl::string_view what) {
  absl::StatusOr<msa::DeviceBuffer> buffer = msa::DeviceBuffer::Allocate(bytes);
  if (!buffer.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("CUDA backend: cannot allocate ", bytes,
                                                     " device bytes for ", what, ": ",
                                                     buffer.status().message()));
  }
  *out = *std::move(buffer);
  return absl::OkStatus();
}

// ---- stored tensors: host conversion -------------------------------------------------

float ReadElement(const uint8_t* bytes, msa::DType dtype, int64_t i) {
  switch (dtype) {
    case msa::DType::kFloat32: {
      float value;
      std::memcpy(&value, bytes + 4 * i, 4);
      return value;
    }
    case msa::DType::kBFloat16: {
      uint16_t bits;
      std::memcpy(&bits, bytes + 2 * i, 2);
      return msa::FloatFromBf16Bits(bits);
    }
    case msa::DType::kFloat16: {
      uint16_t bits;
      std::memcpy(&bits, bytes + 2 * i, 2);
      return msa::FloatFromFp16Bits(bits);
    }
  }
  return 0.0f;
}

void WriteElement(float value, msa::DType dtype, uint8_t* bytes, int64_t i) {
  switch (dtype) {
    case msa::DType::kFloat32:
      std::memcpy(bytes + 4 * i, &value, 4);
      return;
    case msa::DType::kBFloat16: {
      const uint16_t bits = msa::Bf16BitsFromFloat(value);
      std::memcpy(bytes + 2 * i, &bits, 2);
      return;
    }
    case msa::DType::kFloat16: {
      const uint16_t bits = msa::Fp16BitsFromFloat(value);
      std::memcpy(bytes + 2 * i, &bits, 2);
      return;
    }
  }
}

// Uploads a stored tensor into `dst` as `target` (same dtype: the bytes as
// they are; otherwise converted in chunks, round to nearest even).
absl::Status UploadStored(const StoredTensor& tensor, const TensorSpec& spec, msa::DType target,
                          void* dst) {
  const int64_t elements = spec.elements();
  if (static_cast<int64_t>(tensor.bytes.size()) != elements * msa::DTypeBytes(tensor.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA backend: tensor ", spec.name, " has ",
                                                   tensor.bytes.size(), " bytes, expected ",
                                                   elements, " elements"));
  }
  if (tensor.dtype == target) {
    return msa::CopyHostToDevice(dst, tensor.bytes.data(), tensor.bytes.size());
  }
  constexpr int64_t kChunk = int64_t{1} << 22;
  const int target_bytes = msa::DTypeBytes(target);
  std::vector<uint8_t> buffer(static_cast<size_t>(std::min(elements, kChunk) * target_bytes));
  for (int64_t first = 0; first < elements; first += kChunk) {
    const int64_t count = std::min(kChunk, elements - first);
    for (int64_t i = 0; i < count; ++i) {
      WriteElement(ReadElement(tensor.bytes.data(), tensor.dtype, first + i), target, buffer.data(),
                   i);
    }
    ASYMCACHE_RETURN_IF_ERROR(
        msa::CopyHostToDevice(static_cast<uint8_t*>(dst) + first * target_bytes, buffer.data(),
                              static_cast<size_t>(count * target_bytes)));
  }
  return absl::OkStatus();
}

// ---- the backend -----------------------------------------------------------------------

struct LayerWeights {
  float* attn_norm = nullptr;  // [hidden] fp32
  void* qkv = nullptr;         // [q_dim + 2 kv_dim][hidden]
  void* o = nullptr;           // [hidden][q_dim]
  float* mlp_norm = nullptr;   // [hidden] fp32
  void* gate_up = nullptr;     // [2 intermediate][hidden]
  void* down = nullptr;        // [hidden][intermediate]
};

// Byte offsets of one step's tables in the staging areas (host and device).
struct StepTables {
  size_t tokens = 0;
  size_t positions = 0;
  size_t slot_pages = 0;
  size_t slot_offsets = 0;
  size_t sample_rows = 0;
  size_t sample_params = 0;
  size_t top_p_rows = 0;
  size_t bytes = 0;  // tables end (aligned): the MSA workspace starts here
};

// A chunk of sample rows run through the LM head and the sampler together.
struct SampleChunk {
  int32_t first = 0;  // first sample row
  int32_t rows = 0;
  int32_t top_p_first = 0;  // its rows with temperature > 0: top_p_rows[top_p_first, +count)
  int32_t top_p_count = 0;
};

class CudaBackend final : public ModelBackend {
 public:
  static absl::StatusOr<std::unique_ptr<ModelBackend>> Create(const WeightSource& weights,
                                                              KvPoolView pool,
                                                              const CudaBackendOptions& options);

  const LlamaConfig& config() const override { return config_; }
  absl::string_view name() const override { return "cuda"; }
  absl::Status Forward(const ForwardBatch& batch, ForwardResult* result) override;
  absl::Status CopyPageRows(int32_t src, int32_t dst, int32_t rows) override;

 private:
  CudaBackend(const LlamaConfig& config, KvPoolView pool, const CudaBackendOptions& options)
      : config_(config), options_(options), pool_(pool) {}

  absl::Status Init(const WeightSource& weights);
  absl::Status AllocateWeights();
  absl::Status LoadWeights(const WeightSource& weights);
  absl::Status BuildRopeTable();
  absl::Status AllocateStepBuffers();
  // Runs every linear layer's GEMM once per row bucket (model/gemm_buckets.h).
  absl::Status WarmGemms();
  absl::Status CheckBatch(const ForwardBatch& batch);
  absl::Status RunForward(const ForwardBatch& batch, ForwardResult* result);
  StepTables StageTables(const ForwardBatch& batch, std::vector<SampleChunk>* chunks);
  template <typename T>
  absl::Status RunModel(int32_t total_q, const StepTables& tables, const msa::MsaPlan& plan,
                        const std::vector<SampleChunk>& chunks, bool want_logits,
                        ForwardResult* result);

  cudaStream_t stream() const { return static_cast<cudaStream_t>(stream_.get()); }
  uint8_t* device_staging() const { return static_cast<uint8_t*>(staging_device_.data()); }
  uint8_t* host_staging() const { return static_cast<uint8_t*>(staging_host_.data()); }

  // Immutable after creation.
  const LlamaConfig config_;
  const CudaBackendOptions options_;
  const KvPoolView pool_;
  msa::AttentionShape shape_;
  msa::MsaPlanOptions plan_options_;
  int64_t page_bytes_ = 0;
  int64_t dtype_bytes_ = 2;
  int32_t lm_rows_ = 0;  // sample rows per LM-head chunk: min(max_batch, max_step_tokens)
  size_t tables_capacity_ = 0;
  msa::MsaWorkspaceSizes msa_sizes_;

  // Device resources (owned).
  msa::CudaStream stream_;
  std::unique_ptr<LinearGemm> gemm_;
  DeviceSampler sampler_;
  msa::DeviceBuffer weights_;
  void* embedding_ = nullptr;
  void* lm_head_ = nullptr;  // == embedding_ when tied
  float* final_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  msa::DeviceBuffer rope_cos_;
  msa::DeviceBuffer rope_sin_;
  msa::DeviceBuffer residual_;          // fp32 [max_step_tokens][hidden]
  msa::DeviceBuffer normed_;            // [max_step_tokens][hidden]
  msa::DeviceBuffer qkv_;               // [max_step_tokens][q_dim + 2 kv_dim]
  msa::DeviceBuffer q_;                 // [max_step_tokens][Hq][D] rotated
  msa::DeviceBuffer attn_;              // [max_step_tokens][q_dim]
  msa::DeviceBuffer gate_up_;           // [max_step_tokens][2 intermediate]
  msa::DeviceBuffer act_;               // [max_step_tokens][intermediate]
  msa::DeviceBuffer lm_in_;             // [lm_rows][hidden]
  msa::DeviceBuffer logits_;            // fp32 [lm_rows][vocab]
  msa::DeviceBuffer sampled_;           // int32 [max_step_tokens]
  msa::PinnedHostBuffer staging_host_;  // step tables, then the MSA host workspace
  msa::DeviceBuffer staging_device_;    // step tables, then the MSA device workspace
  msa::PinnedHostBuffer sampled_host_;  // int32 [max_step_tokens]

  // Host scratch of CheckBatch (reused across steps).
  std::vector<int64_t> slot_keys_;
  std::vector<uint8_t> sample_seen_;
};

absl::StatusOr<std::unique_ptr<ModelBackend>> CudaBackend::Create(
    const WeightSource& weights, KvPoolView pool, const CudaBackendOptions& options) {
  ASYMCACHE_RETURN_IF_ERROR(options.Validate());
  const LlamaConfig& config = weights.config();
  ASYMCACHE_RETURN_IF_ERROR(config.Validate());
  if (config.dtype != msa::DType::kBFloat16 && config.dtype != msa::DType::kFloat16) {
    return absl::InvalidArgumentError(
        "config.dtype: the CUDA backend runs bf16 or fp16 (fp32 is the CPU backend's)");
  }
  if (config.hidden_size % 8 != 0 || config.intermediate_size % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: hidden_size (", config.hidden_size, ") and intermediate_size (",
                     config.intermediate_size, ") must be multiples of 8 on the CUDA backend"));
  }
  if (config.max_position_embeddings <= 0 ||
      config.max_position_embeddings > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("config.max_position_embeddings out of range: ",
                                                   config.max_position_embeddings));
  }
  const msa::AttentionShape shape = config.attention_shape();
  ASYMCACHE_RETURN_IF_ERROR(shape.Validate());
  const int64_t page_bytes = shape.PageElements() * msa::DTypeBytes(shape.dtype);
  if (pool.base == nullptr || reinterpret_cast<uintptr_t>(pool.base) % 16 != 0) {
    return absl::InvalidArgumentError(
        "pool.base must be a non-null, 16-byte aligned device pointer");
  }
  if (pool.num_blocks <= 0 || pool.num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool.num_blocks must be in [1, 2^31), got ", pool.num_blocks));
  }
  if (pool.layer_stride_bytes != pool.num_blocks * page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pool.layer_stride_bytes is ", pool.layer_stride_bytes, "; the layout needs num_blocks * ",
        page_bytes, " (page bytes) = ", pool.num_blocks * page_bytes));
  }

  int device_count = 0;
  const cudaError_t count_error = cudaGetDeviceCount(&device_count);
  if (count_error != cudaSuccess || device_count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA backend: no CUDA device present (",
        count_error != cudaSuccess ? cudaGetErrorString(count_error) : "0 devices", ")"));
  }
  if (options.device >= device_count) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA backend: device ", options.device,
                                                      " not present (", device_count, " devices)"));
  }
  ASYMCACHE_CUDA_OK(cudaSetDevice(options.device));
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pool.base) != cudaSuccess ||
      (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)) {
    cudaGetLastError();
    return absl::InvalidArgumentError("pool.base is not device memory");
  }

  std::unique_ptr<CudaBackend> backend(new CudaBackend(config, pool, options));
  backend->shape_ = shape;
  backend->page_bytes_ = page_bytes;
  backend->dtype_bytes_ = msa::DTypeBytes(config.dtype);
  ASYMCACHE_RETURN_IF_ERROR(backend->Init(weights));
  return std::unique_ptr<ModelBackend>(std::move(backend));
}

absl::Status CudaBackend::Init(const WeightSource& weights) {
  absl::StatusOr<msa::GpuInfo> gpu = msa::QueryGpu(options_.device);
  if (!gpu.ok()) return absl::FailedPreconditionError(gpu.status().message());
  plan_options_.num_sms = gpu->sm_count;
  ASYMCACHE_RETURN_IF_ERROR(plan_options_.Validate());
  // The wgmma prefill kernels' probe (a module load, cached per device) runs
  // here, not inside the first step's RunMsaCuda, where a caller may be
  // capturing a CUDA graph. The answer itself is read again at dispatch.
  msa::MsaWgmmaAvailable(options_.device);

  absl::StatusOr<msa::CudaStream> created = msa::CudaStream::Create();
  if (!created.ok()) return created.status();
  stream_ = *std::move(created);
  LinearGemm::Options gemm_options;
  gemm_options.bucket_rows = options_.gemm_row_buckets;
  gemm_options.heuristic_off_thread = options_.gemm_heuristic_off_thread;
  absl::StatusOr<std::unique_ptr<LinearGemm>> gemm = LinearGemm::Create(gemm_options);
  if (!gemm.ok()) return gemm.status();
  gemm_ = *std::move(gemm);

  ASYMCACHE_RETURN_IF_ERROR(AllocateWeights());
  ASYMCACHE_RETURN_IF_ERROR(LoadWeights(weights));
  ASYMCACHE_RETURN_IF_ERROR(BuildRopeTable());
  ASYMCACHE_RETURN_IF_ERROR(AllocateStepBuffers());
  if (options_.warm_gemm_buckets) ASYMCACHE_RETURN_IF_ERROR(WarmGemms());
  ASYMCACHE_CUDA_OK(cudaStreamSynchronize(stream()));
  return absl::OkStatus();
}

absl::Status CudaBackend::WarmGemms() {
  // Zeroed inputs (the outputs are scratch every step overwrites first).
  for (msa::DeviceBuffer* input : {&normed_, &attn_, &act_, &lm_in_}) {
    ASYMCACHE_CUDA_OK(cudaMemsetAsync(input->data(), 0, input->size(), stream()));
  }
  const LayerWeights& w = layers_.front();
  const int64_t hidden = config_.hidden_size;
  const int64_t inter = config_.intermediate_size;
  const int64_t qkv_rows = config_.q_dim() + 2 * config_.kv_dim();
  const msa::DType dtype = config_.dtype;
  cudaStream_t s = stream();
  // Every row bucket of a step's layers, then of the LM head (its rows are
  // sampled rows, at most lm_rows_ per call); the last bucket may exceed
  // the buffers, so it runs at the largest size they hold.
  for (const int64_t bucket : GemmRowBuckets(options_.max_step_tokens)) {
    const int64_t n = std::min<int64_t>(bucket, options_.max_step_tokens);
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.qkv, normed_.data(), qkv_.data(), qkv_rows, n, hidden,
                                         dtype, /*out_fp32=*/false, /*accumulate=*/false, s));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.o, attn_.data(), residual_.data(), hidden, n,
                                         config_.q_dim(), dtype, /*out_fp32=*/true,
                                         /*accumulate=*/true, s));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.gate_up, normed_.data(), gate_up_.data(), 2 * inter, n,
                                         hidden, dtype, /*out_fp32=*/false, /*accumulate=*/false,
                                         s));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.down, act_.data(), residual_.data(), hidden, n, inter,
                                         dtype, /*out_fp32=*/true, /*accumulate=*/true, s));
  }
  for (const int64_t bucket : GemmRowBuckets(lm_rows_)) {
    const int64_t n = std::min<int64_t>(bucket, lm_rows_);
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(lm_head_, lm_in_.data(), logits_.data(),
                                         config_.vocab_size, n, hidden, dtype, /*out_fp32=*/true,
                                         /*accumulate=*/false, s));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::AllocateWeights() {
  const int64_t e = dtype_bytes_;
  const int64_t hidden = config_.hidden_size;
  const int64_t inter = config_.intermediate_size;
  const int64_t qkv_rows = config_.q_dim() + 2 * config_.kv_dim();
  size_t at = 0;
  auto take = [&at](int64_t bytes) {
    const size_t offset = at;
    at = AlignUp(at + static_cast<size_t>(bytes));
    return offset;
  };
  const size_t embedding = take(config_.vocab_size * hidden * e);
  struct Offsets {
    size_t attn_norm, qkv, o, mlp_norm, gate_up, down;
  };
  std::vector<Offsets> layer_offsets(config_.num_layers);
  for (Offsets& l : layer_offsets) {
    l.attn_norm = take(hidden * 4);
    l.qkv = take(qkv_rows * hidden * e);
    l.o = take(hidden * config_.q_dim() * e);
    l.mlp_norm = take(hidden * 4);
    l.gate_up = take(2 * inter * hidden * e);
    l.down = take(hidden * inter * e);
  }
  const size_t final_norm = take(hidden * 4);
  const size_t lm_head =
      config_.tie_word_embeddings ? embedding : take(config_.vocab_size * hidden * e);
  ASYMCACHE_RETURN_IF_ERROR(AllocateInto(at, &weights_, "weights"));
  auto* base = static_cast<uint8_t*>(weights_.data());
  embedding_ = base + embedding;
  lm_head_ = base + lm_head;
  final_norm_ = reinterpret_cast<float*>(base + final_norm);
  layers_.resize(config_.num_layers);
  for (int32_t l = 0; l < config_.num_layers; ++l) {
    const Offsets& o = layer_offsets[l];
    layers_[l] =
        LayerWeights{reinterpret_cast<float*>(base + o.attn_norm), base + o.qkv,     base + o.o,
                     reinterpret_cast<float*>(base + o.mlp_norm),  base + o.gate_up, base + o.down};
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::LoadWeights(const WeightSource& weights) {
  const int64_t e = dtype_bytes_;
  const int64_t hidden = config_.hidden_size;
  const std::vector<TensorSpec>& specs = weights.specs();
  for (size_t index = 0; index < specs.size(); ++index) {
    const TensorSpec& spec = specs[index];
    const bool has_layer = spec.layer >= 0 && spec.layer < config_.num_layers;
    const LayerWeights* layer = has_layer ? &layers_[spec.layer] : nullptr;
    uint8_t* dst = nullptr;
    bool fp32 = false;
    switch (spec.role) {
      case TensorRole::kEmbedding:
        dst = static_cast<uint8_t*>(embedding_);
        break;
      case TensorRole::kLmHead:
        dst = static_cast<uint8_t*>(lm_head_);
        break;
      case TensorRole::kFinalNorm:
        dst = reinterpret_cast<uint8_t*>(final_norm_);
        fp32 = true;
        break;
      case TensorRole::kAttnNorm:
        if (layer) dst = reinterpret_cast<uint8_t*>(layer->attn_norm);
        fp32 = true;
        break;
      case TensorRole::kMlpNorm:
        if (layer) dst = reinterpret_cast<uint8_t*>(layer->mlp_norm);
        fp32 = true;
        break;
      case TensorRole::kQProj:
        if (layer) dst = static_cast<uint8_t*>(layer->qkv);
        break;
      case TensorRole::kKProj:
        if (layer) dst = static_cast<uint8_t*>(layer->qkv) + config_.q_dim() * hidden * e;
        break;
      case TensorRole::kVProj:
        if (layer) {
          dst =
              static_cast<uint8_t*>(layer->qkv) + (config_.q_dim() + config_.kv_dim()) * hidden * e;
        }
        break;
      case TensorRole::kOProj:
        if (layer) dst = static_cast<uint8_t*>(layer->o);
        break;
      case TensorRole::kGateProj:
        if (layer) dst = static_cast<uint8_t*>(layer->gate_up);
        break;
      case TensorRole::kUpProj:
        if (layer)
          dst = static_cast<uint8_t*>(layer->gate_up) + config_.intermediate_size * hidden * e;
        break;
      case TensorRole::kDownProj:
        if (layer) dst = static_cast<uint8_t*>(layer->down);
        break;
    }
    if (dst == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA backend: tensor ", spec.name, " has no place in the model"));
    }
    const msa::DType target = fp32 ? msa::DType::kFloat32 : config_.dtype;
    if (weights.is_random()) {
      const RandomWeightParams params = RandomParamsFor(spec);
      const auto tensor_id = static_cast<uint32_t>(index);
      cudaError_t error;
      if (fp32) {
        error =
            cuda::LaunchRandomFill(reinterpret_cast<float*>(dst), spec.elements(), weights.seed(),
                                   tensor_id, params.kind, params.scale, stream());
      } else if (config_.dtype == msa::DType::kBFloat16) {
        error =
            cuda::LaunchRandomFill(reinterpret_cast<__nv_bfloat16*>(dst), spec.elements(),
                                   weights.seed(), tensor_id, params.kind, params.scale, stream());
      } else {
        error =
            cuda::LaunchRandomFill(reinterpret_cast<__half*>(dst), spec.elements(), weights.seed(),
                                   tensor_id, params.kind, params.scale, stream());
      }
      ASYMCACHE_RETURN_IF_ERROR(CudaStatus(error, absl::StrCat("random fill of ", spec.name)));
    } else {
      std::optional<StoredTensor> stored = weights.stored(index);
      if (!stored.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("CUDA backend: tensor ", spec.name, " is not stored"));
      }
      ASYMCACHE_RETURN_IF_ERROR(UploadStored(*stored, spec, target, dst));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::BuildRopeTable() {
  const std::vector<double> inv_freq = RopeInvFrequencies(config_);
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  const int64_t rows = config_.max_position_embeddings;
  const size_t bytes = static_cast<size_t>(rows * half) * sizeof(float);
  ASYMCACHE_RETURN_IF_ERROR(AllocateInto(bytes, &rope_cos_, "rotary cos table"));
  ASYMCACHE_RETURN_IF_ERROR(AllocateInto(bytes, &rope_sin_, "rotary sin table"));
  // Built and uploaded in slices of positions to bound host memory.
  constexpr int64_t kSlice = 8192;
  std::vector<float> cos(static_cast<size_t>(std::min(rows, kSlice) * half));
  std::vector<float> sin(cos.size());
  for (int64_t first = 0; first < rows; first += kSlice) {
    const int64_t count = std::min(kSlice, rows - first);
    for (int64_t p = 0; p < count; ++p) {
      RopeCosSin(inv_freq, first + p, cos.data() + p * half, sin.data() + p * half);
    }
    const size_t slice_bytes = static_cast<size_t>(count * half) * sizeof(float);
    const size_t offset = static_cast<size_t>(first * half) * sizeof(float);
    ASYMCACHE_RETURN_IF_ERROR(msa::CopyHostToDevice(
        static_cast<uint8_t*>(rope_cos_.data()) + offset, cos.data(), slice_bytes));
    ASYMCACHE_RETURN_IF_ERROR(msa::CopyHostToDevice(
        static_cast<uint8_t*>(rope_sin_.data()) + offset, sin.data(), slice_bytes));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::AllocateStepBuffers() {
  const int64_t tokens = options_.max_step_tokens;
  const int64_t e = dtype_bytes_;
  const int64_t hidden = config_.hidden_size;
  const int64_t inter = config_.intermediate_size;
  lm_rows_ = std::min(options_.max_batch, options_.max_step_tokens);
  struct Want {
    int64_t bytes;
    msa::DeviceBuffer* buffer;
    const char* what;
  };
  const Want wants[] = {
      {tokens * hidden * 4, &residual_, "residual"},
      {tokens * hidden * e, &normed_, "normed activations"},
      {tokens * (config_.q_dim() + 2 * config_.kv_dim()) * e, &qkv_, "qkv"},
      {tokens * config_.q_dim() * e, &q_, "rotated q"},
      {tokens * config_.q_dim() * e, &attn_, "attention output"},
      {tokens * 2 * inter * e, &gate_up_, "gate/up"},
      {tokens * inter * e, &act_, "MLP activations"},
      {int64_t{lm_rows_} * hidden * e, &lm_in_, "LM-head input"},
      {int64_t{lm_rows_} * config_.vocab_size * 4, &logits_, "logits"},
      {tokens * 4, &sampled_, "sampled tokens"},
  };
  for (const Want& want : wants) {
    ASYMCACHE_RETURN_IF_ERROR(
        AllocateInto(static_cast<size_t>(want.bytes), want.buffer, want.what));
  }
  absl::StatusOr<DeviceSampler> sampler = DeviceSampler::Create(config_.vocab_size, lm_rows_);
  if (!sampler.ok()) return sampler.status();
  sampler_ = *std::move(sampler);

  // Staging: the step's tables (sized for the largest step), then the MSA
  // workspace. Sample rows are bounded by max_step_tokens.
  const size_t t = static_cast<size_t>(tokens);
  tables_capacity_ = 4 * AlignUp(t * 4) + 2 * AlignUp(t * 4) + AlignUp(t * sizeof(SampleRowParams));
  msa_sizes_ = msa::MsaWorkspaceSizesFor(shape_, options_.max_batch, options_.max_step_tokens,
                                         options_.max_step_pages, plan_options_);
  absl::StatusOr<msa::PinnedHostBuffer> host =
      msa::PinnedHostBuffer::Allocate(tables_capacity_ + AlignUp(msa_sizes_.host_bytes));
  if (!host.ok()) return host.status();
  staging_host_ = *std::move(host);
  ASYMCACHE_RETURN_IF_ERROR(AllocateInto(tables_capacity_ + AlignUp(msa_sizes_.device_bytes),
                                         &staging_device_, "step tables and MSA workspace"));
  absl::StatusOr<msa::PinnedHostBuffer> sampled_host = msa::PinnedHostBuffer::Allocate(t * 4);
  if (!sampled_host.ok()) return sampled_host.status();
  sampled_host_ = *std::move(sampled_host);
  return absl::OkStatus();
}

absl::Status CudaBackend::CheckBatch(const ForwardBatch& batch) {
  const msa::BatchTables& tables = batch.tables;
  ASYMCACHE_RETURN_IF_ERROR(msa::ValidateBatch(shape_, tables, pool_.num_blocks));
  const int32_t total_q = tables.total_q();
  if (tables.batch_size() > options_.max_batch) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "batch has ", tables.batch_size(), " sequences; max_batch is ", options_.max_batch));
  }
  if (total_q > options_.max_step_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "batch has ", total_q, " query tokens; max_step_tokens is ", options_.max_step_tokens));
  }
  if (tables.total_pages() > options_.max_step_pages) {
    return absl::ResourceExhaustedError(absl::StrCat("batch lists ", tables.total_pages(),
                                                     " pages; max_step_pages is ",
                                                     options_.max_step_pages));
  }
  if (static_cast<int64_t>(batch.token_ids.size()) != total_q) {
    return absl::InvalidArgumentError(absl::StrCat("token_ids has ", batch.token_ids.size(),
                                                   " entries; tables have ", total_q,
                                                   " query tokens"));
  }
  if (static_cast<int64_t>(batch.slot_page_ids.size()) != total_q ||
      static_cast<int64_t>(batch.slot_offsets.size()) != total_q) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_page_ids (", batch.slot_page_ids.size(), ") and slot_offsets (",
        batch.slot_offsets.size(), ") must have one entry per query token (", total_q, ")"));
  }
  // Per query: token in the vocabulary, position inside the rotary table, and
  // (the CPU backend's rules) the slot it writes is the row its own sequence
  // lists for its position; no two queries write one slot. Slot page -1
  // writes nothing, but the position must still be listed (the query sees
  // its own K/V).
  slot_keys_.clear();
  for (int32_t seq = 0; seq < tables.batch_size(); ++seq) {
    const int32_t* pos_begin = tables.kv_page_pos.data() + tables.kv_indptr[seq];
    const int32_t* pos_end = tables.kv_page_pos.data() + tables.kv_indptr[seq + 1];
    for (int32_t i = tables.q_indptr[seq]; i < tables.q_indptr[seq + 1]; ++i) {
      if (batch.token_ids[i] < 0 || batch.token_ids[i] >= config_.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token_ids[", i, "] = ", batch.token_ids[i],
                         " is outside [0, vocab_size=", config_.vocab_size, ")"));
      }
      const int32_t position = tables.q_pos[i];
      if (position >= config_.max_position_embeddings) {
        return absl::InvalidArgumentError(absl::StrCat("q_pos[", i, "] = ", position,
                                                       " is beyond max_position_embeddings (",
                                                       config_.max_position_embeddings, ")"));
      }
      const int32_t page = batch.slot_page_ids[i];
      const int32_t offset = batch.slot_offsets[i];
      if (page < -1 || page >= pool_.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("slot_page_ids[", i, "] = ", page,
                         " is neither -1 nor in [0, num_blocks=", pool_.num_blocks, ")"));
      }
      const int64_t covering = std::upper_bound(pos_begin, pos_end, position) - pos_begin - 1;
      const int32_t listed = tables.kv_indptr[seq] + static_cast<int32_t>(covering);
      if (covering < 0 || position >= tables.kv_page_pos[listed] + tables.kv_page_len[listed]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query ", i, " of sequence ", seq, " (position ", position,
            ") lies in none of the sequence's kv pages; its own K/V would be invisible"));
      }
      if (page == -1) continue;
      if (offset < 0 || offset >= config_.block_tokens) {
        return absl::InvalidArgumentError(
            absl::StrCat("slot_offsets[", i, "] = ", offset,
                         " is outside [0, block_tokens=", config_.block_tokens, ")"));
      }
      if (tables.kv_page_ids[listed] != page || position - tables.kv_page_pos[listed] != offset) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query ", i, " of sequence ", seq, " (position ", position, ") writes slot (page ",
            page, ", row ", offset, ") but the sequence lists position ", position, " at (page ",
            tables.kv_page_ids[listed], ", row ", position - tables.kv_page_pos[listed], ")"));
      }
      slot_keys_.push_back(int64_t{page} * config_.block_tokens + offset);
    }
  }
  std::sort(slot_keys_.begin(), slot_keys_.end());
  if (auto dup = std::adjacent_find(slot_keys_.begin(), slot_keys_.end());
      dup != slot_keys_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("slot (page ", *dup / config_.block_tokens,
                                                   ", row ", *dup % config_.block_tokens,
                                                   ") is written by more than one query"));
  }

  if (batch.sampling.size() != batch.sample_rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling has ", batch.sampling.size(),
                                                   " entries; sample_rows has ",
                                                   batch.sample_rows.size()));
  }
  if (static_cast<int64_t>(batch.sample_rows.size()) > options_.max_step_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("batch samples ", batch.sample_rows.size(),
                                                     " rows; max_step_tokens is ",
                                                     options_.max_step_tokens));
  }
  sample_seen_.assign(static_cast<size_t>(total_q), 0);
  for (size_t i = 0; i < batch.sample_rows.size(); ++i) {
    const int32_t row = batch.sample_rows[i];
    if (row < 0 || row >= total_q) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample_rows[", i, "] = ", row, " is outside [0, total_q=", total_q, ")"));
    }
    if (sample_seen_[row]++ != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample_rows[", i, "] = ", row, " appears more than once"));
    }
    const SamplingParams& p = batch.sampling[i];
    if (!std::isfinite(p.temperature)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling[", i, "].temperature = ", p.temperature, " is not finite"));
    }
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling[", i, "].top_p = ", p.top_p, " is outside (0, 1]"));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Forward(const ForwardBatch& batch, ForwardResult* result) {
  if (result == nullptr) return absl::InvalidArgumentError("result must be non-null");
  ASYMCACHE_RETURN_IF_ERROR(CheckBatch(batch));
  if (batch.tables.total_q() == 0) {  // nothing to run (as on the CPU backend)
    result->tokens.clear();
    result->logits.clear();
    return absl::OkStatus();
  }
  ASYMCACHE_CUDA_OK(cudaSetDevice(options_.device));
  absl::Status status = RunForward(batch, result);
  if (!status.ok()) {
    // Drain what was enqueued so the staging area is free for the next step.
    cudaStreamSynchronize(stream());
  }
  return status;
}

StepTables CudaBackend::StageTables(const ForwardBatch& batch, std::vector<SampleChunk>* chunks) {
  uint8_t* host = host_staging();
  size_t at = 0;
  auto put = [&](const void* data, size_t bytes) {
    const size_t offset = at;
    if (bytes > 0) std::memcpy(host + offset, data, bytes);
    at = AlignUp(offset + bytes);
    return offset;
  };
  const msa::BatchTables& tables = batch.tables;
  const size_t q = static_cast<size_t>(tables.total_q()) * sizeof(int32_t);
  const size_t s = batch.sample_rows.size();
  StepTables t;
  t.tokens = put(batch.token_ids.data(), q);
  t.positions = put(tables.q_pos.data(), q);
  t.slot_pages = put(batch.slot_page_ids.data(), q);
  t.slot_offsets = put(batch.slot_offsets.data(), q);
  t.sample_rows = put(batch.sample_rows.data(), s * sizeof(int32_t));
  t.sample_params = at;
  auto* params = reinterpret_cast<SampleRowParams*>(host + at);
  for (size_t i = 0; i < s; ++i) {
    const SamplingParams& p = batch.sampling[i];
    params[i] = SampleRowParams{p.temperature, p.top_p, p.seed,
                                int64_t{tables.q_pos[batch.sample_rows[i]]} + 1};
  }
  at = AlignUp(at + s * sizeof(SampleRowParams));
  // Rows needing top-p, as chunk-local indices, grouped by LM-head chunk.
  t.top_p_rows = at;
  auto* top_p = reinterpret_cast<int32_t*>(host + at);
  int32_t count = 0;
  chunks->clear();
  for (int32_t first = 0; first < static_cast<int32_t>(s); first += lm_rows_) {
    SampleChunk chunk;
    chunk.first = first;
    chunk.rows = std::min<int32_t>(lm_rows_, static_cast<int32_t>(s) - first);
    chunk.top_p_first = count;
    for (int32_t r = 0; r < chunk.rows; ++r) {
      if (batch.sampling[first + r].temperature > 0.0f) top_p[count++] = r;
    }
    chunk.top_p_count = count - chunk.top_p_first;
    chunks->push_back(chunk);
  }
  at = AlignUp(at + static_cast<size_t>(count) * sizeof(int32_t));
  t.bytes = at;
  return t;
}

absl::Status CudaBackend::RunForward(const ForwardBatch& batch, ForwardResult* result) {
  std::vector<SampleChunk> chunks;
  const StepTables tables = StageTables(batch, &chunks);
  absl::StatusOr<msa::MsaPlan> plan =
      msa::PlanMsa(shape_, batch.tables, pool_.num_blocks, plan_options_,
                   host_staging() + tables.bytes, staging_host_.size() - tables.bytes);
  if (!plan.ok()) return plan.status();
  if (plan->device_bytes_used > staging_device_.size() - tables.bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("MSA plan needs ", plan->device_bytes_used,
                                                     " device workspace bytes, have ",
                                                     staging_device_.size() - tables.bytes));
  }
  ASYMCACHE_CUDA_OK(cudaMemcpyAsync(device_staging(), host_staging(),
                                    tables.bytes + plan->upload_bytes, cudaMemcpyHostToDevice,
                                    stream()));
  const int32_t total_q = batch.tables.total_q();
  const size_t samples = batch.sample_rows.size();
  result->tokens.assign(samples, 0);
  if (batch.want_logits) {
    result->logits.assign(samples * static_cast<size_t>(config_.vocab_size), 0.0f);
  } else {
    result->logits.clear();
  }
  if (config_.dtype == msa::DType::kBFloat16) {
    ASYMCACHE_RETURN_IF_ERROR(
        RunModel<__nv_bfloat16>(total_q, tables, *plan, chunks, batch.want_logits, result));
  } else {
    ASYMCACHE_RETURN_IF_ERROR(
        RunModel<__half>(total_q, tables, *plan, chunks, batch.want_logits, result));
  }
  if (samples > 0) {
    ASYMCACHE_CUDA_OK(cudaMemcpyAsync(sampled_host_.data(), sampled_.data(),
                                      samples * sizeof(int32_t), cudaMemcpyDeviceToHost, stream()));
  }
  ASYMCACHE_CUDA_OK(cudaStreamSynchronize(stream()));
  std::memcpy(result->tokens.data(), sampled_host_.data(), samples * sizeof(int32_t));
  return absl::OkStatus();
}

template <typename T>
absl::Status CudaBackend::RunModel(int32_t total_q, const StepTables& tables,
                                   const msa::MsaPlan& plan, const std::vector<SampleChunk>& chunks,
                                   bool want_logits, ForwardResult* result) {
  const cudaStream_t s = stream();
  uint8_t* staged = device_staging();
  const auto* tokens = reinterpret_cast<const int32_t*>(staged + tables.tokens);
  const auto* sample_rows = reinterpret_cast<const int32_t*>(staged + tables.sample_rows);
  const auto* sample_params =
      reinterpret_cast<const SampleRowParams*>(staged + tables.sample_params);
  const auto* top_p_rows = reinterpret_cast<const int32_t*>(staged + tables.top_p_rows);
  void* msa_workspace = staged + tables.bytes;
  const int64_t hidden = config_.hidden_size;
  const int64_t inter = config_.intermediate_size;
  const int64_t qkv_rows = config_.q_dim() + 2 * config_.kv_dim();
  const auto eps = static_cast<float>(config_.rms_norm_eps);
  const msa::DType dtype = config_.dtype;
  auto* residual = static_cast<float*>(residual_.data());
  auto* normed = static_cast<T*>(normed_.data());
  auto* gate_up = static_cast<T*>(gate_up_.data());
  auto* act = static_cast<T*>(act_.data());

  cuda::RopeAppendParams<T> rope{};
  rope.qkv = static_cast<const T*>(qkv_.data());
  rope.num_tokens = total_q;
  rope.positions = reinterpret_cast<const int32_t*>(staged + tables.positions);
  rope.slot_pages = reinterpret_cast<const int32_t*>(staged + tables.slot_pages);
  rope.slot_offsets = reinterpret_cast<const int32_t*>(staged + tables.slot_offsets);
  rope.cos_table = static_cast<const float*>(rope_cos_.data());
  rope.sin_table = static_cast<const float*>(rope_sin_.data());
  rope.num_q_heads = config_.num_q_heads;
  rope.num_kv_heads = config_.num_kv_heads;
  rope.head_dim = config_.head_dim;
  rope.q_out = static_cast<T*>(q_.data());
  rope.num_pages = pool_.num_blocks;
  rope.page_size = config_.block_tokens;

  ASYMCACHE_RETURN_IF_ERROR(
      CudaStatus(cuda::LaunchEmbeddingGather(tokens, total_q, static_cast<const T*>(embedding_),
                                             hidden, residual, s),
                 "embedding gather"));
  for (int32_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    void* pool = static_cast<uint8_t*>(pool_.base) + l * pool_.layer_stride_bytes;
    ASYMCACHE_RETURN_IF_ERROR(CudaStatus(
        cuda::LaunchRmsNorm(residual, nullptr, total_q, hidden, w.attn_norm, eps, normed, s),
        "attention RMSNorm"));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.qkv, normed, qkv_.data(), qkv_rows, total_q, hidden,
                                         dtype, /*out_fp32=*/false, /*accumulate=*/false, s));
    rope.pool = static_cast<T*>(pool);
    ASYMCACHE_RETURN_IF_ERROR(CudaStatus(cuda::LaunchRopeAppend(rope, s), "rotary + KV append"));
    ASYMCACHE_RETURN_IF_ERROR(msa::RunMsaCuda(plan, shape_, q_.data(), pool, attn_.data(),
                                              /*lse=*/nullptr, msa_workspace, s));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.o, attn_.data(), residual, hidden, total_q,
                                         config_.q_dim(), dtype, /*out_fp32=*/true,
                                         /*accumulate=*/true, s));
    ASYMCACHE_RETURN_IF_ERROR(CudaStatus(
        cuda::LaunchRmsNorm(residual, nullptr, total_q, hidden, w.mlp_norm, eps, normed, s),
        "MLP RMSNorm"));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.gate_up, normed, gate_up, 2 * inter, total_q, hidden,
                                         dtype, /*out_fp32=*/false, /*accumulate=*/false, s));
    ASYMCACHE_RETURN_IF_ERROR(
        CudaStatus(cuda::LaunchSwiGlu(gate_up, total_q, inter, act, s), "SwiGLU"));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(w.down, act, residual, hidden, total_q, inter, dtype,
                                         /*out_fp32=*/true, /*accumulate=*/true, s));
  }

  auto* lm_in = static_cast<T*>(lm_in_.data());
  auto* logits = static_cast<float*>(logits_.data());
  auto* sampled = static_cast<int32_t*>(sampled_.data());
  const int64_t vocab = config_.vocab_size;
  for (const SampleChunk& chunk : chunks) {
    ASYMCACHE_RETURN_IF_ERROR(
        CudaStatus(cuda::LaunchRmsNorm(residual, sample_rows + chunk.first, chunk.rows, hidden,
                                       final_norm_, eps, lm_in, s),
                   "final RMSNorm"));
    ASYMCACHE_RETURN_IF_ERROR(gemm_->Run(lm_head_, lm_in, logits, vocab, chunk.rows, hidden, dtype,
                                         /*out_fp32=*/true, /*accumulate=*/false, s));
    ASYMCACHE_RETURN_IF_ERROR(sampler_.Sample(logits, chunk.rows, sample_params + chunk.first,
                                              top_p_rows + chunk.top_p_first, chunk.top_p_count,
                                              sampled + chunk.first, s));
    if (want_logits) {
      // Pageable destination: returns once the copy is done, so the logits
      // buffer is free for the next chunk.
      ASYMCACHE_CUDA_OK(cudaMemcpyAsync(result->logits.data() + chunk.first * vocab, logits,
                                        static_cast<size_t>(chunk.rows * vocab) * sizeof(float),
                                        cudaMemcpyDeviceToHost, s));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::CopyPageRows(int32_t src, int32_t dst, int32_t rows) {
  if (src < 0 || src >= pool_.num_blocks || dst < 0 || dst >= pool_.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat("CopyPageRows: pages ", src, " -> ", dst,
                                                   " must be in [0, ", pool_.num_blocks, ")"));
  }
  if (src == dst) {
    return absl::InvalidArgumentError(absl::StrCat("CopyPageRows: src == dst (", src, ")"));
  }
  if (rows < 1 || rows > config_.block_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("CopyPageRows: rows ", rows, " is outside [1, ", config_.block_tokens, "]"));
  }
  ASYMCACHE_CUDA_OK(cudaSetDevice(options_.device));
  const int64_t row_bytes = config_.kv_dim() * dtype_bytes_;
  ASYMCACHE_CUDA_OK(cuda::LaunchCopyPageRows(pool_.base, pool_.layer_stride_bytes, page_bytes_, src,
                                             dst, rows * row_bytes, config_.num_layers, stream()));
  ASYMCACHE_CUDA_OK(cudaStreamSynchronize(stream()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelBackend>> CreateCudaBackend(const WeightSource& weights,
                                                                KvPoolView pool,
                                                                CudaBackendOptions options) {
  return CudaBackend::Create(weights, pool, options);
}

}  // namespace asymcache::model
