#include "cachecore/block_hash.h"

#include <xxhash.h>

#include <iostream>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "absl/container/flat_hash_set.h"

namespace asymcache {
namespace {

std::vector<TokenId> VectorTokens() {
  std::vector<TokenId> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back(i * 1000 - 7);  // includes a negative id
  return tokens;
}

// Pinned test vectors (also in docs/block_hash.md). If one of these changes,
// the hash definition changed: every cache, trace and peer disagrees.
TEST(BlockHashTest, PinnedVectors) {
  EXPECT_EQ(SaltRoot("").ToHex(), "9b486d174842526781bf0ff694a665fb");
  EXPECT_EQ(SaltRoot("tenant-a").ToHex(), "54e4ef4e47101c05e729610da46b77f6");
  const std::vector<BlockHash> chain = ChainHashes("tenant-a", VectorTokens(), 16);
  ASSERT_EQ(chain.size(), 3u);  // 16 + 16 + 8 (partial)
  EXPECT_EQ(chain[0].ToHex(), "0fa9a22c8a6eff95457127dd12e2f6ed");
  EXPECT_EQ(chain[1].ToHex(), "088fc7c6ae715683c86fe59bb6c2de7b");
  EXPECT_EQ(chain[2].ToHex(), "b5f49954f6a3b240e8b4bbc3c0919097");
  const std::vector<TokenId> minus_one = {-1};
  EXPECT_EQ(ChainBlock(BlockHash{}, minus_one).ToHex(), "ad2a09ec50d5e389226c0e4e24c8e409");
}

// The documented byte layout, rebuilt here by hand, gives the same hashes.
TEST(BlockHashTest, MatchesDocumentedByteLayout) {
  const std::string salt = "tenant-a";
  const std::string root_input = "asymcache.v1" + salt;
  const XXH128_hash_t root = XXH3_128bits(root_input.data(), root_input.size());
  EXPECT_EQ(SaltRoot(salt), (BlockHash{root.low64, root.high64}));

  const std::vector<TokenId> tokens = VectorTokens();
  BlockHash parent{root.low64, root.high64};
  const std::vector<BlockHash> chain = ChainHashes(salt, tokens, 16);
  for (size_t block = 0; block * 16 < tokens.size(); ++block) {
    std::vector<unsigned char> bytes;
    auto put = [&bytes](uint64_t v, int n) {
      for (int i = 0; i < n; ++i) bytes.push_back(static_cast<unsigned char>(v >> (8 * i)));
    };
    put(parent.lo, 8);
    put(parent.hi, 8);
    const size_t count = std::min<size_t>(16, tokens.size() - block * 16);
    put(count, 4);
    for (size_t i = 0; i < count; ++i) put(static_cast<uint32_t>(tokens[block * 16 + i]), 4);
    const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
    const BlockHash expected{h.low64, h.high64};
    EXPECT_EQ(chain[block], expected) << "block " << block;
    parent = expected;
  }
}

TEST(BlockHashTest, SaltPositionAndLengthDistinguishBlocks) {
  const std::vector<TokenId> tokens = VectorTokens();
  const auto a = ChainHashes("tenant-a", tokens, 16);
  const auto b = ChainHashes("tenant-b", tokens, 16);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NE(a[i], b[i]) << i;
  // Same tokens at another depth hash differently (the chain carries the prefix).
  std::vector<TokenId> repeated(32, 5);
  const auto r = ChainHashes("s", repeated, 16);
  EXPECT_NE(r[0], r[1]);
  // A partial block differs from the full block that extends it.
  std::vector<TokenId> partial(tokens.begin(), tokens.begin() + 8);
  std::vector<TokenId> full(tokens.begin(), tokens.begin() + 16);
  EXPECT_NE(ChainHashes("s", partial, 16)[0], ChainHashes("s", full, 16)[0]);
  // A trailing zero token is not the same as no token.
  std::vector<TokenId> with_zero = partial;
  with_zero.push_back(0);
  EXPECT_NE(ChainHashes("s", partial, 16)[0], ChainHashes("s", with_zero, 16)[0]);
  // Empty context: no blocks.
  EXPECT_TRUE(ChainHashes("s", {}, 16).empty());
  // Blocks larger than the stack buffer take the heap path and still chain.
  std::vector<TokenId> big(1000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<TokenId>(i);
  const auto big_chain = ChainHashes("s", big, 300);
  ASSERT_EQ(big_chain.size(), 4u);
  EXPECT_EQ(big_chain[1], ChainBlock(big_chain[0], absl::MakeConstSpan(big).subspan(300, 300)));
}

TEST(HashChainTest, IncrementalEqualsOneShotForRandomSplits) {
  const uint32_t seed = std::random_device{}();
  std::cout << "HashChainTest seed " << seed << "\n";
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 50; ++trial) {
    const int block_tokens = 1 + static_cast<int>(rng() % 20);
    std::vector<TokenId> tokens(rng() % 300);
    for (TokenId& t : tokens) t = static_cast<TokenId>(rng());
    HashChain chain("salt-" + std::to_string(trial), block_tokens);
    size_t done = 0;
    while (done < tokens.size()) {
      const size_t step = std::min<size_t>(tokens.size() - done, rng() % 40);
      chain.Extend(absl::MakeConstSpan(tokens).subspan(done, step));
      done += step;
      const auto expected = ChainHashes(chain.salt(), absl::MakeConstSpan(tokens).first(done),
                                        block_tokens);
      ASSERT_EQ(std::vector<BlockHash>(chain.hashes().begin(), chain.hashes().end()), expected)
          << "trial " << trial << " after " << done << " tokens";
      ASSERT_EQ(chain.token_count(), static_cast<int64_t>(done));
    }
    if (!chain.hashes().empty()) {
      EXPECT_EQ(chain.ParentOf(0), SaltRoot(chain.salt()));
    }
    for (size_t i = 1; i < chain.hashes().size(); ++i) EXPECT_EQ(chain.ParentOf(i), chain.hashes()[i - 1]);
  }
}

TEST(HashChainTest, IsPrefixOfComparesEveryToken) {
  HashChain chain("s", 4);
  std::vector<TokenId> tokens = {1, 2, 3, 4, 5, 6};
  EXPECT_TRUE(chain.IsPrefixOf(tokens));  // empty chain
  chain.Extend(tokens);
  EXPECT_TRUE(chain.IsPrefixOf(tokens));
  std::vector<TokenId> longer = {1, 2, 3, 4, 5, 6, 7};
  EXPECT_TRUE(chain.IsPrefixOf(longer));
  std::vector<TokenId> edited = {9, 2, 3, 4, 5, 6, 7};  // first token differs
  EXPECT_FALSE(chain.IsPrefixOf(edited));
  std::vector<TokenId> shorter = {1, 2, 3};
  EXPECT_FALSE(chain.IsPrefixOf(shorter));
}

TEST(HashChainTest, FewCollisionsOverManyBlocks) {
  absl::flat_hash_set<BlockHash> seen;
  std::vector<TokenId> tokens(16 * 5000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(i % 7);
  for (const BlockHash& h : ChainHashes("s", tokens, 16)) EXPECT_TRUE(seen.insert(h).second);
}

}  // namespace
}  // namespace asymcache
