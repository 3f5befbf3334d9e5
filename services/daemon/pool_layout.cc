#include "services/daemon/pool_layout.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace asymcache::daemon {
namespace {

// a * b, or false on int64 overflow (both non-negative).
bool MulOk(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

absl::StatusOr<PoolLayout> PoolLayout::FromModel(const ModelConfig& model, int64_t num_blocks) {
  if (absl::Status status = model.Validate(); !status.ok()) return status;
  PoolLayout layout;
  layout.num_layers = model.num_layers;
  layout.num_blocks = num_blocks;
  layout.block_tokens = model.block_tokens;
  layout.num_kv_heads = model.num_kv_heads;
  layout.head_dim = model.head_dim;
  layout.dtype_bytes = model.dtype_bytes;
  if (absl::Status status = layout.Validate(); !status.ok()) return status;
  return layout;
}

int64_t PoolLayout::BlocksForBytes(const ModelConfig& model, int64_t bytes) {
  const int64_t block = model.KvBytesPerBlock();
  if (bytes <= 0 || block <= 0) return 0;
  return bytes / block;
}

absl::Status PoolLayout::Validate() const {
  const std::pair<absl::string_view, int64_t> positive[] = {
      {"num_layers", num_layers},     {"num_blocks", num_blocks}, {"block_tokens", block_tokens},
      {"num_kv_heads", num_kv_heads}, {"head_dim", head_dim},
  };
  for (const auto& [field, value] : positive) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("PoolLayout.", field, " must be positive, got ", value));
    }
  }
  if (dtype_bytes != 1 && dtype_bytes != 2 && dtype_bytes != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("PoolLayout.dtype_bytes must be 1, 2 or 4, got ", dtype_bytes));
  }
  if (num_blocks > kMaxPoolBlocks) {
    return absl::InvalidArgumentError(absl::StrCat("PoolLayout.num_blocks must be at most ",
                                                   kMaxPoolBlocks, " (int32 block ids), got ",
                                                   num_blocks));
  }
  // piece = 2 * B * Hkv * D * e, stride = piece * blocks, total = stride * L:
  // each product checked (four int32 factors can already exceed int64).
  int64_t piece = 2;
  int64_t stride = 0;
  int64_t total = 0;
  if (!MulOk(piece, block_tokens, &piece) || !MulOk(piece, num_kv_heads, &piece) ||
      !MulOk(piece, head_dim, &piece) || !MulOk(piece, dtype_bytes, &piece) ||
      !MulOk(piece, num_blocks, &stride) || !MulOk(stride, num_layers, &total)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PoolLayout: pool size overflows int64 (layers=", num_layers, " blocks=", num_blocks,
        " block_tokens=", block_tokens, " kv_heads=", num_kv_heads, " head_dim=", head_dim,
        " dtype_bytes=", dtype_bytes, ")"));
  }
  return absl::OkStatus();
}

absl::Status PoolLayout::ValidateBlockCopy(absl::Span<const int64_t> blocks,
                                           size_t buffer_bytes, bool require_unique) const {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i] < 0 || blocks[i] >= num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("block id ", blocks[i], " at index ", i,
                                                     " is outside the pool [0, ", num_blocks,
                                                     ")"));
    }
  }
  // blocks.size() <= SIZE_MAX / 8 and block_bytes() < 2^63: the product fits
  // in unsigned 128 bits; check it against the buffer without overflowing.
  const unsigned __int128 needed =
      static_cast<unsigned __int128>(blocks.size()) * static_cast<uint64_t>(block_bytes());
  if (needed > buffer_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staging buffer of ", buffer_bytes, " bytes is too small for ", blocks.size(),
        " blocks of ", block_bytes(), " bytes (", static_cast<uint64_t>(needed), " needed)"));
  }
  if (require_unique && blocks.size() > 1) {
    std::vector<int64_t> sorted(blocks.begin(), blocks.end());
    std::sort(sorted.begin(), sorted.end());
    const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end()) {
      const size_t first = std::find(blocks.begin(), blocks.end(), *dup) - blocks.begin();
      const size_t second =
          std::find(blocks.begin() + first + 1, blocks.end(), *dup) - blocks.begin();
      return absl::InvalidArgumentError(absl::StrCat("block id ", *dup, " appears twice (indices ",
                                                     first, " and ", second, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache::daemon
