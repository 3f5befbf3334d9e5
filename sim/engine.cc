#include "sim/engine.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cachecore/eviction_policy.h"

namespace asymcache {
namespace {

// Leases must outlive any modeled run; KvCache wants a finite timeout.
constexpr absl::Duration kLeaseTimeout = absl::Hours(24 * 365);
// Sequence ids of `none` requests live above every session's id.
constexpr SequenceId kNoneSequenceBase = SequenceId{1} << 40;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::Time ModeledTime(double s) { return absl::UnixEpoch() + absl::Seconds(s); }

int64_t EngineRequest::remaining_prefill_tokens() const {
  int64_t tokens = 0;
  for (size_t i = next_run; i < runs.size(); ++i) tokens += runs[i].second - runs[i].first;
  return tokens;
}

// --- ReplayState ------------------------------------------------------------

ReplayState::ReplayState(const Workload& workload, const SystemSpec& system,
                         const EngineOptions& options, int block_tokens)
    : workload_(workload), system_(system), options_(options), block_tokens_(block_tokens),
      sessions_(workload.sessions.size()) {
  result_.system = system.name;
  result_.jobs.resize(workload.sessions.size());
  for (size_t i = 0; i < workload.sessions.size(); ++i) {
    const SessionSpec& s = workload.sessions[i];
    result_.jobs[i].session = static_cast<int32_t>(i);
    result_.jobs[i].start_s = s.steps[0].arrival_s;
    total_requests_ += static_cast<int64_t>(s.steps.size());
    Schedule(static_cast<int32_t>(i), s.steps[0].arrival_s);
  }
}

void ReplayState::Schedule(int32_t session, double time_s) {
  arrivals_.push(Pending{time_s, order_++, session});
}

ReplayState::Arrival ReplayState::PopArrival() {
  const Pending pending = arrivals_.top();
  arrivals_.pop();
  const int32_t session_index = pending.session;
  const SessionSpec& spec = workload_.sessions[session_index];
  SessionState& state = sessions_[session_index];
  const int step_index = state.next_step++;
  const StepSpec& step = spec.steps[step_index];
  for (int part = 0; part < static_cast<int>(step.input.size()); ++part) {
    AppendInputTokens(spec, step_index, part, &state.context);
  }
  EngineRequest request;
  request.record = result_.requests.size();
  request.session = session_index;
  request.step = step_index;
  request.prompt_tokens = static_cast<int64_t>(state.context.size());
  AppendOutputTokens(spec, step.output_tokens, &state.context);
  request.context_tokens = static_cast<int64_t>(state.context.size());
  request.output_tokens = step.output_tokens;
  if (system_.reuse) {
    request.sequence = static_cast<SequenceId>(session_index) + 1;
    request.salt = spec.salt;
  } else {
    request.sequence = kNoneSequenceBase + request.record;
    request.salt = absl::StrCat("none-request-", request.record);
  }
  RequestRecord record;
  record.session = session_index;
  record.step = step_index;
  record.arrival_s = pending.time_s;
  record.prompt_tokens = request.prompt_tokens;
  record.prompt_blocks = CeilDiv(request.prompt_tokens, block_tokens_);
  result_.requests.push_back(record);
  Arrival arrival;
  arrival.session = session_index;
  arrival.sequence = request.sequence;
  if (CeilDiv(request.context_tokens, block_tokens_) > options_.pool_blocks) {
    Reject(request);
    return arrival;
  }
  arrival.request = std::move(request);
  return arrival;
}

void ReplayState::Reject(const EngineRequest& request) {
  result_.requests[request.record].rejected = true;
  SessionState& state = sessions_[request.session];
  // The session's later steps never arrive: count them as done for progress.
  const int64_t remaining =
      static_cast<int64_t>(workload_.sessions[request.session].steps.size()) - request.step;
  done_requests_ += remaining;
  state.context.clear();
  state.context.shrink_to_fit();
  ReportProgress();
}

void ReplayState::OnFinished(const EngineRequest& request, double now_s) {
  const SessionSpec& spec = workload_.sessions[request.session];
  const StepSpec& step = spec.steps[request.step];
  SessionState& state = sessions_[request.session];
  result_.requests[request.record].finish_s = now_s;
  ++done_requests_;
  if (step.last_step) {
    if (spec.is_job()) result_.jobs[request.session].finish_s = now_s;
    state.context.clear();
    state.context.shrink_to_fit();
  } else {
    Schedule(request.session, now_s + step.delay_after_s());
  }
  ReportProgress();
}

void ReplayState::ReportProgress() {
  if (!options_.progress || total_requests_ == 0) return;
  const int64_t permille = done_requests_ * 200 / total_requests_;
  if (permille != last_progress_) {
    last_progress_ = permille;
    options_.progress(static_cast<double>(done_requests_) / static_cast<double>(total_requests_));
  }
}

RunResult ReplayState::TakeResult() {
  double first = -1, last = 0;
  for (const RequestRecord& r : result_.requests) {
    if (first < 0 || r.arrival_s < first) first = r.arrival_s;
    if (r.finished()) last = std::max(last, r.finish_s);
  }
  result_.makespan_s = std::max(0.0, last - std::max(first, 0.0));
  std::vector<JobRecord> jobs;
  for (size_t i = 0; i < workload_.sessions.size(); ++i) {
    if (workload_.sessions[i].is_job()) jobs.push_back(result_.jobs[i]);
  }
  result_.jobs = std::move(jobs);
  return std::move(result_);
}

// --- EngineInstance ---------------------------------------------------------

EngineInstance::EngineInstance(const SystemSpec& system, const CostModel& cost,
                               const EngineOptions& options, ReplayState* replay)
    : system_(system), cost_(cost), options_(options), replay_(replay) {}

absl::StatusOr<std::unique_ptr<EngineInstance>> EngineInstance::Create(
    const SystemSpec& system, const CostModel& cost, const EngineOptions& options,
    FakeClock* clock, ReplayState* replay) {
  std::unique_ptr<EngineInstance> engine(
      new EngineInstance(system, cost, options, replay));
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy =
      MakeEvictionPolicy(system.policy, &cost);
  if (!policy.ok()) return policy.status();
  KvCacheOptions cache_options;
  cache_options.model = cost.model();
  cache_options.capacity_blocks = options.pool_blocks;
  cache_options.lease_timeout = kLeaseTimeout;
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      KvCache::Create(cache_options, *std::move(policy), clock);
  if (!cache.ok()) return cache.status();
  engine->cache_ = *std::move(cache);

  ChunkSchedulerOptions chunking;
  chunking.mode = system.adaptive_chunking ? ChunkSchedulerOptions::Mode::kAdaptive
                                           : ChunkSchedulerOptions::Mode::kFixed;
  chunking.fixed_budget_tokens = system.fixed_budget_tokens;
  chunking.tpot_target = options.tpot_target;
  chunking.tpot_slo = options.tpot_slo;
  chunking.max_step_latency = options.max_step_latency;
  chunking.tile_tokens = options.tile_tokens;
  chunking.max_budget_tokens = std::max(options.max_budget_tokens, options.tile_tokens);
  chunking.min_budget_tokens = options.tile_tokens;
  chunking.overload_budget_tokens = options.overload_budget_tokens;
  chunking.prefill_order = PrefillOrderOf(system);
  if (absl::Status s = chunking.Validate(); !s.ok()) return s;
  engine->scheduler_ = std::make_unique<ChunkScheduler>(&cost, chunking);
  if (options.agent_pins && system.reuse) {
    engine->pins_ = std::make_unique<AgentPinTable>(options.pool_blocks, options.pin_options, clock);
  }
  return engine;
}

void EngineInstance::Enqueue(EngineRequest request) { waiting_.push_back(std::move(request)); }

void EngineInstance::Reject(EngineRequest& request) {
  if (system_.reuse) cache_->ForgetSession(request.sequence);
  replay_->Reject(request);
}

double EngineInstance::ExpectedRebuildCost(int64_t tokens) const {
  // Recomputing the whole context as one prefill riding in a step of the
  // current load: marginal linear time plus causal attention over it.
  AttentionWork work;
  work.query_tokens = tokens;
  work.attended_pairs = ChunkScheduler::CausalAttendedPairs(0, tokens);
  work.kv_tokens_scanned = tokens;
  // Per pair: the whole context is rebuilt over many chunked steps.
  return cost_.MarginalLinearTime(load_hint_tokens_, tokens) + cost_.PerPairAttentionTime(work);
}

absl::Status EngineInstance::Admit() {
  const int block = cache_->model().block_tokens;
  const Workload& workload = replay_->workload();
  const bool grow = options_.grow_output_blocks;
  head_blocked_on_memory_ = false;
  while (!waiting_.empty() &&
         static_cast<int>(running_.size()) < options_.max_running_requests) {
    EngineRequest& request = waiting_.front();
    const std::vector<TokenId>& context = replay_->context(request.session);
    // The whole context (outputs reserved), or, as the worker plans it, the
    // tokens so far: the prompt, and the tokens generated before a preemption.
    const int64_t planned =
        grow ? request.prompt_tokens + request.generated : request.context_tokens;
    const bool may_defer =
        request.deferred_since_s < 0 ||
        now_s_ - request.deferred_since_s < absl::ToDoubleSeconds(options_.defer_pending_max_wait);
    const BeginStepOptions begin{.defer_if_pending_tokens =
                                     may_defer ? options_.defer_pending_tokens : 0};
    absl::StatusOr<StepLease> lease = cache_->BeginStep(
        request.salt, request.sequence,
        absl::MakeConstSpan(context.data(), static_cast<size_t>(planned)), begin);
    if (absl::IsAborted(lease.status())) {
      // Deferred: a running request is computing its pages. It waits (FCFS)
      // and is planned again at the next step, as the worker plans it again
      // once that request's commit landed.
      if (running_.empty()) {
        return absl::InternalError(absl::StrCat("BeginStep deferred with nothing running: ",
                                                lease.status().message()));
      }
      ++totals_.deferred_plans;
      if (request.deferred_since_s < 0) request.deferred_since_s = now_s_;
      return absl::OkStatus();
    }
    if (!lease.ok() && absl::IsResourceExhausted(lease.status()) && pins_ != nullptr) {
      const double waited = now_s_ - replay_->record(request.record).arrival_s;
      const absl::Duration wait =
          running_.empty() ? absl::InfiniteDuration() : absl::Seconds(waited);
      const int64_t released = pins_->ReleaseUnderPressure(CeilDiv(planned, block), wait);
      totals_.pins_released_under_pressure += released;
      if (released > 0) continue;  // retry with the freed blocks
    }
    if (!lease.ok()) {
      if (!absl::IsResourceExhausted(lease.status())) {
        return absl::InternalError(absl::StrCat("BeginStep: ", lease.status().message()));
      }
      if (running_.empty()) {
        // Nothing runs and no pin is left: it can never fit.
        EngineRequest rejected = std::move(request);
        waiting_.pop_front();
        Reject(rejected);
        continue;
      }
      head_blocked_on_memory_ = true;
      return absl::OkStatus();  // FCFS: the head waits for memory
    }
    RequestRecord& record = replay_->record(request.record);
    // A preempted request admitted again keeps its first plan's counts (the
    // worker's RequestStats come from its first plan too).
    const bool first_admission = record.admitted_s < 0;
    if (first_admission && pins_ != nullptr) {
      pins_->OnJobResumed(workload.sessions[request.session].id);
    }
    const StepPlan& plan = lease->plan;
    if (first_admission) record.admitted_s = now_s_;
    // Positions to prefill: the prompt's (outputs reserved with it are
    // decoded) or every planned one.
    const int64_t limit = grow ? planned : request.prompt_tokens;
    for (const Segment& segment : plan.segments) {
      const int64_t begin = segment.begin;
      const int64_t end = std::min(segment.end, limit);
      if (begin >= end) break;
      switch (segment.kind) {
        case Segment::Kind::kResident:
          if (first_admission) record.hit_tokens += end - begin;
          break;
        case Segment::Kind::kHole:
          if (first_admission) record.rebuild_tokens += end - begin;
          request.runs.emplace_back(begin, end);
          break;
        case Segment::Kind::kTail:
          if (first_admission) record.new_tokens += end - begin;
          request.runs.emplace_back(begin, end);
          break;
      }
    }
    if (first_admission) {
      for (int64_t page = 0;
           page < record.prompt_blocks && page < static_cast<int64_t>(plan.page_resident.size());
           ++page) {
        record.hit_blocks += plan.page_resident[page];
      }
    }
    // The next token needs the last planned position's query even when all
    // of it is resident.
    if (request.runs.empty()) request.runs.emplace_back(limit - 1, limit);
    request.lease_id = lease->lease_id;
    if (grow) {
      request.planned_tokens = planned;
      request.committed = false;
      request.private_last_page = false;
      request.last_page_resident = !plan.page_resident.empty() && plan.page_resident.back() != 0;
      request.decode_blocked = false;
    }
    running_.push_back(std::move(request));
    waiting_.pop_front();
  }
  return absl::OkStatus();
}

absl::Status EngineInstance::PlanDecodePages() {
  const int block = cache_->model().block_tokens;
  for (EngineRequest& r : running_) {
    r.decode_blocked = false;
    if (!r.prefilled()) continue;
    // Tokens so far; the last one is fed in this step, at position known - 1.
    const int64_t known = r.prompt_tokens + r.generated;
    if (r.planned_tokens != known - 1) {
      return absl::InternalError(absl::StrCat("request ", r.record, ": its lease covers ",
                                              r.planned_tokens, " positions, not ", known - 1));
    }
    if (r.private_last_page && r.planned_tokens % block != 0) {
      ++r.planned_tokens;  // into the private page: no plan
      continue;
    }
    // The page is full (or not private): plan the context so far, as the
    // worker does. The rows the old lease holds are copied into the new
    // pages (no compute), so this step runs the one decode token.
    const std::vector<TokenId>& context = replay_->context(r.session);
    const absl::Span<const TokenId> tokens =
        absl::MakeConstSpan(context.data(), static_cast<size_t>(known));
    absl::StatusOr<StepLease> lease = cache_->BeginStep(r.salt, r.sequence, tokens);
    if (!lease.ok() && absl::IsResourceExhausted(lease.status()) && pins_ != nullptr) {
      // The daemon's pressure release: the wait counts from the sequence's
      // first refused plan (zero then), and one retry.
      const double waited = r.blocked_since_s < 0 ? 0 : now_s_ - r.blocked_since_s;
      const int64_t released =
          pins_->ReleaseUnderPressure(CeilDiv(known, block), absl::Seconds(waited));
      totals_.pins_released_under_pressure += released;
      if (released > 0) lease = cache_->BeginStep(r.salt, r.sequence, tokens);
    }
    if (!lease.ok()) {
      if (!absl::IsResourceExhausted(lease.status())) {
        return absl::InternalError(absl::StrCat("BeginStep: ", lease.status().message()));
      }
      if (r.blocked_since_s < 0) r.blocked_since_s = now_s_;
      r.decode_blocked = true;  // skips this step, asks again at the next
      ++replay_->record(r.record).blocked_decode_steps;
      ++totals_.blocked_decode_steps;
      continue;
    }
    r.blocked_since_s = -1;
    if (absl::Status s = cache_->ReleaseStep(r.lease_id); !s.ok()) {
      return absl::InternalError(absl::StrCat("ReleaseStep: ", s.message()));
    }
    r.lease_id = lease->lease_id;
    r.committed = false;
    r.private_last_page = false;
    r.last_page_resident =
        !lease->plan.page_resident.empty() && lease->plan.page_resident.back() != 0;
    r.planned_tokens = known;
  }
  return absl::OkStatus();
}

absl::Status EngineInstance::CommitComputed(EngineRequest& request, bool finishing) {
  KvCache::CommitOptions commit;
  commit.keep_partial_last_page = !finishing;
  KvCache::CommitResult result;
  if (absl::Status s = cache_->CommitStep(request.lease_id, commit, &result); !s.ok()) {
    return absl::InternalError(absl::StrCat("CommitStep: ", s.message()));
  }
  request.committed = true;
  // The worker's rule (SequencePages::LastPageIsOwnPartial); the cache must agree.
  request.private_last_page = !finishing &&
                              request.planned_tokens % cache_->model().block_tokens != 0 &&
                              !request.last_page_resident;
  if (result.private_blocks != (request.private_last_page ? 1 : 0)) {
    return absl::InternalError(absl::StrCat("CommitStep kept ", result.private_blocks,
                                            " private blocks for request ", request.record));
  }
  return absl::OkStatus();
}

absl::Status EngineInstance::PreemptNewest() {
  EngineRequest request = std::move(running_.back());
  running_.pop_back();
  if (absl::Status s = cache_->ReleaseStep(request.lease_id); !s.ok()) {
    return absl::InternalError(absl::StrCat("ReleaseStep: ", s.message()));
  }
  request.lease_id = 0;
  request.committed = false;
  request.runs.clear();
  request.next_run = 0;
  request.planned_tokens = 0;
  request.private_last_page = false;
  request.last_page_resident = false;
  request.decode_blocked = false;
  request.blocked_since_s = -1;
  ++replay_->record(request.record).preemptions;
  ++totals_.preemptions;
  waiting_.push_front(std::move(request));
  return absl::OkStatus();
}

absl::Status EngineInstance::FinishRequest(EngineRequest& request) {
  if (!request.committed) {
    if (absl::Status s = cache_->CommitStep(request.lease_id); !s.ok()) {
      return absl::InternalError(absl::StrCat("CommitStep: ", s.message()));
    }
  }
  if (absl::Status s = cache_->ReleaseStep(request.lease_id); !s.ok()) {
    return absl::InternalError(absl::StrCat("ReleaseStep: ", s.message()));
  }
  const SessionSpec& spec = replay_->workload().sessions[request.session];
  const StepSpec& step = spec.steps[request.step];
  if (step.last_step) {
    if (system_.reuse) cache_->ForgetSession(request.sequence);
  } else if (pins_ != nullptr && !step.tool.empty()) {
    const std::vector<TokenId>& context = replay_->context(request.session);
    absl::StatusOr<BlockPool::PinSet> pinned =
        cache_->PinContext(request.salt, absl::MakeConstSpan(context));
    if (!pinned.ok()) return absl::InternalError(std::string(pinned.status().message()));
    const double rebuild = ExpectedRebuildCost(static_cast<int64_t>(context.size()));
    const PinDecision decision =
        pins_->PinJob(spec.id, step.tool, /*last_step=*/false, std::move(*pinned), rebuild);
    if (decision.pinned) ++totals_.pins_granted;
  }
  if (!system_.reuse) cache_->ForgetSession(request.sequence);
  replay_->OnFinished(request, now_s_);
  return absl::OkStatus();
}

absl::StatusOr<bool> EngineInstance::StartStep(double now_s) {
  if (in_step_) return absl::InternalError("StartStep with a step in flight");
  now_s_ = now_s;
  if (pins_ != nullptr) pins_->ExpirePins();
  std::vector<DecodeWork> decodes;
  std::vector<PrefillWork> pending;
  while (true) {
    if (absl::Status s = Admit(); !s.ok()) return s;
    if (options_.grow_output_blocks) {
      if (absl::Status s = PlanDecodePages(); !s.ok()) return s;
    }
    if (running_.empty()) {
      // Admission with nothing running admits or rejects every waiting request.
      if (!waiting_.empty()) return absl::InternalError("idle engine left requests waiting");
      return false;
    }
    decodes.clear();
    pending.clear();
    decoding_.clear();
    prefilling_.clear();
    for (size_t i = 0; i < running_.size(); ++i) {
      EngineRequest& r = running_[i];
      if (r.prefilled()) {
        if (r.decode_blocked) continue;
        // Its decode so far, for the request-mean TPOT rule: generated counts
        // the first token.
        decodes.push_back(DecodeWork{r.sequence, r.prompt_tokens + r.generated, r.generated - 1,
                                     now_s_ - replay_->record(r.record).first_token_s});
        decoding_.push_back(i);
      } else {
        PrefillWork work;
        work.sequence = r.sequence;
        work.runs.assign(r.runs.begin() + static_cast<std::ptrdiff_t>(r.next_run), r.runs.end());
        work.context_tokens = options_.grow_output_blocks ? r.planned_tokens : r.prompt_tokens;
        work.waited_s = now_s_ - replay_->record(r.record).arrival_s;
        pending.push_back(std::move(work));
        prefilling_[r.sequence] = i;
      }
    }
    if (!decodes.empty() || !pending.empty()) break;
    if (!options_.grow_output_blocks) {
      return absl::InternalError("running requests with nothing to run");
    }
    // Every running request waits for a page: as the worker, the most
    // recently admitted one gives its blocks back, and the step is tried
    // again at the same modeled instant (the worker sleeps 1 ms).
    if (absl::Status s = PreemptNewest(); !s.ok()) return s;
  }
  schedule_ = scheduler_->Schedule(decodes, pending, /*overloaded=*/!waiting_.empty());
  const int64_t step_tokens = static_cast<int64_t>(decodes.size()) + schedule_.prefill_tokens;
  if (step_tokens == 0) {
    return absl::InternalError("scheduler chose an empty step while work was pending");
  }
  ++totals_.engine_steps;
  totals_.busy_s += schedule_.predicted_latency_s;
  totals_.prefill_tokens += schedule_.prefill_tokens;
  totals_.decode_tokens += static_cast<int64_t>(decodes.size());
  if (schedule_.prefill_tokens > 0) {
    if (decodes.empty()) {
      ++totals_.prefill_only_steps;
      totals_.prefill_only_busy_s += schedule_.predicted_latency_s;
    } else {
      ++totals_.mixed_steps;
      totals_.mixed_busy_s += schedule_.predicted_latency_s;
    }
  }
  if (head_blocked_on_memory_) {
    const BlockPool::Stats pool = cache_->pool().GetStats();
    totals_.memory_blocked_s += schedule_.predicted_latency_s;
    totals_.memory_blocked_busy_block_s +=
        schedule_.predicted_latency_s * static_cast<double>(pool.writing + pool.pinned) /
        static_cast<double>(std::max<int64_t>(pool.capacity, 1));
  }
  if (options_.record_steps) {
    totals_.steps.push_back(SimStep{now_s_, decodes, schedule_.chunks, schedule_.predicted_latency_s,
                                    static_cast<int64_t>(waiting_.size())});
  }
  step_end_s_ = now_s_ + schedule_.predicted_latency_s;
  in_step_ = true;
  return true;
}

absl::Status EngineInstance::CompleteStep() {
  if (!in_step_) return absl::InternalError("CompleteStep without a step in flight");
  in_step_ = false;
  const double step_s = schedule_.predicted_latency_s;
  now_s_ = step_end_s_;
  SequenceId previous_sequence = 0;
  for (const Chunk& chunk : schedule_.chunks) {
    auto it = prefilling_.find(chunk.sequence);
    if (it == prefilling_.end()) return absl::InternalError("chunk for an unknown sequence");
    EngineRequest& r = running_[it->second];
    if (chunk.sequence != previous_sequence) {  // a sequence's chunks are consecutive
      // Its prefill before the first token (not a re-prefill after a preemption).
      if (r.generated == 0) {
        RequestRecord& record = replay_->record(r.record);
        ++record.prefill_steps;
        record.prefill_step_s += step_s;
      }
      previous_sequence = chunk.sequence;
    }
    if (r.next_run >= r.runs.size() || r.runs[r.next_run].first != chunk.begin ||
        chunk.end > r.runs[r.next_run].second) {
      return absl::InternalError(absl::StrCat("chunk [", chunk.begin, ", ", chunk.end,
                                              ") out of position order"));
    }
    r.runs[r.next_run].first = chunk.end;
    if (r.runs[r.next_run].first == r.runs[r.next_run].second) ++r.next_run;
  }
  for (size_t i : decoding_) ++running_[i].generated;
  // In running_ order (admission order), not the map's: which of two leases
  // that wrote the same blocks commits first must not depend on hashing.
  std::vector<size_t> prefilled;
  for (const auto& [sequence, i] : prefilling_) {
    if (running_[i].prefilled()) prefilled.push_back(i);
  }
  std::sort(prefilled.begin(), prefilled.end());
  for (size_t i : prefilled) {
    EngineRequest& r = running_[i];
    // Its first token, or the token a re-prefill after a preemption yields.
    if (r.generated++ > 0) continue;
    replay_->record(r.record).first_token_s = now_s_;
    if (options_.commit_at_prefill_end && !options_.grow_output_blocks) {
      if (absl::Status s = cache_->CommitStep(r.lease_id); !s.ok()) {
        return absl::InternalError(absl::StrCat("CommitStep: ", s.message()));
      }
      r.committed = true;
    }
  }
  if (options_.grow_output_blocks) {
    // As the worker after its forward pass: every lease whose positions are
    // all computed now (a completed prefill, a new page's decode) is committed.
    for (EngineRequest& r : running_) {
      if (r.committed || !r.prefilled()) continue;
      if (absl::Status s = CommitComputed(r, r.generated >= r.output_tokens); !s.ok()) return s;
    }
  }
  size_t kept = 0;
  for (size_t i = 0; i < running_.size(); ++i) {
    EngineRequest& r = running_[i];
    replay_->record(r.record).output_tokens = r.generated;
    if (r.generated >= r.output_tokens) {
      if (absl::Status s = FinishRequest(r); !s.ok()) return s;
      continue;
    }
    if (kept != i) running_[kept] = std::move(r);
    ++kept;
  }
  running_.resize(kept);
  const int64_t step_tokens = static_cast<int64_t>(decoding_.size()) + schedule_.prefill_tokens;
  load_hint_tokens_ = step_tokens;
  cache_->SetLoadHint(step_tokens);
  return absl::OkStatus();
}

EngineInstance::Load EngineInstance::CurrentLoad() const {
  Load load;
  for (const EngineRequest& r : waiting_) load.queued_prefill_tokens += r.prompt_tokens;
  for (const EngineRequest& r : running_) {
    if (r.prefilled()) {
      ++load.decode_batch;
    } else {
      load.queued_prefill_tokens += r.remaining_prefill_tokens();
    }
  }
  const BlockPool::Stats pool = cache_->pool().GetStats();
  load.free_blocks = pool.free;
  load.capacity_blocks = pool.capacity;
  load.busy_blocks = pool.writing + pool.pinned + pool.in_transfer;
  return load;
}

EngineTotals EngineInstance::Finish() {
  if (pins_ != nullptr) pins_.reset();
  const KvCache::Stats stats = cache_->GetStats();
  totals_.evictions = stats.pool.evictions;
  totals_.final_pool = stats.pool;
  totals_.consistency = cache_->CheckConsistency();
  return totals_;
}

absl::Status CheckCacheAfterRun(absl::string_view name, const absl::Status& consistency,
                                const BlockPool::Stats& pool) {
  if (!consistency.ok()) {
    return absl::InternalError(
        absl::StrCat(name, ": cache inconsistent after run: ", consistency.message()));
  }
  if (pool.pinned != 0 || pool.writing != 0) {
    return absl::InternalError(absl::StrCat(name, ": ", pool.pinned, " pinned and ", pool.writing,
                                            " writing blocks left after the run"));
  }
  return absl::OkStatus();
}

absl::Status EngineOptions::Validate() const {
  if (pool_blocks < 1) return absl::InvalidArgumentError("EngineOptions.pool_blocks must be >= 1");
  if (max_running_requests < 1) {
    return absl::InvalidArgumentError("EngineOptions.max_running_requests must be >= 1");
  }
  if (tile_tokens < 1) return absl::InvalidArgumentError("EngineOptions.tile_tokens must be >= 1");
  if (max_budget_tokens < tile_tokens || max_budget_tokens % tile_tokens != 0) {
    return absl::InvalidArgumentError(
        "EngineOptions.max_budget_tokens must be a positive multiple of tile_tokens");
  }
  if (overload_budget_tokens < 0 || overload_budget_tokens % tile_tokens != 0) {
    return absl::InvalidArgumentError(
        "EngineOptions.overload_budget_tokens must be 0 (off) or a positive multiple of "
        "tile_tokens");
  }
  if (tpot_target <= absl::ZeroDuration() || tpot_target == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("EngineOptions.tpot_target must be > 0 and finite");
  }
  if (max_step_latency < absl::ZeroDuration() || max_step_latency == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("EngineOptions.max_step_latency must be finite and >= 0");
  }
  if (defer_pending_tokens < 0) {
    return absl::InvalidArgumentError("EngineOptions.defer_pending_tokens must be >= 0 (0 = never)");
  }
  if (defer_pending_max_wait <= absl::ZeroDuration() ||
      defer_pending_max_wait == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("EngineOptions.defer_pending_max_wait must be finite and > 0");
  }
  if (defer_pending_tokens > 0 && !commit_at_prefill_end) {
    return absl::InvalidArgumentError(
        "EngineOptions.defer_pending_tokens requires commit_at_prefill_end (a request committed "
        "at finish would make the deferred one wait for its whole decode)");
  }
  if (grow_output_blocks && !commit_at_prefill_end) {
    return absl::InvalidArgumentError(
        "EngineOptions.grow_output_blocks requires commit_at_prefill_end (a decoding request's "
        "next page is planned over its earlier pages, which it finds only once they are sealed)");
  }
  if (agent_pins) return pin_options.Validate();
  return absl::OkStatus();
}

absl::StatusOr<RunResult> RunSystem(const Workload& workload, const SystemSpec& system,
                                    const CostModel& cost, const EngineOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = workload.Validate(); !s.ok()) return s;
  FakeClock clock(ModeledTime(0));
  ReplayState replay(workload, system, options, cost.model().block_tokens);
  absl::StatusOr<std::unique_ptr<EngineInstance>> created =
      EngineInstance::Create(system, cost, options, &clock, &replay);
  if (!created.ok()) return created.status();
  EngineInstance& engine = **created;
  double now_s = 0;
  while (true) {
    while (replay.has_arrival() && replay.next_arrival_s() <= now_s) {
      ReplayState::Arrival arrival = replay.PopArrival();
      if (arrival.request.has_value()) {
        engine.Enqueue(*std::move(arrival.request));
      } else if (system.reuse) {
        engine.ForgetSession(arrival.sequence);
      }
    }
    absl::StatusOr<bool> stepping = engine.StartStep(now_s);
    if (!stepping.ok()) return stepping.status();
    if (!*stepping) {
      if (!replay.has_arrival()) break;
      now_s = std::max(now_s, replay.next_arrival_s());
      clock.Set(ModeledTime(now_s));
      continue;
    }
    now_s = engine.step_end_s();
    clock.Set(ModeledTime(now_s));
    if (absl::Status s = engine.CompleteStep(); !s.ok()) return s;
  }
  EngineTotals totals = engine.Finish();
  RunResult result = replay.TakeResult();
  result.engine_steps = totals.engine_steps;
  result.busy_s = totals.busy_s;
  result.prefill_tokens = totals.prefill_tokens;
  result.decode_tokens = totals.decode_tokens;
  result.mixed_steps = totals.mixed_steps;
  result.mixed_busy_s = totals.mixed_busy_s;
  result.prefill_only_steps = totals.prefill_only_steps;
  result.prefill_only_busy_s = totals.prefill_only_busy_s;
  result.memory_blocked_s = totals.memory_blocked_s;
  result.memory_blocked_busy_fraction =
      totals.memory_blocked_s > 0 ? totals.memory_blocked_busy_block_s / totals.memory_blocked_s : 0;
  result.evictions = totals.evictions;
  result.pins_granted = totals.pins_granted;
  result.pins_released_under_pressure = totals.pins_released_under_pressure;
  result.deferred_plans = totals.deferred_plans;
  result.preemptions = totals.preemptions;
  result.blocked_decode_steps = totals.blocked_decode_steps;
  result.final_pool = totals.final_pool;
  result.consistency = totals.consistency;
  result.steps = std::move(totals.steps);
  return result;
}

int64_t PoolBlocksForGiB(const ModelConfig& model, double gib) {
  const double bytes = gib * 1024.0 * 1024.0 * 1024.0;
  return static_cast<int64_t>(bytes / static_cast<double>(model.KvBytesPerBlock()));
}

}  // namespace asymcache
