// Safetensors: reader and writer of the safetensors tensor file format
// (https://github.com/huggingface/safetensors, "format" section).
//
// Layout: an 8-byte little-endian header length N; N bytes of UTF-8 JSON
//   {"<name>": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]},
//    ..., "__metadata__": {"key": "value", ...}}
// (space padded); then the data section. Offsets are relative to the data
// section start (8 + N); tensors are row-major, little-endian.
//
// Reading (outside input, fuzzed by a later issue): ParseSafetensorsHeader()
// is a pure function of the file's bytes that validates everything a hostile
// file can break: the length against the file size and a 100 MB cap, JSON
// well-formedness and nesting, duplicate keys, each tensor's dtype (BF16, F16
// and F32 are supported; any other dtype is INVALID_ARGUMENT), shape
// (non-negative, element and byte counts without overflow), size (elements *
// dtype size == end - begin) and offsets (inside the data section, no two
// non-empty tensors overlapping). Gaps between tensors and trailing bytes are
// allowed (harmless). Errors are INVALID_ARGUMENT "<source>: <problem>" or
// "<source>: tensor '<name>': <problem>".
// SafetensorsFile maps a file read-only (RAII) and parses it.
//
// Writing: EncodeSafetensorsHeader() builds the length prefix and JSON for
// tensors stored back to back in the given order ("__metadata__" first when
// not empty), padded with spaces so the data section starts 8-byte aligned,
// as the reference implementation does. SafetensorsWriter streams tensor data
// into "<path>.tmp" and renames it to <path> on Finish(), so a failed write
// never leaves a truncated file under the final name.
//
// Tensor data inside a mapping is not necessarily aligned to its element
// size (the format packs tensors back to back): read it with memcpy, as
// DecodeTensorToFloat32 does.
//
// Contract: parsed values are plain data; a SafetensorsFile is immutable and
// thread-safe after Open and owns its mapping (spans from Data() are valid
// while it lives; moving it keeps them valid). The file must not be truncated
// by another process while mapped (that is SIGBUS, as for any mapping).
// SafetensorsWriter is used by one thread. Assumes a little-endian host.
#ifndef ASYMCACHE_MODEL_SAFETENSORS_H_
#define ASYMCACHE_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/msa.h"

namespace asymcache::model {

// The reference implementation's cap on the header length (a hostile length
// must not make us parse or allocate gigabytes).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// "F32", "BF16", "F16" ("" for a value outside msa::DType).
absl::string_view SafetensorsDTypeName(msa::DType dtype);

// One tensor as the header describes it.
struct SafetensorsTensorInfo {
  std::string name;
  msa::DType dtype = msa::DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section
  uint64_t end = 0;

  int64_t elements() const;  // product of shape (1 for a scalar)
  uint64_t byte_size() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;                     // 8 + N: where the data section starts in the file
  uint64_t data_size = 0;                       // bytes from data_offset to the end of the file
  std::vector<SafetensorsTensorInfo> tensors;   // ascending begin, then name
  std::map<std::string, std::string> metadata;  // "__metadata__" (empty when absent)

  // nullptr when absent. Linear in the tensor count.
  const SafetensorsTensorInfo* Find(absl::string_view name) const;
};

// Parses and validates the header of a complete safetensors file image
// (`file_bytes` is the whole file). `source` names the file in messages.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::Span<const uint8_t> file_bytes,
                                                         absl::string_view source);

// A safetensors file mapped read-only. Move-only; unmaps in its destructor.
class SafetensorsFile {
 public:
  // NOT_FOUND / PERMISSION_DENIED (errno) when the file cannot be opened,
  // INVALID_ARGUMENT when it is not a regular file or fails
  // ParseSafetensorsHeader, INTERNAL when mapping fails. Messages name `path`.
  static absl::StatusOr<SafetensorsFile> Open(absl::string_view path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return header_.tensors; }
  const SafetensorsTensorInfo* Find(absl::string_view name) const { return header_.Find(name); }
  // The bytes of `tensor`, which must come from this file's header.
  absl::Span<const uint8_t> Data(const SafetensorsTensorInfo& tensor) const;

 private:
  SafetensorsFile(std::string path, const uint8_t* base, size_t size, SafetensorsHeader header);
  void Unmap();

  std::string path_;
  const uint8_t* base_ = nullptr;  // the mapping (nullptr for an empty file)
  size_t size_ = 0;
  SafetensorsHeader header_;
};

// A tensor to write: name, dtype and shape (its data follows separately).
struct SafetensorsTensorDecl {
  std::string name;
  msa::DType dtype = msa::DType::kFloat32;
  std::vector<int64_t> shape;
};

// Bytes of one declared tensor: elements * dtype size (INVALID_ARGUMENT on a
// negative dimension, an unknown dtype or overflow).
absl::StatusOr<uint64_t> SafetensorsByteSize(const SafetensorsTensorDecl& tensor);

// The 8-byte length prefix, the JSON header and its space padding for
// `tensors` stored back to back in this order. INVALID_ARGUMENT naming the
// tensor for an empty, duplicate, reserved ("__metadata__") or non-UTF-8
// name, a negative dimension, an unknown dtype or a size that overflows; and
// for non-UTF-8 metadata.
absl::StatusOr<std::string> EncodeSafetensorsHeader(
    absl::Span<const SafetensorsTensorDecl> tensors,
    const std::map<std::string, std::string>& metadata);

// Streams one safetensors file: Create() writes the header, Append() the
// data section (the tensors' bytes back to back in declaration order; a call
// may carry part of a tensor or several, so a large tensor can be converted
// and written in pieces), Finish() publishes the file. Dropping an
// unfinished writer removes its temporary file.
class SafetensorsWriter {
 public:
  // INVALID_ARGUMENT as EncodeSafetensorsHeader; INTERNAL (errno text)
  // naming the path when the temporary file cannot be created or written.
  static absl::StatusOr<SafetensorsWriter> Create(
      absl::string_view path, std::vector<SafetensorsTensorDecl> tensors,
      const std::map<std::string, std::string>& metadata);

  SafetensorsWriter(SafetensorsWriter&& other) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&& other) noexcept;
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter();

  // The next bytes of the data section. INVALID_ARGUMENT (nothing written)
  // when they would run past the last tensor; FAILED_PRECONDITION after
  // Finish or a failed write; INTERNAL when the write fails.
  absl::Status Append(absl::Span<const uint8_t> bytes);
  // FAILED_PRECONDITION naming the first tensor not completely written;
  // INTERNAL when closing or renaming fails.
  absl::Status Finish();

 private:
  SafetensorsWriter(std::string path, int fd, std::vector<SafetensorsTensorDecl> tensors,
                    std::vector<uint64_t> ends);
  void Abandon();

  std::string path_;
  int fd_ = -1;  // the open "<path>.tmp"; -1 once finished or abandoned
  std::vector<SafetensorsTensorDecl> tensors_;
  std::vector<uint64_t> ends_;  // data_offsets end of each tensor
  uint64_t written_ = 0;        // data-section bytes appended so far
};

// A declared tensor with its data, for WriteSafetensorsFile.
struct SafetensorsTensorData {
  SafetensorsTensorDecl decl;
  absl::Span<const uint8_t> bytes;
};

// Writes a whole file through SafetensorsWriter.
absl::Status WriteSafetensorsFile(absl::string_view path,
                                  absl::Span<const SafetensorsTensorData> tensors,
                                  const std::map<std::string, std::string>& metadata);

// Element conversions between little-endian tensor bytes and fp32, over
// kernels/dtype.h (bf16/fp16: round to nearest even on encode, NaN stays
// NaN, overflow to inf; decode is exact). INVALID_ARGUMENT when the sizes
// disagree (bytes.size() != floats.size() * dtype size) or the dtype is
// unknown.
absl::Status DecodeTensorToFloat32(msa::DType dtype, absl::Span<const uint8_t> bytes,
                                   absl::Span<float> out);
absl::Status EncodeTensorFromFloat32(msa::DType dtype, absl::Span<const float> values,
                                     absl::Span<uint8_t> out);

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_SAFETENSORS_H_
