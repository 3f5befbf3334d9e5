// Basic identifiers shared by every cachecore component.
//
// Contract: plain value types, no behaviour beyond comparison and hashing.
// Thread-safe as values.
#ifndef ASYMCACHE_CACHECORE_TYPES_H_
#define ASYMCACHE_CACHECORE_TYPES_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_format.h"

namespace asymcache {

// Index of a block in a BlockPool, in [0, capacity).
using BlockId = int32_t;
inline constexpr BlockId kNoBlock = -1;

// Identifies a sequence (a conversation, an agent job's context, a request).
using SequenceId = uint64_t;

// Token id as produced by the tokenizer.
using TokenId = int32_t;

// 128-bit content hash of a block, chained over the whole token prefix
// (see cachecore/block_hash.h for the exact definition).
struct BlockHash {
  uint64_t lo = 0;
  uint64_t hi = 0;

  friend bool operator==(const BlockHash& a, const BlockHash& b) {
    return a.lo == b.lo && a.hi == b.hi;
  }
  friend bool operator!=(const BlockHash& a, const BlockHash& b) { return !(a == b); }
  template <typename H>
  friend H AbslHashValue(H h, const BlockHash& b) {
    return H::combine(std::move(h), b.lo, b.hi);
  }
  // 32 lowercase hex digits, hi first.
  std::string ToHex() const { return absl::StrFormat("%016x%016x", hi, lo); }
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_TYPES_H_
