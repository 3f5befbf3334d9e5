// End-to-end: Client::ImportBlocks between two real in-process daemons — the
// importing daemon fetches blocks from its peer (ExportBlocks + UCX read +
// ReleaseExport) and indexes them; the bytes written through the exporter's
// pool mapping arrive in the importer's pool.
#include <vector>

#include "cachecore/block_hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {
namespace {

using ::testing::ElementsAre;

class ClientTransferTest : public DaemonFixture {
 protected:
  void TearDown() override {
    importer_client_.reset();
    if (importer_ != nullptr) importer_->Shutdown();
    importer_.reset();
    DaemonFixture::TearDown();
  }

  std::unique_ptr<CacheDaemon> importer_;
  std::unique_ptr<Client> importer_client_;
};

uint8_t Pattern(int32_t layer, int64_t block_index, int64_t byte) {
  return static_cast<uint8_t>((layer * 37 + block_index * 101 + byte * 3 + 5) & 0xff);
}

TEST_F(ClientTransferTest, ImportCopiesBlocksAndTheirBytesFromThePeer) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));  // the exporter
  absl::StatusOr<std::unique_ptr<CacheDaemon>> importer =
      CacheDaemon::Start(SmallDaemonOptions(16));
  ASSERT_TRUE(importer.ok()) << importer.status();
  importer_ = *std::move(importer);
  importer_client_ = ConnectClient(importer_->local_address());
  ASSERT_NE(importer_client_, nullptr);

  const int B = TinyBlockTokens();
  const std::vector<TokenId> tokens = Tokens(2 * B + 8, 1);
  const std::vector<BlockHash> hashes = ChainHashes("s", tokens, B);

  // The exporter's engine writes the context's K/V and commits it.
  ASSERT_OK_AND_ASSIGN(AttachedPool exporter_pool, client_->AttachPool());
  const daemon::PoolLayout& layout = exporter_pool.layout();
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("s", 1, tokens));
  for (size_t k = 0; k < step.plan.page_ids.size(); ++k) {
    for (int32_t layer = 0; layer < layout.num_layers; ++layer) {
      uint8_t* piece = exporter_pool.Piece(layer, step.plan.page_ids[k]);
      for (int64_t i = 0; i < layout.piece_bytes(); ++i) piece[i] = Pattern(layer, k, i);
    }
  }
  ASSERT_OK(client_->CommitStep(step.lease_id));
  ASSERT_OK(client_->ReleaseStep(step.lease_id));

  // Import everything plus one hash the peer never held.
  std::vector<BlockHash> wanted = hashes;
  wanted.push_back(BlockHash{.lo = 12345, .hi = 678});
  ASSERT_OK_AND_ASSIGN(ImportSummary imported,
                       importer_client_->ImportBlocks(daemon_->local_address(), wanted,
                                                      absl::Seconds(15)));
  EXPECT_EQ(imported.imported, 3);
  EXPECT_EQ(imported.already_resident, 0);
  EXPECT_EQ(imported.not_on_peer, 1);
  EXPECT_EQ(imported.bytes, 3 * layout.block_bytes());

  ASSERT_OK_AND_ASSIGN(std::vector<std::optional<int64_t>> resident,
                       importer_client_->Lookup(hashes));
  EXPECT_THAT(resident, ElementsAre(std::optional<int64_t>(0), std::optional<int64_t>(B),
                                    std::optional<int64_t>(2 * B)));
  DaemonStats stats;
  ASSERT_OK_AND_ASSIGN(stats, importer_client_->GetStats());
  EXPECT_EQ(stats.indexed_blocks, 3);
  EXPECT_EQ(stats.in_transfer_blocks, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
  // The exporter's export pins are gone.
  EXPECT_EQ(Stats().active_exports, 0);
  EXPECT_EQ(Stats().pinned_blocks, 0);

  // The bytes arrived: a follow-up plan on the importer reads the imported
  // pages (hits them), and they hold what the exporter's engine wrote.
  std::vector<TokenId> longer = tokens;
  for (int i = 0; i < B; ++i) longer.push_back((300 + i) % kTinyVocab);
  ASSERT_OK_AND_ASSIGN(AttachedPool importer_pool, importer_client_->AttachPool());
  ASSERT_OK_AND_ASSIGN(LeasedStep follow, importer_client_->PlanStep("s", 9, longer));
  EXPECT_EQ(follow.plan.hit_tokens, 2 * B);
  int64_t mismatches = 0;
  for (size_t k = 0; k < 2; ++k) {
    ASSERT_TRUE(follow.plan.page_resident[k]);
    for (int32_t layer = 0; layer < layout.num_layers; ++layer) {
      const uint8_t* piece = importer_pool.Piece(layer, follow.plan.page_ids[k]);
      for (int64_t i = 0; i < layout.piece_bytes(); ++i) mismatches += piece[i] != Pattern(layer, k, i);
    }
  }
  EXPECT_EQ(mismatches, 0);
  ASSERT_OK(importer_client_->ReleaseStep(follow.lease_id));

  // Again: nothing to move.
  ASSERT_OK_AND_ASSIGN(imported, importer_client_->ImportBlocks(daemon_->local_address(), hashes,
                                                                absl::Seconds(15)));
  EXPECT_EQ(imported.imported, 0);
  EXPECT_EQ(imported.already_resident, 3);
}

TEST_F(ClientTransferTest, ImportFromNoPeerIsUnavailableAndChangesNothing) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));
  const std::string before = StateOf(Stats());
  // Port 1 on loopback: nothing listens there.
  const absl::StatusOr<ImportSummary> imported = client_->ImportBlocks(
      "127.0.0.1:1", ChainHashes("s", Tokens(16, 1), TinyBlockTokens()), absl::Seconds(15));
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kUnavailable) << imported.status();
  EXPECT_EQ(StateOf(Stats()), before);
  EXPECT_EQ(client_->ImportBlocks("", {BlockHash{}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asymcache::testing
