// CoordinatorMetrics on its own registry (series, label domains, counter
// deltas, per-daemon series removed with the daemon) and scraped over HTTP
// from a running Coordinator with a real daemon: routes by reason, TTFT
// error, index size, members, event lag, reconnects.
#include "services/coordinator/coordinator_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/services/coordinator/coordinator_test_util.h"
#include "tests/services/http_get.h"

namespace asymcache {
namespace {

using ::asymcache::testing::Call;
using ::asymcache::testing::CoordinatorStub;
using ::asymcache::testing::DaemonRegistration;
using ::asymcache::testing::LocalCoordinatorOptions;
using ::asymcache::testing::StartCoordinator;
using ::asymcache::testing::TestDaemon;
using ::asymcache::testing::Tokens;
using ::asymcache::testing::WaitUntil;
using ::testing::HasSubstr;
using ::testing::Not;
using Stub = v1::Coordinator::Stub;

std::string Serialize(prometheus::Registry& registry) {
  prometheus::TextSerializer serializer;
  std::ostringstream out;
  serializer.Serialize(out, registry.Collect());
  return out.str();
}

TEST(CoordinatorMetricsTest, FixedSeriesExistFromTheStart) {
  prometheus::Registry registry;
  auto metrics = CoordinatorMetrics::Create(registry, RoutingMode::kContiguousPrefix).value();
  const std::string text = Serialize(registry);
  for (const char* reason : {"best_predicted_ttft", "load_tie_break", "load_bound",
                             "agent_affinity", "only_candidate", "round_robin", "memory_bound"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("asymcache_coordinator_routes_total{mode=\"contiguous-prefix\",reason=\"",
                                             reason, "\"} 0")));
  }
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_members{kind=\"worker\",role=\"decode\"} 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_kv_events_applied_total{kind=\"removed\"} 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_route_duration_seconds_count 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_ttft_relative_error_count 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_index_entries 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_watcher_reconnects_total 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_proxy_backpressure_pauses_total 0"));
  // A second set on the same registry conflicts with the first only if the
  // types differ; a registry holding one of the names as another type fails.
  prometheus::Registry taken;
  prometheus::BuildGauge().Name("asymcache_coordinator_routes_total").Register(taken);
  EXPECT_EQ(CoordinatorMetrics::Create(taken, RoutingMode::kHoleAware).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(CoordinatorMetricsTest, ObservationsAndDeltas) {
  prometheus::Registry registry;
  auto metrics = CoordinatorMetrics::Create(registry, RoutingMode::kHoleAware).value();
  metrics->ObserveRoute(RouteReason::kAgentAffinity, absl::Microseconds(30));
  metrics->ObserveRoute(RouteReason::kAgentAffinity, absl::Microseconds(30));
  metrics->ObserveRpc("Route", absl::StatusCode::kInvalidArgument, absl::Microseconds(70));
  metrics->ObserveTtftReport(-0.3);
  metrics->ObserveTtftReport(std::nan(""));  // dropped
  metrics->SetIndex(10, 4, 2);
  metrics->SetIndex(12, 7, 2);  // counters advance by the difference
  MemberCounts counts;
  counts.Add(MemberKind::kDaemon, MemberRole::kPrefill);
  counts.Add(MemberKind::kDaemon, MemberRole::kPrefill);
  metrics->SetMembers(counts);
  metrics->SetDaemonEvents("d-1", 17, true);
  metrics->AddKvEvents(KvEvent::Kind::kStored, 5);
  metrics->AddSnapshot();
  metrics->AddWatcherReconnect();
  metrics->AddProxyPause();
  metrics->AddProxyPause();
  std::string text = Serialize(registry);
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_routes_total{mode=\"hole-aware\",reason=\"agent_affinity\"} 2"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_route_duration_seconds_count 2"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_rpc_duration_seconds_count{code=\"INVALID_ARGUMENT\",method=\"Route\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_rpc_duration_seconds_bucket{code=\"INVALID_ARGUMENT\",method=\"Route\",le=\"5e-05\"} 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_ttft_relative_error_count 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_ttft_relative_error_bucket{le=\"-0.25\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_ttft_relative_error_bucket{le=\"-0.5\"} 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_index_entries 12"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_index_dropped_stored_total 7"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_index_stale_removed_total 2"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_members{kind=\"daemon\",role=\"prefill\"} 2"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_event_lag{member=\"d-1\"} 17"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_events_connected{member=\"d-1\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_kv_events_applied_total{kind=\"stored\"} 5"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_snapshots_total 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_watcher_reconnects_total 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_proxy_backpressure_pauses_total 2"));
  metrics->RemoveDaemon("d-1");
  text = Serialize(registry);
  EXPECT_THAT(text, Not(HasSubstr("member=\"d-1\"")));
}

TEST(CoordinatorMetricsTest, ScrapedFromARunningCoordinator) {
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.metrics_port = 0;
  std::unique_ptr<Coordinator> coordinator = StartCoordinator(options);
  ASSERT_NE(coordinator, nullptr);
  ASSERT_GT(coordinator->metrics_port(), 0);
  std::unique_ptr<Stub> stub = CoordinatorStub(coordinator->local_address());
  TestDaemon d = TestDaemon::Start("d-1");
  ASSERT_NE(d.client, nullptr);
  v1::RegisterResponse registered;
  ASSERT_TRUE(Call(*stub, &Stub::Register, DaemonRegistration("d-1", *d.daemon, *d.client),
                   &registered)
                  .ok());
  const std::vector<TokenId> context = Tokens(5 * ::asymcache::testing::TinyBlockTokens(), 2);
  d.Commit("s", 1, context);
  // The heartbeat says how far the daemon's events go; the lag closes.
  v1::HeartbeatRequest hb;
  hb.set_member_id("d-1");
  hb.mutable_load()->set_last_event_sequence(d.client->GetStats()->last_event_sequence);
  v1::HeartbeatResponse hb_resp;
  ASSERT_TRUE(Call(*stub, &Stub::Heartbeat, hb, &hb_resp).ok());

  v1::RouteRequest route;
  route.set_salt("s");
  for (TokenId t : context) route.add_token_ids(t);
  ASSERT_TRUE(WaitUntil([&] { return coordinator->state().index().size() == 5; }));
  v1::RouteResponse routed;
  ASSERT_TRUE(Call(*stub, &Stub::Route, route, &routed).ok());
  v1::ReportTtftRequest report;
  report.set_route_id(routed.route_id());
  report.set_ttft_s(routed.prediction().predicted_ttft_s() * 1.5);
  v1::ReportTtftResponse reported;
  ASSERT_TRUE(Call(*stub, &Stub::ReportTtft, report, &reported).ok());
  v1::RouteResponse ignored;
  EXPECT_FALSE(Call(*stub, &Stub::Route, v1::RouteRequest(), &ignored).ok());

  std::string text;
  ASSERT_TRUE(WaitUntil([&] {
    absl::StatusOr<std::string> scraped = testing::HttpGet(coordinator->metrics_port(), "/metrics");
    if (!scraped.ok()) return false;
    text = *scraped;
    return absl::StrContains(text, "asymcache_coordinator_event_lag{member=\"d-1\"} 0") &&
           absl::StrContains(text, "asymcache_coordinator_index_entries 5");
  })) << text;
  EXPECT_THAT(text, HasSubstr("HTTP/1.1 200 OK"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_routes_total{mode=\"hole-aware\",reason=\"only_candidate\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_route_duration_seconds_count 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_ttft_relative_error_count 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_ttft_reports_total 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_members{kind=\"daemon\",role=\"both\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_events_connected{member=\"d-1\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_kv_events_applied_total{kind=\"stored\"} 5"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_snapshots_total 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_watcher_reconnects_total 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_rpc_duration_seconds_count{code=\"INVALID_ARGUMENT\",method=\"Route\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_rpc_duration_seconds_count{code=\"OK\",method=\"Register\"} 1"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_index_dropped_stored_total 0"));
  EXPECT_THAT(text, HasSubstr("asymcache_coordinator_agent_jobs 0"));

  // The daemon leaves: its per-daemon series go with it.
  v1::DeregisterRequest leave;
  leave.set_member_id("d-1");
  v1::DeregisterResponse left;
  ASSERT_TRUE(Call(*stub, &Stub::Deregister, leave, &left).ok());
  ASSERT_TRUE(WaitUntil([&] {
    absl::StatusOr<std::string> scraped = testing::HttpGet(coordinator->metrics_port(), "/metrics");
    return scraped.ok() && !absl::StrContains(*scraped, "member=\"d-1\"") &&
           absl::StrContains(*scraped, "asymcache_coordinator_index_entries 0");
  }));
  coordinator->Shutdown();
}

}  // namespace
}  // namespace asymcache
