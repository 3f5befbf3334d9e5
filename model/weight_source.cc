// WeightSource (model/weight_source.h): tensor specs, seeded random weights,
// Hugging Face directories (config.json + *.safetensors) and their writer.
#include "model/weight_source.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/random_weight.h"
#include "model/safetensors.h"

namespace asymcache::model {
namespace {

namespace fs = std::filesystem;

std::string ShapeText(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Elements converted per chunk by WriteHfDirectory (16 MiB of fp32).
constexpr int64_t kWriteChunkElements = int64_t{1} << 22;

absl::StatusOr<std::string> ReadTextFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat(path.string(), ": not found"));
    }
    return absl::PermissionDeniedError(absl::StrCat(path.string(), ": cannot be opened"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat(path.string(), ": read failed"));
  return text.str();
}

// Random elements [first, first + dst.size()) of spec `index`.
void FillRandom(uint64_t seed, size_t index, const TensorSpec& spec, uint64_t first,
                absl::Span<float> dst) {
  const RandomWeightParams params = RandomParamsFor(spec);
  const auto tensor_id = static_cast<uint32_t>(index);
  for (size_t e = 0; e < dst.size(); ++e) {
    dst[e] = RandomWeightValue(seed, tensor_id, first + e, params.kind, params.scale);
  }
}

}  // namespace

int64_t TensorSpec::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> LlamaTensorSpecs(const LlamaConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  std::vector<TensorSpec> specs;
  specs.reserve(3 + 9 * static_cast<size_t>(std::max(config.num_layers, 0)));
  specs.push_back(
      {"model.embed_tokens.weight", TensorRole::kEmbedding, -1, {config.vocab_size, hidden}});
  for (int32_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    specs.push_back({p + "input_layernorm.weight", TensorRole::kAttnNorm, i, {hidden}});
    specs.push_back(
        {p + "self_attn.q_proj.weight", TensorRole::kQProj, i, {config.q_dim(), hidden}});
    specs.push_back(
        {p + "self_attn.k_proj.weight", TensorRole::kKProj, i, {config.kv_dim(), hidden}});
    specs.push_back(
        {p + "self_attn.v_proj.weight", TensorRole::kVProj, i, {config.kv_dim(), hidden}});
    specs.push_back(
        {p + "self_attn.o_proj.weight", TensorRole::kOProj, i, {hidden, config.q_dim()}});
    specs.push_back({p + "post_attention_layernorm.weight", TensorRole::kMlpNorm, i, {hidden}});
    specs.push_back({p + "mlp.gate_proj.weight", TensorRole::kGateProj, i, {inter, hidden}});
    specs.push_back({p + "mlp.up_proj.weight", TensorRole::kUpProj, i, {inter, hidden}});
    specs.push_back({p + "mlp.down_proj.weight", TensorRole::kDownProj, i, {hidden, inter}});
  }
  specs.push_back({"model.norm.weight", TensorRole::kFinalNorm, -1, {hidden}});
  if (!config.tie_word_embeddings) {
    specs.push_back({"lm_head.weight", TensorRole::kLmHead, -1, {config.vocab_size, hidden}});
  }
  return specs;
}

RandomWeightParams RandomParamsFor(const TensorSpec& spec) {
  switch (spec.role) {
    case TensorRole::kAttnNorm:
    case TensorRole::kMlpNorm:
    case TensorRole::kFinalNorm:
      return RandomWeightParams{/*kind=*/0, /*scale=*/1.0f};
    case TensorRole::kEmbedding:
      return RandomWeightParams{/*kind=*/1, /*scale=*/1.0f};
    default:
      break;
  }
  // Linear layers and the LM head: uniform(-a, a) has variance a^2 / 3, so
  // a = sqrt(3 / fan_in) gives unit-variance outputs for unit-variance inputs.
  const int64_t fan_in = spec.shape.size() == 2 ? spec.shape[1] : 1;
  return RandomWeightParams{/*kind=*/1,
                            static_cast<float>(std::sqrt(3.0 / static_cast<double>(fan_in)))};
}

struct WeightSource::State {
  LlamaConfig config;
  std::vector<TensorSpec> specs;
  bool random = false;
  uint64_t seed = 0;
  // Stored weights: the mapped files and, per spec, its tensor in them.
  std::vector<SafetensorsFile> files;
  std::vector<StoredTensor> stored;
};

WeightSource::WeightSource(std::unique_ptr<State> state) : state_(std::move(state)) {}
WeightSource::~WeightSource() = default;
WeightSource::WeightSource(WeightSource&&) noexcept = default;
WeightSource& WeightSource::operator=(WeightSource&&) noexcept = default;

const LlamaConfig& WeightSource::config() const { return state_->config; }
bool WeightSource::is_random() const { return state_->random; }
uint64_t WeightSource::seed() const { return state_->random ? state_->seed : 0; }
const std::vector<TensorSpec>& WeightSource::specs() const { return state_->specs; }

absl::StatusOr<WeightSource> WeightSource::Random(const LlamaConfig& config, uint64_t seed) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  auto state = std::make_unique<State>();
  state->config = config;
  state->specs = LlamaTensorSpecs(config);
  state->random = true;
  state->seed = seed;
  return WeightSource(std::move(state));
}

absl::StatusOr<WeightSource> WeightSource::FromDirectory(absl::string_view directory) {
  const fs::path dir{std::string(directory)};
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(directory, ": not a directory"));
  }
  const fs::path config_path = dir / "config.json";
  absl::StatusOr<std::string> config_text = ReadTextFile(config_path);
  if (!config_text.ok()) return config_text.status();
  absl::StatusOr<LlamaConfig> config =
      LlamaConfig::FromHfConfigJson(*config_text, config_path.string());
  if (!config.ok()) return config.status();

  // Every *.safetensors file, in name order (deterministic messages).
  std::vector<fs::path> paths;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".safetensors" && it->is_regular_file()) {
      paths.push_back(it->path());
    }
  }
  if (ec) {
    return absl::InternalError(absl::StrCat(directory, ": listing failed: ", ec.message()));
  }
  if (paths.empty()) {
    return absl::NotFoundError(absl::StrCat(directory, ": no *.safetensors files"));
  }
  std::sort(paths.begin(), paths.end());

  auto state = std::make_unique<State>();
  state->config = *std::move(config);
  state->specs = LlamaTensorSpecs(state->config);
  state->files.reserve(paths.size());
  for (const fs::path& path : paths) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
    if (!file.ok()) return file.status();
    state->files.push_back(*std::move(file));
  }

  // Where each spec's tensor is: (file index, tensor info), exactly once.
  std::map<absl::string_view, size_t> spec_index;
  for (size_t i = 0; i < state->specs.size(); ++i) spec_index[state->specs[i].name] = i;
  std::vector<std::pair<size_t, const SafetensorsTensorInfo*>> found(state->specs.size(),
                                                                     {0, nullptr});
  for (size_t f = 0; f < state->files.size(); ++f) {
    for (const SafetensorsTensorInfo& t : state->files[f].tensors()) {
      auto it = spec_index.find(t.name);
      if (it == spec_index.end()) continue;  // not a tensor this model reads
      auto& slot = found[it->second];
      if (slot.second != nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(directory, ": tensor '", t.name, "' appears in both ",
                         state->files[slot.first].path(), " and ", state->files[f].path()));
      }
      slot = {f, &t};
    }
  }
  state->stored.reserve(state->specs.size());
  for (size_t i = 0; i < state->specs.size(); ++i) {
    const TensorSpec& spec = state->specs[i];
    const auto& [f, info] = found[i];
    if (info == nullptr) {
      return absl::NotFoundError(absl::StrCat(directory, ": tensor '", spec.name, "' ",
                                              ShapeText(spec.shape),
                                              " not found in any *.safetensors file"));
    }
    if (info->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(state->files[f].path(), ": tensor '",
                                                     spec.name, "': shape ", ShapeText(info->shape),
                                                     ", expected ", ShapeText(spec.shape)));
    }
    state->stored.push_back(StoredTensor{info->dtype, info->shape, state->files[f].Data(*info)});
  }
  return WeightSource(std::move(state));
}

std::optional<StoredTensor> WeightSource::stored(size_t index) const {
  if (state_->random || index >= state_->stored.size()) return std::nullopt;
  return state_->stored[index];
}

absl::Status WeightSource::ReadFloat32(size_t index, absl::Span<float> dst) const {
  if (index >= state_->specs.size()) {
    return absl::InvalidArgumentError(absl::StrCat("index: tensor ", index, " out of range (",
                                                   state_->specs.size(), " tensors)"));
  }
  const TensorSpec& spec = state_->specs[index];
  if (dst.size() != static_cast<size_t>(spec.elements())) {
    return absl::InvalidArgumentError(absl::StrCat("dst: ", dst.size(), " floats for tensor '",
                                                   spec.name, "' of ", spec.elements(),
                                                   " elements"));
  }
  if (state_->random) {
    FillRandom(state_->seed, index, spec, 0, dst);
    return absl::OkStatus();
  }
  const StoredTensor& t = state_->stored[index];
  if (absl::Status s = DecodeTensorToFloat32(t.dtype, t.bytes, dst); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name, "': ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status WriteHfDirectory(const WeightSource& source, msa::DType dtype,
                              absl::string_view directory) {
  if (dtype != msa::DType::kFloat32 && dtype != msa::DType::kBFloat16 &&
      dtype != msa::DType::kFloat16) {
    return absl::InvalidArgumentError(absl::StrCat(
        directory, ": dtype: not a known element type: ", static_cast<int32_t>(dtype)));
  }
  const fs::path dir{std::string(directory)};
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(directory, ": cannot create: ", ec.message()));
  }

  // config.json keeps the config's own dtype (what the backends compute and
  // store KV in), whatever dtype the tensors are written in.
  const fs::path config_path = dir / "config.json";
  {
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << source.config().ToHfConfigJson();
    out.close();
    if (!out) return absl::InternalError(absl::StrCat(config_path.string(), ": write failed"));
  }

  const std::vector<TensorSpec>& specs = source.specs();
  std::vector<SafetensorsTensorDecl> decls;
  decls.reserve(specs.size());
  for (const TensorSpec& spec : specs) decls.push_back({spec.name, dtype, spec.shape});
  const std::string path = (dir / "model.safetensors").string();
  absl::StatusOr<SafetensorsWriter> writer =
      SafetensorsWriter::Create(path, std::move(decls), {{"format", "pt"}});
  if (!writer.ok()) return writer.status();

  // Tensors are converted and written in chunks, so even an 8B embedding
  // never needs a full fp32 copy.
  const size_t width = static_cast<size_t>(msa::DTypeBytes(dtype));
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::optional<StoredTensor> stored = source.stored(i);
    if (stored.has_value() && stored->dtype == dtype) {
      if (absl::Status s = writer->Append(stored->bytes); !s.ok()) return s;
      continue;
    }
    const int64_t n = specs[i].elements();
    for (int64_t begin = 0; begin < n; begin += kWriteChunkElements) {
      const size_t count = static_cast<size_t>(std::min(kWriteChunkElements, n - begin));
      values.resize(count);
      if (stored.has_value()) {
        const size_t in_width = static_cast<size_t>(msa::DTypeBytes(stored->dtype));
        if (absl::Status s = DecodeTensorToFloat32(
                stored->dtype, stored->bytes.subspan(begin * in_width, count * in_width),
                absl::MakeSpan(values));
            !s.ok()) {
          return s;
        }
      } else {
        FillRandom(source.seed(), i, specs[i], static_cast<uint64_t>(begin),
                   absl::MakeSpan(values));
      }
      bytes.resize(count * width);
      if (absl::Status s = EncodeTensorFromFloat32(dtype, values, absl::MakeSpan(bytes)); !s.ok()) {
        return s;
      }
      if (absl::Status s = writer->Append(bytes); !s.ok()) return s;
    }
  }
  return writer->Finish();
}

}  // namespace asymcache::model
