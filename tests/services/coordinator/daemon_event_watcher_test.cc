// DaemonEventWatcher against (1) a REAL in-process cache daemon: committed
// blocks appear in the index (snapshot on connect, then live), evictions and
// invalidations remove them, a daemon restarted on the same address (new
// instance) drops the old entries; and (2) a scripted CacheDaemon gRPC
// server on 127.0.0.1 that breaks streams on cue: resume after the applied
// sequence number, duplicate events skipped, instance change mid-stream,
// a snapshot broken in the middle, reconnect backoff; and (3) Stop() within
// a generous bound in every state: streaming, backing off, connecting to an
// address that drops connects, and connected to a peer that never answers
// (tests/services/client/silent_listener.h), plus the bound on each connect.
#include "services/coordinator/daemon_event_watcher.h"

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "cachecore/block_hash.h"
#include "gmock/gmock.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "services/common/proto_convert.h"
#include "tests/services/client/silent_listener.h"
#include "tests/services/coordinator/coordinator_test_util.h"

namespace asymcache {
namespace {

using ::asymcache::testing::SilentListener;
using ::asymcache::testing::TestDaemon;
using ::asymcache::testing::Tokens;
using ::asymcache::testing::WaitUntil;

constexpr MemberSlot kSlot = 3;
// Bound of a Stop() that must not wait for the network: far above a prompt
// stop (milliseconds), far below the connect it must cut short (gRPC's 20 s
// connect timeout, or the 30 s connect_timeout the tests set).
constexpr absl::Duration kStopBound = absl::Seconds(5);

// Stops `w` and checks that it returned within kStopBound.
void ExpectPromptStop(DaemonEventWatcher& w) {
  const absl::Time start = absl::Now();
  w.Stop();
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, kStopBound) << "Stop() took " << took;
  EXPECT_FALSE(w.connected());
}

std::unique_ptr<BlockLocationIndex> NewIndex() {
  return BlockLocationIndex::Create(BlockLocationIndexOptions{}).value();
}

std::unique_ptr<DaemonEventWatcher> Watch(const std::string& address, BlockLocationIndex* index) {
  DaemonEventWatcherOptions o;
  o.member_id = "d";
  o.address = address;
  o.slot = kSlot;
  o.backoff_initial = absl::Milliseconds(10);
  o.backoff_max = absl::Milliseconds(50);
  absl::StatusOr<std::unique_ptr<DaemonEventWatcher>> w =
      DaemonEventWatcher::Start(o, index, nullptr);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? *std::move(w) : nullptr;
}

// The index entries of kSlot for `hashes`: block id per hash, -1 when absent.
std::vector<BlockId> IndexedBlocks(const BlockLocationIndex& index,
                                   const std::vector<BlockHash>& hashes) {
  std::vector<BlockHolders> holders;
  index.Lookup(hashes, &holders);
  std::vector<BlockId> out;
  for (const BlockHolders& h : holders) {
    BlockId id = -1;
    for (const BlockLocation& l : h) {
      if (l.member == kSlot) id = l.block;
    }
    out.push_back(id);
  }
  return out;
}

// Waits until the watcher has applied everything the daemon emitted.
bool CaughtUp(TestDaemon& d, const DaemonEventWatcher& w) {
  return WaitUntil([&] {
    absl::StatusOr<DaemonStats> stats = d.client->GetStats();
    return stats.ok() && w.connected() && w.applied_sequence() == stats->last_event_sequence;
  });
}

TEST(DaemonEventWatcherTest, OptionsAreValidated) {
  auto index = NewIndex();
  DaemonEventWatcherOptions o;
  o.member_id = "d";
  o.address = "127.0.0.1:1";
  o.slot = 1 << 20;
  EXPECT_EQ(DaemonEventWatcher::Start(o, index.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.slot = 0;
  EXPECT_EQ(DaemonEventWatcher::Start(o, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.backoff_initial = absl::Seconds(10);
  EXPECT_EQ(DaemonEventWatcher::Start(o, index.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = DaemonEventWatcherOptions{};
  o.address = "127.0.0.1:1";
  EXPECT_EQ(DaemonEventWatcher::Start(o, index.get()).status().code(),
            absl::StatusCode::kInvalidArgument);  // no member id
  o.member_id = "d";
  for (absl::Duration bad : {absl::ZeroDuration(), absl::InfiniteDuration()}) {
    o.connect_timeout = bad;
    absl::StatusOr<std::unique_ptr<DaemonEventWatcher>> w = DaemonEventWatcher::Start(o, index.get());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(w.status().message(), ::testing::HasSubstr("connect_timeout"));
  }
}

TEST(DaemonEventWatcherTest, SnapshotThenLiveEventsFromARealDaemon) {
  TestDaemon d = TestDaemon::Start("d");
  ASSERT_NE(d.client, nullptr);
  const int B = ::asymcache::testing::TinyBlockTokens();
  // Blocks committed before the watcher starts arrive in the snapshot.
  const std::vector<TokenId> before = Tokens(4 * B, 1);
  const std::vector<BlockId> before_ids = d.Commit("s", 1, before);
  auto index = NewIndex();
  std::unique_ptr<DaemonEventWatcher> w = Watch(d.daemon->local_address(), index.get());
  ASSERT_TRUE(CaughtUp(d, *w));
  EXPECT_EQ(w->snapshots(), 1);
  EXPECT_EQ(IndexedBlocks(*index, ChainHashes("s", before, B)), before_ids);
  EXPECT_FALSE(w->instance().empty());
  EXPECT_EQ(w->instance(), d.client->GetStats()->daemon_instance);

  // Live: a new context (salt differs: other hashes), positions included.
  const std::vector<TokenId> live = Tokens(3 * B + 5, 2);  // partial last block
  const std::vector<BlockId> live_ids = d.Commit("t", 2, live);
  ASSERT_TRUE(CaughtUp(d, *w));
  const std::vector<BlockHash> live_hashes = ChainHashes("t", live, B);
  EXPECT_EQ(IndexedBlocks(*index, live_hashes), live_ids);
  std::vector<BlockHolders> holders;
  index->Lookup(live_hashes, &holders);
  for (size_t i = 0; i < holders.size(); ++i) {
    ASSERT_EQ(holders[i].size(), 1u);
    EXPECT_EQ(holders[i][0].position, static_cast<int64_t>(i) * B);
  }
  EXPECT_EQ(index->MemberEntries(kSlot), 8);
  EXPECT_EQ(index->MemberEntries(kSlot), d.client->GetStats()->indexed_blocks);
  EXPECT_EQ(w->reconnects(), 0);
  EXPECT_TRUE(w->last_error().ok());
}

TEST(DaemonEventWatcherTest, InvalidationsAndEvictionsRemoveEntries) {
  TestDaemon d = TestDaemon::Start("d", /*pool_blocks=*/16);
  ASSERT_NE(d.client, nullptr);
  const int B = ::asymcache::testing::TinyBlockTokens();
  auto index = NewIndex();
  std::unique_ptr<DaemonEventWatcher> w = Watch(d.daemon->local_address(), index.get());
  const std::vector<TokenId> first = Tokens(4 * B, 1);
  const std::vector<BlockId> first_ids = d.Commit("s", 1, first);
  ASSERT_TRUE(CaughtUp(d, *w));
  ASSERT_EQ(index->MemberEntries(kSlot), 4);

  // Invalidate two blocks: their entries go.
  ASSERT_TRUE(d.client->InvalidateBlocks({first_ids[1], first_ids[3]}).ok());
  ASSERT_TRUE(CaughtUp(d, *w));
  EXPECT_EQ(IndexedBlocks(*index, ChainHashes("s", first, B)),
            (std::vector<BlockId>{first_ids[0], -1, first_ids[2], -1}));

  // Overfill the 16-block pool: the daemon evicts, the index follows.
  for (int seq = 2; seq < 8; ++seq) d.Commit("s", seq, Tokens(4 * B, seq * 10));
  ASSERT_TRUE(CaughtUp(d, *w));
  const DaemonStats stats = d.client->GetStats().value();
  EXPECT_GT(stats.evictions, 0);
  EXPECT_EQ(index->MemberEntries(kSlot), stats.indexed_blocks);
  // Every entry the index holds is resident on the daemon, where it says.
  for (int seq = 2; seq < 8; ++seq) {
    const std::vector<BlockHash> hashes = ChainHashes("s", Tokens(4 * B, seq * 10), B);
    const std::vector<BlockId> ids = IndexedBlocks(*index, hashes);
    const std::vector<std::optional<int64_t>> resident = d.client->Lookup(hashes).value();
    for (size_t i = 0; i < hashes.size(); ++i) {
      EXPECT_EQ(ids[i] != -1, resident[i].has_value()) << "seq " << seq << " block " << i;
    }
  }
}

TEST(DaemonEventWatcherTest, DaemonRestartedOnTheSameAddressDropsItsOldEntries) {
  const int B = ::asymcache::testing::TinyBlockTokens();
  TestDaemon d = TestDaemon::Start("d");
  ASSERT_NE(d.client, nullptr);
  const int port = d.daemon->grpc_port();
  auto index = NewIndex();
  std::unique_ptr<DaemonEventWatcher> w = Watch(d.daemon->local_address(), index.get());
  const std::vector<TokenId> old_tokens = Tokens(5 * B, 3);
  d.Commit("s", 1, old_tokens);
  ASSERT_TRUE(CaughtUp(d, *w));
  ASSERT_EQ(index->MemberEntries(kSlot), 5);
  const std::string old_instance = w->instance();

  d.client.reset();
  d.daemon->Shutdown();
  d.daemon.reset();
  ASSERT_TRUE(WaitUntil([&] { return !w->connected(); }));

  DaemonOptions again = ::asymcache::testing::SmallDaemonOptions(256);
  again.listen = "127.0.0.1:" + std::to_string(port);
  absl::StatusOr<std::unique_ptr<CacheDaemon>> restarted = CacheDaemon::Start(again);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  d.daemon = *std::move(restarted);
  d.client = ::asymcache::testing::ConnectClient(d.daemon->local_address());
  const std::vector<TokenId> new_tokens = Tokens(2 * B, 4);
  const std::vector<BlockId> new_ids = d.Commit("s", 1, new_tokens);
  ASSERT_TRUE(WaitUntil([&] { return w->instance() != old_instance; }));
  ASSERT_TRUE(CaughtUp(d, *w));
  EXPECT_EQ(w->instance(), d.client->GetStats()->daemon_instance);
  EXPECT_EQ(index->MemberEntries(kSlot), 2);
  EXPECT_EQ(IndexedBlocks(*index, ChainHashes("s", old_tokens, B)),
            std::vector<BlockId>(5, -1));
  EXPECT_EQ(IndexedBlocks(*index, ChainHashes("s", new_tokens, B)), new_ids);
  EXPECT_GE(w->reconnects(), 1);
}

TEST(DaemonEventWatcherTest, StopIsPromptWhileStreamingAndWhileBackingOff) {
  TestDaemon d = TestDaemon::Start("d");
  ASSERT_NE(d.client, nullptr);
  auto index = NewIndex();
  std::unique_ptr<DaemonEventWatcher> live = Watch(d.daemon->local_address(), index.get());
  ASSERT_TRUE(WaitUntil([&] { return live->connected(); }));
  ExpectPromptStop(*live);  // blocked in Next(): the cancel wakes it
  live->Stop();  // idempotent

  // Nobody listens on port 1: connect failures, backoff between attempts.
  DaemonEventWatcherOptions o;
  o.member_id = "gone";
  o.address = "127.0.0.1:1";
  o.slot = kSlot;
  o.backoff_initial = absl::Seconds(30);
  o.backoff_max = absl::Seconds(30);
  std::unique_ptr<DaemonEventWatcher> dead = DaemonEventWatcher::Start(o, index.get()).value();
  ASSERT_TRUE(WaitUntil([&] { return !dead->last_error().ok(); }));
  EXPECT_EQ(dead->last_error().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(dead->connected());
  ExpectPromptStop(*dead);  // inside a 30 s backoff: returns without waiting it out
}

// A watcher of `address` whose connect attempts would last 30 s.
std::unique_ptr<DaemonEventWatcher> WatchSlowConnect(const std::string& address,
                                                     BlockLocationIndex* index) {
  DaemonEventWatcherOptions o;
  o.member_id = "silent";
  o.address = address;
  o.slot = kSlot;
  o.connect_timeout = absl::Seconds(30);
  o.backoff_initial = absl::Seconds(30);
  o.backoff_max = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<DaemonEventWatcher>> w = DaemonEventWatcher::Start(o, index);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? *std::move(w) : nullptr;
}

TEST(DaemonEventWatcherTest, StopIsPromptWhileConnectingToAnAddressThatDropsConnects) {
  std::string skip;
  std::unique_ptr<SilentListener> listener =
      SilentListener::Start(SilentListener::Mode::kDropsConnects, &skip);
  if (listener == nullptr && !skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(listener, nullptr);
  auto index = NewIndex();
  std::unique_ptr<DaemonEventWatcher> w = WatchSlowConnect(listener->address(), index.get());
  ASSERT_NE(w, nullptr);
  // Nothing observable says "SYN sent and dropped": let the connect start.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(w->last_error().ok()) << "the first attempt ended: " << w->last_error();
  ExpectPromptStop(*w);
}

TEST(DaemonEventWatcherTest, StopIsPromptWhileAPeerThatNeverAnswersHoldsTheHandshake) {
  std::string unused;
  std::unique_ptr<SilentListener> listener =
      SilentListener::Start(SilentListener::Mode::kNeverAccepts, &unused);
  ASSERT_NE(listener, nullptr);
  auto index = NewIndex();
  std::unique_ptr<DaemonEventWatcher> w = WatchSlowConnect(listener->address(), index.get());
  ASSERT_NE(w, nullptr);
  // The TCP connection is up (queued, never accepted); the HTTP/2 handshake
  // never completes (gRPC would wait 20 s for the server's SETTINGS).
  ASSERT_TRUE(listener->HasPendingConnection(absl::Seconds(10)));
  EXPECT_TRUE(w->last_error().ok()) << "the first attempt ended: " << w->last_error();
  ExpectPromptStop(*w);
}

TEST(DaemonEventWatcherTest, EachConnectAttemptIsBounded) {
  std::string skip;
  std::unique_ptr<SilentListener> listener =
      SilentListener::Start(SilentListener::Mode::kDropsConnects, &skip);
  if (listener == nullptr && !skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(listener, nullptr);
  auto index = NewIndex();
  DaemonEventWatcherOptions o;
  o.member_id = "silent";
  o.address = listener->address();
  o.slot = kSlot;
  o.connect_timeout = absl::Milliseconds(200);
  o.backoff_initial = absl::Milliseconds(10);
  o.backoff_max = absl::Milliseconds(10);
  std::unique_ptr<DaemonEventWatcher> w = DaemonEventWatcher::Start(o, index.get()).value();
  // Attempts end (DEADLINE_EXCEEDED) and are retried, long before gRPC's own
  // 20 s connect timeout would end one.
  ASSERT_TRUE(WaitUntil([&] { return w->reconnects() >= 2; }));
  EXPECT_EQ(w->last_error().code(), absl::StatusCode::kDeadlineExceeded) << w->last_error();
  EXPECT_FALSE(w->connected());
  ExpectPromptStop(*w);
}

// ------------------------------------------------------------ scripted daemon

// What one WatchEvents call answers: these batches, then `end` (or, with
// hold, stays open until the client cancels).
struct Script {
  std::vector<v1::KvEventBatch> batches;
  bool hold = false;
  grpc::Status end = grpc::Status(grpc::StatusCode::UNAVAILABLE, "scripted break");
};

class ScriptedDaemon final : public v1::CacheDaemon::Service {
 public:
  void Push(Script s) {
    absl::MutexLock lock(&mu_);
    scripts_.push_back(std::move(s));
  }
  // The n-th WatchEvents request (0-based), waiting up to 10 s for it.
  std::optional<v1::WatchEventsRequest> Request(size_t n) {
    absl::MutexLock lock(&mu_);
    auto arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return requests_.size() > n; };
    mu_.AwaitWithTimeout(absl::Condition(&arrived), absl::Seconds(10));
    if (requests_.size() <= n) return std::nullopt;
    return requests_[n];
  }

  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* request,
                           grpc::ServerWriter<v1::KvEventBatch>* writer) override {
    Script script;
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*request);
      if (scripts_.empty()) {
        script.hold = true;  // unscripted calls stay open, silent
      } else {
        script = std::move(scripts_.front());
        scripts_.pop_front();
      }
    }
    for (const v1::KvEventBatch& b : script.batches) {
      if (!writer->Write(b)) return grpc::Status::CANCELLED;
    }
    if (!script.hold) return script.end;
    while (!ctx->IsCancelled()) absl::SleepFor(absl::Milliseconds(5));
    return grpc::Status::CANCELLED;
  }

 private:
  absl::Mutex mu_;
  std::deque<Script> scripts_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::WatchEventsRequest> requests_ ABSL_GUARDED_BY(mu_);
};

BlockHash H(uint64_t n) { return BlockHash{n, n * 7 + 1}; }

v1::KvEventBatch Batch(const std::string& instance, uint64_t sequence, bool begin, bool end) {
  v1::KvEventBatch b;
  b.set_daemon_instance(instance);
  b.set_sequence_number(sequence);
  b.set_snapshot_begin(begin);
  b.set_snapshot_end(end);
  return b;
}

void AddEvent(v1::KvEventBatch* b, v1::KvEvent::Kind kind, uint64_t hash, int32_t block,
              uint64_t sequence) {
  v1::KvEvent* e = b->add_events();
  e->set_kind(kind);
  ToProto(H(hash), e->mutable_hash());
  e->set_position(static_cast<int64_t>(hash) * 16);
  e->set_block_id(block);
  e->set_sequence_number(sequence);
}

class ScriptedWatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&daemon_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    index_ = NewIndex();
  }
  void TearDown() override {
    if (watcher_ != nullptr) watcher_->Stop();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  void StartWatcher() { watcher_ = Watch("127.0.0.1:" + std::to_string(port_), index_.get()); }
  BlockId Entry(uint64_t hash) { return IndexedBlocks(*index_, {H(hash)})[0]; }

  ScriptedDaemon daemon_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<BlockLocationIndex> index_;
  std::unique_ptr<DaemonEventWatcher> watcher_;
};

TEST_F(ScriptedWatcherTest, BrokenStreamResumesAfterTheAppliedSequence) {
  Script first;
  v1::KvEventBatch snap = Batch("A", 5, true, true);
  AddEvent(&snap, v1::KvEvent::STORED, 1, 10, 0);
  AddEvent(&snap, v1::KvEvent::STORED, 2, 20, 0);
  first.batches.push_back(snap);
  v1::KvEventBatch live = Batch("A", 7, false, false);
  AddEvent(&live, v1::KvEvent::STORED, 3, 30, 6);
  AddEvent(&live, v1::KvEvent::REMOVED, 1, 10, 7);
  first.batches.push_back(live);
  daemon_.Push(first);
  Script second;  // the resume re-sends event 7 (must be skipped), then 8
  v1::KvEventBatch again = Batch("A", 8, false, false);
  AddEvent(&again, v1::KvEvent::REMOVED, 1, 10, 7);
  AddEvent(&again, v1::KvEvent::STORED, 1, 11, 8);
  second.batches.push_back(again);
  second.hold = true;
  daemon_.Push(second);
  StartWatcher();

  std::optional<v1::WatchEventsRequest> r0 = daemon_.Request(0);
  ASSERT_TRUE(r0.has_value());
  EXPECT_TRUE(r0->snapshot());
  std::optional<v1::WatchEventsRequest> r1 = daemon_.Request(1);
  ASSERT_TRUE(r1.has_value());
  EXPECT_FALSE(r1->snapshot());
  EXPECT_EQ(r1->after_sequence(), 6u);  // applied 7, asks from 6 so 7 comes back at once
  ASSERT_TRUE(WaitUntil([&] { return watcher_->applied_sequence() == 8; }));
  EXPECT_TRUE(watcher_->connected());
  EXPECT_EQ(Entry(1), 11);  // the re-sent REMOVED of 7 did not drop the new copy
  EXPECT_EQ(Entry(2), 20);
  EXPECT_EQ(Entry(3), 30);
  EXPECT_EQ(index_->MemberEntries(kSlot), 3);
  EXPECT_EQ(watcher_->reconnects(), 1);
  EXPECT_EQ(watcher_->snapshots(), 1);
}

TEST_F(ScriptedWatcherTest, InstanceChangeDropsEntriesAndResubscribesWithASnapshot) {
  Script first;
  v1::KvEventBatch snap = Batch("A", 3, true, true);
  AddEvent(&snap, v1::KvEvent::STORED, 1, 10, 0);
  AddEvent(&snap, v1::KvEvent::STORED, 2, 20, 0);
  first.batches.push_back(snap);
  daemon_.Push(first);
  Script other_run;  // resumed, but the daemon behind the address restarted
  v1::KvEventBatch live = Batch("B", 3, false, false);
  AddEvent(&live, v1::KvEvent::STORED, 9, 90, 3);
  other_run.batches.push_back(live);
  other_run.hold = true;
  daemon_.Push(other_run);
  Script resnapshot;
  v1::KvEventBatch snap_b = Batch("B", 4, true, true);
  AddEvent(&snap_b, v1::KvEvent::STORED, 4, 40, 0);
  resnapshot.batches.push_back(snap_b);
  resnapshot.hold = true;
  daemon_.Push(resnapshot);
  StartWatcher();

  std::optional<v1::WatchEventsRequest> r2 = daemon_.Request(2);
  ASSERT_TRUE(r2.has_value());
  EXPECT_TRUE(r2->snapshot());
  ASSERT_TRUE(WaitUntil([&] { return watcher_->applied_sequence() == 4; }));
  EXPECT_EQ(watcher_->instance(), "B");
  EXPECT_EQ(Entry(1), -1);
  EXPECT_EQ(Entry(2), -1);
  EXPECT_EQ(Entry(9), -1);  // the other run's live event was not applied
  EXPECT_EQ(Entry(4), 40);
  EXPECT_EQ(index_->MemberEntries(kSlot), 1);
}

TEST_F(ScriptedWatcherTest, SnapshotBrokenInTheMiddleStartsOver) {
  Script first;
  v1::KvEventBatch part = Batch("A", 50, true, false);  // snapshot_end never comes
  AddEvent(&part, v1::KvEvent::STORED, 1, 10, 0);
  first.batches.push_back(part);
  daemon_.Push(first);
  Script second;
  v1::KvEventBatch whole = Batch("A", 51, true, true);
  AddEvent(&whole, v1::KvEvent::STORED, 2, 20, 0);
  second.batches.push_back(whole);
  second.hold = true;
  daemon_.Push(second);
  StartWatcher();

  std::optional<v1::WatchEventsRequest> r1 = daemon_.Request(1);
  ASSERT_TRUE(r1.has_value());
  EXPECT_TRUE(r1->snapshot());  // not a resume from a partial view
  ASSERT_TRUE(WaitUntil([&] { return watcher_->snapshots() == 1; }));
  EXPECT_EQ(Entry(1), -1);
  EXPECT_EQ(Entry(2), 20);
  EXPECT_EQ(watcher_->applied_sequence(), 51u);
}

TEST_F(ScriptedWatcherTest, StopIsPromptWhileConnectedToAStreamThatNeverDelivers) {
  StartWatcher();  // unscripted: the call is accepted and stays open, silent
  ASSERT_TRUE(daemon_.Request(0).has_value());
  EXPECT_FALSE(watcher_->connected());  // no batch yet
  ExpectPromptStop(*watcher_);
  EXPECT_EQ(watcher_->last_error().code(), absl::StatusCode::kCancelled) << watcher_->last_error();
}

TEST_F(ScriptedWatcherTest, ConnectFailuresBackOffAndRecover) {
  Script refused;
  refused.end = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many watchers");
  daemon_.Push(refused);
  daemon_.Push(refused);
  Script ok;
  ok.batches.push_back(Batch("A", 0, true, true));  // an empty daemon
  ok.hold = true;
  daemon_.Push(ok);
  StartWatcher();
  ASSERT_TRUE(daemon_.Request(2).has_value());
  ASSERT_TRUE(WaitUntil([&] { return watcher_->connected(); }));
  EXPECT_EQ(watcher_->reconnects(), 2);
  EXPECT_EQ(watcher_->last_error().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(index_->MemberEntries(kSlot), 0);
}

}  // namespace
}  // namespace asymcache
