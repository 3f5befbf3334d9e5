// Dense reference generation (model/dense_reference.h): the "no cache at all"
// run. Deliberately shares nothing with the CPU backend but the rotary
// frequencies (model/rope.h) and the sampling rule (model/sampling.h): plain
// loops, weights transposed to [in][out] so that y = x W^T runs as
// y[o] += x[k] * Wt[k][o] (each output summed over k in index order),
// contiguous per-layer K/V of the whole context, and a naive two-pass softmax
// attention per query and head.
#include "model/dense_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/rope.h"
#include "model/sampling.h"
#include "model/weight_source.h"

namespace asymcache::model {
namespace {

// A linear layer stored transposed: t[k * out + o] = W[o][k].
struct Linear {
  int64_t in = 0;
  int64_t out = 0;
  std::vector<float> t;

  // y[o] = sum_k x[k] * W[o][k], k ascending.
  void Apply(const float* __restrict x, float* __restrict y) const {
    for (int64_t o = 0; o < out; ++o) y[o] = 0.0f;
    for (int64_t k = 0; k < in; ++k) {
      const float xk = x[k];
      const float* __restrict row = t.data() + k * out;
      for (int64_t o = 0; o < out; ++o) y[o] += xk * row[o];
    }
  }
};

struct DenseLayer {
  std::vector<float> attn_norm;
  Linear q, k, v, o;
  std::vector<float> mlp_norm;
  Linear gate, up, down;
  std::vector<float> keys;    // [context][kv_dim], rotated
  std::vector<float> values;  // [context][kv_dim]
};

class DenseModel {
 public:
  explicit DenseModel(const LlamaConfig& config)
      : config_(config), inv_freq_(RopeInvFrequencies(config)), layers_(config.num_layers) {}

  absl::Status Load(const WeightSource& weights) {
    const std::vector<TensorSpec>& specs = weights.specs();
    for (size_t index = 0; index < specs.size(); ++index) {
      const TensorSpec& spec = specs[index];
      std::vector<float> values(static_cast<size_t>(spec.elements()));
      if (absl::Status s = weights.ReadFloat32(index, absl::MakeSpan(values)); !s.ok()) return s;
      DenseLayer* layer = spec.layer >= 0 ? &layers_[spec.layer] : nullptr;
      switch (spec.role) {
        case TensorRole::kEmbedding:
          embedding_ = std::move(values);
          break;
        case TensorRole::kFinalNorm:
          final_norm_ = std::move(values);
          break;
        case TensorRole::kLmHead:
          lm_head_ = Transposed(spec, values);
          break;
        case TensorRole::kAttnNorm:
          layer->attn_norm = std::move(values);
          break;
        case TensorRole::kMlpNorm:
          layer->mlp_norm = std::move(values);
          break;
        case TensorRole::kQProj:
          layer->q = Transposed(spec, values);
          break;
        case TensorRole::kKProj:
          layer->k = Transposed(spec, values);
          break;
        case TensorRole::kVProj:
          layer->v = Transposed(spec, values);
          break;
        case TensorRole::kOProj:
          layer->o = Transposed(spec, values);
          break;
        case TensorRole::kGateProj:
          layer->gate = Transposed(spec, values);
          break;
        case TensorRole::kUpProj:
          layer->up = Transposed(spec, values);
          break;
        case TensorRole::kDownProj:
          layer->down = Transposed(spec, values);
          break;
      }
    }
    if (config_.tie_word_embeddings) {
      TensorSpec embedding_spec;
      embedding_spec.shape = {config_.vocab_size, config_.hidden_size};
      lm_head_ = Transposed(embedding_spec, embedding_);
    }
    return absl::OkStatus();
  }

  // Runs `tokens` at positions start, start + 1, ... through every layer
  // (appending their K/V to the context) and returns the logits of the last.
  std::vector<float> Run(absl::Span<const int32_t> tokens, int64_t start) {
    const int64_t hidden = config_.hidden_size;
    const int64_t count = static_cast<int64_t>(tokens.size());
    std::vector<float> x(count * hidden);
    for (int64_t t = 0; t < count; ++t) {
      for (int64_t i = 0; i < hidden; ++i) x[t * hidden + i] = embedding_[tokens[t] * hidden + i];
    }
    for (DenseLayer& layer : layers_) RunLayer(layer, start, count, x);
    std::vector<float> normed(hidden);
    RmsNorm(x.data() + (count - 1) * hidden, final_norm_, normed.data());
    std::vector<float> logits(config_.vocab_size);
    lm_head_.Apply(normed.data(), logits.data());
    return logits;
  }

 private:
  static Linear Transposed(const TensorSpec& spec, const std::vector<float>& w) {
    Linear linear;
    linear.out = spec.shape[0];
    linear.in = spec.shape[1];
    linear.t.resize(w.size());
    for (int64_t o = 0; o < linear.out; ++o) {
      for (int64_t k = 0; k < linear.in; ++k) linear.t[k * linear.out + o] = w[o * linear.in + k];
    }
    return linear;
  }

  void RmsNorm(const float* x, const std::vector<float>& weight, float* dst) const {
    const int64_t size = config_.hidden_size;
    float sum_squares = 0.0f;
    for (int64_t i = 0; i < size; ++i) sum_squares += x[i] * x[i];
    const float scale =
        1.0f / std::sqrt(sum_squares / static_cast<float>(size) +
                         static_cast<float>(config_.rms_norm_eps));
    for (int64_t i = 0; i < size; ++i) dst[i] = x[i] * scale * weight[i];
  }

  void Rotate(float* head, int64_t position) const {
    const int32_t half = config_.head_dim / 2;
    std::vector<float> cos(half);
    std::vector<float> sin(half);
    RopeCosSin(inv_freq_, position, cos.data(), sin.data());
    ApplyRope(cos.data(), sin.data(), half, head);
  }

  void RunLayer(DenseLayer& layer, int64_t start, int64_t count, std::vector<float>& x) {
    const int64_t hidden = config_.hidden_size;
    const int64_t q_dim = config_.q_dim();
    const int64_t kv_dim = config_.kv_dim();
    const int32_t head_dim = config_.head_dim;
    const int32_t group = config_.num_q_heads / config_.num_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    const int64_t context = start + count;
    layer.keys.resize(context * kv_dim);
    layer.values.resize(context * kv_dim);

    std::vector<float> h(hidden);
    std::vector<float> q(count * q_dim);
    // Projections of every new token first: a query sees every key up to its
    // own position, including those of later tokens of this pass' prefix.
    for (int64_t t = 0; t < count; ++t) {
      const int64_t position = start + t;
      RmsNorm(x.data() + t * hidden, layer.attn_norm, h.data());
      float* q_row = q.data() + t * q_dim;
      float* k_row = layer.keys.data() + position * kv_dim;
      layer.q.Apply(h.data(), q_row);
      layer.k.Apply(h.data(), k_row);
      layer.v.Apply(h.data(), layer.values.data() + position * kv_dim);
      for (int32_t head = 0; head < config_.num_q_heads; ++head) {
        Rotate(q_row + int64_t{head} * head_dim, position);
      }
      for (int32_t head = 0; head < config_.num_kv_heads; ++head) {
        Rotate(k_row + int64_t{head} * head_dim, position);
      }
    }

    std::vector<float> attn(q_dim);
    std::vector<float> scores(context);
    std::vector<float> delta(hidden);
    std::vector<float> gate(config_.intermediate_size);
    std::vector<float> up(config_.intermediate_size);
    for (int64_t t = 0; t < count; ++t) {
      const int64_t position = start + t;
      for (int32_t head = 0; head < config_.num_q_heads; ++head) {
        const float* q_head = q.data() + t * q_dim + int64_t{head} * head_dim;
        const int64_t kv_offset = int64_t{head / group} * head_dim;
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= position; ++j) {
          const float* key = layer.keys.data() + j * kv_dim + kv_offset;
          float dot = 0.0f;
          for (int32_t d = 0; d < head_dim; ++d) dot += q_head[d] * key[d];
          scores[j] = dot * scale;
          max_score = std::max(max_score, scores[j]);
        }
        float total = 0.0f;
        for (int64_t j = 0; j <= position; ++j) {
          scores[j] = std::exp(scores[j] - max_score);
          total += scores[j];
        }
        float* out = attn.data() + int64_t{head} * head_dim;
        for (int32_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
        for (int64_t j = 0; j <= position; ++j) {
          const float* value = layer.values.data() + j * kv_dim + kv_offset;
          const float weight = scores[j] / total;
          for (int32_t d = 0; d < head_dim; ++d) out[d] += weight * value[d];
        }
      }
      float* x_row = x.data() + t * hidden;
      layer.o.Apply(attn.data(), delta.data());
      for (int64_t i = 0; i < hidden; ++i) x_row[i] += delta[i];

      RmsNorm(x_row, layer.mlp_norm, h.data());
      layer.gate.Apply(h.data(), gate.data());
      layer.up.Apply(h.data(), up.data());
      for (size_t i = 0; i < gate.size(); ++i) {
        const float silu = gate[i] / (1.0f + std::exp(-gate[i]));
        gate[i] = silu * up[i];
      }
      layer.down.Apply(gate.data(), delta.data());
      for (int64_t i = 0; i < hidden; ++i) x_row[i] += delta[i];
    }
  }

  const LlamaConfig config_;
  const std::vector<double> inv_freq_;
  std::vector<float> embedding_;  // [vocab][hidden]
  std::vector<float> final_norm_;
  Linear lm_head_;
  std::vector<DenseLayer> layers_;
};

}  // namespace

absl::StatusOr<DenseGeneration> GenerateDense(const WeightSource& weights,
                                              absl::Span<const int32_t> prompt,
                                              const DenseGenerateOptions& options) {
  const LlamaConfig& config = weights.config();
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt[", i, "]=", prompt[i],
                                                     " is outside [0, vocab_size=",
                                                     config.vocab_size, ")"));
    }
  }
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", options.max_new_tokens));
  }
  if (!std::isfinite(options.sampling.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.temperature=",
                                                   options.sampling.temperature,
                                                   " is not finite"));
  }
  if (!(options.sampling.top_p > 0.0f && options.sampling.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p=", options.sampling.top_p, " is outside (0, 1]"));
  }

  DenseModel model(config);
  if (absl::Status s = model.Load(weights); !s.ok()) return s;
  DenseGeneration generation;
  std::vector<float> logits = model.Run(prompt, 0);
  int64_t position = static_cast<int64_t>(prompt.size());  // where the next token goes
  for (int32_t step = 0; step < options.max_new_tokens; ++step) {
    const int32_t token = SampleToken(logits, options.sampling, position);
    generation.tokens.push_back(token);
    if (options.keep_logits) generation.logits.push_back(logits);
    bool stop = false;
    for (int32_t stop_token : options.stop_tokens) stop = stop || token == stop_token;
    if (stop || step + 1 == options.max_new_tokens) break;
    const int32_t input[] = {token};
    logits = model.Run(input, position);
    ++position;
  }
  return generation;
}

}  // namespace asymcache::model
