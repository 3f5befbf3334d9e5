// PoolLayout: where each block's K/V bytes live in the daemon's KV pool.
//
// What: the pool holds `num_blocks` blocks of every layer of one model. It is
// LAYER-MAJOR so that one layer's slice is exactly the paged pool the MSA
// kernels read (kernels/msa.h: [num_pages][2][page_size][Hkv][D], K block then
// V block per page):
//
//   pool = [num_layers][num_blocks][2][block_tokens][Hkv][D]   (dtype_bytes each)
//
//   piece_bytes()         = 2 * block_tokens * Hkv * D * dtype_bytes
//                           (block b of ONE layer: contiguous)
//   layer_stride_bytes()  = num_blocks * piece_bytes()   (layer l's MSA pool
//                           starts at base + l * layer_stride_bytes())
//   block_bytes()         = num_layers * piece_bytes()   (a block's full content:
//                           num_layers pieces, one per layer, strided)
//   bytes()               = num_layers * layer_stride_bytes()
//   PieceOffset(l, b)     = l * layer_stride_bytes() + b * piece_bytes()
//
// A block id is an MSA page id (int32 in the kernels' tables), so num_blocks is
// at most kMaxPoolBlocks. The wire format of a block (transfers, staging) is
// block-major: [block][layer][piece] (pool_memory.h CopyBlocksToHost).
//
// Contract: a plain value type with public fields, like an options struct.
// FromModel() builds a validated layout; a layout assembled field by field (a
// descriptor off the wire) must pass Validate() before any accessor is used:
// the accessors assume the products do not overflow, which Validate() checks.
// Thread-safe as a value.
#ifndef ASYMCACHE_SERVICES_DAEMON_POOL_LAYOUT_H_
#define ASYMCACHE_SERVICES_DAEMON_POOL_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cachecore/model_config.h"

namespace asymcache::daemon {

// Block ids are int32 MSA page ids.
inline constexpr int64_t kMaxPoolBlocks = std::numeric_limits<int32_t>::max();

struct PoolLayout {
  int32_t num_layers = 0;    // L
  int64_t num_blocks = 0;    // blocks per layer (= blocks of the pool), 1..kMaxPoolBlocks
  int32_t block_tokens = 0;  // B: tokens per block (MSA page_size)
  int32_t num_kv_heads = 0;  // Hkv
  int32_t head_dim = 0;      // D
  int32_t dtype_bytes = 0;   // e: 1, 2 or 4

  // The layout of `num_blocks` blocks of `model`'s KV. INVALID_ARGUMENT if the
  // model does not validate, num_blocks is outside [1, kMaxPoolBlocks] or the
  // pool's size overflows int64.
  static absl::StatusOr<PoolLayout> FromModel(const ModelConfig& model, int64_t num_blocks);

  // How many whole blocks of `model` fit in `bytes` (floor; 0 when none fit or
  // bytes <= 0). Not capped at kMaxPoolBlocks. Precondition: model validates.
  static int64_t BlocksForBytes(const ModelConfig& model, int64_t bytes);

  // INVALID_ARGUMENT naming the field: non-positive sizes, dtype_bytes not in
  // {1, 2, 4}, num_blocks > kMaxPoolBlocks, or bytes() overflowing int64.
  absl::Status Validate() const;

  // Accessors (precondition: Validate() is OK).
  int64_t piece_bytes() const {
    return int64_t{2} * block_tokens * num_kv_heads * head_dim * dtype_bytes;
  }
  int64_t layer_stride_bytes() const { return num_blocks * piece_bytes(); }
  int64_t block_bytes() const { return int64_t{num_layers} * piece_bytes(); }
  int64_t bytes() const { return int64_t{num_layers} * layer_stride_bytes(); }
  // Byte offset of block `block`'s piece of layer `layer` from the pool base.
  // Precondition: 0 <= layer < num_layers, 0 <= block < num_blocks.
  int64_t PieceOffset(int32_t layer, int64_t block) const {
    return int64_t{layer} * layer_stride_bytes() + block * piece_bytes();
  }

  // Checks a staging copy of `blocks` through a host buffer of `buffer_bytes`
  // (pool_memory.h CopyBlocksToHost / CopyBlocksFromHost): every id in
  // [0, num_blocks), no id twice when `require_unique` (a write of one block
  // from two places is a caller bug), and buffer_bytes >= blocks.size() *
  // block_bytes(). INVALID_ARGUMENT naming the first offending index and id, or
  // both sizes. Precondition: Validate() is OK.
  absl::Status ValidateBlockCopy(absl::Span<const int64_t> blocks, size_t buffer_bytes,
                                 bool require_unique) const;

  friend bool operator==(const PoolLayout&, const PoolLayout&) = default;
};

}  // namespace asymcache::daemon

#endif  // ASYMCACHE_SERVICES_DAEMON_POOL_LAYOUT_H_
