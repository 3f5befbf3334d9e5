#include "sim/engine.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <memory>
#include <optional>
#include <queue>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/kv_cache.h"

namespace asymcache {
namespace {

// Leases must outlive any modeled run; KvCache wants a finite timeout.
constexpr absl::Duration kLeaseTimeout = absl::Hours(24 * 365);
// Sequence ids of `none` requests live above every session's id.
constexpr SequenceId kNoneSequenceBase = SequenceId{1} << 40;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct SessionState {
  std::vector<TokenId> context;  // every token so far (prompts + outputs)
  int next_step = 0;
  bool failed = false;
};

// A request admitted or waiting.
struct ActiveRequest {
  size_t record = 0;   // index into RunResult::requests
  int32_t session = 0;
  int32_t step = 0;
  SequenceId sequence = 0;
  std::string salt;
  uint64_t lease_id = 0;
  int64_t prompt_tokens = 0;
  int64_t context_tokens = 0;
  int64_t output_tokens = 0;
  std::vector<std::pair<int64_t, int64_t>> runs;  // pending prefill query runs
  size_t next_run = 0;
  int64_t generated = 0;
  bool prefilled() const { return next_run == runs.size(); }
};

struct Arrival {
  double time_s;
  uint64_t order;  // FIFO among equal times
  int32_t session;
  friend bool operator>(const Arrival& a, const Arrival& b) {
    return a.time_s != b.time_s ? a.time_s > b.time_s : a.order > b.order;
  }
};

class Simulation {
 public:
  Simulation(const Workload& workload, const SystemSpec& system, const CostModel& cost,
             const EngineOptions& options)
      : workload_(workload), system_(system), cost_(cost), options_(options),
        sessions_(workload.sessions.size()) {}

  absl::StatusOr<RunResult> Run();

 private:
  absl::Time At(double s) const { return absl::UnixEpoch() + absl::Seconds(s); }
  void SetNow(double s) {
    now_s_ = s;
    clock_.Set(At(s));
  }
  void OnArrival(int32_t session, double time_s);
  // Admits waiting requests FCFS. Returns an error only on cache misbehaviour.
  absl::Status Admit();
  absl::Status Finish(ActiveRequest& request);
  void ScheduleNext(int32_t session, double time_s);
  void Reject(ActiveRequest& request);
  double ExpectedRebuildCost(int64_t tokens) const;
  void ReportProgress();

  const Workload& workload_;
  const SystemSpec& system_;
  const CostModel& cost_;
  const EngineOptions& options_;

  FakeClock clock_;
  double now_s_ = 0;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<ChunkScheduler> scheduler_;
  std::unique_ptr<AgentPinTable> pins_;
  std::vector<SessionState> sessions_;
  std::priority_queue<Arrival, std::vector<Arrival>, std::greater<Arrival>> arrivals_;
  uint64_t arrival_order_ = 0;
  std::deque<ActiveRequest> waiting_;
  std::vector<ActiveRequest> running_;
  RunResult result_;
  int64_t total_requests_ = 0;
  int64_t done_requests_ = 0;
  int64_t last_progress_ = -1;
  int64_t load_hint_tokens_ = 0;
};

void Simulation::ScheduleNext(int32_t session, double time_s) {
  arrivals_.push(Arrival{time_s, arrival_order_++, session});
}

void Simulation::OnArrival(int32_t session_index, double time_s) {
  const SessionSpec& spec = workload_.sessions[session_index];
  SessionState& state = sessions_[session_index];
  const int step_index = state.next_step++;
  const StepSpec& step = spec.steps[step_index];
  for (int part = 0; part < static_cast<int>(step.input.size()); ++part) {
    AppendInputTokens(spec, step_index, part, &state.context);
  }
  ActiveRequest request;
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
  record.arrival_s = time_s;
  record.prompt_tokens = request.prompt_tokens;
  const int block = cache_->model().block_tokens;
  record.prompt_blocks = CeilDiv(request.prompt_tokens, block);
  result_.requests.push_back(record);
  if (CeilDiv(request.context_tokens, block) > options_.pool_blocks) {
    Reject(request);
    return;
  }
  waiting_.push_back(std::move(request));
}

void Simulation::Reject(ActiveRequest& request) {
  result_.requests[request.record].rejected = true;
  SessionState& state = sessions_[request.session];
  state.failed = true;
  // The session's later steps never arrive: count them as done for progress.
  const int64_t remaining =
      static_cast<int64_t>(workload_.sessions[request.session].steps.size()) - request.step;
  done_requests_ += remaining;
  state.context.clear();
  state.context.shrink_to_fit();
  if (system_.reuse) cache_->ForgetSession(request.sequence);
  ReportProgress();
}

double Simulation::ExpectedRebuildCost(int64_t tokens) const {
  // Recomputing the whole context as one prefill riding in a step of the
  // current load: marginal linear time plus causal attention over it.
  AttentionWork work;
  work.query_tokens = tokens;
  work.attended_pairs = ChunkScheduler::CausalAttendedPairs(0, tokens);
  work.kv_tokens_scanned = tokens;
  return cost_.MarginalLinearTime(load_hint_tokens_, tokens) + cost_.AttentionTime(work);
}

absl::Status Simulation::Admit() {
  const int block = cache_->model().block_tokens;
  while (!waiting_.empty() &&
         static_cast<int>(running_.size()) < options_.max_running_requests) {
    ActiveRequest& request = waiting_.front();
    const std::vector<TokenId>& context = sessions_[request.session].context;
    absl::StatusOr<StepLease> lease = cache_->BeginStep(
        request.salt, request.sequence,
        absl::MakeConstSpan(context.data(), static_cast<size_t>(request.context_tokens)));
    if (!lease.ok() && absl::IsResourceExhausted(lease.status()) && pins_ != nullptr) {
      const double waited = now_s_ - result_.requests[request.record].arrival_s;
      const absl::Duration wait =
          running_.empty() ? absl::InfiniteDuration() : absl::Seconds(waited);
      const int64_t released =
          pins_->ReleaseUnderPressure(CeilDiv(request.context_tokens, block), wait);
      result_.pins_released_under_pressure += released;
      if (released > 0) continue;  // retry with the freed blocks
    }
    if (!lease.ok()) {
      if (!absl::IsResourceExhausted(lease.status())) {
        return absl::InternalError(absl::StrCat("BeginStep: ", lease.status().message()));
      }
      if (running_.empty()) {
        // Nothing runs and no pin is left: it can never fit.
        ActiveRequest rejected = std::move(request);
        waiting_.pop_front();
        Reject(rejected);
        continue;
      }
      return absl::OkStatus();  // FCFS: the head waits for memory
    }
    if (pins_ != nullptr) pins_->OnJobResumed(workload_.sessions[request.session].id);
    const StepPlan& plan = lease->plan;
    RequestRecord& record = result_.requests[request.record];
    record.admitted_s = now_s_;
    const int64_t prompt = request.prompt_tokens;
    for (const Segment& segment : plan.segments) {
      const int64_t begin = segment.begin;
      const int64_t end = std::min(segment.end, prompt);
      if (begin >= end) break;
      switch (segment.kind) {
        case Segment::Kind::kResident:
          record.hit_tokens += end - begin;
          break;
        case Segment::Kind::kHole:
          record.rebuild_tokens += end - begin;
          request.runs.emplace_back(begin, end);
          break;
        case Segment::Kind::kTail:
          record.new_tokens += end - begin;
          request.runs.emplace_back(begin, end);
          break;
      }
    }
    for (int64_t page = 0; page < record.prompt_blocks && page < static_cast<int64_t>(plan.page_resident.size()); ++page) {
      record.hit_blocks += plan.page_resident[page];
    }
    // The first output token needs the last prompt position's query even when
    // the whole prompt is resident.
    if (request.runs.empty()) request.runs.emplace_back(prompt - 1, prompt);
    request.lease_id = lease->lease_id;
    running_.push_back(std::move(request));
    waiting_.pop_front();
  }
  return absl::OkStatus();
}

absl::Status Simulation::Finish(ActiveRequest& request) {
  RequestRecord& record = result_.requests[request.record];
  record.finish_s = now_s_;
  if (absl::Status s = cache_->CommitStep(request.lease_id); !s.ok()) {
    return absl::InternalError(absl::StrCat("CommitStep: ", s.message()));
  }
  if (absl::Status s = cache_->ReleaseStep(request.lease_id); !s.ok()) {
    return absl::InternalError(absl::StrCat("ReleaseStep: ", s.message()));
  }
  const SessionSpec& spec = workload_.sessions[request.session];
  const StepSpec& step = spec.steps[request.step];
  SessionState& state = sessions_[request.session];
  ++done_requests_;
  if (step.last_step) {
    if (spec.is_job()) {
      result_.jobs[request.session].finish_s = now_s_;
    }
    state.context.clear();
    state.context.shrink_to_fit();
    if (system_.reuse) cache_->ForgetSession(request.sequence);
  } else {
    if (pins_ != nullptr && !step.tool.empty()) {
      absl::StatusOr<BlockPool::PinSet> pinned = cache_->PinContext(
          request.salt, absl::MakeConstSpan(state.context));
      if (!pinned.ok()) return absl::InternalError(std::string(pinned.status().message()));
      const double rebuild = ExpectedRebuildCost(static_cast<int64_t>(state.context.size()));
      const PinDecision decision =
          pins_->PinJob(spec.id, step.tool, /*last_step=*/false, std::move(*pinned), rebuild);
      if (decision.pinned) ++result_.pins_granted;
    }
    ScheduleNext(request.session, now_s_ + step.delay_after_s());
  }
  if (!system_.reuse) cache_->ForgetSession(request.sequence);
  ReportProgress();
  return absl::OkStatus();
}

void Simulation::ReportProgress() {
  if (!options_.progress || total_requests_ == 0) return;
  const int64_t permille = done_requests_ * 200 / total_requests_;
  if (permille != last_progress_) {
    last_progress_ = permille;
    options_.progress(static_cast<double>(done_requests_) / static_cast<double>(total_requests_));
  }
}

absl::StatusOr<RunResult> Simulation::Run() {
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy =
      MakeEvictionPolicy(system_.policy, &cost_);
  if (!policy.ok()) return policy.status();
  KvCacheOptions cache_options;
  cache_options.model = cost_.model();
  cache_options.capacity_blocks = options_.pool_blocks;
  cache_options.lease_timeout = kLeaseTimeout;
  SetNow(0);
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      KvCache::Create(cache_options, *std::move(policy), &clock_);
  if (!cache.ok()) return cache.status();
  cache_ = *std::move(cache);

  ChunkSchedulerOptions chunking;
  chunking.mode = system_.adaptive_chunking ? ChunkSchedulerOptions::Mode::kAdaptive
                                            : ChunkSchedulerOptions::Mode::kFixed;
  chunking.fixed_budget_tokens = system_.fixed_budget_tokens;
  chunking.tpot_target = options_.tpot_target;
  chunking.tile_tokens = options_.tile_tokens;
  chunking.max_budget_tokens = std::max(options_.max_budget_tokens, options_.tile_tokens);
  chunking.min_budget_tokens = options_.tile_tokens;
  if (absl::Status s = chunking.Validate(); !s.ok()) return s;
  scheduler_ = std::make_unique<ChunkScheduler>(&cost_, chunking);
  if (options_.agent_pins && system_.reuse) {
    pins_ = std::make_unique<AgentPinTable>(options_.pool_blocks, options_.pin_options, &clock_);
  }

  result_.system = system_.name;
  result_.jobs.resize(workload_.sessions.size());
  for (size_t i = 0; i < workload_.sessions.size(); ++i) {
    const SessionSpec& s = workload_.sessions[i];
    result_.jobs[i].session = static_cast<int32_t>(i);
    result_.jobs[i].start_s = s.steps[0].arrival_s;
    total_requests_ += static_cast<int64_t>(s.steps.size());
    ScheduleNext(static_cast<int32_t>(i), s.steps[0].arrival_s);
  }

  absl::flat_hash_map<SequenceId, size_t> by_sequence;
  std::vector<DecodeWork> decodes;
  std::vector<PrefillWork> pending;
  std::vector<size_t> decoding;  // indices into running_
  while (true) {
    while (!arrivals_.empty() && arrivals_.top().time_s <= now_s_) {
      const Arrival a = arrivals_.top();
      arrivals_.pop();
      OnArrival(a.session, a.time_s);
    }
    if (pins_ != nullptr) pins_->ExpirePins();
    if (absl::Status s = Admit(); !s.ok()) return s;
    if (running_.empty()) {
      if (!waiting_.empty()) continue;  // Admit rejected or freed something; try again
      if (arrivals_.empty()) break;
      SetNow(std::max(now_s_, arrivals_.top().time_s));
      continue;
    }

    decodes.clear();
    pending.clear();
    decoding.clear();
    by_sequence.clear();
    for (size_t i = 0; i < running_.size(); ++i) {
      ActiveRequest& r = running_[i];
      if (r.prefilled()) {
        decodes.push_back(DecodeWork{r.sequence, r.prompt_tokens + r.generated});
        decoding.push_back(i);
      } else {
        PrefillWork work;
        work.sequence = r.sequence;
        work.runs.assign(r.runs.begin() + static_cast<std::ptrdiff_t>(r.next_run), r.runs.end());
        work.context_tokens = r.prompt_tokens;
        pending.push_back(std::move(work));
        by_sequence[r.sequence] = i;
      }
    }
    const StepSchedule schedule = scheduler_->Schedule(decodes, pending);
    const int64_t step_tokens = static_cast<int64_t>(decodes.size()) + schedule.prefill_tokens;
    if (step_tokens == 0) {
      return absl::InternalError("scheduler chose an empty step while work was pending");
    }
    ++result_.engine_steps;
    result_.busy_s += schedule.predicted_latency_s;
    result_.prefill_tokens += schedule.prefill_tokens;
    result_.decode_tokens += static_cast<int64_t>(decodes.size());
    SetNow(now_s_ + schedule.predicted_latency_s);

    for (const Chunk& chunk : schedule.chunks) {
      auto it = by_sequence.find(chunk.sequence);
      if (it == by_sequence.end()) return absl::InternalError("chunk for an unknown sequence");
      ActiveRequest& r = running_[it->second];
      if (r.next_run >= r.runs.size() || r.runs[r.next_run].first != chunk.begin ||
          chunk.end > r.runs[r.next_run].second) {
        return absl::InternalError(absl::StrCat("chunk [", chunk.begin, ", ", chunk.end,
                                                ") out of position order"));
      }
      r.runs[r.next_run].first = chunk.end;
      if (r.runs[r.next_run].first == r.runs[r.next_run].second) ++r.next_run;
    }
    for (size_t i : decoding) ++running_[i].generated;
    for (const auto& [sequence, i] : by_sequence) {
      ActiveRequest& r = running_[i];
      if (r.prefilled() && r.generated == 0) {
        r.generated = 1;
        result_.requests[r.record].first_token_s = now_s_;
      }
    }
    size_t kept = 0;
    for (size_t i = 0; i < running_.size(); ++i) {
      ActiveRequest& r = running_[i];
      result_.requests[r.record].output_tokens = r.generated;
      if (r.generated >= r.output_tokens) {
        if (absl::Status s = Finish(r); !s.ok()) return s;
        continue;
      }
      if (kept != i) running_[kept] = std::move(r);
      ++kept;
    }
    running_.resize(kept);
    load_hint_tokens_ = step_tokens;
    cache_->SetLoadHint(step_tokens);
  }

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
  if (pins_ != nullptr) pins_.reset();
  result_.evictions = cache_->GetStats().pool.evictions;
  result_.final_pool = cache_->GetStats().pool;
  result_.consistency = cache_->CheckConsistency();
  return std::move(result_);
}

}  // namespace

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
  if (tpot_target <= absl::ZeroDuration() || tpot_target == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("EngineOptions.tpot_target must be > 0 and finite");
  }
  if (agent_pins) return pin_options.Validate();
  return absl::OkStatus();
}

absl::StatusOr<RunResult> RunSystem(const Workload& workload, const SystemSpec& system,
                                    const CostModel& cost, const EngineOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = workload.Validate(); !s.ok()) return s;
  Simulation simulation(workload, system, cost, options);
  return simulation.Run();
}

int64_t PoolBlocksForGiB(const ModelConfig& model, double gib) {
  const double bytes = gib * 1024.0 * 1024.0 * 1024.0;
  return static_cast<int64_t>(bytes / static_cast<double>(model.KvBytesPerBlock()));
}

}  // namespace asymcache
