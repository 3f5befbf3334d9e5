// LlamaConfig (model/llama_config.h): named shapes, validation and the
// Hugging Face config.json reader/writer.
#include "model/llama_config.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace asymcache::model {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// How Validate() names fields in its messages: the LlamaConfig member names
// for Validate() itself, the config.json keys when FromHfConfigJson checks a
// parsed file (so a message points at the key the user must fix).
struct FieldNames {
  absl::string_view vocab_size;
  absl::string_view hidden_size;
  absl::string_view intermediate_size;
  absl::string_view num_layers;
  absl::string_view num_q_heads;
  absl::string_view num_kv_heads;
  absl::string_view head_dim;
  absl::string_view rms_norm_eps;
  absl::string_view rope_theta;
  absl::string_view rope_factor;
  absl::string_view rope_low_freq_factor;
  absl::string_view rope_high_freq_factor;
  absl::string_view rope_original_max_positions;
  absl::string_view max_position_embeddings;
  absl::string_view dtype;
  absl::string_view block_tokens;
};

constexpr FieldNames kStructNames = {
    "LlamaConfig.vocab_size",
    "LlamaConfig.hidden_size",
    "LlamaConfig.intermediate_size",
    "LlamaConfig.num_layers",
    "LlamaConfig.num_q_heads",
    "LlamaConfig.num_kv_heads",
    "LlamaConfig.head_dim",
    "LlamaConfig.rms_norm_eps",
    "LlamaConfig.rope_theta",
    "LlamaConfig.rope_scaling.factor",
    "LlamaConfig.rope_scaling.low_freq_factor",
    "LlamaConfig.rope_scaling.high_freq_factor",
    "LlamaConfig.rope_scaling.original_max_position_embeddings",
    "LlamaConfig.max_position_embeddings",
    "LlamaConfig.dtype",
    "LlamaConfig.block_tokens",
};

constexpr FieldNames kHfNames = {
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling.factor",
    "rope_scaling.low_freq_factor",
    "rope_scaling.high_freq_factor",
    "rope_scaling.original_max_position_embeddings",
    "max_position_embeddings",
    "torch_dtype",
    "block_tokens",
};

// Sizes are capped at int32 range: kernels and pools index with 32-bit ints.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status CheckSize(absl::string_view field, int64_t value) {
  if (value <= 0) return FieldError(field, absl::StrCat("must be positive, got ", value));
  if (value > kMaxSize) {
    return FieldError(field, absl::StrCat("must be at most ", kMaxSize, ", got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckPositiveNumber(absl::string_view field, double value) {
  if (!std::isfinite(value) || value <= 0) {
    return FieldError(field, absl::StrCat("must be a positive finite number, got ", value));
  }
  return absl::OkStatus();
}

// Parameter count in 128-bit arithmetic (sizes are < 2^31, so no term
// overflows); Validate() refuses configs whose count exceeds int64.
__int128 WideParameterCount(const LlamaConfig& c) {
  const __int128 hidden = c.hidden_size;
  const __int128 embedding = __int128{c.vocab_size} * hidden;
  const __int128 per_layer = 2 * hidden                                      // two norms
                             + hidden * c.q_dim() + 2 * hidden * c.kv_dim()  // q, k, v
                             + __int128{c.q_dim()} * hidden                  // o
                             + 3 * hidden * c.intermediate_size;             // gate, up, down
  return embedding + __int128{c.num_layers} * per_layer + hidden +
         (c.tie_word_embeddings ? 0 : embedding);
}

absl::Status ValidateWithNames(const LlamaConfig& c, const FieldNames& n) {
  const std::pair<absl::string_view, int64_t> sizes[] = {
      {n.vocab_size, c.vocab_size},
      {n.hidden_size, c.hidden_size},
      {n.intermediate_size, c.intermediate_size},
      {n.num_layers, c.num_layers},
      {n.num_q_heads, c.num_q_heads},
      {n.num_kv_heads, c.num_kv_heads},
      {n.head_dim, c.head_dim},
      {n.max_position_embeddings, c.max_position_embeddings},
      {n.block_tokens, c.block_tokens},
  };
  for (const auto& [field, value] : sizes) {
    if (absl::Status s = CheckSize(field, value); !s.ok()) return s;
  }
  if (c.num_q_heads % c.num_kv_heads != 0) {
    return FieldError(n.num_kv_heads, absl::StrCat("(", c.num_kv_heads, ") must divide ",
                                                   n.num_q_heads, " (", c.num_q_heads, ")"));
  }
  const int32_t group = c.num_q_heads / c.num_kv_heads;
  if (group != 1 && group != 2 && group != 4 && group != 8) {
    return FieldError(n.num_kv_heads,
                      absl::StrCat(n.num_q_heads, " / ", n.num_kv_heads,
                                   " must be 1, 2, 4 or 8 (the MSA group sizes), got ", group));
  }
  // 64, 128 and 256 are the head dims MSA is built for (all even, as rotary
  // embeddings need).
  if (c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256) {
    return FieldError(n.head_dim, absl::StrCat("must be 64, 128 or 256, got ", c.head_dim));
  }
  if (absl::Status s = CheckPositiveNumber(n.rms_norm_eps, c.rms_norm_eps); !s.ok()) return s;
  if (absl::Status s = CheckPositiveNumber(n.rope_theta, c.rope_theta); !s.ok()) return s;
  if (c.rope_scaling.enabled) {
    const RopeScaling& r = c.rope_scaling;
    if (!std::isfinite(r.factor) || r.factor < 1.0) {
      return FieldError(n.rope_factor,
                        absl::StrCat("must be a finite number >= 1, got ", r.factor));
    }
    if (absl::Status s = CheckPositiveNumber(n.rope_low_freq_factor, r.low_freq_factor); !s.ok()) {
      return s;
    }
    if (!std::isfinite(r.high_freq_factor) || r.high_freq_factor <= r.low_freq_factor) {
      return FieldError(n.rope_high_freq_factor,
                        absl::StrCat("must be finite and greater than ", n.rope_low_freq_factor,
                                     " (", r.low_freq_factor, "), got ", r.high_freq_factor));
    }
    if (absl::Status s =
            CheckSize(n.rope_original_max_positions, r.original_max_position_embeddings);
        !s.ok()) {
      return s;
    }
  }
  if (msa::DTypeBytes(c.dtype) == 0) {
    return FieldError(n.dtype,
                      absl::StrCat("not a known element type: ", static_cast<int32_t>(c.dtype)));
  }
  if (WideParameterCount(c) > std::numeric_limits<int64_t>::max()) {
    return FieldError(n.num_layers, "the parameter count of this shape overflows int64");
  }
  return absl::OkStatus();
}

// ---- config.json reading ----------------------------------------------------

// Reads typed members of one JSON object; every error is
// "<source>: <path>: <problem>". Absent and null members are "not set".
class HfReader {
 public:
  explicit HfReader(absl::string_view source) : source_(source) {}

  absl::Status Error(absl::string_view path, absl::string_view problem) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, ": ", problem));
  }

  static const Json* Find(const Json& object, absl::string_view key) {
    auto it = object.find(std::string(key));
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::optional<int64_t>> Int(const Json& object, absl::string_view key,
                                             absl::string_view path) const {
    const Json* j = Find(object, key);
    if (j == nullptr) return std::optional<int64_t>();
    if (j->is_number_unsigned()) {
      const uint64_t v = j->get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(path, absl::StrCat("integer out of range: ", v));
      }
      return std::optional<int64_t>(static_cast<int64_t>(v));
    }
    if (j->is_number_integer()) return std::optional<int64_t>(j->get<int64_t>());
    return Error(path, absl::StrCat("must be an integer, got ", j->type_name(), " ", j->dump()));
  }

  // An int32 member (heads, layers, head_dim).
  absl::StatusOr<std::optional<int32_t>> Int32(const Json& object, absl::string_view key,
                                               absl::string_view path) const {
    absl::StatusOr<std::optional<int64_t>> v = Int(object, key, path);
    if (!v.ok()) return v.status();
    if (!v->has_value()) return std::optional<int32_t>();
    if (**v < std::numeric_limits<int32_t>::min() || **v > std::numeric_limits<int32_t>::max()) {
      return Error(path, absl::StrCat("integer out of range: ", **v));
    }
    return std::optional<int32_t>(static_cast<int32_t>(**v));
  }

  absl::StatusOr<std::optional<double>> Number(const Json& object, absl::string_view key,
                                               absl::string_view path) const {
    const Json* j = Find(object, key);
    if (j == nullptr) return std::optional<double>();
    if (!j->is_number()) {
      return Error(path, absl::StrCat("must be a number, got ", j->type_name(), " ", j->dump()));
    }
    return std::optional<double>(j->get<double>());
  }

  absl::StatusOr<std::optional<bool>> Bool(const Json& object, absl::string_view key,
                                           absl::string_view path) const {
    const Json* j = Find(object, key);
    if (j == nullptr) return std::optional<bool>();
    if (!j->is_boolean()) {
      return Error(path,
                   absl::StrCat("must be true or false, got ", j->type_name(), " ", j->dump()));
    }
    return std::optional<bool>(j->get<bool>());
  }

  absl::StatusOr<std::optional<std::string>> String(const Json& object, absl::string_view key,
                                                    absl::string_view path) const {
    const Json* j = Find(object, key);
    if (j == nullptr) return std::optional<std::string>();
    if (!j->is_string()) {
      return Error(path, absl::StrCat("must be a string, got ", j->type_name(), " ", j->dump()));
    }
    return std::optional<std::string>(j->get<std::string>());
  }

  template <typename T>
  absl::StatusOr<T> Required(absl::StatusOr<std::optional<T>> value, absl::string_view path) const {
    if (!value.ok()) return value.status();
    if (!value->has_value()) return Error(path, "required field is missing");
    return **value;
  }

 private:
  std::string source_;
};

// `lhs = *expr` or return expr's error (file-local; several statements, so
// never the body of an unbraced if).
#define HF_ASSIGN_OR_RETURN_IMPL(var, lhs, expr) \
  auto var = (expr);                             \
  if (!var.ok()) return var.status();            \
  lhs = *std::move(var)
#define HF_CONCAT_INNER(a, b) a##b
#define HF_CONCAT(a, b) HF_CONCAT_INNER(a, b)
#define HF_ASSIGN_OR_RETURN(lhs, expr) \
  HF_ASSIGN_OR_RETURN_IMPL(HF_CONCAT(status_or_, __LINE__), lhs, expr)

absl::StatusOr<RopeScaling> ParseRopeScaling(const HfReader& r, const Json& doc) {
  RopeScaling scaling;  // disabled
  const Json* j = HfReader::Find(doc, "rope_scaling");
  if (j == nullptr) return scaling;
  if (!j->is_object()) {
    return r.Error("rope_scaling", absl::StrCat("must be null or an object, got ", j->type_name()));
  }
  // "rope_type" (transformers >= 4.45) or the older "type".
  std::optional<std::string> type;
  HF_ASSIGN_OR_RETURN(type, r.String(*j, "rope_type", "rope_scaling.rope_type"));
  if (!type.has_value()) {
    HF_ASSIGN_OR_RETURN(type, r.String(*j, "type", "rope_scaling.type"));
  }
  if (!type.has_value()) return r.Error("rope_scaling.rope_type", "required field is missing");
  if (*type == "default") return scaling;  // transformers' name for "no scaling"
  if (*type != "llama3") {
    return r.Error("rope_scaling.rope_type",
                   absl::StrCat("unsupported rope type \"", *type,
                                "\" (supported: \"llama3\", \"default\" or rope_scaling null)"));
  }
  scaling.enabled = true;
  HF_ASSIGN_OR_RETURN(scaling.factor, r.Required(r.Number(*j, "factor", "rope_scaling.factor"),
                                                 "rope_scaling.factor"));
  HF_ASSIGN_OR_RETURN(scaling.low_freq_factor,
                      r.Required(r.Number(*j, "low_freq_factor", "rope_scaling.low_freq_factor"),
                                 "rope_scaling.low_freq_factor"));
  HF_ASSIGN_OR_RETURN(scaling.high_freq_factor,
                      r.Required(r.Number(*j, "high_freq_factor", "rope_scaling.high_freq_factor"),
                                 "rope_scaling.high_freq_factor"));
  constexpr absl::string_view kOriginal = "rope_scaling.original_max_position_embeddings";
  HF_ASSIGN_OR_RETURN(
      scaling.original_max_position_embeddings,
      r.Required(r.Int(*j, "original_max_position_embeddings", kOriginal), kOriginal));
  return scaling;
}

absl::StatusOr<msa::DType> ParseTorchDtype(const HfReader& r, const Json& doc) {
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  std::optional<std::string> name;
  absl::string_view key = "torch_dtype";
  HF_ASSIGN_OR_RETURN(name, r.String(doc, "torch_dtype", "torch_dtype"));
  if (!name.has_value()) {
    key = "dtype";
    HF_ASSIGN_OR_RETURN(name, r.String(doc, "dtype", "dtype"));
  }
  if (!name.has_value()) return msa::DType::kBFloat16;  // the struct default
  if (*name == "bfloat16") return msa::DType::kBFloat16;
  if (*name == "float16") return msa::DType::kFloat16;
  if (*name == "float32") return msa::DType::kFloat32;
  return r.Error(key, absl::StrCat("unsupported dtype \"", *name,
                                   "\" (supported: \"bfloat16\", \"float16\", \"float32\")"));
}

// Keys whose non-default values change the math this engine implements; a
// file that sets them otherwise is refused rather than run wrong.
absl::Status CheckArchitecture(const HfReader& r, const Json& doc) {
  std::string model_type;
  HF_ASSIGN_OR_RETURN(model_type,
                      r.Required(r.String(doc, "model_type", "model_type"), "model_type"));
  if (model_type != "llama") {
    return r.Error("model_type", absl::StrCat("must be \"llama\", got \"", model_type, "\""));
  }
  if (const Json* arch = HfReader::Find(doc, "architectures"); arch != nullptr) {
    if (!arch->is_array()) {
      return r.Error("architectures",
                     absl::StrCat("must be an array of strings, got ", arch->type_name()));
    }
    for (size_t i = 0; i < arch->size(); ++i) {
      if (!(*arch)[i].is_string()) {
        return r.Error(absl::StrCat("architectures[", i, "]"),
                       absl::StrCat("must be a string, got ", (*arch)[i].type_name()));
      }
    }
  }
  std::optional<std::string> act;
  HF_ASSIGN_OR_RETURN(act, r.String(doc, "hidden_act", "hidden_act"));
  if (act.has_value() && *act != "silu") {
    return r.Error("hidden_act", absl::StrCat("must be \"silu\" (SwiGLU), got \"", *act, "\""));
  }
  for (absl::string_view key : {"attention_bias", "mlp_bias"}) {
    std::optional<bool> bias;
    HF_ASSIGN_OR_RETURN(bias, r.Bool(doc, key, key));
    if (bias.value_or(false)) return r.Error(key, "biases are not supported (must be false)");
  }
  return absl::OkStatus();
}

}  // namespace

msa::AttentionShape LlamaConfig::attention_shape() const {
  msa::AttentionShape shape;
  shape.num_q_heads = num_q_heads;
  shape.num_kv_heads = num_kv_heads;
  shape.head_dim = head_dim;
  shape.page_size = block_tokens;
  shape.dtype = kv_dtype();
  shape.sm_scale = 0.0f;  // 1/sqrt(head_dim), as Llama uses
  return shape;
}

ModelConfig LlamaConfig::ToCacheModel() const {
  ModelConfig m;
  m.name = name;
  m.num_layers = num_layers;
  m.num_q_heads = num_q_heads;
  m.num_kv_heads = num_kv_heads;
  m.head_dim = head_dim;
  m.dtype_bytes = msa::DTypeBytes(kv_dtype());
  m.block_tokens = block_tokens;
  m.hidden_size = hidden_size;
  m.intermediate_size = intermediate_size;
  m.vocab_size = vocab_size;
  return m;
}

int64_t LlamaConfig::ParameterCount() const {
  return static_cast<int64_t>(WideParameterCount(*this));
}

absl::Status LlamaConfig::Validate() const { return ValidateWithNames(*this, kStructNames); }

absl::StatusOr<LlamaConfig> LlamaConfig::Named(absl::string_view name) {
  // The shape (layers, heads, widths, vocabulary, KV dtype, block) is
  // cachecore's shape of the same name: a worker's model and the cache's
  // model agree by construction.
  absl::StatusOr<ModelConfig> shape = ModelConfig::Named(name);
  if (!shape.ok()) {
    return absl::NotFoundError(
        absl::StrCat("unknown model shape '", name, "'; known: tiny, llama-3-8b, llama-3-70b-tp"));
  }
  LlamaConfig c;
  c.name = shape->name;
  c.vocab_size = shape->vocab_size;
  c.hidden_size = shape->hidden_size;
  c.intermediate_size = shape->intermediate_size;
  c.num_layers = shape->num_layers;
  c.num_q_heads = shape->num_q_heads;
  c.num_kv_heads = shape->num_kv_heads;
  c.head_dim = shape->head_dim;
  c.block_tokens = shape->block_tokens;
  // 16-bit shapes run bf16; the 4-byte "tiny" is the CPU test/demo shape (fp32).
  c.dtype = shape->dtype_bytes == 4 ? msa::DType::kFloat32 : msa::DType::kBFloat16;
  // The rest is Llama-3.1's (meta-llama/Llama-3.1-8B config.json; the 70B
  // shares its rope and norms); "tiny" has plain rope.
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{/*enabled=*/true, /*factor=*/8.0, /*low_freq_factor=*/1.0,
                               /*high_freq_factor=*/4.0,
                               /*original_max_position_embeddings=*/8192};
  c.tie_word_embeddings = false;
  c.max_position_embeddings = 131072;
  if (c.name == "tiny") {
    c.rope_theta = 10000.0;
    c.rope_scaling = RopeScaling{};  // off
  }
  return c;
}

absl::StatusOr<LlamaConfig> LlamaConfig::FromHfConfigJson(absl::string_view json_text,
                                                          absl::string_view source) {
  const HfReader r(source);
  const Json doc = Json::parse(json_text.begin(), json_text.end(), /*cb=*/nullptr,
                               /*allow_exceptions=*/false);
  if (doc.is_discarded()) return r.Error("(document)", "not valid JSON");
  if (!doc.is_object()) {
    return r.Error("(document)", absl::StrCat("must be an object, got ", doc.type_name()));
  }
  if (absl::Status s = CheckArchitecture(r, doc); !s.ok()) return s;

  LlamaConfig c;
  std::optional<std::string> name_or_path;
  HF_ASSIGN_OR_RETURN(name_or_path, r.String(doc, "_name_or_path", "_name_or_path"));
  c.name = name_or_path.has_value() && !name_or_path->empty() ? *name_or_path : std::string(source);

  HF_ASSIGN_OR_RETURN(c.vocab_size,
                      r.Required(r.Int(doc, "vocab_size", "vocab_size"), "vocab_size"));
  HF_ASSIGN_OR_RETURN(c.hidden_size,
                      r.Required(r.Int(doc, "hidden_size", "hidden_size"), "hidden_size"));
  HF_ASSIGN_OR_RETURN(
      c.intermediate_size,
      r.Required(r.Int(doc, "intermediate_size", "intermediate_size"), "intermediate_size"));
  HF_ASSIGN_OR_RETURN(
      c.num_layers,
      r.Required(r.Int32(doc, "num_hidden_layers", "num_hidden_layers"), "num_hidden_layers"));
  HF_ASSIGN_OR_RETURN(c.num_q_heads,
                      r.Required(r.Int32(doc, "num_attention_heads", "num_attention_heads"),
                                 "num_attention_heads"));
  std::optional<int32_t> kv_heads;
  HF_ASSIGN_OR_RETURN(kv_heads, r.Int32(doc, "num_key_value_heads", "num_key_value_heads"));
  c.num_kv_heads = kv_heads.value_or(c.num_q_heads);
  std::optional<int32_t> head_dim;
  HF_ASSIGN_OR_RETURN(head_dim, r.Int32(doc, "head_dim", "head_dim"));
  if (head_dim.has_value()) {
    c.head_dim = *head_dim;
  } else {
    if (c.num_q_heads <= 0) {
      return r.Error("num_attention_heads", absl::StrCat("must be positive, got ", c.num_q_heads));
    }
    if (c.hidden_size % c.num_q_heads != 0 || c.hidden_size / c.num_q_heads > kMaxSize) {
      return r.Error("head_dim", absl::StrCat("absent, and hidden_size (", c.hidden_size,
                                              ") is not a multiple of num_attention_heads (",
                                              c.num_q_heads, ") to derive it"));
    }
    c.head_dim = static_cast<int32_t>(c.hidden_size / c.num_q_heads);
  }
  // Defaults of transformers' LlamaConfig where a key is absent.
  std::optional<double> eps;
  HF_ASSIGN_OR_RETURN(eps, r.Number(doc, "rms_norm_eps", "rms_norm_eps"));
  c.rms_norm_eps = eps.value_or(1e-6);
  std::optional<double> theta;
  HF_ASSIGN_OR_RETURN(theta, r.Number(doc, "rope_theta", "rope_theta"));
  c.rope_theta = theta.value_or(10000.0);
  HF_ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(r, doc));
  std::optional<bool> tied;
  HF_ASSIGN_OR_RETURN(tied, r.Bool(doc, "tie_word_embeddings", "tie_word_embeddings"));
  c.tie_word_embeddings = tied.value_or(false);
  std::optional<int64_t> max_positions;
  HF_ASSIGN_OR_RETURN(max_positions,
                      r.Int(doc, "max_position_embeddings", "max_position_embeddings"));
  c.max_position_embeddings = max_positions.value_or(2048);
  HF_ASSIGN_OR_RETURN(c.dtype, ParseTorchDtype(r, doc));

  if (absl::Status s = ValidateWithNames(c, kHfNames); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", s.message()));
  }
  return c;
}

std::string LlamaConfig::ToHfConfigJson() const {
  OrderedJson j;
  j["_name_or_path"] = name;
  j["architectures"] = OrderedJson::array({"LlamaForCausalLM"});
  j["model_type"] = "llama";
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_q_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.enabled) {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", rope_scaling.factor},
        {"low_freq_factor", rope_scaling.low_freq_factor},
        {"high_freq_factor", rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
    };
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["max_position_embeddings"] = max_position_embeddings;
  switch (dtype) {
    case msa::DType::kFloat32:
      j["torch_dtype"] = "float32";
      break;
    case msa::DType::kFloat16:
      j["torch_dtype"] = "float16";
      break;
    case msa::DType::kBFloat16:
      j["torch_dtype"] = "bfloat16";
      break;
  }
  // Names are user text: replace invalid UTF-8 rather than throw.
  return j.dump(2, ' ', /*ensure_ascii=*/false, OrderedJson::error_handler_t::replace) + "\n";
}

}  // namespace asymcache::model
