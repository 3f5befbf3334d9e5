// Safetensors reader/writer: round trips for every supported dtype, the exact
// header layout, and every corruption the parser must refuse.
#include "model/safetensors.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/model/temp_dir.h"

namespace asymcache::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<uint8_t> ToBytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

// A file image with a hand-written JSON header (length prefix added here) and
// `data_bytes` zero bytes of data.
std::vector<uint8_t> Image(const std::string& json, size_t data_bytes) {
  std::vector<uint8_t> out(8 + json.size() + data_bytes, 0);
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  if (!json.empty()) std::memcpy(out.data() + 8, json.data(), json.size());
  return out;
}

absl::Status ParseError(const std::vector<uint8_t>& image) {
  return ParseSafetensorsHeader(image, "bad.safetensors").status();
}

std::vector<uint8_t> FloatBytes(msa::DType dtype, const std::vector<float>& values) {
  std::vector<uint8_t> out(values.size() * static_cast<size_t>(msa::DTypeBytes(dtype)));
  EXPECT_TRUE(EncodeTensorFromFloat32(dtype, values, absl::MakeSpan(out)).ok());
  return out;
}

uint32_t Bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

float FromBits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

const std::vector<float>& SpecialValues() {
  static const std::vector<float> values = {0.0f,
                                            -0.0f,
                                            1.0f,
                                            -2.5f,
                                            1.0f / 3.0f,
                                            65504.0f,
                                            1e-7f,
                                            3.0e38f,
                                            std::numeric_limits<float>::infinity(),
                                            -std::numeric_limits<float>::infinity(),
                                            std::numeric_limits<float>::quiet_NaN(),
                                            FromBits(0x3F808000u) /* bf16 tie */,
                                            FromBits(0x3F818000u) /* bf16 tie, odd */,
                                            5.9604645e-8f /* fp16 min subnormal */};
  return values;
}

TEST(SafetensorsTest, RoundTripsEveryDtype) {
  TempDir dir("safetensors_test");
  const std::vector<float>& values = SpecialValues();  // 14 values
  const std::vector<uint8_t> f32 = FloatBytes(msa::DType::kFloat32, values);
  const std::vector<uint8_t> bf16 = FloatBytes(msa::DType::kBFloat16, values);
  const std::vector<uint8_t> f16 = FloatBytes(msa::DType::kFloat16, values);
  const std::vector<SafetensorsTensorData> tensors = {
      {{"w.f32", msa::DType::kFloat32, {2, 7}}, f32},
      {{"w.bf16", msa::DType::kBFloat16, {14}}, bf16},
      {{"w.f16", msa::DType::kFloat16, {7, 1, 2}}, f16},
      {{"scalar", msa::DType::kFloat32, {}}, absl::MakeConstSpan(f32).subspan(0, 4)},
      {{"empty", msa::DType::kBFloat16, {0, 4}}, {}},
  };
  const std::string path = dir.File("a.safetensors");
  ASSERT_TRUE(WriteSafetensorsFile(path, tensors, {{"format", "pt"}, {"note", "x"}}).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->header().metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
  ASSERT_EQ(file->tensors().size(), tensors.size());
  for (const SafetensorsTensorData& t : tensors) {
    SCOPED_TRACE(t.decl.name);
    const SafetensorsTensorInfo* info = file->Find(t.decl.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, t.decl.dtype);
    EXPECT_EQ(info->shape, t.decl.shape);
    const absl::Span<const uint8_t> data = file->Data(*info);
    ASSERT_EQ(data.size(), t.bytes.size());
    EXPECT_EQ(std::memcmp(data.data(), t.bytes.data(), data.size()), 0);
  }
  EXPECT_EQ(file->Find("scalar")->elements(), 1);
  EXPECT_EQ(file->Find("empty")->elements(), 0);
  EXPECT_EQ(file->Find("missing"), nullptr);

  // Decoding: F32 exact; BF16/F16 equal the round-to-nearest-even values.
  for (const auto& [name, dtype] :
       {std::pair{"w.f32", msa::DType::kFloat32}, std::pair{"w.bf16", msa::DType::kBFloat16},
        std::pair{"w.f16", msa::DType::kFloat16}}) {
    SCOPED_TRACE(name);
    std::vector<float> decoded(values.size());
    ASSERT_TRUE(
        DecodeTensorToFloat32(dtype, file->Data(*file->Find(name)), absl::MakeSpan(decoded)).ok());
    for (size_t i = 0; i < values.size(); ++i) {
      if (std::isnan(values[i])) {
        EXPECT_TRUE(std::isnan(decoded[i]));
        continue;
      }
      float expected = values[i];
      if (dtype == msa::DType::kBFloat16)
        expected = msa::FloatFromBf16Bits(msa::Bf16BitsFromFloat(expected));
      if (dtype == msa::DType::kFloat16)
        expected = msa::FloatFromFp16Bits(msa::Fp16BitsFromFloat(expected));
      EXPECT_EQ(Bits(decoded[i]), Bits(expected)) << i;
    }
  }
}

TEST(SafetensorsTest, ConversionsRoundToNearestEvenAndKeepNaN) {
  const std::vector<float> in = {1.0f / 3.0f,
                                 FromBits(0x3F808000u),
                                 FromBits(0x3F818000u),
                                 std::numeric_limits<float>::quiet_NaN(),
                                 65520.0f,
                                 -0.0f};
  std::vector<uint8_t> bf16(in.size() * 2);
  std::vector<uint8_t> f16(in.size() * 2);
  ASSERT_TRUE(EncodeTensorFromFloat32(msa::DType::kBFloat16, in, absl::MakeSpan(bf16)).ok());
  ASSERT_TRUE(EncodeTensorFromFloat32(msa::DType::kFloat16, in, absl::MakeSpan(f16)).ok());
  auto u16 = [](const std::vector<uint8_t>& b, size_t i) {
    return static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8));
  };
  EXPECT_EQ(u16(bf16, 0), 0x3EABu);  // 1/3
  EXPECT_EQ(u16(bf16, 1), 0x3F80u);  // tie -> even
  EXPECT_EQ(u16(bf16, 2), 0x3F82u);  // tie -> even (up)
  EXPECT_EQ(u16(bf16, 3) & 0x7F80u, 0x7F80u);
  EXPECT_NE(u16(bf16, 3) & 0x007Fu, 0u);  // still NaN
  EXPECT_EQ(u16(bf16, 5), 0x8000u);
  EXPECT_EQ(u16(f16, 0), 0x3555u);  // 1/3
  EXPECT_EQ(u16(f16, 3) & 0x7C00u, 0x7C00u);
  EXPECT_NE(u16(f16, 3) & 0x03FFu, 0u);  // still NaN
  EXPECT_EQ(u16(f16, 4), 0x7C00u);       // 65520 rounds to inf
  std::vector<float> out(in.size());
  EXPECT_EQ(
      DecodeTensorToFloat32(msa::DType::kFloat16, bf16, absl::MakeSpan(out).subspan(1)).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeTensorFromFloat32(msa::DType::kFloat32, in, absl::MakeSpan(f16)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, HeaderLayoutMatchesTheReferenceWriter) {
  const std::vector<SafetensorsTensorDecl> decls = {{"b", msa::DType::kBFloat16, {3}},
                                                    {"a", msa::DType::kFloat32, {2}}};
  absl::StatusOr<std::string> header = EncodeSafetensorsHeader(decls, {{"format", "pt"}});
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_GE(header->size(), 8u);
  EXPECT_EQ(header->size() % 8, 0u);  // the data section starts 8-byte aligned
  uint64_t n = 0;
  std::memcpy(&n, header->data(), 8);
  EXPECT_EQ(n, header->size() - 8);
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[6,14]}})";
  EXPECT_EQ(header->substr(8, json.size()), json);
  EXPECT_EQ(header->substr(8 + json.size()), std::string(header->size() - 8 - json.size(), ' '));

  // The parser reads it back (data order = declaration order).
  std::vector<uint8_t> image = ToBytes(*header);
  image.resize(image.size() + 14);
  absl::StatusOr<SafetensorsHeader> parsed = ParseSafetensorsHeader(image, "x");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->tensors.size(), 2u);
  EXPECT_EQ(parsed->tensors[0].name, "b");
  EXPECT_EQ(parsed->tensors[1].name, "a");
  EXPECT_EQ(parsed->data_offset, header->size());
  EXPECT_EQ(parsed->data_size, 14u);
}

TEST(SafetensorsTest, ReadsHandWrittenFilesWithGapsAndAnyKeyOrder) {
  // Independent of our writer: keys out of offset order, unpadded header, a
  // gap between tensors and trailing bytes are all valid.
  const std::string json = R"({"y":{"data_offsets":[8,12],"shape":[2],"dtype":"F16"},)"
                           R"("x":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}})";
  std::vector<uint8_t> image = Image(json, 16);
  const size_t data = 8 + json.size();
  const float one = 1.0f;
  std::memcpy(&image[data], &one, 4);
  image[data + 8] = 0x00;
  image[data + 9] = 0x3C;  // fp16 1.0
  absl::StatusOr<SafetensorsHeader> h = ParseSafetensorsHeader(image, "hand");
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "x");  // sorted by offset
  EXPECT_EQ(h->tensors[1].name, "y");
  EXPECT_EQ(h->tensors[1].dtype, msa::DType::kFloat16);
  EXPECT_TRUE(h->metadata.empty());
  std::vector<float> y(2);
  ASSERT_TRUE(
      DecodeTensorToFloat32(msa::DType::kFloat16,
                            absl::MakeConstSpan(image).subspan(data + h->tensors[1].begin, 4),
                            absl::MakeSpan(y))
          .ok());
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 0.0f);
}

struct CorruptCase {
  const char* what;
  std::vector<uint8_t> image;
  const char* message;
};

TEST(SafetensorsTest, RefusesEveryCorruption) {
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  std::vector<uint8_t> too_long = Image("{}", 0);
  const uint64_t huge = kSafetensorsMaxHeaderBytes + 1;
  std::memcpy(too_long.data(), &huge, 8);
  std::vector<uint8_t> past_file = Image("{}", 0);
  const uint64_t past = 100;
  std::memcpy(past_file.data(), &past, 8);
  std::vector<uint8_t> all_ones(16, 0xFF);

  const std::vector<CorruptCase> cases = {
      {"empty file", {}, "truncated: 0 bytes"},
      {"7 bytes", {1, 0, 0, 0, 0, 0, 0}, "truncated: 7 bytes"},
      {"length past the file", past_file, "header length 100 exceeds the 2 bytes after"},
      {"length over the cap", too_long, "exceeds the 100000000-byte limit"},
      {"length 2^64-1", all_ones, "exceeds the 100000000-byte limit"},
      {"length 0", Image("", 4), "header: empty"},
      {"bad json", Image(R"({"a": {"dtype": "F32",)", 8), "header: not valid JSON"},
      {"trailing garbage", Image("{} x", 0), "header: not valid JSON"},
      {"invalid utf-8", Image("{\"\xff\": 1}", 0), "header: not valid JSON"},
      {"not an object", Image("[1]", 0), "header: must be a JSON object, got array"},
      {"deep nesting", Image(R"({"a":{"shape":[[1]]}})", 0), "nested deeper than 3 levels"},
      {"very deep nesting", Image(std::string(100000, '['), 0), "nested deeper than 3 levels"},
      {"entry not an object", Image(R"({"a":[1]})", 0), "tensor 'a': must be an object"},
      {"unknown field", Image(R"({"a":{)" + ok_entry + R"(,"foo":1}})", 8),
       "tensor 'a': unknown field 'foo'"},
      {"missing dtype", Image(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8),
       "tensor 'a': dtype: missing"},
      {"missing shape", Image(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8),
       "tensor 'a': shape: missing"},
      {"missing offsets", Image(R"({"a":{"dtype":"F32","shape":[2]}})", 8),
       "tensor 'a': data_offsets: missing"},
      {"unknown dtype", Image(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8),
       "tensor 'a': unknown dtype 'Q7'"},
      {"unsupported dtype", Image(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8),
       "tensor 'a': unsupported dtype 'I64'"},
      {"dtype not a string", Image(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': dtype: must be a string"},
      {"negative dim", Image(R"({"a":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape[1]: negative dimension -1"},
      {"fractional dim", Image(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape[0]: must be an integer"},
      {"shape overflow",
       Image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape [4294967296, 4294967296]: element or byte count overflows"},
      // The product overflows before the zero: refused like the writer refuses
      // it (found by fuzz/safetensors_fuzz.cc; elements() overflowed).
      {"overflow before a zero dim",
       Image(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})",
             0),
       "tensor 'a': shape [4611686018427387904, 4611686018427387904, 0]: element or byte count overflows"},
      {"byte count overflow",
       Image(R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape [4611686018427387904]: element or byte count overflows"},
      {"offsets malformed", Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
       "tensor 'a': data_offsets: must be [begin, end]"},
      {"offsets negative", Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       "tensor 'a': data_offsets: must be [begin, end]"},
      {"begin after end", Image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
       "tensor 'a': data_offsets [8, 0]: begin after end"},
      {"past the data", Image(R"({"a":{)" + ok_entry + "}}", 7),
       "tensor 'a': data_offsets [0, 8] extend past the data section (7 bytes)"},
      {"size mismatch", Image(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", 8),
       "tensor 'a': size mismatch: shape [2] of BF16 is 4 bytes but data_offsets [0, 8] span 8"},
      {"overlap",
       Image(R"({"a":{)" + ok_entry + R"(},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             12),
       "tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [4, 12]) overlap"},
      {"overlap inside a larger tensor",
       Image(R"({"big":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
             R"("c":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
             R"("d":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
             16),
       "tensors 'big' (data_offsets [0, 16]) and 'c' (data_offsets [8, 12]) overlap"},
      {"same range twice", Image(R"({"a":{)" + ok_entry + R"(},"b":{)" + ok_entry + "}}", 8),
       "tensors 'a' (data_offsets [0, 8]) and 'b' (data_offsets [0, 8]) overlap"},
      {"duplicate tensor", Image(R"({"a":{)" + ok_entry + R"(},"a":{)" + ok_entry + "}}", 8),
       "header: duplicate tensor name 'a'"},
      {"duplicate field",
       Image(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
       "header: duplicate key 'dtype' inside an entry"},
      {"empty name", Image(R"({"":{)" + ok_entry + "}}", 8), "a tensor has an empty name"},
      {"metadata not an object", Image(R"({"__metadata__":[]})", 0),
       "__metadata__: must be an object of strings"},
      {"metadata value", Image(R"({"__metadata__":{"k":1}})", 0),
       "__metadata__: value of 'k' must be a string"},
  };
  for (const CorruptCase& tc : cases) {
    SCOPED_TRACE(tc.what);
    const absl::Status s = ParseError(tc.image);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(tc.message));
    EXPECT_THAT(std::string(s.message()), testing::StartsWith("bad.safetensors: "));
  }
}

TEST(SafetensorsTest, LongHostileNamesAreShortenedInMessages) {
  const std::string name(5000, 'n');
  const absl::Status s =
      ParseError(Image("{\"" + name + R"(":{"dtype":"Q","shape":[1],"data_offsets":[0,4]}})", 4));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("(5000 bytes)"));
  EXPECT_LT(s.message().size(), 400u);
}

TEST(SafetensorsTest, OpenRefusesTruncatedFilesAndNamesThePath) {
  TempDir dir("safetensors_test");
  const std::vector<float> values = {1, 2, 3, 4};
  const std::vector<uint8_t> bytes = FloatBytes(msa::DType::kFloat32, values);
  const std::string path = dir.File("t.safetensors");
  ASSERT_TRUE(WriteSafetensorsFile(path, {{{"w", msa::DType::kFloat32, {4}}, bytes}}, {}).ok());
  ASSERT_TRUE(SafetensorsFile::Open(path).ok());

  fs::resize_file(path, fs::file_size(path) - 1);
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr(path + ": tensor 'w': data_offsets [0, 16]"));

  fs::resize_file(path, 5);
  file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr(path + ": truncated: 5 bytes"));

  fs::resize_file(path, 0);
  EXPECT_EQ(SafetensorsFile::Open(path).status().code(), absl::StatusCode::kInvalidArgument);

  file = SafetensorsFile::Open(dir.File("missing.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("missing.safetensors"));
  file = SafetensorsFile::Open(dir.path());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

TEST(SafetensorsTest, MovedFileKeepsItsMapping) {
  TempDir dir("safetensors_test");
  const std::vector<float> values = {7, 8};
  const std::vector<uint8_t> bytes = FloatBytes(msa::DType::kFloat32, values);
  const std::string path = dir.File("m.safetensors");
  ASSERT_TRUE(WriteSafetensorsFile(path, {{{"w", msa::DType::kFloat32, {2}}, bytes}}, {}).ok());
  absl::StatusOr<SafetensorsFile> opened = SafetensorsFile::Open(path);
  ASSERT_TRUE(opened.ok());
  const absl::Span<const uint8_t> before = opened->Data(*opened->Find("w"));
  SafetensorsFile moved = *std::move(opened);
  std::vector<SafetensorsFile> files;
  files.push_back(std::move(moved));
  files.reserve(16);  // reallocation moves it again
  const absl::Span<const uint8_t> after = files[0].Data(*files[0].Find("w"));
  EXPECT_EQ(before.data(), after.data());
  EXPECT_EQ(std::memcmp(after.data(), bytes.data(), bytes.size()), 0);
}

TEST(SafetensorsTest, WriterStreamsPiecesAndChecksSizes) {
  TempDir dir("safetensors_test");
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::vector<uint8_t> bytes = FloatBytes(msa::DType::kFloat32, values);
  const std::string path = dir.File("w.safetensors");
  {
    absl::StatusOr<SafetensorsWriter> w = SafetensorsWriter::Create(
        path, {{"a", msa::DType::kFloat32, {2}}, {"b", msa::DType::kFloat32, {4}}}, {});
    ASSERT_TRUE(w.ok()) << w.status();
    // Pieces that cross the tensor boundary are fine.
    ASSERT_TRUE(w->Append(absl::MakeConstSpan(bytes).subspan(0, 5)).ok());
    ASSERT_TRUE(w->Append(absl::MakeConstSpan(bytes).subspan(5, 10)).ok());
    const absl::Status early = w->Finish();
    EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(early.message(), HasSubstr("tensor 'b' is incomplete (7 of 16 bytes written)"));
    EXPECT_EQ(w->Append(bytes).code(), absl::StatusCode::kInvalidArgument);  // too many
    ASSERT_TRUE(w->Append(absl::MakeConstSpan(bytes).subspan(15)).ok());
    EXPECT_FALSE(fs::exists(path));  // published only by Finish
    ASSERT_TRUE(w->Finish().ok());
    EXPECT_EQ(w->Append({}).code(), absl::StatusCode::kFailedPrecondition);
  }
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(std::memcmp(file->Data(*file->Find("a")).data(), bytes.data(), 8), 0);
  EXPECT_EQ(std::memcmp(file->Data(*file->Find("b")).data(), bytes.data() + 8, 16), 0);

  // An abandoned writer leaves nothing behind.
  const std::string other = dir.File("abandoned.safetensors");
  {
    absl::StatusOr<SafetensorsWriter> w =
        SafetensorsWriter::Create(other, {{"a", msa::DType::kFloat32, {2}}}, {});
    ASSERT_TRUE(w.ok());
    EXPECT_TRUE(fs::exists(other + ".tmp"));
  }
  EXPECT_FALSE(fs::exists(other + ".tmp"));
  EXPECT_FALSE(fs::exists(other));
}

TEST(SafetensorsTest, WriterRefusesBadDeclarations) {
  struct Case {
    std::vector<SafetensorsTensorDecl> decls;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{{"a", msa::DType::kFloat32, {1}}, {"a", msa::DType::kFloat32, {1}}},
       "tensor 'a': duplicate name"},
      {{{"", msa::DType::kFloat32, {1}}}, "empty name"},
      {{{"__metadata__", msa::DType::kFloat32, {1}}}, "reserved"},
      {{{"bad\xff", msa::DType::kFloat32, {1}}}, "not valid UTF-8"},
      {{{"neg", msa::DType::kFloat32, {2, -1}}}, "tensor 'neg': shape [2, -1] has a negative"},
      {{{"big", msa::DType::kFloat32, {int64_t{1} << 40, int64_t{1} << 40}}}, "overflows"},
      {{{"dt", static_cast<msa::DType>(9), {1}}}, "tensor 'dt': unknown dtype 9"},
  };
  for (const Case& tc : cases) {
    SCOPED_TRACE(tc.message);
    absl::StatusOr<std::string> h = EncodeSafetensorsHeader(tc.decls, {});
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(h.status().message(), HasSubstr(tc.message));
  }
  TempDir dir("safetensors_test");
  absl::StatusOr<SafetensorsWriter> w =
      SafetensorsWriter::Create(dir.File("x.safetensors"), {{"a", msa::DType::kFloat32, {-1}}}, {});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr(dir.File("x.safetensors")));
  w = SafetensorsWriter::Create(dir.File("no/such/dir/x.safetensors"),
                                {{"a", msa::DType::kFloat32, {1}}}, {});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(w.status().message(), HasSubstr("no/such/dir/x.safetensors.tmp"));
}

}  // namespace
}  // namespace asymcache::model
