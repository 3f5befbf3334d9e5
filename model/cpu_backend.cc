// The CPU model backend (model/model_backend.h CreateCpuBackend): the Llama
// forward pass in fp32 over the host KV pool, with the batch-invariant GEMM of
// model/cpu_gemm.h, rotary embeddings of model/rope.h, KV append and attention
// from the MSA CPU kernels, and the host sampling rule of model/sampling.h.
//
// Per token at absolute position p (see model_backend.h):
//   x = embed[token]; per layer: h = rmsnorm(x) * w_attn_norm;
//   q, k, v = h Wq^T, h Wk^T, h Wv^T; rotary on q and k at p; k, v appended
//   into the layer's pool; attn = MSA over the batch tables;
//   x += attn Wo^T; h = rmsnorm(x) * w_mlp_norm;
//   x += (silu(h Wg^T) * (h Wu^T)) Wd^T;
//   sample rows: logits = (rmsnorm(x) * w_final_norm) W_lm^T.
// Every step of that is row-local or reduces in a fixed order per row, so a
// token's results do not depend on the rest of the batch (bitwise).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "kernels/msa.h"
#include "kernels/msa_cpu.h"
#include "model/cpu_gemm.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/rope.h"
#include "model/sampling.h"
#include "model/weight_source.h"

namespace asymcache::model {
namespace {

// One decoder layer's weights in fp32. Q/K/V and gate/up are stacked so that
// each pair/triple is one GEMM (the stacking does not change any output
// element's reduction).
struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  std::vector<float> qkv;        // [q_dim + 2 kv_dim][hidden]: Wq rows, Wk rows, Wv rows
  std::vector<float> o;          // [hidden][q_dim]
  std::vector<float> mlp_norm;   // [hidden]
  std::vector<float> gate_up;    // [2 intermediate][hidden]: Wg rows, Wu rows
  std::vector<float> down;       // [hidden][intermediate]
};

// Appends tensor (role, layer) of `weights`, as fp32, to dst (stacking Q/K/V
// and gate/up row blocks in call order).
absl::Status ReadTensor(const WeightSource& weights, TensorRole role, int32_t layer,
                        std::vector<float>& dst) {
  const std::vector<TensorSpec>& specs = weights.specs();
  for (size_t index = 0; index < specs.size(); ++index) {
    if (specs[index].role != role || specs[index].layer != layer) continue;
    const size_t offset = dst.size();
    dst.resize(offset + static_cast<size_t>(specs[index].elements()));
    return weights.ReadFloat32(index, absl::MakeSpan(dst).subspan(offset));
  }
  return absl::NotFoundError(absl::StrCat("weights have no tensor of role ",
                                          static_cast<int32_t>(role), " for layer ", layer));
}

// dst[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; the sum of squares is
// accumulated in double in index order.
void RmsNormRow(const float* x, const float* weight, int64_t size, float eps, float* dst) {
  double sum_squares = 0.0;
  for (int64_t i = 0; i < size; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float mean = static_cast<float>(sum_squares / static_cast<double>(size));
  const float inverse = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < size; ++i) dst[i] = (x[i] * inverse) * weight[i];
}

class CpuBackend final : public ModelBackend {
 public:
  CpuBackend(const LlamaConfig& config, KvPoolView pool, int num_threads)
      : config_(config),
        shape_(config.attention_shape()),
        pool_(pool),
        inv_freq_(RopeInvFrequencies(config)),
        num_threads_(num_threads),
        gemm_(num_threads) {}

  absl::Status LoadWeights(const WeightSource& weights) {
    if (absl::Status s = ReadTensor(weights, TensorRole::kEmbedding, -1, embedding_); !s.ok()) {
      return s;
    }
    layers_.resize(config_.num_layers);
    for (int32_t l = 0; l < config_.num_layers; ++l) {
      LayerWeights& layer = layers_[l];
      const std::pair<TensorRole, std::vector<float>*> parts[] = {
          {TensorRole::kAttnNorm, &layer.attn_norm}, {TensorRole::kQProj, &layer.qkv},
          {TensorRole::kKProj, &layer.qkv},          {TensorRole::kVProj, &layer.qkv},
          {TensorRole::kOProj, &layer.o},            {TensorRole::kMlpNorm, &layer.mlp_norm},
          {TensorRole::kGateProj, &layer.gate_up},   {TensorRole::kUpProj, &layer.gate_up},
          {TensorRole::kDownProj, &layer.down},
      };
      for (const auto& [role, dst] : parts) {
        if (absl::Status s = ReadTensor(weights, role, l, *dst); !s.ok()) return s;
      }
    }
    if (absl::Status s = ReadTensor(weights, TensorRole::kFinalNorm, -1, final_norm_); !s.ok()) {
      return s;
    }
    if (!config_.tie_word_embeddings) {
      if (absl::Status s = ReadTensor(weights, TensorRole::kLmHead, -1, lm_head_); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  const LlamaConfig& config() const override { return config_; }
  absl::string_view name() const override { return "cpu"; }

  absl::Status Forward(const ForwardBatch& batch, ForwardResult* result) override;
  absl::Status CopyPageRows(int32_t src, int32_t dst, int32_t rows) override;

 private:
  absl::Status ValidateForward(const ForwardBatch& batch, const ForwardResult* result) const;
  float* LayerPool(int32_t layer) const {
    return reinterpret_cast<float*>(static_cast<char*>(pool_.base) +
                                    int64_t{layer} * pool_.layer_stride_bytes);
  }
  const float* LmHead() const { return config_.tie_word_embeddings ? embedding_.data()
                                                                   : lm_head_.data(); }
  // The decoder layers over x_ for the step's total_q tokens.
  absl::Status RunLayers(const ForwardBatch& batch, int64_t total_q);
  // Appends k_/v_ of the tokens whose slot page is not -1 into `pool`.
  absl::Status AppendWritten(const ForwardBatch& batch, float* pool);

  // Immutable after construction.
  const LlamaConfig config_;
  const msa::AttentionShape shape_;
  const KvPoolView pool_;
  const std::vector<double> inv_freq_;
  const int num_threads_;
  std::vector<float> embedding_;  // [vocab][hidden]
  std::vector<LayerWeights> layers_;
  std::vector<float> final_norm_;  // [hidden]
  std::vector<float> lm_head_;     // [vocab][hidden]; empty when tied

  CpuGemm gemm_;
  // Step scratch, reused across steps (sized by the largest step so far).
  std::vector<float> x_;       // [T][hidden] residual stream
  std::vector<float> h_;       // [T][max(hidden, intermediate)] normed input / MLP activation
  std::vector<float> wide_;    // [T][max(q + 2kv, 2 intermediate)] stacked GEMM output
  std::vector<float> q_;       // [T][q_dim]
  std::vector<float> k_;       // [T][kv_dim]
  std::vector<float> v_;       // [T][kv_dim]
  std::vector<float> attn_;    // [T][q_dim]
  std::vector<float> delta_;   // [T][hidden] a sublayer's output before the residual add
  std::vector<float> cos_;     // [T][head_dim / 2]
  std::vector<float> sin_;     // [T][head_dim / 2]
  // Tokens written by AppendWritten when some slots are -1 (their rows).
  std::vector<int32_t> written_pages_, written_rows_;
  std::vector<float> written_k_, written_v_;
};

absl::Status CpuBackend::AppendWritten(const ForwardBatch& batch, float* pool) {
  const size_t total_q = batch.slot_page_ids.size();
  size_t skipped = 0;
  for (int32_t page : batch.slot_page_ids) skipped += page == -1;
  if (skipped == 0) {
    return msa::AppendKvCpu(shape_, batch.slot_page_ids, batch.slot_offsets, k_.data(), v_.data(),
                            pool, pool_.num_blocks);
  }
  const int64_t kv_dim = config_.kv_dim();
  written_pages_.clear();
  written_rows_.clear();
  written_k_.clear();
  written_v_.clear();
  for (size_t i = 0; i < total_q; ++i) {
    if (batch.slot_page_ids[i] == -1) continue;
    written_pages_.push_back(batch.slot_page_ids[i]);
    written_rows_.push_back(batch.slot_offsets[i]);
    written_k_.insert(written_k_.end(), k_.begin() + i * kv_dim, k_.begin() + (i + 1) * kv_dim);
    written_v_.insert(written_v_.end(), v_.begin() + i * kv_dim, v_.begin() + (i + 1) * kv_dim);
  }
  if (written_pages_.empty()) return absl::OkStatus();
  return msa::AppendKvCpu(shape_, written_pages_, written_rows_, written_k_.data(),
                          written_v_.data(), pool, pool_.num_blocks);
}

absl::Status CpuBackend::ValidateForward(const ForwardBatch& batch,
                                         const ForwardResult* result) const {
  if (result == nullptr) return absl::InvalidArgumentError("result is null");
  const msa::BatchTables& tables = batch.tables;
  if (absl::Status s = msa::ValidateBatch(shape_, tables, pool_.num_blocks); !s.ok()) return s;
  const size_t total_q = static_cast<size_t>(tables.total_q());
  if (batch.token_ids.size() != total_q) {
    return absl::InvalidArgumentError(absl::StrCat("token_ids has ", batch.token_ids.size(),
                                                   " entries but the tables have ", total_q,
                                                   " queries"));
  }
  if (batch.slot_page_ids.size() != total_q || batch.slot_offsets.size() != total_q) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slot_page_ids has ", batch.slot_page_ids.size(), " and slot_offsets ",
        batch.slot_offsets.size(), " entries; both must equal the ", total_q, " queries"));
  }
  for (size_t i = 0; i < total_q; ++i) {
    if (batch.token_ids[i] < 0 || batch.token_ids[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "]=", batch.token_ids[i],
                                                     " is outside [0, vocab_size=",
                                                     config_.vocab_size, ")"));
    }
  }
  // Every query writes its K/V into the page row its own sequence lists for
  // its position (it attends to itself), and no two queries share a slot.
  absl::flat_hash_set<int64_t> slots;
  slots.reserve(total_q);
  for (int32_t seq = 0; seq < tables.batch_size(); ++seq) {
    const int32_t page_begin = tables.kv_indptr[seq];
    const int32_t page_end = tables.kv_indptr[seq + 1];
    for (int32_t i = tables.q_indptr[seq]; i < tables.q_indptr[seq + 1]; ++i) {
      const int32_t page = batch.slot_page_ids[i];
      const int32_t offset = batch.slot_offsets[i];
      const bool no_write = page == -1;  // the listed pages already hold its K/V
      if (!no_write && (page < 0 || page >= pool_.num_blocks)) {
        return absl::InvalidArgumentError(absl::StrCat("slot_page_ids[", i, "]=", page,
                                                       " is outside [0, num_blocks=",
                                                       pool_.num_blocks, ")"));
      }
      if (!no_write && (offset < 0 || offset >= config_.block_tokens)) {
        return absl::InvalidArgumentError(absl::StrCat("slot_offsets[", i, "]=", offset,
                                                       " is outside [0, block_tokens=",
                                                       config_.block_tokens, ")"));
      }
      if (!no_write && !slots.insert(int64_t{page} * config_.block_tokens + offset).second) {
        return absl::InvalidArgumentError(absl::StrCat("slot (page ", page, ", row ", offset,
                                                       ") of query ", i,
                                                       " is written by an earlier query too"));
      }
      const int32_t position = tables.q_pos[i];
      // The last listed page starting at or before `position` must hold it.
      const int32_t* pos_begin = tables.kv_page_pos.data() + page_begin;
      const int32_t* pos_end = tables.kv_page_pos.data() + page_end;
      const int64_t covering = std::upper_bound(pos_begin, pos_end, position) - pos_begin - 1;
      const int32_t listed = page_begin + static_cast<int32_t>(covering);
      if (covering < 0 || position >= tables.kv_page_pos[listed] + tables.kv_page_len[listed]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query ", i, " of sequence ", seq, " (position ", position,
            ") lies in none of the sequence's kv pages; its own K/V would be invisible"));
      }
      if (!no_write && (tables.kv_page_ids[listed] != page ||
                        position - tables.kv_page_pos[listed] != offset)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query ", i, " of sequence ", seq, " (position ", position, ") writes slot (page ",
            page, ", row ", offset, ") but the sequence lists position ", position,
            " at (page ", tables.kv_page_ids[listed], ", row ",
            position - tables.kv_page_pos[listed], ")"));
      }
    }
  }
  if (batch.sampling.size() != batch.sample_rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling has ", batch.sampling.size(),
                                                   " entries but sample_rows has ",
                                                   batch.sample_rows.size()));
  }
  absl::flat_hash_set<int32_t> rows;
  rows.reserve(batch.sample_rows.size());
  for (size_t s = 0; s < batch.sample_rows.size(); ++s) {
    const int32_t row = batch.sample_rows[s];
    if (row < 0 || static_cast<size_t>(row) >= total_q) {
      return absl::InvalidArgumentError(absl::StrCat("sample_rows[", s, "]=", row,
                                                     " is outside [0, total_q=", total_q, ")"));
    }
    if (!rows.insert(row).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample_rows[", s, "]=", row, " appears more than once"));
    }
    const SamplingParams& params = batch.sampling[s];
    if (!std::isfinite(params.temperature)) {
      return absl::InvalidArgumentError(absl::StrCat("sampling[", s, "].temperature=",
                                                     params.temperature, " is not finite"));
    }
    if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling[", s, "].top_p=", params.top_p, " is outside (0, 1]"));
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::RunLayers(const ForwardBatch& batch, int64_t total_q) {
  const int64_t hidden = config_.hidden_size;
  const int64_t q_dim = config_.q_dim();
  const int64_t kv_dim = config_.kv_dim();
  const int64_t inter = config_.intermediate_size;
  const int32_t head_dim = config_.head_dim;
  const int32_t half = head_dim / 2;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int64_t qkv_cols = q_dim + 2 * kv_dim;

  gemm_.ParallelFor(total_q, [&](int64_t t) {
    RopeCosSin(inv_freq_, batch.tables.q_pos[t], cos_.data() + t * half, sin_.data() + t * half);
  });
  msa::CpuRunOptions msa_options;
  msa_options.num_threads = num_threads_;

  for (int32_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& layer = layers_[l];
    // Attention block.
    gemm_.ParallelFor(total_q, [&](int64_t t) {
      RmsNormRow(x_.data() + t * hidden, layer.attn_norm.data(), hidden, eps,
                 h_.data() + t * hidden);
    });
    gemm_.Multiply(h_.data(), total_q, layer.qkv.data(), qkv_cols, hidden, wide_.data());
    gemm_.ParallelFor(total_q, [&](int64_t t) {
      const float* row = wide_.data() + t * qkv_cols;
      float* q = q_.data() + t * q_dim;
      float* k = k_.data() + t * kv_dim;
      std::memcpy(q, row, sizeof(float) * q_dim);
      std::memcpy(k, row + q_dim, sizeof(float) * kv_dim);
      std::memcpy(v_.data() + t * kv_dim, row + q_dim + kv_dim, sizeof(float) * kv_dim);
      const float* cos = cos_.data() + t * half;
      const float* sin = sin_.data() + t * half;
      for (int32_t head = 0; head < config_.num_q_heads; ++head) {
        ApplyRope(cos, sin, half, q + int64_t{head} * head_dim);
      }
      for (int32_t head = 0; head < config_.num_kv_heads; ++head) {
        ApplyRope(cos, sin, half, k + int64_t{head} * head_dim);
      }
    });
    float* pool = LayerPool(l);
    if (absl::Status s = AppendWritten(batch, pool); !s.ok()) return s;
    if (absl::Status s = msa::RunMsaCpu(shape_, batch.tables, q_.data(), pool, pool_.num_blocks,
                                        attn_.data(), /*lse=*/nullptr, msa_options);
        !s.ok()) {
      return s;
    }
    gemm_.Multiply(attn_.data(), total_q, layer.o.data(), hidden, q_dim, delta_.data());
    for (int64_t i = 0; i < total_q * hidden; ++i) x_[i] += delta_[i];

    // MLP block.
    gemm_.ParallelFor(total_q, [&](int64_t t) {
      RmsNormRow(x_.data() + t * hidden, layer.mlp_norm.data(), hidden, eps,
                 h_.data() + t * hidden);
    });
    gemm_.Multiply(h_.data(), total_q, layer.gate_up.data(), 2 * inter, hidden, wide_.data());
    gemm_.ParallelFor(total_q, [&](int64_t t) {
      const float* gate = wide_.data() + t * 2 * inter;
      const float* up = gate + inter;
      float* act = h_.data() + t * inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float g = gate[i];
        act[i] = (g / (1.0f + std::exp(-g))) * up[i];
      }
    });
    gemm_.Multiply(h_.data(), total_q, layer.down.data(), hidden, inter, delta_.data());
    for (int64_t i = 0; i < total_q * hidden; ++i) x_[i] += delta_[i];
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Forward(const ForwardBatch& batch, ForwardResult* result) {
  if (absl::Status s = ValidateForward(batch, result); !s.ok()) return s;
  const int64_t total_q = batch.tables.total_q();
  const int64_t hidden = config_.hidden_size;
  const int64_t vocab = config_.vocab_size;
  const size_t num_samples = batch.sample_rows.size();
  result->tokens.clear();
  result->logits.clear();
  if (total_q == 0) return absl::OkStatus();

  const auto rows = static_cast<size_t>(total_q);
  x_.resize(rows * hidden);
  h_.resize(rows * std::max(hidden, config_.intermediate_size));
  wide_.resize(rows * std::max(config_.q_dim() + 2 * config_.kv_dim(),
                               2 * config_.intermediate_size));
  q_.resize(rows * config_.q_dim());
  k_.resize(rows * config_.kv_dim());
  v_.resize(rows * config_.kv_dim());
  attn_.resize(rows * config_.q_dim());
  delta_.resize(rows * hidden);
  cos_.resize(rows * (config_.head_dim / 2));
  sin_.resize(rows * (config_.head_dim / 2));

  for (int64_t t = 0; t < total_q; ++t) {
    std::memcpy(x_.data() + t * hidden, embedding_.data() + int64_t{batch.token_ids[t]} * hidden,
                sizeof(float) * hidden);
  }
  if (absl::Status s = RunLayers(batch, total_q); !s.ok()) return s;
  if (num_samples == 0) return absl::OkStatus();

  // Final norm and LM head on the sample rows only.
  const float eps = static_cast<float>(config_.rms_norm_eps);
  std::vector<float> normed(num_samples * hidden);
  for (size_t s = 0; s < num_samples; ++s) {
    RmsNormRow(x_.data() + int64_t{batch.sample_rows[s]} * hidden, final_norm_.data(), hidden,
               eps, normed.data() + s * hidden);
  }
  std::vector<float> logits(num_samples * vocab);
  gemm_.Multiply(normed.data(), static_cast<int64_t>(num_samples), LmHead(), vocab, hidden,
                 logits.data());
  result->tokens.resize(num_samples);
  for (size_t s = 0; s < num_samples; ++s) {
    const int64_t position = int64_t{batch.tables.q_pos[batch.sample_rows[s]]} + 1;
    result->tokens[s] = SampleToken(absl::MakeConstSpan(logits).subspan(s * vocab, vocab),
                                    batch.sampling[s], position);
  }
  if (batch.want_logits) result->logits = std::move(logits);
  return absl::OkStatus();
}

absl::Status CpuBackend::CopyPageRows(int32_t src, int32_t dst, int32_t rows) {
  for (const auto& [name, page] : {std::pair<const char*, int32_t>{"src", src}, {"dst", dst}}) {
    if (page < 0 || page >= pool_.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(name, "=", page, " is outside [0, num_blocks=",
                                                     pool_.num_blocks, ")"));
    }
  }
  if (src == dst) {
    return absl::InvalidArgumentError(absl::StrCat("src and dst are the same page ", src));
  }
  if (rows < 1 || rows > config_.block_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("rows=", rows, " is outside [1, block_tokens=",
                                                   config_.block_tokens, "]"));
  }
  const int64_t row_elems = config_.kv_dim();
  const int64_t half_page = int64_t{config_.block_tokens} * row_elems;  // K or V of a page
  const size_t bytes = sizeof(float) * static_cast<size_t>(rows * row_elems);
  for (int32_t l = 0; l < config_.num_layers; ++l) {
    float* pool = LayerPool(l);
    float* src_page = pool + int64_t{src} * 2 * half_page;
    float* dst_page = pool + int64_t{dst} * 2 * half_page;
    std::memcpy(dst_page, src_page, bytes);                          // K rows
    std::memcpy(dst_page + half_page, src_page + half_page, bytes);  // V rows
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CpuBackendOptions::Validate() const {
  if (num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_threads must be >= 0 (0 = hardware concurrency), got ", num_threads));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ModelBackend>> CreateCpuBackend(const WeightSource& weights,
                                                               KvPoolView pool,
                                                               CpuBackendOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const LlamaConfig& config = weights.config();
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (config.dtype != msa::DType::kFloat32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.dtype must be float32 for the CPU backend (the fp32 exactness reference), got ",
        "dtype ", static_cast<int32_t>(config.dtype)));
  }
  if (pool.base == nullptr) return absl::InvalidArgumentError("pool.base is null");
  if (reinterpret_cast<uintptr_t>(pool.base) % alignof(float) != 0) {
    return absl::InvalidArgumentError("pool.base is not aligned to 4 bytes (fp32 pool)");
  }
  if (pool.num_blocks < 1 || pool.num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("pool.num_blocks=", pool.num_blocks,
                                                   " is outside [1, 2^31 - 1]"));
  }
  const int64_t page_bytes = config.attention_shape().PageElements() *
                             static_cast<int64_t>(sizeof(float));
  if (pool.layer_stride_bytes % static_cast<int64_t>(sizeof(float)) != 0 ||
      pool.layer_stride_bytes / page_bytes < pool.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pool.layer_stride_bytes=", pool.layer_stride_bytes, " must be a multiple of 4 and at least ",
        "num_blocks * page bytes = ", pool.num_blocks, " * ", page_bytes));
  }
  const int num_threads = options.num_threads > 0
                              ? options.num_threads
                              : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  auto backend = std::make_unique<CpuBackend>(config, pool, num_threads);
  if (absl::Status s = backend->LoadWeights(weights); !s.ok()) return s;
  return std::unique_ptr<ModelBackend>(std::move(backend));
}

}  // namespace asymcache::model
