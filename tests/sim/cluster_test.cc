#include "sim/cluster.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "cachecore/router.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sim/engine.h"
#include "sim/generators.h"
#include "sim/report.h"
#include "sim/system.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

const CostModel& Cost() {
  static const CostModel* cost = new CostModel(ModelConfig(), CostModel::DefaultH100Llama3_8B());
  return *cost;
}

Workload Generate(const std::string& name, int64_t sessions, double rate, uint64_t seed = 1) {
  GeneratorOptions o;
  o.workload = name;
  o.sessions = sessions;
  o.rate = rate;
  o.seed = seed;
  absl::StatusOr<Workload> w = GenerateWorkload(o);
  EXPECT_TRUE(w.ok()) << w.status();
  return *std::move(w);
}

SystemSpec System(const std::string& name) { return (*ParseSystems(name, 2048))[0]; }

const std::vector<RoutingMode>& AllModes() {
  static const std::vector<RoutingMode> modes = {
      RoutingMode::kHoleAware, RoutingMode::kContiguousPrefix, RoutingMode::kRoundRobin};
  return modes;
}

ClusterOptions Options(int engines, int64_t pool_blocks, bool pins = false) {
  ClusterOptions o;
  o.engines = engines;
  o.engine.pool_blocks = pool_blocks;
  o.engine.agent_pins = pins;
  return o;
}

void ExpectSameRecords(const RunResult& a, const RunResult& b) {
  ASSERT_EQ(a.requests.size(), b.requests.size());
  for (size_t i = 0; i < a.requests.size(); ++i) {
    SCOPED_TRACE(i);
    const RequestRecord& x = a.requests[i];
    const RequestRecord& y = b.requests[i];
    EXPECT_EQ(x.session, y.session);
    EXPECT_EQ(x.step, y.step);
    EXPECT_EQ(x.arrival_s, y.arrival_s);
    EXPECT_EQ(x.admitted_s, y.admitted_s);
    EXPECT_EQ(x.first_token_s, y.first_token_s);
    EXPECT_EQ(x.finish_s, y.finish_s);
    EXPECT_EQ(x.ttft_s(), y.ttft_s());
    EXPECT_EQ(x.tpot_s(), y.tpot_s());
    EXPECT_EQ(x.output_tokens, y.output_tokens);
    EXPECT_EQ(x.hit_blocks, y.hit_blocks);
    EXPECT_EQ(x.hit_tokens, y.hit_tokens);
    EXPECT_EQ(x.rebuild_tokens, y.rebuild_tokens);
    EXPECT_EQ(x.new_tokens, y.new_tokens);
    EXPECT_EQ(x.rejected, y.rejected);
  }
  ASSERT_EQ(a.jobs.size(), b.jobs.size());
  for (size_t i = 0; i < a.jobs.size(); ++i) EXPECT_EQ(a.jobs[i].finish_s, b.jobs[i].finish_s);
}

void ExpectNoLeaks(const ClusterResult& r) {
  ASSERT_EQ(static_cast<int>(r.per_engine.size()), r.engines);
  for (size_t e = 0; e < r.per_engine.size(); ++e) {
    SCOPED_TRACE(e);
    const EngineTotals& t = r.per_engine[e].totals;
    EXPECT_TRUE(t.consistency.ok()) << t.consistency;
    EXPECT_EQ(t.final_pool.pinned, 0);
    EXPECT_EQ(t.final_pool.writing, 0);
    EXPECT_EQ(t.final_pool.in_transfer, 0);
  }
  EXPECT_TRUE(r.run.consistency.ok()) << r.run.consistency;
}

// Every request finished on an engine in range; per-engine counts add up.
void ExpectConservation(const Workload& w, const ClusterResult& r) {
  ASSERT_EQ(static_cast<int64_t>(r.run.requests.size()), w.total_steps());
  ASSERT_EQ(r.request_engine.size(), r.run.requests.size());
  std::vector<int64_t> routed(static_cast<size_t>(r.engines), 0);
  for (size_t i = 0; i < r.run.requests.size(); ++i) {
    const RequestRecord& q = r.run.requests[i];
    ASSERT_TRUE(q.finished()) << "request " << i;
    EXPECT_EQ(q.hit_tokens + q.rebuild_tokens + q.new_tokens, q.prompt_tokens);
    ASSERT_GE(r.request_engine[i], 0);
    ASSERT_LT(r.request_engine[i], r.engines);
    ++routed[r.request_engine[i]];
  }
  int64_t reasons = 0;
  for (int64_t n : r.route_reasons) reasons += n;
  EXPECT_EQ(reasons, w.total_steps());
  int64_t prefill = 0, decode = 0;
  for (int e = 0; e < r.engines; ++e) {
    EXPECT_EQ(r.per_engine[e].requests, routed[e]) << "engine " << e;
    prefill += r.per_engine[e].totals.prefill_tokens;
    decode += r.per_engine[e].totals.decode_tokens;
  }
  EXPECT_EQ(prefill, r.run.prefill_tokens);
  EXPECT_EQ(decode, r.run.decode_tokens);
}

// A 1-engine cluster is RunSystem: same per-request times and cache outcomes,
// whatever the routing mode, with and without agent pins, under memory
// pressure (evictions, holes, pin releases) and for `none`.
void ExpectOneEngineIsRunSystem(const std::string& workload, int64_t sessions, double rate,
                                int64_t pool_blocks, bool pins, bool worker_memory = false) {
  const Workload w = Generate(workload, sessions, rate);
  for (const std::string name : {"asymcache", "vllm", "none"}) {
    const SystemSpec system = System(name);
    ClusterOptions options = Options(1, pool_blocks, pins);
    options.engine.commit_at_prefill_end = worker_memory;
    options.engine.grow_output_blocks = worker_memory;
    absl::StatusOr<RunResult> single = RunSystem(w, system, Cost(), options.engine);
    ASSERT_TRUE(single.ok()) << single.status();
    for (RoutingMode mode : AllModes()) {
      SCOPED_TRACE(name + " / " + std::string(RoutingModeName(mode)));
      absl::StatusOr<ClusterResult> cluster = RunCluster(w, system, mode, Cost(), options);
      ASSERT_TRUE(cluster.ok()) << cluster.status();
      ExpectSameRecords(*single, cluster->run);
      EXPECT_EQ(cluster->run.engine_steps, single->engine_steps);
      EXPECT_EQ(cluster->run.busy_s, single->busy_s);
      EXPECT_EQ(cluster->run.prefill_tokens, single->prefill_tokens);
      EXPECT_EQ(cluster->run.decode_tokens, single->decode_tokens);
      EXPECT_EQ(cluster->run.evictions, single->evictions);
      EXPECT_EQ(cluster->run.pins_granted, single->pins_granted);
      EXPECT_EQ(cluster->run.pins_released_under_pressure, single->pins_released_under_pressure);
      EXPECT_EQ(cluster->run.makespan_s, single->makespan_s);
      EXPECT_EQ(cluster->run.preemptions, single->preemptions);
      EXPECT_EQ(cluster->run.blocked_decode_steps, single->blocked_decode_steps);
      EXPECT_EQ(cluster->load_imbalance, cluster->run.prefill_tokens > 0 ? 1.0 : 0.0);
      ExpectNoLeaks(*cluster);
    }
    if (name != "none") {
      EXPECT_GT(single->evictions, 0) << "the case should put memory under pressure";
      if (pins) {
        EXPECT_GT(single->pins_granted, 0);
      }
    }
  }
}

TEST(Cluster, OneEngineReproducesRunSystemOnAgentJobsWithPins) {
  ExpectOneEngineIsRunSystem("agent", 6, 0.5, 2500, /*pins=*/true);
}
TEST(Cluster, OneEngineReproducesRunSystemOnSharedDocuments) {
  ExpectOneEngineIsRunSystem("doc-qa", 20, 2.0, 1500, /*pins=*/false);
}
TEST(Cluster, OneEngineReproducesRunSystemOnChat) {
  ExpectOneEngineIsRunSystem("chat", 20, 3.0, 600, /*pins=*/false);
}
// With the worker's memory behaviour (pages grown while decoding, refused
// pages, preemptions): the same.
TEST(Cluster, OneEngineReproducesRunSystemWithTheWorkersMemory) {
  ExpectOneEngineIsRunSystem("chat", 20, 3.0, 600, /*pins=*/false, /*worker_memory=*/true);
  ExpectOneEngineIsRunSystem("agent", 6, 0.5, 2500, /*pins=*/true, /*worker_memory=*/true);
}

TEST(Cluster, SameInputsSameResultsWhateverTheThreadCount) {
  const Workload w = Generate("agent", 12, 2.0, 5);
  const std::vector<SystemSpec> systems = *ParseSystems("asymcache,pensieve", 2048);
  ClusterComparisonOptions one;
  one.cluster = Options(4, 3000, /*pins=*/true);
  one.threads = 1;
  ClusterComparisonOptions two = one;
  two.threads = 2;
  absl::StatusOr<std::vector<ClusterResult>> a = RunClusters(w, systems, AllModes(), Cost(), one);
  absl::StatusOr<std::vector<ClusterResult>> b = RunClusters(w, systems, AllModes(), Cost(), two);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->size(), systems.size() * AllModes().size());
  ASSERT_EQ(a->size(), b->size());
  std::vector<ClusterSummary> sa, sb;
  for (size_t i = 0; i < a->size(); ++i) {
    const ClusterResult& x = (*a)[i];
    const ClusterResult& y = (*b)[i];
    SCOPED_TRACE(x.system + " / " + std::string(RoutingModeName(x.routing)));
    EXPECT_EQ(x.system, systems[i / AllModes().size()].name);
    EXPECT_EQ(x.routing, AllModes()[i % AllModes().size()]);
    ExpectSameRecords(x.run, y.run);
    EXPECT_EQ(x.request_engine, y.request_engine);
    EXPECT_EQ(x.route_reasons, y.route_reasons);
    EXPECT_EQ(x.load_imbalance, y.load_imbalance);
    ExpectConservation(w, x);
    ExpectNoLeaks(x);
    sa.push_back(Summarize(x));
    sb.push_back(Summarize(y));
  }
  RunHeader header;
  EXPECT_EQ(ClusterToJson(header, sa), ClusterToJson(header, sb));
  EXPECT_EQ(FormatClusterTable(sa), FormatClusterTable(sb));
}

// Shared documents read by many sessions: routing by where the blocks are
// keeps each document on few engines; round-robin makes every engine hold
// every popular document, and the pools cannot.
TEST(Cluster, HoleAwareRoutingHitsMoreThanRoundRobinOnSharedDocuments) {
  const Workload w = Generate("doc-qa", 60, 2.0);
  const SystemSpec system = System("asymcache");
  const ClusterOptions options = Options(4, 4096);
  absl::StatusOr<ClusterResult> hole =
      RunCluster(w, system, RoutingMode::kHoleAware, Cost(), options);
  absl::StatusOr<ClusterResult> rr =
      RunCluster(w, system, RoutingMode::kRoundRobin, Cost(), options);
  ASSERT_TRUE(hole.ok()) << hole.status();
  ASSERT_TRUE(rr.ok()) << rr.status();
  ExpectConservation(w, *hole);
  ExpectConservation(w, *rr);
  ExpectNoLeaks(*hole);
  ExpectNoLeaks(*rr);
  const SystemSummary h = Summarize(hole->run);
  const SystemSummary r = Summarize(rr->run);
  EXPECT_GT(h.block_hit_rate, r.block_hit_rate + 0.2)
      << "hole-aware " << h.block_hit_rate << " round-robin " << r.block_hit_rate;
  EXPECT_LT(h.ttft_s.mean, r.ttft_s.mean);
  // The router used the cache: most decisions were by predicted TTFT or ties,
  // none by round-robin.
  EXPECT_EQ(hole->route_reasons[static_cast<size_t>(RouteReason::kRoundRobin)], 0);
  EXPECT_EQ(rr->route_reasons[static_cast<size_t>(RouteReason::kRoundRobin)], w.total_steps());
}

TEST(Cluster, RoundRobinWithoutPinsSpreadsRequestsEvenly) {
  const Workload w = Generate("chat", 30, 4.0);
  absl::StatusOr<ClusterResult> r =
      RunCluster(w, System("vllm"), RoutingMode::kRoundRobin, Cost(), Options(4, 2000));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectConservation(w, *r);
  int64_t most = 0, least = w.total_steps();
  for (const ClusterEngineResult& e : r->per_engine) {
    most = std::max(most, e.requests);
    least = std::min(least, e.requests);
  }
  EXPECT_LE(most - least, 1);
  // Consecutive arrivals go to consecutive engines.
  for (size_t i = 1; i < r->request_engine.size(); ++i) {
    EXPECT_EQ(r->request_engine[i], (r->request_engine[i - 1] + 1) % 4) << i;
  }
  EXPECT_GE(r->load_imbalance, 1.0);
}

// With agent pins on, a job's steps stay on the engine of its first step in
// every mode (Continuum stickiness); with pins off round-robin moves them.
TEST(Cluster, AgentJobsStickToTheirEngineOnlyWithPins) {
  const Workload w = Generate("agent", 10, 2.0, 3);
  for (bool pins : {true, false}) {
    for (RoutingMode mode : AllModes()) {
      SCOPED_TRACE(std::string(RoutingModeName(mode)) + (pins ? " pins" : " no pins"));
      absl::StatusOr<ClusterResult> r =
          RunCluster(w, System("asymcache"), mode, Cost(), Options(4, 4000, pins));
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectConservation(w, *r);
      ExpectNoLeaks(*r);
      std::vector<std::set<int32_t>> engines(w.sessions.size());
      for (size_t i = 0; i < r->run.requests.size(); ++i) {
        engines[r->run.requests[i].session].insert(r->request_engine[i]);
      }
      int moved = 0;
      for (const auto& s : engines) moved += s.size() > 1 ? 1 : 0;
      const int64_t affinity = r->route_reasons[static_cast<size_t>(RouteReason::kAgentAffinity)];
      if (pins) {
        EXPECT_EQ(moved, 0);
        EXPECT_EQ(affinity, w.total_steps() - static_cast<int64_t>(w.sessions.size()));
        EXPECT_GT(r->run.pins_granted, 0);
      } else {
        EXPECT_EQ(affinity, 0);
        if (mode == RoutingMode::kRoundRobin) {
          EXPECT_GT(moved, 0);
        }
      }
    }
  }
}

TEST(Cluster, LoadImbalanceIsMaxOverMean) {
  EXPECT_EQ(LoadImbalance({}), 0);
  EXPECT_EQ(LoadImbalance({0, 0, 0}), 0);
  EXPECT_EQ(LoadImbalance({5, 5, 5, 5}), 1.0);
  EXPECT_EQ(LoadImbalance({8, 0, 0, 0}), 4.0);
  EXPECT_DOUBLE_EQ(LoadImbalance({3, 1}), 1.5);
}

TEST(Cluster, BadOptionsAreInvalidArgumentNamingTheField) {
  const Workload w = Generate("chat", 2, 1.0);
  const SystemSpec system = System("vllm");
  auto expect_invalid = [&](const ClusterOptions& o, const std::string& field) {
    SCOPED_TRACE(field);
    const absl::Status v = o.Validate();
    EXPECT_TRUE(absl::IsInvalidArgument(v)) << v;
    EXPECT_THAT(std::string(v.message()), HasSubstr(field));
    absl::StatusOr<ClusterResult> r = RunCluster(w, system, RoutingMode::kHoleAware, Cost(), o);
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(field));
  };
  EXPECT_TRUE(Options(4, 100).Validate().ok());
  expect_invalid(Options(0, 100), "engines");
  expect_invalid(Options(5000, 100), "engines");
  expect_invalid(Options(4, 0), "pool_blocks");
  ClusterOptions fetch = Options(4, 100);
  fetch.router.allow_fetch = true;
  expect_invalid(fetch, "allow_fetch");
  ClusterOptions tie = Options(4, 100);
  tie.router.tie_relative = -1;
  expect_invalid(tie, "tie_relative");
  ClusterOptions pins = Options(4, 100, /*pins=*/true);
  pins.engine.pin_options.max_pinned_fraction = 2;
  expect_invalid(pins, "max_pinned_fraction");

  ClusterComparisonOptions compare;
  compare.cluster = Options(2, 100);
  compare.threads = 0;
  absl::StatusOr<std::vector<ClusterResult>> runs =
      RunClusters(w, {system}, AllModes(), Cost(), compare);
  EXPECT_TRUE(absl::IsInvalidArgument(runs.status()));
  EXPECT_THAT(std::string(runs.status().message()), HasSubstr("threads"));

  Workload bad = w;
  bad.sessions[0].steps[0].output_tokens = 0;
  absl::StatusOr<ClusterResult> r =
      RunCluster(bad, system, RoutingMode::kHoleAware, Cost(), Options(2, 100));
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
}

TEST(Cluster, ParsesRoutingModeLists) {
  absl::StatusOr<std::vector<RoutingMode>> all =
      ParseRoutingModes("hole-aware,contiguous-prefix,round-robin");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, AllModes());
  absl::StatusOr<std::vector<RoutingMode>> dup = ParseRoutingModes("round-robin, round-robin,hole-aware");
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_EQ(*dup, (std::vector<RoutingMode>{RoutingMode::kRoundRobin, RoutingMode::kHoleAware}));
  for (const char* bad : {"", ",", "hole-aware,bogus", "HOLE-AWARE"}) {
    SCOPED_TRACE(bad);
    absl::StatusOr<std::vector<RoutingMode>> r = ParseRoutingModes(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("--routing"));
  }
}

TEST(Cluster, ReportHasOneRowPerRunWithImbalanceAndJson) {
  const Workload w = Generate("doc-qa", 12, 2.0);
  ClusterComparisonOptions compare;
  compare.cluster = Options(3, 3000);
  absl::StatusOr<std::vector<ClusterResult>> runs =
      RunClusters(w, *ParseSystems("vllm,asymcache", 2048), AllModes(), Cost(), compare);
  ASSERT_TRUE(runs.ok()) << runs.status();
  std::vector<ClusterSummary> rows;
  for (const ClusterResult& r : *runs) rows.push_back(Summarize(r));
  const std::string table = FormatClusterTable(rows);
  EXPECT_THAT(table, HasSubstr("imbalance"));
  EXPECT_THAT(table, HasSubstr("contiguous-prefix"));
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 2 + 6);  // head, rule, 6 runs
  RunHeader header;
  header.workload = "doc-qa";
  const nlohmann::json j = nlohmann::json::parse(ClusterToJson(header, rows));
  EXPECT_EQ(j["schema"], "asymcache.sim.cluster.v1");
  ASSERT_EQ(j["runs"].size(), 6u);
  EXPECT_EQ(j["runs"][1]["routing"], "contiguous-prefix");
  EXPECT_EQ(j["runs"][1]["engines"], 3);
  EXPECT_EQ(j["runs"][1]["engine_requests"].size(), 3u);
  EXPECT_DOUBLE_EQ(j["runs"][1]["load_imbalance"].get<double>(), (*runs)[1].load_imbalance);
  EXPECT_EQ(j["runs"][2]["route_reasons"]["round_robin"], w.total_steps());
  EXPECT_FALSE(j["runs"][0]["route_reasons"].contains("round_robin"));
  const std::string csv = ClusterToCsv(rows);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);
  EXPECT_TRUE(absl::StartsWith(csv, "system,routing,engines,"));
}

}  // namespace
}  // namespace asymcache
