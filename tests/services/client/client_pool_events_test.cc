// End-to-end: AttachPool (two clients map the same shared-memory pool and see
// each other's writes) and WatchEvents (snapshot, live stored/removed events in
// sequence order, resume after a sequence number, cancel, deadline).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cachecore/block_hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "services/daemon/daemon_state.h"
#include "services/daemon/pool_memory.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::UnorderedElementsAreArray;

// ------------------------------------------------------------------ pool

class ClientPoolTest : public DaemonFixture {};

TEST_F(ClientPoolTest, TwoClientsShareThePoolThroughTheirOwnMappings) {
  constexpr int64_t kPoolBlocks = 8;
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(kPoolBlocks)));
  const ModelConfig tiny = ModelConfig::Named("tiny").value();

  ASSERT_OK_AND_ASSIGN(AttachedPool writer_pool, client_->AttachPool(tiny));
  EXPECT_EQ(writer_pool.backend(), "host");
  EXPECT_EQ(writer_pool.model().num_layers, tiny.num_layers);
  EXPECT_EQ(writer_pool.model().block_tokens, tiny.block_tokens);
  const daemon::PoolLayout& layout = writer_pool.layout();
  EXPECT_EQ(layout.num_blocks, kPoolBlocks);
  EXPECT_EQ(layout.num_layers, tiny.num_layers);
  EXPECT_EQ(layout.block_bytes(), tiny.KvBytesPerBlock());
  ASSERT_NE(writer_pool.base(), nullptr);

  // The engine's side of a step: write K/V of every allocated page, commit.
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("s", 1, Tokens(40, 1)));
  ASSERT_EQ(step.plan.allocated.size(), 3u);
  auto pattern = [](int32_t layer, BlockId block, int64_t byte) {
    return static_cast<uint8_t>((layer * 131 + block * 31 + byte * 7 + 1) & 0xff);
  };
  for (BlockId block : step.plan.allocated) {
    for (int32_t layer = 0; layer < layout.num_layers; ++layer) {
      uint8_t* piece = writer_pool.Piece(layer, block);
      for (int64_t i = 0; i < layout.piece_bytes(); ++i) piece[i] = pattern(layer, block, i);
    }
  }
  ASSERT_OK(client_->CommitStep(step.lease_id));
  ASSERT_OK(client_->ReleaseStep(step.lease_id));

  // Another client, another mapping, the same bytes.
  std::unique_ptr<Client> reader = ConnectClient(daemon_->local_address());
  ASSERT_NE(reader, nullptr);
  ASSERT_OK_AND_ASSIGN(AttachedPool reader_pool, reader->AttachPool());
  ASSERT_EQ(reader_pool.layout(), layout);
  EXPECT_NE(reader_pool.base(), writer_pool.base());  // its own mmap
  int64_t mismatches = 0;
  for (BlockId block : step.plan.allocated) {
    for (int32_t layer = 0; layer < layout.num_layers; ++layer) {
      const uint8_t* piece = reader_pool.Piece(layer, block);
      for (int64_t i = 0; i < layout.piece_bytes(); ++i) {
        mismatches += piece[i] != pattern(layer, block, i);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);

  // And the daemon's own pool memory holds them too (it is one shm object).
  daemon::PoolMemory& daemon_pool = daemon_->state().pool();
  ASSERT_EQ(daemon_pool.layout(), layout);
  const BlockId first = step.plan.allocated[0];
  EXPECT_EQ(std::memcmp(static_cast<uint8_t*>(daemon_pool.base()) + layout.PieceOffset(1, first),
                        reader_pool.Piece(1, first), layout.piece_bytes()),
            0);

  // A mapping outlives the client that made it.
  reader.reset();
  EXPECT_EQ(reader_pool.Piece(0, first)[0], pattern(0, first, 0));
}

// ------------------------------------------------------------------ events

class ClientEventsTest : public DaemonFixture {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16))); }

  // Reads batches until `count` live events arrived (bounded by the stream's
  // deadline); appends them to *events.
  void ReadEvents(EventStream& stream, size_t count, std::vector<KvEvent>* events) {
    while (events->size() < count) {
      absl::StatusOr<std::optional<KvEventBatch>> batch = stream.Next();
      ASSERT_TRUE(batch.ok()) << batch.status();
      ASSERT_TRUE(batch->has_value()) << "stream ended";
      EXPECT_FALSE((*batch)->snapshot_begin);
      EXPECT_FALSE((*batch)->snapshot_end);
      ASSERT_FALSE((*batch)->events.empty());
      EXPECT_EQ((*batch)->sequence_number, (*batch)->events.back().sequence_number);
      for (const KvEvent& event : (*batch)->events) events->push_back(event);
    }
  }

  static WatchOptions Bounded(uint64_t after_sequence, bool snapshot) {
    WatchOptions options;
    options.after_sequence = after_sequence;
    options.snapshot = snapshot;
    options.stream_timeout = absl::Seconds(15);
    return options;
  }
};

std::vector<BlockHash> HashesOf(const std::vector<KvEvent>& events) {
  std::vector<BlockHash> hashes;
  for (const KvEvent& event : events) hashes.push_back(event.hash);
  return hashes;
}

TEST_F(ClientEventsTest, SnapshotThenLiveEventsThenResume) {
  const int B = TinyBlockTokens();
  const std::vector<TokenId> a = Tokens(2 * B + 8, 1);
  const StepPlan plan_a = RunStep("a", 1, a);  // 3 blocks stored: events 1..3
  ASSERT_EQ(Stats().last_event_sequence, 3u);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EventStream> stream,
                       client_->WatchEvents(Bounded(0, /*snapshot=*/true)));
  // Snapshot: the indexed blocks as of event 3, sequence numbers 0.
  std::vector<KvEvent> snapshot;
  std::string instance;
  bool begun = false;
  while (true) {
    ASSERT_OK_AND_ASSIGN(std::optional<KvEventBatch> batch, stream->Next());
    ASSERT_TRUE(batch.has_value());
    if (!begun) {
      EXPECT_TRUE(batch->snapshot_begin);
      begun = true;
      instance = batch->daemon_instance;
    }
    EXPECT_EQ(batch->daemon_instance, instance);
    for (const KvEvent& event : batch->events) {
      EXPECT_EQ(event.kind, KvEvent::Kind::kStored);
      EXPECT_EQ(event.sequence_number, 0u);
      snapshot.push_back(event);
    }
    if (batch->snapshot_end) {
      EXPECT_EQ(batch->sequence_number, 3u);
      break;
    }
  }
  EXPECT_FALSE(instance.empty());
  EXPECT_EQ(instance, Stats().daemon_instance);
  EXPECT_THAT(HashesOf(snapshot), UnorderedElementsAreArray(ChainHashes("a", a, B)));

  // Live: B's two blocks stored (4, 5), then A's three removed (6, 7, 8).
  const std::vector<TokenId> b = Tokens(2 * B, 2);
  RunStep("b", 2, b);
  ASSERT_OK_AND_ASSIGN(int64_t invalidated, client_->InvalidateBlocks(plan_a.page_ids));
  EXPECT_EQ(invalidated, 3);
  std::vector<KvEvent> live;
  ASSERT_NO_FATAL_FAILURE(ReadEvents(*stream, 5, &live));
  ASSERT_EQ(live.size(), 5u);
  for (size_t i = 0; i < live.size(); ++i) EXPECT_EQ(live[i].sequence_number, 4 + i);
  EXPECT_EQ(live[0].kind, KvEvent::Kind::kStored);
  EXPECT_EQ(live[1].kind, KvEvent::Kind::kStored);
  EXPECT_THAT((std::vector<BlockHash>{live[0].hash, live[1].hash}),
              UnorderedElementsAreArray(ChainHashes("b", b, B)));
  std::vector<int64_t> removed_positions;
  for (size_t i = 2; i < 5; ++i) {
    EXPECT_EQ(live[i].kind, KvEvent::Kind::kRemoved);
    removed_positions.push_back(live[i].position);
  }
  EXPECT_THAT(HashesOf({live.begin() + 2, live.end()}),
              UnorderedElementsAreArray(ChainHashes("a", a, B)));
  std::sort(removed_positions.begin(), removed_positions.end());
  EXPECT_THAT(removed_positions, ElementsAre(0, B, 2 * B));
  EXPECT_EQ(stream->last_sequence(), 8u);
  EXPECT_EQ(Stats().last_event_sequence, 8u);

  // Cancel ends the stream with CANCELLED, and stays ended.
  stream->Cancel();
  absl::StatusOr<std::optional<KvEventBatch>> after_cancel = stream->Next();
  // Batches already in flight may still arrive; then the end.
  while (after_cancel.ok() && after_cancel->has_value()) after_cancel = stream->Next();
  EXPECT_EQ(after_cancel.status().code(), absl::StatusCode::kCancelled) << after_cancel.status();
  EXPECT_EQ(stream->Next().status().code(), absl::StatusCode::kCancelled);

  // Resume after event 5: the daemon replays 6, 7, 8 from its history.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EventStream> resumed,
                       client_->WatchEvents(Bounded(5, /*snapshot=*/false)));
  std::vector<KvEvent> replay;
  ASSERT_NO_FATAL_FAILURE(ReadEvents(*resumed, 3, &replay));
  ASSERT_EQ(replay.size(), 3u);
  for (size_t i = 0; i < replay.size(); ++i) {
    EXPECT_EQ(replay[i].sequence_number, 6 + i);
    EXPECT_EQ(replay[i].kind, KvEvent::Kind::kRemoved);
    EXPECT_EQ(replay[i].hash, live[2 + i].hash);
  }
  // ... and then carries on live.
  RunStep("c", 3, Tokens(B, 3));
  ASSERT_NO_FATAL_FAILURE(ReadEvents(*resumed, 4, &replay));
  EXPECT_EQ(replay[3].sequence_number, 9u);
  EXPECT_EQ(replay[3].kind, KvEvent::Kind::kStored);
  EXPECT_EQ(replay[3].position, 0);
}

TEST_F(ClientEventsTest, IdleStreamHitsItsDeadline) {
  WatchOptions options;
  options.stream_timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<EventStream> stream, client_->WatchEvents(options));
  absl::StatusOr<std::optional<KvEventBatch>> next = stream->Next();
  EXPECT_EQ(next.status().code(), absl::StatusCode::kDeadlineExceeded) << next.status();
}

}  // namespace
}  // namespace asymcache::testing
