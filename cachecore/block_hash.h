// Block hashes: the content address of a KV block, chained over the whole prefix.
//
// Definition (exact; docs/block_hash.md repeats it with test vectors so other
// programs can reproduce it). XXH3-128 with seed 0 (libxxhash), over byte strings
// written little-endian:
//   root(salt)        = XXH3_128bits("asymcache.v1" || salt bytes)
//   h_i               = XXH3_128bits(h_{i-1}.lo LE64 || h_{i-1}.hi LE64 ||
//                                    n LE32 || t_0 LE32 || ... || t_{n-1} LE32)
// with h_{-1} = root(salt), n = tokens in block i (block_tokens, or fewer for a
// partial last block; the count makes a partial block's hash differ from any
// full block's), t_j the token ids (int32 written as their two's-complement
// LE32). BlockHash.lo/.hi are XXH128_hash_t.low64/.high64.
// The KV of a block depends on every earlier token, so the chain runs over the
// full prefix even where earlier blocks are not resident (DESIGN.md §2).
//
// Contract: pure functions; HashChain is a value type (not thread-safe for
// concurrent mutation, safe to copy/move between threads).
#ifndef ASYMCACHE_CACHECORE_BLOCK_HASH_H_
#define ASYMCACHE_CACHECORE_BLOCK_HASH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "cachecore/types.h"

namespace asymcache {

// Domain prefix of the root hash; changes only with a new hash version.
inline constexpr absl::string_view kBlockHashDomain = "asymcache.v1";

// The chain's seed for a tenant: XXH3-128 of kBlockHashDomain || salt.
BlockHash SaltRoot(absl::string_view salt);

// Hash of one block given its parent (the previous block's hash, or the salt
// root for block 0). `tokens` may be shorter than block_tokens (partial block);
// must not be empty.
BlockHash ChainBlock(const BlockHash& parent, absl::Span<const TokenId> tokens);

// One-shot: hashes of every block of `tokens` cut into `block_tokens`-sized
// blocks, the last one possibly partial. ceil(tokens.size() / block_tokens)
// hashes. Precondition: block_tokens > 0.
std::vector<BlockHash> ChainHashes(absl::string_view salt, absl::Span<const TokenId> tokens,
                                   int block_tokens);

// Incremental chain for a known session: holds the salt root, the hashes of the
// complete blocks, the hash of the partial last block (if any) and ALL tokens
// seen so far (so a follow-up turn can be verified token by token against what
// was hashed). Extend() hashes only the new tokens plus, where the previous
// last block was partial, that block's tokens again (its hash changes when it
// grows). hashes() always equals ChainHashes(salt, tokens(), block_tokens).
class HashChain {
 public:
  // Precondition: block_tokens > 0.
  HashChain(absl::string_view salt, int block_tokens);

  void Extend(absl::Span<const TokenId> tokens);

  const std::string& salt() const { return salt_; }
  int block_tokens() const { return block_tokens_; }
  const BlockHash& root() const { return root_; }
  int64_t token_count() const { return static_cast<int64_t>(tokens_.size()); }
  absl::Span<const TokenId> tokens() const { return tokens_; }
  // One hash per block, the last one partial when token_count() % block_tokens != 0.
  absl::Span<const BlockHash> hashes() const { return hashes_; }
  // Parent of block i: hashes()[i-1], or root() for i == 0.
  const BlockHash& ParentOf(int64_t block_index) const {
    return block_index == 0 ? root_ : hashes_[block_index - 1];
  }
  // True when tokens() is a prefix of `tokens` (compares every token).
  bool IsPrefixOf(absl::Span<const TokenId> tokens) const;

 private:
  std::string salt_;
  int block_tokens_;
  BlockHash root_;
  std::vector<TokenId> tokens_;
  std::vector<BlockHash> hashes_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_BLOCK_HASH_H_
