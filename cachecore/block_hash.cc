#include "cachecore/block_hash.h"

#include <xxhash.h>

#include <cstring>

#include "absl/base/internal/raw_logging.h"

namespace asymcache {
namespace {

void PutLe32(uint32_t v, unsigned char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}
void PutLe64(uint64_t v, unsigned char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

BlockHash FromXxh(XXH128_hash_t h) { return BlockHash{h.low64, h.high64}; }

// Largest block hashed from a stack buffer; bigger blocks use the heap.
constexpr size_t kStackTokens = 64;

}  // namespace

BlockHash SaltRoot(absl::string_view salt) {
  std::string input;
  input.reserve(kBlockHashDomain.size() + salt.size());
  input.append(kBlockHashDomain.data(), kBlockHashDomain.size());
  input.append(salt.data(), salt.size());
  return FromXxh(XXH3_128bits(input.data(), input.size()));
}

BlockHash ChainBlock(const BlockHash& parent, absl::Span<const TokenId> tokens) {
  ABSL_RAW_CHECK(!tokens.empty(), "ChainBlock: empty block");
  const size_t bytes = 8 + 8 + 4 + 4 * tokens.size();
  unsigned char stack[8 + 8 + 4 + 4 * kStackTokens];
  std::vector<unsigned char> heap;
  unsigned char* buf = stack;
  if (tokens.size() > kStackTokens) {
    heap.resize(bytes);
    buf = heap.data();
  }
  PutLe64(parent.lo, buf);
  PutLe64(parent.hi, buf + 8);
  PutLe32(static_cast<uint32_t>(tokens.size()), buf + 16);
  unsigned char* p = buf + 20;
  for (TokenId t : tokens) {
    PutLe32(static_cast<uint32_t>(t), p);
    p += 4;
  }
  return FromXxh(XXH3_128bits(buf, bytes));
}

std::vector<BlockHash> ChainHashes(absl::string_view salt, absl::Span<const TokenId> tokens,
                                   int block_tokens) {
  ABSL_RAW_CHECK(block_tokens > 0, "ChainHashes: block_tokens must be positive");
  std::vector<BlockHash> hashes;
  hashes.reserve((tokens.size() + block_tokens - 1) / block_tokens);
  BlockHash parent = SaltRoot(salt);
  for (size_t begin = 0; begin < tokens.size(); begin += block_tokens) {
    parent = ChainBlock(parent, tokens.subspan(begin, block_tokens));
    hashes.push_back(parent);
  }
  return hashes;
}

HashChain::HashChain(absl::string_view salt, int block_tokens)
    : salt_(salt), block_tokens_(block_tokens), root_(SaltRoot(salt)) {
  ABSL_RAW_CHECK(block_tokens > 0, "HashChain: block_tokens must be positive");
}

void HashChain::Extend(absl::Span<const TokenId> tokens) {
  if (tokens.empty()) return;
  const size_t b = static_cast<size_t>(block_tokens_);
  // A partial last block is rehashed from its first token.
  if (tokens_.size() % b != 0) hashes_.pop_back();
  size_t begin = (tokens_.size() / b) * b;
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  const absl::Span<const TokenId> all(tokens_);
  hashes_.reserve((tokens_.size() + b - 1) / b);
  for (; begin < all.size(); begin += b) {
    const BlockHash parent = hashes_.empty() ? root_ : hashes_.back();
    hashes_.push_back(ChainBlock(parent, all.subspan(begin, b)));
  }
}

bool HashChain::IsPrefixOf(absl::Span<const TokenId> tokens) const {
  if (tokens.size() < tokens_.size()) return false;
  return tokens_.empty() ||
         std::memcmp(tokens_.data(), tokens.data(), tokens_.size() * sizeof(TokenId)) == 0;
}

}  // namespace asymcache
