// WeightSource: tensor specs, seeded random weights, and Hugging Face
// directories written by WriteHfDirectory and read back by FromDirectory.
#include "model/weight_source.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "model/llama_config.h"
#include "model/random_weight.h"
#include "model/safetensors.h"
#include "tests/model/temp_dir.h"

namespace asymcache::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

LlamaConfig Tiny() { return *LlamaConfig::Named("tiny"); }

std::vector<float> Read(const WeightSource& w, size_t index) {
  std::vector<float> out(static_cast<size_t>(w.specs()[index].elements()));
  const absl::Status s = w.ReadFloat32(index, absl::MakeSpan(out));
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

bool BitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(WeightSourceTest, SpecsListEveryTensorInOrder) {
  const LlamaConfig c = Tiny();
  const std::vector<TensorSpec> specs = LlamaTensorSpecs(c);
  ASSERT_EQ(specs.size(), 1u + 2 * 9 + 1 + 1);
  EXPECT_EQ(specs[0].name, "model.embed_tokens.weight");
  EXPECT_EQ(specs[0].role, TensorRole::kEmbedding);
  EXPECT_EQ(specs[0].shape, (std::vector<int64_t>{1024, 256}));
  const char* layer_names[] = {"input_layernorm",  "self_attn.q_proj", "self_attn.k_proj",
                               "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
                               "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  const std::vector<std::vector<int64_t>> layer_shapes = {{256},      {256, 256}, {128, 256},
                                                          {128, 256}, {256, 256}, {256},
                                                          {512, 256}, {512, 256}, {256, 512}};
  for (int layer = 0; layer < 2; ++layer) {
    for (int k = 0; k < 9; ++k) {
      const TensorSpec& s = specs[1 + 9 * layer + k];
      EXPECT_EQ(s.name, absl::StrCat("model.layers.", layer, ".", layer_names[k], ".weight"));
      EXPECT_EQ(s.role, static_cast<TensorRole>(1 + k));
      EXPECT_EQ(s.layer, layer);
      EXPECT_EQ(s.shape, layer_shapes[k]);
    }
  }
  EXPECT_EQ(specs[19].name, "model.norm.weight");
  EXPECT_EQ(specs[19].layer, -1);
  EXPECT_EQ(specs[20].name, "lm_head.weight");
  EXPECT_EQ(specs[20].role, TensorRole::kLmHead);
  EXPECT_EQ(specs[20].shape, (std::vector<int64_t>{1024, 256}));
  int64_t total = 0;
  for (const TensorSpec& s : specs) total += s.elements();
  EXPECT_EQ(total, c.ParameterCount());

  LlamaConfig tied = c;
  tied.tie_word_embeddings = true;
  const std::vector<TensorSpec> tied_specs = LlamaTensorSpecs(tied);
  ASSERT_EQ(tied_specs.size(), 20u);
  EXPECT_EQ(tied_specs.back().name, "model.norm.weight");

  // GQA slice shapes: q_dim != hidden.
  const std::vector<TensorSpec> tp = LlamaTensorSpecs(*LlamaConfig::Named("llama-3-70b-tp"));
  EXPECT_EQ(tp[2].shape, (std::vector<int64_t>{1024, 8192}));  // q_proj
  EXPECT_EQ(tp[5].shape, (std::vector<int64_t>{8192, 1024}));  // o_proj
}

TEST(WeightSourceTest, RandomParamsByRole) {
  const std::vector<TensorSpec> specs = LlamaTensorSpecs(Tiny());
  for (const TensorSpec& s : specs) {
    SCOPED_TRACE(s.name);
    const RandomWeightParams p = RandomParamsFor(s);
    switch (s.role) {
      case TensorRole::kAttnNorm:
      case TensorRole::kMlpNorm:
      case TensorRole::kFinalNorm:
        EXPECT_EQ(p.kind, 0);
        break;
      case TensorRole::kEmbedding:
        EXPECT_EQ(p.kind, 1);
        EXPECT_EQ(p.scale, 1.0f);
        break;
      default:
        EXPECT_EQ(p.kind, 1);
        EXPECT_FLOAT_EQ(p.scale, std::sqrt(3.0f / static_cast<float>(s.shape[1])));
    }
  }
}

TEST(WeightSourceTest, RandomIsDeterministicPerSeed) {
  absl::StatusOr<WeightSource> a = WeightSource::Random(Tiny(), 7);
  absl::StatusOr<WeightSource> b = WeightSource::Random(Tiny(), 7);
  absl::StatusOr<WeightSource> c = WeightSource::Random(Tiny(), 8);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(a->is_random());
  EXPECT_EQ(a->seed(), 7u);
  EXPECT_EQ(a->config().name, "tiny");
  EXPECT_FALSE(a->stored(0).has_value());
  for (size_t i = 0; i < a->specs().size(); ++i) {
    SCOPED_TRACE(a->specs()[i].name);
    const std::vector<float> va = Read(*a, i);
    EXPECT_TRUE(BitEqual(va, Read(*b, i)));
    EXPECT_FALSE(BitEqual(va, Read(*c, i)));
    // The values are RandomWeightValue(seed, index, element) in range.
    const RandomWeightParams p = RandomParamsFor(a->specs()[i]);
    EXPECT_EQ(va[va.size() / 2],
              RandomWeightValue(7, static_cast<uint32_t>(i), va.size() / 2, p.kind, p.scale));
    for (float v : va) {
      if (p.kind == 0) {
        ASSERT_TRUE(v >= 0.9f && v < 1.1f) << v;
      } else {
        ASSERT_TRUE(v >= -p.scale && v < p.scale) << v;
      }
    }
  }
  // Tensors differ from one another too (the tensor id enters the hash).
  EXPECT_NE(Read(*a, 2)[0], Read(*a, 3)[0]);
}

TEST(WeightSourceTest, RandomRefusesInvalidConfigAndBadReads) {
  LlamaConfig bad = Tiny();
  bad.head_dim = 96;
  absl::StatusOr<WeightSource> w = WeightSource::Random(bad, 1);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("head_dim"));

  w = WeightSource::Random(Tiny(), 1);
  ASSERT_TRUE(w.ok());
  std::vector<float> small(3);
  absl::Status s = w->ReadFloat32(0, absl::MakeSpan(small));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("model.embed_tokens.weight"));
  s = w->ReadFloat32(w->specs().size(), absl::MakeSpan(small));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

// Writes random tiny weights in `dtype`, loads them back, and checks every
// tensor equals the random values rounded to `dtype`.
void CheckWriteAndLoad(msa::DType dtype) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> random = WeightSource::Random(Tiny(), 42);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, dtype, dir.File("m")).ok());
  EXPECT_TRUE(fs::exists(dir.File("m/config.json")));
  EXPECT_TRUE(fs::exists(dir.File("m/model.safetensors")));

  absl::StatusOr<WeightSource> loaded = WeightSource::FromDirectory(dir.File("m"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FALSE(loaded->is_random());
  EXPECT_EQ(loaded->seed(), 0u);
  EXPECT_EQ(loaded->config().name, "tiny");
  EXPECT_EQ(loaded->config().dtype, msa::DType::kFloat32);  // the config's, not the file's
  EXPECT_EQ(loaded->config().ToHfConfigJson(), random->config().ToHfConfigJson());
  ASSERT_EQ(loaded->specs().size(), random->specs().size());
  for (size_t i = 0; i < random->specs().size(); ++i) {
    SCOPED_TRACE(random->specs()[i].name);
    const std::optional<StoredTensor> stored = loaded->stored(i);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(stored->dtype, dtype);
    EXPECT_EQ(stored->shape, random->specs()[i].shape);
    EXPECT_EQ(stored->bytes.size(),
              static_cast<size_t>(random->specs()[i].elements() * msa::DTypeBytes(dtype)));
    std::vector<float> expected = Read(*random, i);
    for (float& v : expected) {
      if (dtype == msa::DType::kBFloat16) v = msa::FloatFromBf16Bits(msa::Bf16BitsFromFloat(v));
      if (dtype == msa::DType::kFloat16) v = msa::FloatFromFp16Bits(msa::Fp16BitsFromFloat(v));
    }
    ASSERT_TRUE(BitEqual(Read(*loaded, i), expected));
  }
}

TEST(WeightSourceTest, WritesAndLoadsF32BitIdentical) { CheckWriteAndLoad(msa::DType::kFloat32); }
TEST(WeightSourceTest, WritesAndLoadsBf16Rounded) { CheckWriteAndLoad(msa::DType::kBFloat16); }
TEST(WeightSourceTest, WritesAndLoadsF16Rounded) { CheckWriteAndLoad(msa::DType::kFloat16); }

TEST(WeightSourceTest, RewritesStoredWeights) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> random = WeightSource::Random(Tiny(), 3);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, msa::DType::kBFloat16, dir.File("bf16")).ok());
  absl::StatusOr<WeightSource> bf16 = WeightSource::FromDirectory(dir.File("bf16"));
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  // Same dtype: bytes copied; other dtype: converted (bf16 -> f32 exact).
  ASSERT_TRUE(WriteHfDirectory(*bf16, msa::DType::kBFloat16, dir.File("copy")).ok());
  ASSERT_TRUE(WriteHfDirectory(*bf16, msa::DType::kFloat32, dir.File("f32")).ok());
  absl::StatusOr<WeightSource> copy = WeightSource::FromDirectory(dir.File("copy"));
  absl::StatusOr<WeightSource> f32 = WeightSource::FromDirectory(dir.File("f32"));
  ASSERT_TRUE(copy.ok() && f32.ok());
  for (size_t i = 0; i < bf16->specs().size(); ++i) {
    const std::vector<float> v = Read(*bf16, i);
    ASSERT_TRUE(BitEqual(Read(*copy, i), v)) << i;
    ASSERT_TRUE(BitEqual(Read(*f32, i), v)) << i;
  }
  EXPECT_EQ(f32->stored(0)->dtype, msa::DType::kFloat32);
  EXPECT_EQ(WriteHfDirectory(*random, static_cast<msa::DType>(5), dir.File("x")).code(),
            absl::StatusCode::kInvalidArgument);
}

// Re-packs a written model.safetensors of `dir` into the files of `layout`
// (file name -> tensor names), with optional replacement shapes; removes the
// original.
struct Repack {
  std::map<std::string, std::vector<std::string>> files;
  std::map<std::string, std::vector<int64_t>> reshape;  // name -> new shape (data cut)
  std::vector<std::string> extra;                       // extra F32 [1] tensors in the first file
};

void RepackDirectory(const std::string& dir, const Repack& layout) {
  const std::string original = dir + "/model.safetensors";
  const std::string moved = dir + "/original.bin";
  fs::rename(original, moved);
  {
    absl::StatusOr<SafetensorsFile> src = SafetensorsFile::Open(moved);
    ASSERT_TRUE(src.ok()) << src.status();
    const float one = 1.0f;
    bool first = true;
    for (const auto& [file_name, names] : layout.files) {
      std::vector<SafetensorsTensorData> tensors;
      for (const std::string& name : names) {
        const SafetensorsTensorInfo* info = src->Find(name);
        ASSERT_NE(info, nullptr) << name;
        SafetensorsTensorData t{{name, info->dtype, info->shape}, src->Data(*info)};
        if (auto it = layout.reshape.find(name); it != layout.reshape.end()) {
          t.decl.shape = it->second;
          int64_t n = 1;
          for (int64_t d : it->second) n *= d;
          t.bytes = t.bytes.subspan(0, static_cast<size_t>(n * msa::DTypeBytes(info->dtype)));
        }
        tensors.push_back(t);
      }
      if (first) {
        for (const std::string& name : layout.extra) {
          tensors.push_back({{name, msa::DType::kFloat32, {1}},
                             absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(&one), 4)});
        }
        first = false;
      }
      ASSERT_TRUE(WriteSafetensorsFile(dir + "/" + file_name, tensors, {{"format", "pt"}}).ok());
    }
  }
  fs::remove(moved);
}

std::vector<std::string> AllNames(const WeightSource& w) {
  std::vector<std::string> names;
  for (const TensorSpec& s : w.specs()) names.push_back(s.name);
  return names;
}

TEST(WeightSourceTest, LoadsTensorsSplitAcrossFilesAndIgnoresExtras) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> random = WeightSource::Random(Tiny(), 11);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, msa::DType::kFloat32, dir.File("m")).ok());
  const std::vector<std::string> names = AllNames(*random);
  Repack layout;
  layout.files["model-00001-of-00002.safetensors"] =
      std::vector<std::string>(names.begin(), names.begin() + 10);
  layout.files["model-00002-of-00002.safetensors"] =
      std::vector<std::string>(names.begin() + 10, names.end());
  layout.extra = {"model.layers.0.self_attn.rotary_emb.inv_freq"};
  RepackDirectory(dir.File("m"), layout);
  // A non-safetensors file in the directory is ignored.
  std::ofstream(dir.File("m/README.md")) << "tiny";

  absl::StatusOr<WeightSource> loaded = WeightSource::FromDirectory(dir.File("m"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_TRUE(BitEqual(Read(*loaded, i), Read(*random, i))) << names[i];
  }
}

TEST(WeightSourceTest, TiedModelHasNoLmHead) {
  TempDir dir("weight_source_test");
  LlamaConfig tied = Tiny();
  tied.tie_word_embeddings = true;
  absl::StatusOr<WeightSource> random = WeightSource::Random(tied, 5);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, msa::DType::kFloat32, dir.File("m")).ok());
  absl::StatusOr<WeightSource> loaded = WeightSource::FromDirectory(dir.File("m"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->config().tie_word_embeddings);
  EXPECT_EQ(loaded->specs().size(), 20u);
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(dir.File("m/model.safetensors"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->Find("lm_head.weight"), nullptr);
}

TEST(WeightSourceTest, MissingTensorIsNamed) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> random = WeightSource::Random(Tiny(), 1);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, msa::DType::kBFloat16, dir.File("m")).ok());
  std::vector<std::string> names = AllNames(*random);
  std::erase(names, "model.layers.1.self_attn.k_proj.weight");
  Repack layout;
  layout.files["model.safetensors"] = names;
  RepackDirectory(dir.File("m"), layout);
  absl::StatusOr<WeightSource> loaded = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(),
              HasSubstr("tensor 'model.layers.1.self_attn.k_proj.weight' [128, 256] not found"));
}

TEST(WeightSourceTest, WrongShapeIsNamedWithTheFile) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> random = WeightSource::Random(Tiny(), 1);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, msa::DType::kFloat32, dir.File("m")).ok());
  Repack layout;
  layout.files["model.safetensors"] = AllNames(*random);
  layout.reshape["model.layers.0.mlp.up_proj.weight"] = {256, 256};
  RepackDirectory(dir.File("m"), layout);
  absl::StatusOr<WeightSource> loaded = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(),
              HasSubstr("model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight': shape "
                        "[256, 256], expected [512, 256]"));
}

TEST(WeightSourceTest, DuplicateTensorAcrossFilesIsRefused) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> random = WeightSource::Random(Tiny(), 1);
  ASSERT_TRUE(random.ok());
  ASSERT_TRUE(WriteHfDirectory(*random, msa::DType::kFloat32, dir.File("m")).ok());
  Repack layout;
  layout.files["a.safetensors"] = AllNames(*random);
  layout.files["b.safetensors"] = {"model.norm.weight"};
  RepackDirectory(dir.File("m"), layout);
  absl::StatusOr<WeightSource> loaded = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr("tensor 'model.norm.weight' appears in both"));
  EXPECT_THAT(loaded.status().message(), HasSubstr("a.safetensors"));
  EXPECT_THAT(loaded.status().message(), HasSubstr("b.safetensors"));
}

TEST(WeightSourceTest, DirectoryErrorsNameThePath) {
  TempDir dir("weight_source_test");
  absl::StatusOr<WeightSource> w = WeightSource::FromDirectory(dir.File("absent"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("absent"));

  fs::create_directories(dir.File("m"));
  w = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr(dir.File("m/config.json")));

  std::ofstream(dir.File("m/config.json")) << R"({"model_type": "llama", "vocab_size": 0})";
  w = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr(dir.File("m/config.json") + ": "));

  std::ofstream(dir.File("m/config.json"), std::ios::trunc) << Tiny().ToHfConfigJson();
  w = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("no *.safetensors files"));

  std::ofstream(dir.File("m/model.safetensors")) << "garbage!";
  w = WeightSource::FromDirectory(dir.File("m"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr(dir.File("m/model.safetensors") + ": "));
}

}  // namespace
}  // namespace asymcache::model
