// Fuzz target: the safetensors header parser (model/safetensors.h,
// ParseSafetensorsHeader), the reader every weight file goes through.
//
// Input: the bytes of a whole .safetensors file (8-byte length, JSON header,
// data section).
//
// Invariants checked (beyond "no crash, no sanitizer report"):
//   - a refusal is INVALID_ARGUMENT "fuzz.safetensors: ...";
//   - an accepted header keeps every promise of safetensors.h: data_offset =
//     8 + N and the data section runs to the end of the file; tensors sorted
//     by (begin, end, name), named uniquely (not "", not "__metadata__"),
//     inside the data section, sized elements x dtype bytes (recomputed here
//     in 128-bit arithmetic), non-empty ones never overlapping; Find() finds
//     each; elements() and byte_size() are defined for each;
//   - round trip: what the reader accepts the writer can write
//     (EncodeSafetensorsHeader of the same names, dtypes, shapes and
//     metadata), and reading that back gives the same tensors and metadata.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "fuzz/fuzz_check.h"
#include "kernels/msa.h"
#include "model/safetensors.h"

namespace asymcache::model {
namespace {

constexpr absl::string_view kSource = "fuzz.safetensors";

// Elements x dtype bytes without overflow (0 when a dimension is 0); false
// when the product of the dimensions does not fit int64.
bool ExpectedBytes(const SafetensorsTensorInfo& t, unsigned __int128* bytes) {
  unsigned __int128 elements = 1;
  bool overflow = false;
  for (int64_t d : t.shape) {
    if (d < 0) return false;
    elements *= static_cast<uint64_t>(d);
    if (elements > static_cast<unsigned __int128>(INT64_MAX)) {
      overflow = true;
      elements = static_cast<unsigned __int128>(INT64_MAX) + 1;  // stays above the limit
    }
  }
  const bool has_zero = std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end();
  if (has_zero) {
    *bytes = 0;
    return true;
  }
  if (overflow) return false;
  *bytes = elements * static_cast<unsigned>(msa::DTypeBytes(t.dtype));
  return true;
}

void CheckHeader(const SafetensorsHeader& h, size_t file_size) {
  FUZZ_CHECK(h.data_offset >= 8 && h.data_offset + h.data_size == file_size,
             "data section [", h.data_offset, ", +", h.data_size, ") in a file of ", file_size);
  std::set<std::string> names;
  const SafetensorsTensorInfo* reach = nullptr;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const SafetensorsTensorInfo& t = h.tensors[i];
    FUZZ_CHECK(!t.name.empty() && t.name != "__metadata__", "tensor ", i, " named '", t.name, "'");
    FUZZ_CHECK(names.insert(t.name).second, "tensor name '", t.name, "' twice");
    FUZZ_CHECK(!SafetensorsDTypeName(t.dtype).empty(), "tensor '", t.name, "': unknown dtype");
    FUZZ_CHECK(t.begin <= t.end && t.end <= h.data_size, "tensor '", t.name, "': [", t.begin, ", ",
               t.end, ") outside a data section of ", h.data_size);
    unsigned __int128 bytes = 0;
    FUZZ_CHECK(ExpectedBytes(t, &bytes) && bytes == t.byte_size(), "tensor '", t.name,
               "': ", t.byte_size(), " bytes for its shape and dtype (or an overflowing shape)");
    if (i > 0) {
      const SafetensorsTensorInfo& p = h.tensors[i - 1];
      const bool ordered = p.begin != t.begin ? p.begin < t.begin
                           : p.end != t.end   ? p.end < t.end
                                              : p.name < t.name;
      FUZZ_CHECK(ordered, "tensors '", p.name, "' and '", t.name, "' out of order");
    }
    if (t.begin != t.end) {
      FUZZ_CHECK(reach == nullptr || t.begin >= reach->end, "tensors '", reach->name, "' and '",
                 t.name, "' overlap");
      if (reach == nullptr || t.end > reach->end) reach = &t;
    }
    FUZZ_CHECK(h.Find(t.name) == &t, "Find('", t.name, "') misses it");
    // Defined for every accepted tensor (safetensors.h: "validated not to
    // overflow"); UBSan reports signed overflow here.
    const int64_t elements = t.elements();
    FUZZ_CHECK(elements >= 0, "tensor '", t.name, "': ", elements, " elements");
  }
}

// The tensors as a comparable value, by name (the writer lays tensors out
// back to back, so offsets and hence the order may differ).
std::map<std::string, std::string> Fingerprint(const SafetensorsHeader& h) {
  std::map<std::string, std::string> out;
  for (const SafetensorsTensorInfo& t : h.tensors) {
    std::string shape;
    for (int64_t d : t.shape) absl::StrAppend(&shape, d, ",");
    out[t.name] = absl::StrCat(SafetensorsDTypeName(t.dtype), " [", shape, "] ", t.byte_size());
  }
  return out;
}

void Run(absl::Span<const uint8_t> file) {
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(file, kSource);
  if (!header.ok()) {
    FUZZ_CHECK(fuzz::IsRefusalNaming(header.status(), absl::StrCat(kSource, ": ")),
               "refusal not INVALID_ARGUMENT naming the file: ", header.status().ToString());
    return;
  }
  CheckHeader(*header, file.size());

  std::vector<SafetensorsTensorDecl> decls;
  uint64_t data_bytes = 0;
  for (const SafetensorsTensorInfo& t : header->tensors) {
    decls.push_back({t.name, t.dtype, t.shape});
    data_bytes += t.byte_size();  // <= data_size: the tensors do not overlap
  }
  absl::StatusOr<std::string> encoded = EncodeSafetensorsHeader(decls, header->metadata);
  FUZZ_CHECK(encoded.ok(), "the reader accepts what the writer refuses: ",
             encoded.status().ToString());
  std::string rewritten = *std::move(encoded);
  rewritten.append(data_bytes, '\0');
  absl::StatusOr<SafetensorsHeader> reread = ParseSafetensorsHeader(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(rewritten.data()), rewritten.size()),
      kSource);
  FUZZ_CHECK(reread.ok(), "the writer's header is refused: ", reread.status().ToString());
  CheckHeader(*reread, rewritten.size());
  FUZZ_CHECK(reread->data_offset % 8 == 0, "written data section at ", reread->data_offset,
             ", not 8-byte aligned");
  FUZZ_CHECK(Fingerprint(*reread) == Fingerprint(*header), "tensors changed in the round trip");
  FUZZ_CHECK(reread->metadata == header->metadata, "metadata changed in the round trip");
}

}  // namespace
}  // namespace asymcache::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::model::Run(absl::MakeConstSpan(data, size));
  return 0;
}
