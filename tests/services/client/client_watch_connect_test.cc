// Client::PrepareWatch + EventStream::Open: a WatchEvents stream that can be
// cancelled while it connects and whose connect is bounded — against a real
// daemon (it streams like WatchEvents), a refused port (fails at once), and
// ports that never serve (tests/services/client/silent_listener.h): one that
// drops connects and one that accepts TCP but never speaks HTTP/2. The time
// bounds are generous caps that only a connect waited out (gRPC's 20 s
// connect timeout, or the 30 s connect_timeout the tests pass) exceeds.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "tests/services/client/silent_listener.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {
namespace {

using ::testing::HasSubstr;

// Far above any prompt cancel, far below the waits a cancel must cut short.
constexpr absl::Duration kPromptBound = absl::Seconds(5);
// A connect_timeout that a test must never wait out.
constexpr absl::Duration kLongConnect = absl::Seconds(30);

std::unique_ptr<Client> LazyClient(const std::string& target) {
  ClientOptions options;
  options.target = target;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

class ClientWatchConnectTest : public DaemonFixture {};

TEST_F(ClientWatchConnectTest, PreparedStreamOpensAndStreamsLikeWatchEvents) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));
  const int B = TinyBlockTokens();
  RunStep("a", 1, Tokens(2 * B, 1));  // events 1, 2
  WatchOptions options;
  options.snapshot = true;
  options.stream_timeout = absl::Seconds(15);
  std::unique_ptr<EventStream> stream = client_->PrepareWatch(options);
  ASSERT_NE(stream, nullptr);
  // Nothing is sent before Open().
  EXPECT_EQ(stream->Next().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(stream->Open(absl::ZeroDuration()).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_OK(stream->Open(absl::Seconds(10)));
  EXPECT_EQ(stream->Open(absl::Seconds(10)).code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<std::optional<KvEventBatch>> first = stream->Next();
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->has_value());
  EXPECT_TRUE((*first)->snapshot_begin);
  int64_t snapshot_blocks = static_cast<int64_t>((*first)->events.size());
  bool ended = (*first)->snapshot_end;
  while (!ended) {
    absl::StatusOr<std::optional<KvEventBatch>> next = stream->Next();
    ASSERT_TRUE(next.ok()) << next.status();
    ASSERT_TRUE(next->has_value());
    snapshot_blocks += static_cast<int64_t>((*next)->events.size());
    ended = (*next)->snapshot_end;
  }
  EXPECT_EQ(snapshot_blocks, 2);
  EXPECT_EQ(stream->last_sequence(), 2u);

  // Live events follow; Cancel ends the stream.
  RunStep("b", 2, Tokens(B, 2));
  absl::StatusOr<std::optional<KvEventBatch>> live = stream->Next();
  ASSERT_TRUE(live.ok()) << live.status();
  ASSERT_TRUE(live->has_value());
  ASSERT_EQ((*live)->events.size(), 1u);
  EXPECT_EQ((*live)->events[0].sequence_number, 3u);
  stream->Cancel();
  absl::StatusOr<std::optional<KvEventBatch>> after = stream->Next();
  while (after.ok() && after->has_value()) after = stream->Next();
  EXPECT_EQ(after.status().code(), absl::StatusCode::kCancelled) << after.status();
}

TEST(ClientWatchConnect, RefusedPortFailsAtOnceWithUnavailable) {
  std::unique_ptr<Client> client = LazyClient("127.0.0.1:1");  // nobody listens on port 1
  ASSERT_NE(client, nullptr);
  std::unique_ptr<EventStream> stream = client->PrepareWatch();
  const absl::Time start = absl::Now();
  const absl::Status opened = stream->Open(kLongConnect);
  EXPECT_EQ(opened.code(), absl::StatusCode::kUnavailable) << opened;
  EXPECT_THAT(opened.message(), HasSubstr("127.0.0.1:1"));
  EXPECT_LT(absl::Now() - start, kPromptBound);
  EXPECT_EQ(stream->Next().status(), opened);  // the stream is over
}

TEST(ClientWatchConnect, ConnectToAnAddressThatDropsConnectsIsBounded) {
  std::string skip;
  std::unique_ptr<SilentListener> listener =
      SilentListener::Start(SilentListener::Mode::kDropsConnects, &skip);
  if (listener == nullptr && !skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(listener, nullptr);
  std::unique_ptr<Client> client = LazyClient(listener->address());
  ASSERT_NE(client, nullptr);
  std::unique_ptr<EventStream> stream = client->PrepareWatch();
  const absl::Time start = absl::Now();
  const absl::Status opened = stream->Open(absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(opened.code(), absl::StatusCode::kDeadlineExceeded) << opened;
  EXPECT_THAT(opened.message(), HasSubstr(listener->address()));
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, kPromptBound);
}

// Open() on another thread, blocked connecting to `target` (kLongConnect),
// is ended by Cancel() within kPromptBound with CANCELLED.
void ExpectCancelEndsAConnectingOpen(const std::string& target,
                                     const std::function<void()>& wait_until_connecting) {
  std::unique_ptr<Client> client = LazyClient(target);
  ASSERT_NE(client, nullptr);
  std::unique_ptr<EventStream> stream = client->PrepareWatch();
  absl::Status opened;
  absl::Notification done;
  std::thread opener([&] {
    opened = stream->Open(kLongConnect);
    done.Notify();
  });
  wait_until_connecting();
  EXPECT_FALSE(done.HasBeenNotified()) << "Open returned early: " << opened;
  const absl::Time cancelled = absl::Now();
  stream->Cancel();
  const bool returned = done.WaitForNotificationWithTimeout(kPromptBound);
  EXPECT_TRUE(returned) << "Open() still blocked " << kPromptBound << " after Cancel()";
  opener.join();
  EXPECT_LT(absl::Now() - cancelled, kPromptBound);
  EXPECT_EQ(opened.code(), absl::StatusCode::kCancelled) << opened;
  EXPECT_EQ(stream->Next().status().code(), absl::StatusCode::kCancelled);
}

TEST(ClientWatchConnect, CancelEndsAnOpenThatWaitsForDroppedConnects) {
  std::string skip;
  std::unique_ptr<SilentListener> listener =
      SilentListener::Start(SilentListener::Mode::kDropsConnects, &skip);
  if (listener == nullptr && !skip.empty()) GTEST_SKIP() << skip;
  ASSERT_NE(listener, nullptr);
  ExpectCancelEndsAConnectingOpen(listener->address(), [] {
    // Nothing observable says "SYN sent and dropped": let the connect start.
    absl::SleepFor(absl::Milliseconds(300));
  });
}

TEST(ClientWatchConnect, CancelEndsAnOpenOnAPeerThatNeverSpeaksHttp2) {
  std::string unused;
  std::unique_ptr<SilentListener> listener =
      SilentListener::Start(SilentListener::Mode::kNeverAccepts, &unused);
  ASSERT_NE(listener, nullptr);
  ExpectCancelEndsAConnectingOpen(listener->address(), [&] {
    // The TCP connection is up (queued, never accepted); gRPC waits for the
    // server's HTTP/2 settings, which never come.
    EXPECT_TRUE(listener->HasPendingConnection(absl::Seconds(10)));
  });
}

TEST(ClientWatchConnect, CancelBeforeOpenEndsTheStream) {
  std::unique_ptr<Client> client = LazyClient("127.0.0.1:1");
  ASSERT_NE(client, nullptr);
  std::unique_ptr<EventStream> stream = client->PrepareWatch();
  stream->Cancel();
  EXPECT_EQ(stream->Open(kLongConnect).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(stream->Next().status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace asymcache::testing
