// Safetensors reader and writer (model/safetensors.h).
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this code reads it in place");

namespace asymcache::model {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// The deepest valid nesting: file object > tensor entry > shape array.
constexpr int kMaxJsonDepth = 3;

// Hostile names can be long or hold control bytes: messages quote at most
// this many bytes, C-escaped.
constexpr size_t kMaxQuotedBytes = 120;

std::string Quote(absl::string_view text) {
  if (text.size() <= kMaxQuotedBytes) return absl::StrCat("'", absl::CHexEscape(text), "'");
  return absl::StrCat("'", absl::CHexEscape(text.substr(0, kMaxQuotedBytes)), "...' (", text.size(),
                      " bytes)");
}

absl::Status FileError(absl::string_view source, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", problem));
}

absl::Status TensorError(absl::string_view source, absl::string_view name,
                         absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", Quote(name), ": ", problem));
}

std::string ShapeText(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Every dtype name of the safetensors specification, so that a valid file
// with a dtype we do not load gets "unsupported" rather than "unknown".
constexpr absl::string_view kOtherSpecDtypes[] = {
    "BOOL", "U8",      "I8",      "I16",     "U16",     "I32",     "U32", "I64", "U64",
    "F64",  "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",  "C64"};

bool DTypeFromName(absl::string_view name, msa::DType* dtype) {
  if (name == "F32") {
    *dtype = msa::DType::kFloat32;
  } else if (name == "BF16") {
    *dtype = msa::DType::kBFloat16;
  } else if (name == "F16") {
    *dtype = msa::DType::kFloat16;
  } else {
    return false;
  }
  return true;
}

// Largest nesting depth of `text` as JSON (brackets outside strings), and
// whether it exceeds kMaxJsonDepth; checked before building a DOM so a header
// of "[[[[..." cannot allocate a node per byte.
bool NestingWithinLimit(absl::string_view text, size_t* offending_offset) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\') {
        ++i;  // skip the escaped character
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
    } else if (ch == '{' || ch == '[') {
      if (++depth > kMaxJsonDepth) {
        *offending_offset = i;
        return false;
      }
    } else if ((ch == '}' || ch == ']') && depth > 0) {
      --depth;
    }
  }
  return true;
}

// a * b, false on uint64 overflow.
bool MulChecked(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF): the JSON
// writer would otherwise throw on such a name.
bool IsValidUtf8(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

// Parses one tensor entry of the header JSON into `info` (offsets validated
// against the data section size).
absl::Status ParseTensorEntry(absl::string_view source, const std::string& name, const Json& entry,
                              uint64_t data_size, SafetensorsTensorInfo* info) {
  if (name.empty()) return FileError(source, "a tensor has an empty name");
  if (!entry.is_object()) {
    return TensorError(source, name,
                       absl::StrCat("must be an object with dtype, shape and data_offsets, got ",
                                    entry.type_name()));
  }
  for (auto it = entry.begin(); it != entry.end(); ++it) {
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets") {
      return TensorError(source, name, absl::StrCat("unknown field ", Quote(it.key())));
    }
  }
  info->name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return TensorError(source, name, "dtype: missing");
  if (!dtype_it->is_string()) {
    return TensorError(source, name,
                       absl::StrCat("dtype: must be a string, got ", dtype_it->type_name()));
  }
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  if (!DTypeFromName(dtype_name, &info->dtype)) {
    const bool in_spec = std::find(std::begin(kOtherSpecDtypes), std::end(kOtherSpecDtypes),
                                   dtype_name) != std::end(kOtherSpecDtypes);
    return TensorError(source, name,
                       absl::StrCat(in_spec ? "unsupported" : "unknown", " dtype ",
                                    Quote(dtype_name), " (supported: F32, BF16, F16)"));
  }

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return TensorError(source, name, "shape: missing");
  if (!shape_it->is_array()) {
    return TensorError(source, name,
                       absl::StrCat("shape: must be an array, got ", shape_it->type_name()));
  }
  uint64_t elements = 1;
  bool elements_overflow = false;
  info->shape.reserve(shape_it->size());
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const Json& dim = (*shape_it)[i];
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return TensorError(source, name,
                         absl::StrCat("shape[", i, "]: negative dimension ", dim.get<int64_t>()));
    }
    if (!dim.is_number_unsigned()) {
      return TensorError(source, name,
                         absl::StrCat("shape[", i, "]: must be an integer, got ", dim.type_name(),
                                      " ", dim.dump()));
    }
    const uint64_t d = dim.get<uint64_t>();
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(source, name,
                         absl::StrCat("shape[", i, "]: dimension ", d, " out of range"));
    }
    info->shape.push_back(static_cast<int64_t>(d));
    if (!MulChecked(elements, d, &elements)) elements_overflow = true;
  }
  // Refused whenever the running product overflows, a zero dimension later
  // or not: elements() multiplies in order, and the writer (SafetensorsByteSize)
  // refuses the same shapes (found by fuzz/safetensors_fuzz.cc).
  uint64_t bytes = 0;
  if (elements_overflow || elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      !MulChecked(elements, msa::DTypeBytes(info->dtype), &bytes)) {
    return TensorError(
        source, name,
        absl::StrCat("shape ", ShapeText(info->shape), ": element or byte count overflows"));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return TensorError(source, name, "data_offsets: missing");
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return TensorError(source, name,
                       absl::StrCat("data_offsets: must be [begin, end] of non-negative integers, "
                                    "got ",
                                    offsets_it->dump().substr(0, kMaxQuotedBytes)));
  }
  info->begin = (*offsets_it)[0].get<uint64_t>();
  info->end = (*offsets_it)[1].get<uint64_t>();
  const std::string offsets_text =
      absl::StrCat("data_offsets [", info->begin, ", ", info->end, "]");
  if (info->begin > info->end) {
    return TensorError(source, name, absl::StrCat(offsets_text, ": begin after end"));
  }
  if (info->end > data_size) {
    return TensorError(source, name,
                       absl::StrCat(offsets_text, " extend past the data section (", data_size,
                                    " bytes); truncated file?"));
  }
  if (info->end - info->begin != bytes) {
    return TensorError(
        source, name,
        absl::StrCat("size mismatch: shape ", ShapeText(info->shape), " of ", dtype_name, " is ",
                     bytes, " bytes but ", offsets_text, " span ", info->end - info->begin));
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const uint8_t* data, size_t size, absl::string_view path) {
  while (size > 0) {
    // Linux writes at most ~2 GiB per call.
    const size_t chunk = std::min<size_t>(size, size_t{1} << 30);
    const ssize_t n = ::write(fd, data, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat(path, ": write: ", std::strerror(errno)));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view SafetensorsDTypeName(msa::DType dtype) {
  switch (dtype) {
    case msa::DType::kFloat32:
      return "F32";
    case msa::DType::kBFloat16:
      return "BF16";
    case msa::DType::kFloat16:
      return "F16";
  }
  return "";
}

int64_t SafetensorsTensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow
  return n;
}

const SafetensorsTensorInfo* SafetensorsHeader::Find(absl::string_view name) const {
  for (const SafetensorsTensorInfo& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::Span<const uint8_t> file_bytes,
                                                         absl::string_view source) {
  if (file_bytes.size() < 8) {
    return FileError(source, absl::StrCat("truncated: ", file_bytes.size(),
                                          " bytes, a safetensors file starts with an 8-byte "
                                          "header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_bytes.data(), sizeof(header_len));  // little-endian host
  if (header_len > kSafetensorsMaxHeaderBytes) {
    return FileError(source, absl::StrCat("header length ", header_len, " exceeds the ",
                                          kSafetensorsMaxHeaderBytes, "-byte limit"));
  }
  if (header_len > file_bytes.size() - 8) {
    return FileError(
        source, absl::StrCat("header length ", header_len, " exceeds the ", file_bytes.size() - 8,
                             " bytes after the length prefix; truncated file?"));
  }
  if (header_len == 0) return FileError(source, "header: empty (length 0)");
  const absl::string_view text(reinterpret_cast<const char*>(file_bytes.data() + 8),
                               static_cast<size_t>(header_len));
  size_t deep_at = 0;
  if (!NestingWithinLimit(text, &deep_at)) {
    return FileError(source, absl::StrCat("header: JSON nested deeper than ", kMaxJsonDepth,
                                          " levels at byte ", deep_at));
  }

  // nlohmann keeps the last of duplicate keys; the callback sees every key, so
  // duplicates (two tensors of one name, or a repeated field) are refused.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool duplicate_is_tensor = false;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && duplicate.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get<std::string>()).second) {
          duplicate = parsed.get<std::string>();
          duplicate_is_tensor = open_objects.size() == 1;
        }
        break;
      default:
        break;
    }
    return true;
  };
  const Json doc = Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return FileError(source, "header: not valid JSON");
  if (!duplicate.empty()) {
    if (duplicate_is_tensor) {
      return FileError(source, absl::StrCat("header: duplicate tensor name ", Quote(duplicate)));
    }
    return FileError(source,
                     absl::StrCat("header: duplicate key ", Quote(duplicate), " inside an entry"));
  }
  if (!doc.is_object()) {
    return FileError(source, absl::StrCat("header: must be a JSON object, got ", doc.type_name()));
  }

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  header.data_size = file_bytes.size() - header.data_offset;
  header.tensors.reserve(doc.size());
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return FileError(source, absl::StrCat("__metadata__: must be an object of strings, got ",
                                              it->type_name()));
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return FileError(source, absl::StrCat("__metadata__: value of ", Quote(m.key()),
                                                " must be a string, got ", m->type_name()));
        }
        header.metadata.emplace(m.key(), m->get<std::string>());
      }
      continue;
    }
    SafetensorsTensorInfo info;
    if (absl::Status s = ParseTensorEntry(source, it.key(), *it, header.data_size, &info);
        !s.ok()) {
      return s;
    }
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  // Non-empty tensors must not share a byte: with the list sorted by begin,
  // each must start at or after the largest end seen so far.
  const SafetensorsTensorInfo* reach = nullptr;  // the non-empty tensor ending last so far
  for (const SafetensorsTensorInfo& t : header.tensors) {
    if (t.begin == t.end) continue;
    if (reach != nullptr && t.begin < reach->end) {
      return FileError(
          source, absl::StrCat("tensors ", Quote(reach->name), " (data_offsets [", reach->begin,
                               ", ", reach->end, "]) and ", Quote(t.name), " (data_offsets [",
                               t.begin, ", ", t.end, "]) overlap"));
    }
    if (reach == nullptr || t.end > reach->end) reach = &t;
  }
  return header;
}

// ---- SafetensorsFile --------------------------------------------------------------

SafetensorsFile::SafetensorsFile(std::string path, const uint8_t* base, size_t size,
                                 SafetensorsHeader header)
    : path_(std::move(path)), base_(base), size_(size), header_(std::move(header)) {}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      header_(std::move(other.header_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    header_ = std::move(other.header_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Unmap(); }

void SafetensorsFile::Unmap() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
  base_ = nullptr;
  size_ = 0;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(absl::string_view path) {
  const std::string path_str(path);
  const int fd = ::open(path_str.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat(path, ": open: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* base = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap: ", std::strerror(err)));
    }
    base = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid
  // Owns the mapping from here on, so every return below unmaps.
  SafetensorsFile file(path_str, base, size, SafetensorsHeader{});
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(absl::Span<const uint8_t>(base, size), path);
  if (!header.ok()) return header.status();
  file.header_ = *std::move(header);
  return file;
}

absl::Span<const uint8_t> SafetensorsFile::Data(const SafetensorsTensorInfo& tensor) const {
  return absl::Span<const uint8_t>(base_ + header_.data_offset + tensor.begin,
                                   tensor.end - tensor.begin);
}

// ---- writing ----------------------------------------------------------------------

absl::StatusOr<uint64_t> SafetensorsByteSize(const SafetensorsTensorDecl& tensor) {
  const int dtype_bytes = msa::DTypeBytes(tensor.dtype);
  if (dtype_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", Quote(tensor.name), ": unknown dtype ", static_cast<int32_t>(tensor.dtype)));
  }
  uint64_t bytes = static_cast<uint64_t>(dtype_bytes);
  for (int64_t d : tensor.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quote(tensor.name), ": shape ",
                                                     ShapeText(tensor.shape),
                                                     " has a negative dimension"));
    }
    if (!MulChecked(bytes, static_cast<uint64_t>(d), &bytes) ||
        bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quote(tensor.name), ": shape ",
                                                     ShapeText(tensor.shape),
                                                     " overflows the byte count"));
    }
  }
  return bytes;
}

absl::StatusOr<std::string> EncodeSafetensorsHeader(
    absl::Span<const SafetensorsTensorDecl> tensors,
    const std::map<std::string, std::string>& metadata) {
  OrderedJson doc = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [key, value] : metadata) {
      if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("__metadata__ ", Quote(key), ": key and value must be UTF-8"));
      }
      meta[key] = value;
    }
    doc["__metadata__"] = std::move(meta);
  }
  std::set<absl::string_view> names;
  uint64_t offset = 0;
  for (const SafetensorsTensorDecl& t : tensors) {
    if (t.name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError("tensor name '__metadata__' is reserved");
    }
    if (!IsValidUtf8(t.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(t.name), ": name is not valid UTF-8"));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quote(t.name), ": duplicate name"));
    }
    absl::StatusOr<uint64_t> bytes = SafetensorsByteSize(t);
    if (!bytes.ok()) return bytes.status();
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, *bytes, &end)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(t.name), ": the data section size overflows"));
    }
    OrderedJson entry = OrderedJson::object();
    entry["dtype"] = SafetensorsDTypeName(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, end};
    doc[t.name] = std::move(entry);
    offset = end;
  }
  std::string json = doc.dump();
  // Pad with spaces so the data section (8 + N) starts 8-byte aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > kSafetensorsMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header of ", json.size(), " bytes exceeds the ",
                                                   kSafetensorsMaxHeaderBytes, "-byte limit"));
  }
  const uint64_t len = json.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, sizeof(len));  // little-endian host
  out += json;
  return out;
}

SafetensorsWriter::SafetensorsWriter(std::string path, int fd,
                                     std::vector<SafetensorsTensorDecl> tensors,
                                     std::vector<uint64_t> ends)
    : path_(std::move(path)), fd_(fd), tensors_(std::move(tensors)), ends_(std::move(ends)) {}

SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      tensors_(std::move(other.tensors_)),
      ends_(std::move(other.ends_)),
      written_(other.written_) {}

SafetensorsWriter& SafetensorsWriter::operator=(SafetensorsWriter&& other) noexcept {
  if (this != &other) {
    Abandon();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    tensors_ = std::move(other.tensors_);
    ends_ = std::move(other.ends_);
    written_ = other.written_;
  }
  return *this;
}

SafetensorsWriter::~SafetensorsWriter() { Abandon(); }

void SafetensorsWriter::Abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(absl::StrCat(path_, ".tmp").c_str());
}

absl::StatusOr<SafetensorsWriter> SafetensorsWriter::Create(
    absl::string_view path, std::vector<SafetensorsTensorDecl> tensors,
    const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<std::string> header = EncodeSafetensorsHeader(tensors, metadata);
  if (!header.ok()) {
    return absl::Status(header.status().code(),
                        absl::StrCat(path, ": ", header.status().message()));
  }
  std::vector<uint64_t> ends;
  ends.reserve(tensors.size());
  uint64_t end = 0;
  for (const SafetensorsTensorDecl& t : tensors) {
    end += *SafetensorsByteSize(t);  // validated (and overflow-checked) by the encoder
    ends.push_back(end);
  }
  const std::string tmp = absl::StrCat(path, ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat(tmp, ": open: ", std::strerror(errno)));
  }
  SafetensorsWriter writer(std::string(path), fd, std::move(tensors), std::move(ends));
  if (absl::Status s =
          WriteAll(fd, reinterpret_cast<const uint8_t*>(header->data()), header->size(), tmp);
      !s.ok()) {
    return s;  // the writer's destructor removes the temporary file
  }
  return writer;
}

absl::Status SafetensorsWriter::Append(absl::Span<const uint8_t> bytes) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  const uint64_t total = ends_.empty() ? 0 : ends_.back();
  if (bytes.size() > total - written_) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", bytes.size(),
                                                   " more bytes would run past the data section (",
                                                   written_, " of ", total, " bytes written)"));
  }
  if (absl::Status s = WriteAll(fd_, bytes.data(), bytes.size(), absl::StrCat(path_, ".tmp"));
      !s.ok()) {
    Abandon();
    return s;
  }
  written_ += bytes.size();
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": writer is closed"));
  const uint64_t total = ends_.empty() ? 0 : ends_.back();
  if (written_ < total) {
    // The first tensor whose end has not been reached.
    const size_t i =
        static_cast<size_t>(std::upper_bound(ends_.begin(), ends_.end(), written_) - ends_.begin());
    const uint64_t begin = i == 0 ? 0 : ends_[i - 1];
    return absl::FailedPreconditionError(absl::StrCat(path_, ": tensor ", Quote(tensors_[i].name),
                                                      " is incomplete (", written_ - begin, " of ",
                                                      ends_[i] - begin, " bytes written)"));
  }
  const std::string tmp = absl::StrCat(path_, ".tmp");
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat(tmp, ": close: ", std::strerror(err)));
  }
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path_, ": rename from ", tmp, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::Status WriteSafetensorsFile(absl::string_view path,
                                  absl::Span<const SafetensorsTensorData> tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsTensorDecl> decls;
  decls.reserve(tensors.size());
  for (const SafetensorsTensorData& t : tensors) decls.push_back(t.decl);
  absl::StatusOr<SafetensorsWriter> writer =
      SafetensorsWriter::Create(path, std::move(decls), metadata);
  if (!writer.ok()) return writer.status();
  for (const SafetensorsTensorData& t : tensors) {
    if (absl::Status s = writer->Append(t.bytes); !s.ok()) return s;
  }
  return writer->Finish();
}

// ---- conversions ------------------------------------------------------------------

absl::Status DecodeTensorToFloat32(msa::DType dtype, absl::Span<const uint8_t> bytes,
                                   absl::Span<float> out) {
  const int width = msa::DTypeBytes(dtype);
  if (width == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown element type ", static_cast<int32_t>(dtype)));
  }
  if (bytes.size() != out.size() * static_cast<size_t>(width)) {
    return absl::InvalidArgumentError(absl::StrCat("bytes: ", bytes.size(), " bytes of ",
                                                   SafetensorsDTypeName(dtype), " for ", out.size(),
                                                   " floats"));
  }
  const uint8_t* src = bytes.data();
  switch (dtype) {
    case msa::DType::kFloat32:
      if (!out.empty()) std::memcpy(out.data(), src, bytes.size());
      break;
    case msa::DType::kBFloat16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        out[i] = msa::FloatFromBf16Bits(bits);
      }
      break;
    case msa::DType::kFloat16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        out[i] = msa::FloatFromFp16Bits(bits);
      }
      break;
  }
  return absl::OkStatus();
}

absl::Status EncodeTensorFromFloat32(msa::DType dtype, absl::Span<const float> values,
                                     absl::Span<uint8_t> out) {
  const int width = msa::DTypeBytes(dtype);
  if (width == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown element type ", static_cast<int32_t>(dtype)));
  }
  if (out.size() != values.size() * static_cast<size_t>(width)) {
    return absl::InvalidArgumentError(absl::StrCat("out: ", out.size(), " bytes of ",
                                                   SafetensorsDTypeName(dtype), " for ",
                                                   values.size(), " floats"));
  }
  uint8_t* dst = out.data();
  switch (dtype) {
    case msa::DType::kFloat32:
      if (!values.empty()) std::memcpy(dst, values.data(), out.size());
      break;
    case msa::DType::kBFloat16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t bits = msa::Bf16BitsFromFloat(values[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      break;
    case msa::DType::kFloat16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t bits = msa::Fp16BitsFromFloat(values[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
      }
      break;
  }
  return absl::OkStatus();
}

}  // namespace asymcache::model
