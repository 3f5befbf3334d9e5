#include "services/coordinator/coordinator_state.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cachecore/block_hash.h"

namespace asymcache {

namespace {

// Agent job ids are remembered (affinity): bound their size.
constexpr size_t kMaxJobIdLength = 128;

std::string NewInstanceId() {
  absl::BitGen random;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(random));
}

RouteCandidate ToCandidate(const RoutingMember& m) {
  RouteCandidate c;
  c.member = m.slot;
  c.cost = m.cost.get();
  c.queued_prefill_tokens = m.queued_prefill_tokens;
  c.decode_batch = m.decode_batch;
  c.free_blocks = m.free_blocks;
  c.capacity_blocks = m.capacity_blocks;
  c.busy_blocks = m.busy_blocks;
  c.committed_blocks = m.committed_blocks;
  return c;
}

// The member a route's work is charged to: the worker when one runs there.
const std::string& ChargedMember(const RoutedTarget& target) {
  return target.worker != nullptr ? target.worker->member_id : target.daemon->member_id;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorState>> CoordinatorState::Create(
    const CoordinatorOptions& options, prometheus::Registry* metrics_registry) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  Clock* clock = options.clock != nullptr ? options.clock : RealClock::Get();
  std::unique_ptr<CoordinatorState> state(new CoordinatorState(options));
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  state->channel_credentials_ = *std::move(credentials);

  MemberRegistryOptions registry_options;
  registry_options.member_timeout = options.member_timeout;
  registry_options.max_members = options.max_members;
  registry_options.slots = options.index.max_members;
  registry_options.expected_model = options.expected_model;
  registry_options.agent_affinity_ttl = options.agent_affinity_ttl;
  registry_options.max_agent_jobs = options.max_agent_jobs;
  registry_options.rejoin_ramp = options.rejoin_ramp;
  absl::StatusOr<std::unique_ptr<MemberRegistry>> registry =
      MemberRegistry::Create(std::move(registry_options), clock);
  if (!registry.ok()) return registry.status();
  state->registry_ = *std::move(registry);

  absl::StatusOr<std::unique_ptr<BlockLocationIndex>> index =
      BlockLocationIndex::Create(options.index);
  if (!index.ok()) return index.status();
  state->index_ = *std::move(index);

  absl::StatusOr<std::unique_ptr<Router>> router = Router::Create(options.router);
  if (!router.ok()) return router.status();
  state->router_ = *std::move(router);

  if (metrics_registry != nullptr) {
    absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> metrics =
        CoordinatorMetrics::Create(*metrics_registry, options.router.mode);
    if (!metrics.ok()) return metrics.status();
    state->metrics_ = *std::move(metrics);
    absl::MutexLock lock(&state->membership_mu_);
    state->UpdateGauges();
  }
  return state;
}

CoordinatorState::CoordinatorState(const CoordinatorOptions& options)
    : options_(options),
      instance_(NewInstanceId()),
      tenant_salts_(options.security),
      client_limiter_(options.client_rate_limit, options.security.trusted_peers),
      route_log_(options.route_history) {}

CoordinatorState::~CoordinatorState() { StopWatchers(); }

// ---------------------------------------------------------------- membership

absl::Status CoordinatorState::StartWatcher(const WatchTarget& target) {
  DaemonEventWatcherOptions watch;
  watch.member_id = target.member_id;
  watch.address = target.address;
  watch.slot = target.slot;
  watch.backoff_initial = options_.watch_backoff_initial;
  watch.backoff_max = options_.watch_backoff_max;
  watch.connect_timeout = options_.watch_connect_timeout;
  watch.max_message_bytes = options_.max_message_bytes;
  watch.credentials = channel_credentials_;
  absl::StatusOr<std::unique_ptr<DaemonEventWatcher>> watcher =
      DaemonEventWatcher::Start(std::move(watch), index_.get(), metrics_.get());
  if (!watcher.ok()) {
    ABSL_RAW_LOG(ERROR, "coordinator: cannot watch daemon '%s': %s", target.member_id.c_str(),
                 watcher.status().ToString().c_str());
    return absl::InternalError(absl::StrCat("cannot watch the KV events of daemon '",
                                            target.member_id, "': ", watcher.status().message()));
  }
  absl::MutexLock lock(&watchers_mu_);
  watchers_[target.slot] = *std::move(watcher);
  return absl::OkStatus();
}

void CoordinatorState::ResetDaemonSlot(MemberSlot slot, bool release) {
  std::unique_ptr<DaemonEventWatcher> watcher;
  {
    absl::MutexLock lock(&watchers_mu_);
    auto it = watchers_.find(slot);
    if (it != watchers_.end()) {
      watcher = std::move(it->second);
      watchers_.erase(it);
    }
  }
  if (watcher != nullptr) watcher->Stop();  // no event of the old run after this
  index_->RemoveMember(slot);
  if (release) registry_->ReleaseSlot(slot);
}

void CoordinatorState::HandleRemoved(const RemovedMember& removed) {
  if (!removed.slot.has_value()) return;
  ResetDaemonSlot(*removed.slot, /*release=*/true);
  if (metrics_ != nullptr) metrics_->RemoveDaemon(removed.member_id);
}

absl::Status CoordinatorState::Register(const MemberRegistration& registration) {
  absl::MutexLock lock(&membership_mu_);
  if (stopped_) return absl::UnavailableError("Register: the coordinator is shutting down");
  absl::StatusOr<RegisterResult> result = registry_->Register(registration);
  if (!result.ok()) return result.status();
  if (result->reset_slot.has_value()) {
    ResetDaemonSlot(*result->reset_slot, result->release_reset_slot);
    if (result->release_reset_slot && metrics_ != nullptr) {
      metrics_->RemoveDaemon(registration.member_id);
    }
  }
  if (result->watch.has_value()) return StartWatcher(*result->watch);
  return absl::OkStatus();
}

absl::Status CoordinatorState::Heartbeat(absl::string_view member_id, const MemberLoad& load) {
  return registry_->Heartbeat(member_id, load);
}

absl::Status CoordinatorState::Deregister(absl::string_view member_id) {
  absl::MutexLock lock(&membership_mu_);
  absl::StatusOr<RemovedMember> removed = registry_->Deregister(member_id);
  if (!removed.ok()) return removed.status();
  HandleRemoved(*removed);
  return absl::OkStatus();
}

int CoordinatorState::ExpireMembers() {
  absl::MutexLock lock(&membership_mu_);
  const std::vector<RemovedMember> removed = registry_->ExpireMembers();
  for (const RemovedMember& r : removed) {
    ABSL_RAW_LOG(INFO, "coordinator: member '%s' (%s) expired: no heartbeat for %s",
                 r.member_id.c_str(), std::string(MemberKindName(r.kind)).c_str(),
                 absl::FormatDuration(options_.member_timeout).c_str());
    HandleRemoved(r);
  }
  return static_cast<int>(removed.size());
}

void CoordinatorState::StopWatchers() {
  absl::MutexLock lock(&membership_mu_);
  stopped_ = true;
  absl::flat_hash_map<MemberSlot, std::unique_ptr<DaemonEventWatcher>> watchers;
  {
    absl::MutexLock watchers_lock(&watchers_mu_);
    watchers.swap(watchers_);
  }
  // Cancel every stream first, then join: shutdown takes one round, not N.
  for (auto& [slot, watcher] : watchers) watcher->RequestStop();
  for (auto& [slot, watcher] : watchers) watcher->Stop();
}

const DaemonEventWatcher* CoordinatorState::watcher(MemberSlot slot) const {
  absl::MutexLock lock(&watchers_mu_);
  auto it = watchers_.find(slot);
  return it == watchers_.end() ? nullptr : it->second.get();
}

// ---------------------------------------------------------------- routing

absl::StatusOr<RouteOutcome> CoordinatorState::Route(const RouteInput& in) {
  const absl::Time start = absl::Now();
  // Request checks that need no cluster state.
  const bool by_tokens = !in.tokens.empty();
  if (!by_tokens && in.block_hashes.empty()) {
    return absl::InvalidArgumentError("Route: token_ids and block_hashes are both empty");
  }
  if (by_tokens) {
    if (static_cast<int64_t>(in.tokens.size()) > options_.max_route_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("Route: ", in.tokens.size(),
                                                     " token_ids, more than max_route_tokens ",
                                                     options_.max_route_tokens));
    }
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      if (in.tokens[i] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("Route: token_ids[", i, "] = ", in.tokens[i], " is negative"));
      }
    }
  } else {
    if (in.num_tokens <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Route: num_tokens must be positive with block_hashes, got ", in.num_tokens));
    }
    if (in.num_tokens > options_.max_route_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("Route: num_tokens ", in.num_tokens,
                                                     " is more than max_route_tokens ",
                                                     options_.max_route_tokens));
    }
  }
  if (in.reserve_tokens < 0 || in.reserve_tokens > options_.max_route_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("Route: reserve_tokens must be in [0, ",
                                                   options_.max_route_tokens, "], got ",
                                                   in.reserve_tokens));
  }
  if (in.job_id.empty() && (!in.tool.empty() || in.last_step)) {
    return absl::InvalidArgumentError("Route: agent.tool/agent.last_step without agent.job_id");
  }
  if (in.job_id.size() > kMaxJobIdLength) {
    return absl::InvalidArgumentError(absl::StrCat("Route: agent.job_id has ", in.job_id.size(),
                                                   " bytes, more than ", kMaxJobIdLength));
  }

  RoutingView view = registry_->View();
  if (!view.model.has_value()) {
    return absl::UnavailableError("Route: no cache daemon is registered; retry later");
  }
  const int block_tokens = view.model->block_tokens;
  std::vector<BlockHash> computed;
  absl::Span<const BlockHash> hashes;
  int64_t tokens = 0;
  if (by_tokens) {
    for (size_t i = 0; i < in.tokens.size(); ++i) {
      if (in.tokens[i] >= view.model->vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Route: token_ids[", i, "] = ", in.tokens[i], " is outside the vocabulary [0, ",
            view.model->vocab_size, ") of model '", view.model->name, "'"));
      }
    }
    computed = ChainHashes(in.salt, in.tokens, block_tokens);
    hashes = computed;
    tokens = static_cast<int64_t>(in.tokens.size());
  } else {
    const int64_t expected = (in.num_tokens + block_tokens - 1) / block_tokens;
    if (static_cast<int64_t>(in.block_hashes.size()) != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Route: ", in.block_hashes.size(), " block_hashes for num_tokens ", in.num_tokens,
          "; expected ", expected, " (one per block of ", block_tokens,
          " tokens, the last may be partial)"));
    }
    hashes = in.block_hashes;
    tokens = in.num_tokens;
  }
  if (!in.exclude_daemons.empty()) {
    auto excluded = [&in](const RoutingMember& m) {
      return std::find(in.exclude_daemons.begin(), in.exclude_daemons.end(),
                       m.daemon->member_id) != in.exclude_daemons.end();
    };
    const size_t live = view.prefill.size();
    view.prefill.erase(std::remove_if(view.prefill.begin(), view.prefill.end(), excluded),
                       view.prefill.end());
    view.decode.erase(std::remove_if(view.decode.begin(), view.decode.end(), excluded),
                      view.decode.end());
    if (view.prefill.empty()) {
      return absl::UnavailableError(absl::StrCat(
          "Route: no live daemon can prefill besides the ", in.exclude_daemons.size(),
          " excluded (", live, " live prefill daemons); retry later"));
    }
  }
  if (view.prefill.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "Route: no live daemon can prefill (", view.decode.size(),
        " decode-only daemons live); retry later"));
  }
  // Blocks are fetched only from live daemons of this view (prefill or
  // decode), never from one that left but whose entries are still draining,
  // nor from an excluded one.
  std::vector<MemberSlot> sources;
  sources.reserve(view.prefill.size() + view.decode.size());
  for (const RoutingMember& m : view.prefill) sources.push_back(m.slot);
  for (const RoutingMember& m : view.decode) sources.push_back(m.slot);
  // Rejoined daemons over their ramp share sit this route out, unless no
  // other daemon is left to take it.
  std::vector<std::string> ramping_prefill;
  std::vector<std::string> ramping_decode;
  auto apply_ramp = [](std::vector<RoutingMember>& list, std::vector<std::string>& ramping) {
    bool any_open = false;
    for (const RoutingMember& m : list) {
      if (m.ramp_weight < 1) ramping.push_back(m.daemon->member_id);
      any_open |= m.ramp_open;
    }
    if (!any_open) return;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [](const RoutingMember& m) { return !m.ramp_open; }),
               list.end());
  };
  apply_ramp(view.prefill, ramping_prefill);
  apply_ramp(view.decode, ramping_decode);

  std::vector<RouteCandidate> candidates;
  candidates.reserve(view.prefill.size());
  for (const RoutingMember& m : view.prefill) candidates.push_back(ToCandidate(m));
  RouteQuery query;
  query.hashes = hashes;
  query.tokens = tokens;
  query.reserve_blocks = (in.reserve_tokens + block_tokens - 1) / block_tokens;
  if (!in.job_id.empty()) query.sticky_member = registry_->AgentAffinity(in.job_id);
  query.fetch_sources = absl::MakeConstSpan(sources);
  absl::StatusOr<RouteDecision> decision =
      router_->Route(query, candidates, *index_, in.explain);
  if (!decision.ok()) return decision.status();

  const RoutingMember& chosen = view.prefill[decision->candidate];
  RouteOutcome out;
  out.mode = options_.router.mode;
  out.block_tokens = block_tokens;
  out.reason = decision->reason;
  out.score = decision->score;
  out.prefill = RoutedTarget{chosen.daemon, chosen.prefill_worker};
  if (!view.decode.empty()) {
    std::vector<RouteCandidate> decoders;
    decoders.reserve(view.decode.size());
    for (const RoutingMember& m : view.decode) decoders.push_back(ToCandidate(m));
    absl::StatusOr<size_t> pick = router_->PickDecode(decoders);
    if (!pick.ok()) return pick.status();
    const RoutingMember& decoder = view.decode[*pick];
    out.decode = RoutedTarget{decoder.daemon, decoder.decode_worker};
    out.split = true;
  } else {
    out.decode = out.prefill;
  }
  out.rebuild = std::move(decision->rebuild);
  auto identity_of = [&view](MemberSlot slot) -> std::shared_ptr<const MemberIdentity> {
    for (const std::vector<RoutingMember>* list : {&view.prefill, &view.decode}) {
      for (const RoutingMember& m : *list) {
        if (m.slot == slot) return m.daemon;
      }
    }
    return nullptr;
  };
  out.fetch.reserve(decision->fetch.size());
  for (const FetchRun& f : decision->fetch) {
    out.fetch.push_back(RoutedFetch{identity_of(f.from), f.first_block, f.blocks, f.bytes});
  }
  if (in.explain) {
    out.candidates.reserve(decision->all.size());
    for (const CandidateScore& s : decision->all) {
      out.candidates.push_back(ScoredCandidate{identity_of(s.member), s});
    }
  }

  if (!ramping_prefill.empty()) {
    registry_->CountRampRoute(ramping_prefill, chosen.daemon->member_id);
  }
  if (!ramping_decode.empty() && out.split) {
    registry_->CountRampRoute(ramping_decode, out.decode.daemon->member_id);
  }
  // Work charged until the members' next heartbeats; agent affinity.
  const int64_t work = out.score.rebuild_tokens + out.score.new_tokens;
  registry_->AddPending(ChargedMember(out.prefill), work, out.split ? 0 : 1);
  if (out.split) registry_->AddPending(ChargedMember(out.decode), 0, 1);
  if (!in.job_id.empty()) {
    registry_->RecordAgentRoute(in.job_id, chosen.daemon->member_id, in.last_step,
                                static_cast<int64_t>(hashes.size()));
  }
  out.route_id = route_log_.Add(RouteRecord{out.score.predicted_ttft_s, chosen.daemon->member_id});
  if (metrics_ != nullptr) metrics_->ObserveRoute(out.reason, absl::Now() - start);
  return out;
}

absl::StatusOr<TtftReport> CoordinatorState::ReportTtft(uint64_t route_id, double ttft_s) {
  if (route_id == 0) return absl::InvalidArgumentError("ReportTtft: route_id is 0");
  if (!std::isfinite(ttft_s) || ttft_s <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReportTtft: ttft_s must be a positive number of seconds, got ", ttft_s));
  }
  std::optional<RouteRecord> route = route_log_.Take(route_id);
  if (!route.has_value()) {
    return absl::NotFoundError(absl::StrCat(
        "ReportTtft: route_id ", route_id,
        " is unknown to this coordinator (never issued here, already reported, or older than the "
        "last ", options_.route_history, " routes)"));
  }
  TtftReport report;
  report.predicted_ttft_s = route->predicted_ttft_s;
  report.relative_error = (ttft_s - route->predicted_ttft_s) / ttft_s;
  if (metrics_ != nullptr) metrics_->ObserveTtftReport(report.relative_error);
  return report;
}

// ---------------------------------------------------------------- listing, maintenance

CoordinatorListing CoordinatorState::List() const {
  CoordinatorListing out;
  std::vector<MemberSnapshot> members = registry_->List();
  out.members.reserve(members.size());
  {
    absl::MutexLock lock(&watchers_mu_);
    for (MemberSnapshot& m : members) {
      MemberStatus status;
      if (m.slot.has_value()) {
        status.index_entries = index_->MemberEntries(*m.slot);
        auto it = watchers_.find(*m.slot);
        if (it != watchers_.end()) {
          status.applied_event_sequence = it->second->applied_sequence();
          status.events_connected = it->second->connected();
        }
      }
      status.member = std::move(m);
      out.members.push_back(std::move(status));
    }
  }
  out.index_entries = index_->size();
  out.index_dropped_stored = index_->dropped_stored();
  out.stale_removed = index_->stale_removed();
  out.mode = options_.router.mode;
  out.model = registry_->cluster_model();
  return out;
}

void CoordinatorState::UpdateGauges() {
  if (metrics_ == nullptr) return;
  const CoordinatorListing listing = List();
  MemberCounts counts;
  for (const MemberStatus& m : listing.members) {
    counts.Add(m.member.kind, m.member.role);
    if (m.member.kind != MemberKind::kDaemon) continue;
    const uint64_t emitted = m.member.load.last_event_sequence;
    const int64_t lag = emitted > m.applied_event_sequence
                            ? static_cast<int64_t>(emitted - m.applied_event_sequence)
                            : 0;
    metrics_->SetDaemonEvents(m.member.member_id, lag, m.events_connected);
  }
  metrics_->SetMembers(counts);
  metrics_->SetIndex(listing.index_entries, listing.index_dropped_stored, listing.stale_removed);
  metrics_->SetAgentJobs(registry_->agent_jobs());
}

void CoordinatorState::RunMaintenance() {
  ExpireMembers();
  registry_->ExpireAgentJobs();
  // Under the membership lock: a daemon removed meanwhile must not get its
  // per-daemon series back from a listing taken before it left.
  absl::MutexLock lock(&membership_mu_);
  UpdateGauges();
}

}  // namespace asymcache
