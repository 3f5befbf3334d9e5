#include "sim/cluster.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cachecore/block_hash.h"
#include "cachecore/block_location_index.h"
#include "cachecore/clock.h"
#include "sim/parallel_runs.h"

namespace asymcache {
namespace {

// One cluster replay: the engines, the index their events feed, the router.
class ClusterReplay {
 public:
  ClusterReplay(const Workload& workload, const SystemSpec& system, const CostModel& cost,
                const ClusterOptions& options)
      : workload_(workload), system_(system), cost_(cost), options_(options),
        clock_(ModeledTime(0)),
        replay_(workload, system, options.engine, cost.model().block_tokens),
        chains_(workload.sessions.size()),
        session_engine_(workload.sessions.size(), -1),
        session_committed_(workload.sessions.size(), 0) {}

  absl::StatusOr<ClusterResult> Run(RoutingMode mode);

 private:
  // Routes the request to an engine (its index).
  absl::StatusOr<int> Route(const EngineRequest& request);
  // The prompt's block hashes for routing.
  absl::Span<const BlockHash> PromptHashes(const EngineRequest& request);

  const Workload& workload_;
  const SystemSpec& system_;
  const CostModel& cost_;
  const ClusterOptions& options_;

  FakeClock clock_;
  ReplayState replay_;
  std::vector<std::unique_ptr<EngineInstance>> engines_;
  std::unique_ptr<BlockLocationIndex> index_;
  std::unique_ptr<Router> router_;
  // Per session: the hash chain of its prompts so far (reusing systems).
  std::vector<std::optional<HashChain>> chains_;
  std::vector<BlockHash> scratch_hashes_;  // `none`: one request's hashes
  std::vector<int32_t> session_engine_;    // engine of the session's last step, -1 = none
  // Agent jobs' context blocks counted against their engine until the job's
  // last step is routed (RouteCandidate::committed_blocks).
  std::vector<int64_t> session_committed_;
  std::vector<int64_t> engine_committed_;
  std::vector<RouteCandidate> candidates_;
  ClusterResult result_;
};

absl::Span<const BlockHash> ClusterReplay::PromptHashes(const EngineRequest& request) {
  const std::vector<TokenId>& context = replay_.context(request.session);
  const auto prompt =
      absl::MakeConstSpan(context.data(), static_cast<size_t>(request.prompt_tokens));
  const int block = cost_.model().block_tokens;
  if (!system_.reuse) {
    // Every request has its own salt: nothing to extend.
    scratch_hashes_ = ChainHashes(request.salt, prompt, block);
    return scratch_hashes_;
  }
  std::optional<HashChain>& chain = chains_[request.session];
  if (!chain.has_value()) chain.emplace(request.salt, block);
  // The prompt extends the previous prompt (context + outputs + new inputs).
  chain->Extend(prompt.subspan(static_cast<size_t>(chain->token_count())));
  return chain->hashes();
}

absl::StatusOr<int> ClusterReplay::Route(const EngineRequest& request) {
  candidates_.clear();
  for (size_t e = 0; e < engines_.size(); ++e) {
    const EngineInstance::Load load = engines_[e]->CurrentLoad();
    RouteCandidate c;
    c.member = static_cast<MemberSlot>(e);
    c.cost = &cost_;
    c.queued_prefill_tokens = load.queued_prefill_tokens;
    c.decode_batch = load.decode_batch;
    c.free_blocks = load.free_blocks;
    c.capacity_blocks = load.capacity_blocks;
    c.busy_blocks = load.busy_blocks;
    c.committed_blocks = engine_committed_[e];
    candidates_.push_back(c);
  }
  RouteQuery query;
  query.hashes = PromptHashes(request);
  query.tokens = request.prompt_tokens;
  // Admission reserves the outputs too.
  const int64_t block = cost_.model().block_tokens;
  query.reserve_blocks = std::max<int64_t>(
      0, (request.context_tokens + block - 1) / block - static_cast<int64_t>(query.hashes.size()));
  const SessionSpec& spec = workload_.sessions[request.session];
  const int32_t previous = session_engine_[request.session];
  if (options_.engine.agent_pins && system_.reuse && spec.is_job() && previous >= 0) {
    query.sticky_member = static_cast<MemberSlot>(previous);
  }
  absl::StatusOr<RouteDecision> decision = router_->Route(query, candidates_, *index_);
  if (!decision.ok()) {
    return absl::InternalError(absl::StrCat("Router::Route: ", decision.status().ToString()));
  }
  if (decision->candidate >= engines_.size()) {
    return absl::InternalError("Router::Route chose no candidate");
  }
  const size_t reason = static_cast<size_t>(decision->reason);
  if (reason < result_.route_reasons.size()) ++result_.route_reasons[reason];
  if (spec.steps[request.step].last_step) chains_[request.session].reset();
  return static_cast<int>(decision->candidate);
}

absl::StatusOr<ClusterResult> ClusterReplay::Run(RoutingMode mode) {
  const int n = options_.engines;
  BlockLocationIndexOptions index_options;
  index_options.max_members = std::max(n, 1);
  absl::StatusOr<std::unique_ptr<BlockLocationIndex>> index =
      BlockLocationIndex::Create(index_options);
  if (!index.ok()) return index.status();
  index_ = *std::move(index);
  RouterOptions router_options = options_.router;
  router_options.mode = mode;
  absl::StatusOr<std::unique_ptr<Router>> router = Router::Create(router_options);
  if (!router.ok()) return router.status();
  router_ = *std::move(router);
  for (int e = 0; e < n; ++e) {
    absl::StatusOr<std::unique_ptr<EngineInstance>> engine =
        EngineInstance::Create(system_, cost_, options_.engine, &clock_, &replay_);
    if (!engine.ok()) return engine.status();
    BlockLocationIndex* index_ptr = index_.get();
    const MemberSlot member = static_cast<MemberSlot>(e);
    // Events arrive synchronously, in order, from the engine's own calls.
    (*engine)->cache().SetEventListener([index_ptr, member](const KvEvent& event) {
      if (event.kind == KvEvent::Kind::kStored) {
        index_ptr->AddStored(member, event.hash, event.block, event.position);
      } else {
        index_ptr->ApplyRemoved(member, event.hash, event.block);
      }
    });
    engines_.push_back(*std::move(engine));
  }
  result_.system = system_.name;
  result_.routing = mode;
  result_.engines = n;
  result_.per_engine.resize(static_cast<size_t>(n));
  engine_committed_.assign(static_cast<size_t>(n), 0);

  // Steps in flight by (end time, engine): ties end in engine order.
  std::set<std::pair<double, int>> in_flight;
  std::vector<char> at_boundary(static_cast<size_t>(n), 0);
  double now_s = 0;
  bool first = true;
  while (true) {
    // 1. Steps that end now.
    std::fill(at_boundary.begin(), at_boundary.end(), 0);
    while (!in_flight.empty() && in_flight.begin()->first <= now_s) {
      const int e = in_flight.begin()->second;
      in_flight.erase(in_flight.begin());
      if (absl::Status s = engines_[e]->CompleteStep(); !s.ok()) return s;
      at_boundary[e] = 1;
    }
    // 2. Arrivals up to now, routed one by one (each sees the loads the
    // previous ones left).
    bool arrived = false;
    while (replay_.has_arrival() && replay_.next_arrival_s() <= now_s) {
      arrived = true;
      ReplayState::Arrival arrival = replay_.PopArrival();
      if (result_.request_engine.size() < replay_.records()) {
        result_.request_engine.resize(replay_.records(), -1);
      }
      const int32_t previous = session_engine_[arrival.session];
      // The job's committed context leaves its engine now; it is counted
      // again below where the step goes (unless it is the last step).
      if (previous >= 0) engine_committed_[previous] -= session_committed_[arrival.session];
      session_committed_[arrival.session] = 0;
      if (!arrival.request.has_value()) {
        chains_[arrival.session].reset();
        if (system_.reuse && previous >= 0) engines_[previous]->ForgetSession(arrival.sequence);
        continue;
      }
      absl::StatusOr<int> e = Route(*arrival.request);
      if (!e.ok()) return e.status();
      // The session's cached hash chain lives where its last step ran.
      if (system_.reuse && previous >= 0 && previous != *e) {
        engines_[previous]->ForgetSession(arrival.sequence);
      }
      session_engine_[arrival.session] = *e;
      const SessionSpec& spec = workload_.sessions[arrival.session];
      if (spec.is_job() && !spec.steps[arrival.request->step].last_step) {
        const int64_t block = cost_.model().block_tokens;
        session_committed_[arrival.session] = (arrival.request->context_tokens + block - 1) / block;
        engine_committed_[*e] += session_committed_[arrival.session];
      }
      result_.request_engine[arrival.request->record] = *e;
      ++result_.per_engine[*e].requests;
      engines_[*e]->Enqueue(*std::move(arrival.request));
    }
    // 3. Step boundaries: engines whose step just ended, and — on an arrival
    // (or at the start) — every engine with nothing in flight.
    for (int e = 0; e < n; ++e) {
      EngineInstance& engine = *engines_[e];
      if (engine.in_step()) continue;
      if (!at_boundary[e] && !arrived && !first) continue;
      absl::StatusOr<bool> stepping = engine.StartStep(now_s);
      if (!stepping.ok()) return stepping.status();
      if (*stepping) in_flight.emplace(engine.step_end_s(), e);
    }
    first = false;
    if (in_flight.empty() && !replay_.has_arrival()) break;
    double next = in_flight.empty() ? replay_.next_arrival_s() : in_flight.begin()->first;
    if (replay_.has_arrival()) next = std::min(next, replay_.next_arrival_s());
    now_s = std::max(now_s, next);
    clock_.Set(ModeledTime(now_s));
  }

  RunResult& run = result_.run;
  run = replay_.TakeResult();
  result_.request_engine.resize(run.requests.size(), -1);
  std::vector<int64_t> work;
  for (int e = 0; e < n; ++e) {
    ClusterEngineResult& out = result_.per_engine[e];
    out.totals = engines_[e]->Finish();
    const EngineTotals& t = out.totals;
    run.engine_steps += t.engine_steps;
    run.busy_s += t.busy_s;
    run.prefill_tokens += t.prefill_tokens;
    run.decode_tokens += t.decode_tokens;
    run.mixed_steps += t.mixed_steps;
    run.mixed_busy_s += t.mixed_busy_s;
    run.prefill_only_steps += t.prefill_only_steps;
    run.prefill_only_busy_s += t.prefill_only_busy_s;
    run.memory_blocked_s += t.memory_blocked_s;  // summed over engines; busy fraction not kept
    run.evictions += t.evictions;
    run.pins_granted += t.pins_granted;
    run.pins_released_under_pressure += t.pins_released_under_pressure;
    run.deferred_plans += t.deferred_plans;
    run.preemptions += t.preemptions;
    run.blocked_decode_steps += t.blocked_decode_steps;
    run.final_pool.capacity += t.final_pool.capacity;
    run.final_pool.free += t.final_pool.free;
    run.final_pool.writing += t.final_pool.writing;
    run.final_pool.sealed_evictable += t.final_pool.sealed_evictable;
    run.final_pool.pinned += t.final_pool.pinned;
    run.final_pool.in_transfer += t.final_pool.in_transfer;
    run.final_pool.evictions += t.final_pool.evictions;
    if (run.consistency.ok() && !t.consistency.ok()) {
      run.consistency = absl::Status(t.consistency.code(),
                                     absl::StrCat("engine ", e, ": ", t.consistency.message()));
    }
    work.push_back(out.work_tokens());
  }
  result_.load_imbalance = LoadImbalance(work);
  return std::move(result_);
}

}  // namespace

RouterOptions SimRouterOptions() {
  RouterOptions options;
  options.allow_fetch = false;
  return options;
}

absl::Status ClusterOptions::Validate() const {
  if (engines < 1 || engines > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClusterOptions.engines must be in [1, 4096], got ", engines));
  }
  if (router.allow_fetch) {
    return absl::InvalidArgumentError(
        "ClusterOptions.router.allow_fetch must be false: the simulator does not model "
        "daemon-to-daemon block transfer");
  }
  if (absl::Status s = router.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("ClusterOptions.router: ", s.message()));
  }
  return engine.Validate();
}

double LoadImbalance(absl::Span<const int64_t> work) {
  if (work.empty()) return 0;
  int64_t total = 0, most = 0;
  for (int64_t w : work) {
    total += w;
    most = std::max(most, w);
  }
  if (total <= 0) return 0;
  return static_cast<double>(most) * static_cast<double>(work.size()) /
         static_cast<double>(total);
}

absl::StatusOr<std::vector<RoutingMode>> ParseRoutingModes(absl::string_view list) {
  std::vector<RoutingMode> modes;
  for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    name = absl::StripAsciiWhitespace(name);
    absl::StatusOr<RoutingMode> mode = ParseRoutingMode(name);
    if (!mode.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--routing: ", mode.status().message()));
    }
    if (std::find(modes.begin(), modes.end(), *mode) == modes.end()) modes.push_back(*mode);
  }
  if (modes.empty()) {
    return absl::InvalidArgumentError(
        "--routing: empty list (use hole-aware, contiguous-prefix, round-robin)");
  }
  return modes;
}

absl::StatusOr<ClusterResult> RunCluster(const Workload& workload, const SystemSpec& system,
                                         RoutingMode mode, const CostModel& cost,
                                         const ClusterOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = workload.Validate(); !s.ok()) return s;
  ClusterReplay replay(workload, system, cost, options);
  return replay.Run(mode);
}

absl::StatusOr<std::vector<ClusterResult>> RunClusters(const Workload& workload,
                                                       const std::vector<SystemSpec>& systems,
                                                       const std::vector<RoutingMode>& modes,
                                                       const CostModel& cost,
                                                       const ClusterComparisonOptions& options) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError("ClusterComparisonOptions.threads must be >= 1");
  }
  if (absl::Status s = options.cluster.Validate(); !s.ok()) return s;
  struct Job {
    const SystemSpec* system;
    RoutingMode mode;
  };
  std::vector<Job> jobs;
  for (const SystemSpec& s : systems) {
    for (RoutingMode m : modes) jobs.push_back(Job{&s, m});
  }
  return RunInParallel<ClusterResult>(
      jobs.size(), options.threads, options.progress,
      [&](size_t i, std::function<void(double)> job_progress) -> absl::StatusOr<ClusterResult> {
        ClusterOptions cluster = options.cluster;
        cluster.engine.progress = std::move(job_progress);
        absl::StatusOr<ClusterResult> r =
            RunCluster(workload, *jobs[i].system, jobs[i].mode, cost, cluster);
        if (r.ok() && options.check_consistency) {
          const std::string name =
              absl::StrCat(jobs[i].system->name, " / ", RoutingModeName(jobs[i].mode));
          for (size_t e = 0; e < r->per_engine.size(); ++e) {
            const EngineTotals& t = r->per_engine[e].totals;
            if (absl::Status s = CheckCacheAfterRun(absl::StrCat(name, ": engine ", e),
                                                    t.consistency, t.final_pool);
                !s.ok()) {
              return s;
            }
          }
        }
        return r;
      });
}

ClusterSummary Summarize(const ClusterResult& result) {
  ClusterSummary s;
  s.summary = Summarize(result.run);
  s.routing = std::string(RoutingModeName(result.routing));
  s.engines = result.engines;
  s.load_imbalance = result.load_imbalance;
  for (size_t reason = 0; reason < result.route_reasons.size(); ++reason) {
    if (result.route_reasons[reason] == 0) continue;
    s.route_reasons.emplace_back(RouteReasonName(static_cast<RouteReason>(reason)),
                                 result.route_reasons[reason]);
  }
  for (const ClusterEngineResult& e : result.per_engine) {
    s.engine_requests.push_back(e.requests);
    s.engine_work_tokens.push_back(e.work_tokens());
  }
  return s;
}

}  // namespace asymcache
