#include "services/daemon/event_hub.h"

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;

BlockHash H(uint64_t n) { return BlockHash{n, n * 31 + 7}; }

class Publisher {
 public:
  explicit Publisher(KvEventHub* hub) : hub_(hub) {}
  void Stored(uint64_t n, int64_t pos, BlockId block = 7) {
    hub_->Publish({KvEvent::Kind::kStored, H(n), pos, ++seq_, block});
  }
  void Removed(uint64_t n, int64_t pos, BlockId block = 7) {
    hub_->Publish({KvEvent::Kind::kRemoved, H(n), pos, ++seq_, block});
  }
  uint64_t seq() const { return seq_; }

 private:
  KvEventHub* hub_;
  uint64_t seq_ = 0;
};

KvEventBatchView NextOrDie(KvEventHub::Watcher& w) {
  absl::StatusOr<std::optional<KvEventBatchView>> b = w.Next(absl::Seconds(5));
  EXPECT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b.ok() && b->has_value());
  return b.ok() && b->has_value() ? **b : KvEventBatchView{};
}

TEST(KvEventHubOptions, Validate) {
  EXPECT_TRUE(KvEventHubOptions{}.Validate().ok());
  KvEventHubOptions o;
  o.history = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_watchers = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_batch_events = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvEventHub, LiveEventsInOrderFromNow) {
  KvEventHub hub({});
  Publisher pub(&hub);
  pub.Stored(1, 0);  // before the watcher: not delivered
  auto w = hub.Watch(0, false);
  ASSERT_TRUE(w.ok());
  pub.Stored(2, 16);
  pub.Removed(1, 0);
  KvEventBatchView b = NextOrDie(**w);
  EXPECT_FALSE(b.snapshot_begin);
  EXPECT_EQ(b.sequence_number, 3u);
  EXPECT_THAT(b.events, ElementsAre(Field(&KvEvent::sequence_number, 2u),
                                    Field(&KvEvent::sequence_number, 3u)));
  EXPECT_EQ(b.events[1].kind, KvEvent::Kind::kRemoved);
  // Nothing more: a timeout is an empty optional, not an error.
  absl::StatusOr<std::optional<KvEventBatchView>> none = (*w)->Next(absl::Milliseconds(10));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST(KvEventHub, SnapshotIsTheIndexAsOfItsSequenceThenLive) {
  KvEventHub hub({});
  Publisher pub(&hub);
  pub.Stored(1, 0);
  pub.Stored(2, 16);
  pub.Stored(3, 32);
  pub.Removed(2, 16);
  auto w = hub.Watch(0, true);
  ASSERT_TRUE(w.ok());
  KvEventBatchView snap = NextOrDie(**w);
  EXPECT_TRUE(snap.snapshot_begin);
  EXPECT_TRUE(snap.snapshot_end);
  EXPECT_EQ(snap.sequence_number, 4u);
  ASSERT_EQ(snap.events.size(), 2u);
  EXPECT_EQ(snap.events[0].hash, H(1));  // position order
  EXPECT_EQ(snap.events[1].hash, H(3));
  EXPECT_EQ(snap.events[1].position, 32);
  pub.Stored(4, 48);
  KvEventBatchView live = NextOrDie(**w);
  EXPECT_FALSE(live.snapshot_begin);
  ASSERT_EQ(live.events.size(), 1u);
  EXPECT_EQ(live.events[0].sequence_number, 5u);
  EXPECT_EQ(hub.indexed_blocks(), 3);
}

TEST(KvEventHub, StaleRemovedOfAnOlderCopyLeavesTheMirrorAlone) {
  KvEventHub hub({});
  Publisher pub(&hub);
  pub.Stored(1, 0, /*block=*/3);
  // Block 3 is evicted; before its REMOVED is published, block 9 stores the
  // same hash again. The REMOVED of block 3 arrives last.
  pub.Stored(1, 0, /*block=*/9);
  pub.Removed(1, 0, /*block=*/3);
  EXPECT_EQ(hub.indexed_blocks(), 1);
  auto w = hub.Watch(0, true);
  ASSERT_TRUE(w.ok());
  KvEventBatchView snap = NextOrDie(**w);
  ASSERT_EQ(snap.events.size(), 1u);
  EXPECT_EQ(snap.events[0].block, 9);
  // The current copy's REMOVED does remove it.
  pub.Removed(1, 0, /*block=*/9);
  EXPECT_EQ(hub.indexed_blocks(), 0);
  KvEventBatchView live = NextOrDie(**w);
  ASSERT_EQ(live.events.size(), 1u);
  EXPECT_EQ(live.events[0].block, 9);  // delivered with its block id
}

TEST(KvEventHub, SnapshotComesInBoundedBatches) {
  KvEventHubOptions o;
  o.max_batch_events = 3;
  KvEventHub hub(o);
  Publisher pub(&hub);
  for (int i = 0; i < 7; ++i) pub.Stored(i + 1, i * 16);
  auto w = hub.Watch(0, true);
  ASSERT_TRUE(w.ok());
  KvEventBatchView a = NextOrDie(**w), b = NextOrDie(**w), c = NextOrDie(**w);
  EXPECT_TRUE(a.snapshot_begin);
  EXPECT_FALSE(a.snapshot_end);
  EXPECT_FALSE(b.snapshot_begin);
  EXPECT_FALSE(b.snapshot_end);
  EXPECT_TRUE(c.snapshot_end);
  EXPECT_EQ(a.events.size() + b.events.size() + c.events.size(), 7u);
  EXPECT_EQ((*w)->cursor(), 7u);
}

TEST(KvEventHub, ResumeAfterSequenceReplaysTheRest) {
  KvEventHub hub({});
  Publisher pub(&hub);
  for (int i = 0; i < 5; ++i) pub.Stored(i + 1, i * 16);
  auto w = hub.Watch(3, false);
  ASSERT_TRUE(w.ok());
  KvEventBatchView b = NextOrDie(**w);
  EXPECT_FALSE(b.snapshot_begin);
  EXPECT_THAT(b.events, ElementsAre(Field(&KvEvent::sequence_number, 4u),
                                    Field(&KvEvent::sequence_number, 5u)));
}

TEST(KvEventHub, ResumePointOutOfTheRingOrInTheFutureGetsASnapshot) {
  KvEventHubOptions o;
  o.history = 2;
  KvEventHub hub(o);
  Publisher pub(&hub);
  for (int i = 0; i < 5; ++i) pub.Stored(i + 1, i * 16);
  auto old = hub.Watch(1, false);  // events 2..3 are gone
  ASSERT_TRUE(old.ok());
  KvEventBatchView b = NextOrDie(**old);
  EXPECT_TRUE(b.snapshot_begin);
  EXPECT_EQ(b.events.size(), 5u);
  auto future = hub.Watch(99, false);
  ASSERT_TRUE(future.ok());
  EXPECT_TRUE(NextOrDie(**future).snapshot_begin);
}

TEST(KvEventHub, WatcherThatFallsBehindTheRingResynchronizes) {
  KvEventHubOptions o;
  o.history = 4;
  KvEventHub hub(o);
  Publisher pub(&hub);
  auto w = hub.Watch(0, false);
  ASSERT_TRUE(w.ok());
  for (int i = 0; i < 10; ++i) pub.Stored(i + 1, i * 16);
  pub.Removed(10, 144);
  KvEventBatchView b = NextOrDie(**w);
  EXPECT_TRUE(b.snapshot_begin);
  EXPECT_TRUE(b.snapshot_end);
  EXPECT_EQ(b.sequence_number, 11u);
  EXPECT_EQ(b.events.size(), 9u);  // blocks 1..9 still stored
}

TEST(KvEventHub, MaxWatchersAndClose) {
  KvEventHubOptions o;
  o.max_watchers = 1;
  KvEventHub hub(o);
  auto first = hub.Watch(0, false);
  ASSERT_TRUE(first.ok());
  auto second = hub.Watch(0, false);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(hub.watchers(), 1);

  Publisher pub(&hub);
  pub.Stored(1, 0);
  // A reader blocked in Next() is woken by Close() after draining.
  std::thread closer([&hub]() {
    absl::SleepFor(absl::Milliseconds(50));
    hub.Close();
  });
  KvEventBatchView b = NextOrDie(**first);  // the event published before Close
  EXPECT_EQ(b.events.size(), 1u);
  absl::StatusOr<std::optional<KvEventBatchView>> end = (*first)->Next(absl::Seconds(10));
  closer.join();
  EXPECT_EQ(end.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(hub.Watch(0, false).status().code(), absl::StatusCode::kUnavailable);
  first->reset();
  EXPECT_EQ(hub.watchers(), 0);
}

}  // namespace
}  // namespace asymcache
