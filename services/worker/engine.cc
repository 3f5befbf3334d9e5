#include "services/worker/engine.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cachecore/block_hash.h"
#include "cachecore/mix64.h"
#include "services/worker/sequence_pages.h"

namespace asymcache::worker {
namespace {

// Seconds since `start` (wall clock).
double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// A timer that adds its lifetime to a counter.
class AddTime {
 public:
  explicit AddTime(double* total) : total_(total), start_(absl::Now()) {}
  ~AddTime() { *total_ += SecondsSince(start_); }

 private:
  double* total_;
  absl::Time start_;
};

}  // namespace

absl::string_view WorkerRoleName(WorkerRole role) {
  switch (role) {
    case WorkerRole::kBoth:
      return "both";
    case WorkerRole::kPrefill:
      return "prefill";
    case WorkerRole::kDecode:
      return "decode";
  }
  return "?";
}

absl::Status EngineOptions::Validate() const {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (absl::Status s = chunking.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("chunking: ", s.message()));
  }
  if (max_running < 1) return bad("max_running: ", max_running, " < 1");
  if (max_queued < max_running) return bad("max_queued: ", max_queued, " < max_running");
  if (max_step_tokens < 16) return bad("max_step_tokens: ", max_step_tokens, " < 16");
  if (chunking.max_budget_tokens + max_running > max_step_tokens) {
    return bad("chunking.max_budget_tokens + max_running: ", chunking.max_budget_tokens, " + ",
               max_running, " exceeds max_step_tokens ", max_step_tokens);
  }
  if (max_context_tokens < 0) return bad("max_context_tokens: ", max_context_tokens, " < 0");
  if (rpc_timeout <= absl::ZeroDuration()) return bad("rpc_timeout: must be > 0");
  if (admission_timeout <= absl::ZeroDuration()) return bad("admission_timeout: must be > 0");
  if (admission_retry_interval < absl::ZeroDuration() ||
      admission_retry_interval == absl::InfiniteDuration()) {
    return bad("admission_retry_interval: must be finite and >= 0");
  }
  if (defer_pending_tokens < 0) return bad("defer_pending_tokens: must be >= 0 (0 = never)");
  if (defer_pending_max_wait <= absl::ZeroDuration() ||
      defer_pending_max_wait == absl::InfiniteDuration()) {
    return bad("defer_pending_max_wait: must be finite and > 0");
  }
  if (daemon_check_interval < absl::ZeroDuration()) {
    return bad("daemon_check_interval: must be >= 0");
  }
  if (absl::Status s = calibration.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("calibration: ", s.message()));
  }
  return absl::OkStatus();
}

// The first error of a sequence's off-thread daemon calls.
struct Engine::CallError {
  absl::Mutex mu;
  absl::Status status ABSL_GUARDED_BY(mu);
  void Set(const absl::Status& s) {
    absl::MutexLock lock(&mu);
    if (status.ok()) status = s;
  }
  absl::Status Get() {
    absl::MutexLock lock(&mu);
    return status;
  }
};

// The spare block the daemon keeps for a lease's page after next
// (ExtendLease reserve_spare), as the last answer for that lease said. Set by
// the call thread (asynchronous extensions) or the step thread, taken by the
// step thread at the sequence's next rollover.
struct Engine::SpareBlock {
  absl::Mutex mu;
  uint64_t lease_id ABSL_GUARDED_BY(mu) = 0;
  int32_t block ABSL_GUARDED_BY(mu) = -1;
  void Set(uint64_t lease, int32_t spare) {
    absl::MutexLock lock(&mu);
    lease_id = lease;
    block = spare;
  }
  // The spare of `lease` (then forgotten: it becomes the private page), or
  // -1 when there is none or it belongs to another lease.
  int32_t Take(uint64_t lease) {
    absl::MutexLock lock(&mu);
    if (lease_id != lease) return -1;
    return std::exchange(block, -1);
  }
};

// What a failure of a sequence's calls off the step thread is reported as.
constexpr absl::string_view kAsyncCalls = "CommitStep/ExtendLease/RenewLease";

// One request in the engine (step thread only, after arrival).
struct Engine::Sequence {
  uint64_t id = 0;
  GenerationRequest request;
  std::shared_ptr<GenerationSink> sink;
  absl::Time arrival;
  SequenceId daemon_sequence = 0;
  std::vector<int32_t> tokens;  // prompt + generated (the last one not yet fed)
  int32_t generated = 0;
  ScopedLease lease;            // the current plan's lease
  SequencePages pages;          // its pages
  bool committed = false;
  bool planned_once = false;
  bool imported = false;
  // The current context is fully resident: run its last token once more
  // (no K/V write) for the logits.
  bool logits_only = false;
  // Its last plan got RESOURCE_EXHAUSTED this step.
  bool blocked = false;
  // Its admission plan was deferred (EngineOptions::defer_pending_tokens)
  // this step, and when that first happened (InfinitePast: never).
  bool deferred = false;
  absl::Time deferred_since = absl::InfinitePast();
  absl::Time renew_due;
  // This step runs one query at its last known position: a decode token, or
  // the logits-only re-run of a fully resident context.
  bool decoding() const {
    const int64_t context = pages.context_tokens();
    return logits_only ||
           (pages.pending_tokens() == 1 && pages.pending().front().first == context - 1);
  }
  // Daemon calls issued for it off the step thread (commits, releases): the
  // ticket of the last one, and the first error one of them met.
  uint64_t last_call = 0;
  std::shared_ptr<CallError> call_error = std::make_shared<CallError>();
  std::shared_ptr<SpareBlock> spare = std::make_shared<SpareBlock>();
  int64_t last_token_us = -1;   // emission time of its previous token (-1: none yet)
  RequestStats stats;
};

Engine::Engine(model::ModelBackend* backend, Client* daemon, EngineOptions options,
               int64_t max_context_tokens, int64_t pool_blocks, std::string daemon_instance)
    : daemon_(daemon),
      options_(std::move(options)),
      config_(backend->config()),
      backend_name_(backend->name()),
      max_context_tokens_(max_context_tokens),
      cost_(backend->config().ToCacheModel(), options_.calibration),
      scheduler_(&cost_, options_.chunking),
      backend_(backend),
      pool_blocks_(pool_blocks),
      attached_instance_(std::move(daemon_instance)) {}

absl::Status Engine::DaemonCallError(absl::string_view call, const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return absl::UnavailableError(
          absl::StrCat("the cache daemon failed (", call, ": ", status.message(),
                       "); retry: the tokens do not depend on where the request runs"));
    case absl::StatusCode::kNotFound:
      // Only lease calls reach here with NOT_FOUND: the daemon restarted (or
      // let the lease expire) and the request's blocks are gone.
      return absl::UnavailableError(
          absl::StrCat("the cache daemon no longer holds this request's lease (", call, ": ",
                       status.message(), "); retry"));
    default:
      return status;
  }
}

std::string Engine::daemon_instance() const {
  absl::MutexLock lock(&mu_);
  return attached_instance_;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Start(model::ModelBackend* backend, Client* daemon,
                                                      EngineOptions options) {
  if (backend == nullptr || daemon == nullptr) {
    return absl::InvalidArgumentError("Engine: backend and daemon client are required");
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const model::LlamaConfig& config = backend->config();
  absl::StatusOr<DaemonStats> stats = daemon->GetStats(options.rpc_timeout);
  if (!stats.ok()) return stats.status();
  const ModelConfig ours = config.ToCacheModel();
  const ModelConfig& theirs = stats->model;
  if (ours.num_layers != theirs.num_layers || ours.num_kv_heads != theirs.num_kv_heads ||
      ours.head_dim != theirs.head_dim || ours.dtype_bytes != theirs.dtype_bytes ||
      ours.block_tokens != theirs.block_tokens) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Engine: the daemon's KV shape (layers=", theirs.num_layers, " kv_heads=",
        theirs.num_kv_heads, " head_dim=", theirs.head_dim, " dtype_bytes=", theirs.dtype_bytes,
        " block_tokens=", theirs.block_tokens, ") differs from the model's (layers=",
        ours.num_layers, " kv_heads=", ours.num_kv_heads, " head_dim=", ours.head_dim,
        " dtype_bytes=", ours.dtype_bytes, " block_tokens=", ours.block_tokens, ")"));
  }
  int64_t max_context = config.max_position_embeddings;
  if (options.max_context_tokens > 0) max_context = std::min(max_context, options.max_context_tokens);
  std::string instance =
      options.daemon_instance.empty() ? stats->daemon_instance : options.daemon_instance;
  std::unique_ptr<Engine> engine(new Engine(backend, daemon, std::move(options), max_context,
                                            stats->capacity_blocks, std::move(instance)));
  engine->next_daemon_sequence_ = Mix64(absl::ToUnixNanos(absl::Now())) | 1;
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  engine->importer_ = std::thread([e = engine.get()] { e->ImportLoop(); });
  engine->caller_ = std::thread([e = engine.get()] { e->CallLoop(); });
  if (engine->options_.daemon_check_interval > absl::ZeroDuration()) {
    engine->checker_ = std::thread([e = engine.get()] { e->CheckLoop(); });
  }
  return engine;
}

Engine::~Engine() { Shutdown(); }

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request,
                                        std::shared_ptr<GenerationSink> sink) {
  if (sink == nullptr) return absl::InvalidArgumentError("Submit: sink is required");
  if (absl::Status s = ValidateGenerationRequest(request, config_, max_context_tokens_);
      !s.ok()) {
    return s;
  }
  if (options_.role == WorkerRole::kPrefill && request.max_new_tokens != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a prefill worker computes the prompt and its first token: max_new_tokens must be 1, got ",
        request.max_new_tokens));
  }
  // The prompt (and its first token) must fit the whole pool; a generation
  // that later outgrows it ends with RESOURCE_EXHAUSTED then (see Step).
  const int64_t needed = BlocksFor(static_cast<int64_t>(request.prompt.size()) + 1);
  if (const int64_t pool_blocks = pool_blocks_.load(); needed > pool_blocks) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt_tokens need ", needed, " KV blocks; the daemon's whole pool has ", pool_blocks));
  }
  auto seq = std::make_unique<Sequence>();
  seq->arrival = absl::Now();
  seq->tokens = request.prompt;
  seq->stats.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  seq->request = std::move(request);
  seq->sink = std::move(sink);
  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::UnavailableError("the worker is shutting down");
  if (queued_ >= options_.max_queued) {
    return absl::ResourceExhaustedError(absl::StrCat("the worker's queue is full (", queued_,
                                                     " requests); retry later or elsewhere"));
  }
  seq->id = next_request_id_++;
  const uint64_t id = seq->id;
  ++queued_;
  live_.insert(id);
  // Blocks from a prefill daemon are imported off the step thread first.
  if (seq->request.kv_source.empty()) {
    arrivals_.push_back(std::move(seq));
  } else {
    imports_.push_back(std::move(seq));
  }
  return id;
}

void Engine::Cancel(uint64_t request_id) {
  absl::MutexLock lock(&mu_);
  if (live_.contains(request_id)) cancelled_.insert(request_id);
}

void Engine::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_ && !thread_.joinable() && !importer_.joinable() && !checker_.joinable()) {
      return;
    }
    shutdown_ = true;
  }
  // The importer first: what it holds goes to arrivals_, which the step
  // thread's shutdown drain finishes.
  if (checker_.joinable()) checker_.join();
  if (importer_.joinable()) importer_.join();
  if (thread_.joinable()) thread_.join();
  // Last: the calls the step thread queued while finishing (releases, the
  // sinks' OnFinish) all run before the caller stops.
  {
    absl::MutexLock lock(&calls_mu_);
    calls_stop_ = true;
  }
  if (caller_.joinable()) caller_.join();
}

uint64_t Engine::EnqueueCall(std::function<void()> call) {
  absl::MutexLock lock(&calls_mu_);
  calls_.push_back(std::move(call));
  return ++calls_enqueued_;
}

void Engine::WaitForCall(uint64_t ticket) {
  if (ticket == 0) return;
  absl::MutexLock lock(&calls_mu_);
  auto done = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu_) {
    return calls_done_ >= ticket;
  };
  calls_mu_.Await(absl::Condition(&done));
}

void Engine::CallLoop() {
  while (true) {
    std::function<void()> call;
    {
      absl::MutexLock lock(&calls_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu_) {
        return calls_stop_ || !calls_.empty();
      };
      calls_mu_.Await(absl::Condition(&ready));
      if (calls_.empty()) return;  // stopping and drained
      call = std::move(calls_.front());
      calls_.pop_front();
    }
    double seconds = 0;
    {
      AddTime timer(&seconds);
      call();
    }
    {
      absl::MutexLock lock(&mu_);
      stats_.async_rpc_seconds += seconds;
    }
    absl::MutexLock lock(&calls_mu_);
    ++calls_done_;
  }
}

void Engine::ImportLoop() {
  while (true) {
    std::unique_ptr<Sequence> seq;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return shutdown_ || !imports_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (shutdown_) {
        for (auto& left : imports_) arrivals_.push_back(std::move(left));
        imports_.clear();
        return;
      }
      seq = std::move(imports_.front());
      imports_.pop_front();
    }
    Import(*seq);
    absl::MutexLock lock(&mu_);
    arrivals_.push_back(std::move(seq));
  }
}

void Engine::CheckLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.daemon_check_interval);
      if (shutdown_) return;
    }
    // Unreachable: nothing to learn (the requests' own calls fail); the run
    // is compared once it answers again.
    const absl::StatusOr<DaemonStats> stats =
        daemon_->GetStats(std::min(options_.rpc_timeout, absl::Seconds(2)));
    if (!stats.ok() || stats->daemon_instance.empty()) continue;
    absl::MutexLock lock(&mu_);
    if (stats->daemon_instance != attached_instance_) restarted_to_ = stats->daemon_instance;
  }
}

void Engine::FollowRestart() {
  std::string from;
  std::string to;
  {
    absl::MutexLock lock(&mu_);
    if (!restarted_to_.has_value()) return;
    from = attached_instance_;
    to = *restarted_to_;
  }
  // The running requests' blocks were in the old pool: they end here (a
  // retry regenerates them exactly). Waiting ones have no blocks yet (or
  // only sealed ones, for a preempted request, which it rebuilds).
  const absl::Status gone = absl::UnavailableError(absl::StrCat(
      "the cache daemon restarted (run ", from, " -> ", to,
      "): this request's KV blocks are gone; retry"));
  for (auto& seq : running_) {
    seq->lease.Detach();  // the new run does not know it
    Finish(*seq, gone, "");
  }
  running_.clear();
  for (auto& seq : waiting_) {
    seq->lease.Detach();
    seq->pages = SequencePages();
    seq->committed = false;
    seq->logits_only = false;
  }
  if (!options_.reattach) {
    for (auto& seq : waiting_) Finish(*seq, gone, "");
    waiting_.clear();
    return;
  }
  absl::StatusOr<ReattachedPool> pool = options_.reattach();
  if (!pool.ok() || pool->backend == nullptr) {
    const absl::Status failed = absl::UnavailableError(absl::StrCat(
        "the cache daemon restarted and its new pool could not be mapped (",
        pool.ok() ? "no backend" : pool.status().ToString(), "); retry elsewhere"));
    ABSL_RAW_LOG(ERROR, "worker: %s", std::string(failed.message()).c_str());
    for (auto& seq : waiting_) Finish(*seq, failed, "");
    waiting_.clear();
    absl::MutexLock lock(&mu_);
    restarted_to_.reset();  // the checker reports the run again; tried then
    return;
  }
  backend_ = pool->backend;
  pool_blocks_.store(pool->capacity_blocks);
  ABSL_RAW_LOG(INFO, "worker: the cache daemon restarted (run %s -> %s); its new pool is mapped",
               from.c_str(), pool->daemon_instance.c_str());
  absl::MutexLock lock(&mu_);
  attached_instance_ = pool->daemon_instance;
  restarted_to_.reset();
  ++stats_.daemon_reattaches;
}

EngineStats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void Engine::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (shutdown_) break;
      if (running_.empty() && waiting_.empty()) {
        // Idle until an arrival or shutdown (the condition is re-checked
        // whenever mu_ is released, so no wake-up is lost).
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return shutdown_ || !arrivals_.empty() || restarted_to_.has_value();
        };
        mu_.Await(absl::Condition(&ready));
        if (shutdown_) break;
      }
    }
    FollowRestart();
    const bool ran = Step();
    PublishCounts();
    if (!ran) {
      // Nothing could run (e.g. every request waits for pool space): back off briefly.
      absl::SleepFor(absl::Milliseconds(1));
    }
  }
  // Shutdown: every request ends with UNAVAILABLE, its leases released.
  TakeArrivals();
  const absl::Status gone = absl::UnavailableError("the worker is shutting down");
  for (auto& seq : running_) Finish(*seq, gone, "");
  for (auto& seq : waiting_) Finish(*seq, gone, "");
  running_.clear();
  waiting_.clear();
}

void Engine::TakeArrivals() {
  std::vector<std::unique_ptr<Sequence>> arrived;
  absl::flat_hash_set<uint64_t> cancelled;
  {
    absl::MutexLock lock(&mu_);
    arrived.swap(arrivals_);
    // Copied, not taken: a request still importing is cancelled once it
    // arrives (Finish forgets the id). Usually empty: no copy then.
    if (!cancelled_.empty()) cancelled = cancelled_;
  }
  for (auto& seq : arrived) waiting_.push_back(std::move(seq));
  if (cancelled.empty()) return;
  const absl::Status status = absl::CancelledError("the request was cancelled");
  auto cancel_in = [&](auto& list) {
    for (auto it = list.begin(); it != list.end();) {
      if (cancelled.contains((*it)->id)) {
        Finish(**it, status, "");
        it = list.erase(it);
      } else {
        ++it;
      }
    }
  };
  cancel_in(running_);
  cancel_in(waiting_);
}

void Engine::PublishCounts() {
  absl::MutexLock lock(&mu_);
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size());
}

void Engine::Import(Sequence& seq) {
  seq.imported = true;
  const absl::Time start = absl::Now();
  const std::vector<BlockHash> hashes =
      ChainHashes(seq.request.salt,
                  absl::MakeConstSpan(seq.tokens).first(seq.request.kv_source_tokens),
                  config_.block_tokens);
  const absl::StatusOr<ImportSummary> summary =
      daemon_->ImportBlocks(seq.request.kv_source, hashes, options_.rpc_timeout);
  seq.stats.import_seconds = SecondsSince(start);
  {
    absl::MutexLock lock(&mu_);
    stats_.import_seconds += seq.stats.import_seconds;  // the importer thread's, not a step's
  }
  // A failed import is not an error of the request: what did not arrive is
  // rebuilt (the plan shows it as holes/tail).
  if (summary.ok()) seq.stats.imported_blocks = summary->imported + summary->already_resident;
}

absl::StatusOr<ScopedLease> Engine::BeginPlan(const Sequence& seq, int64_t target_tokens) {
  PlanStepOptions plan_options;
  plan_options.compute_plan_hashes = false;
  if (!seq.planned_once && seq.request.agent.has_value() && !seq.request.agent->job_id.empty()) {
    plan_options.agent = seq.request.agent;
  }
  // Only an admission waits for pages another request is writing (a running
  // sequence's re-plan goes on: it holds pages others may wait for), and not
  // longer than defer_pending_max_wait from its first deferral.
  if (!seq.lease.active() && (seq.deferred_since == absl::InfinitePast() ||
                              absl::Now() - seq.deferred_since < options_.defer_pending_max_wait)) {
    plan_options.defer_if_pending_tokens = options_.defer_pending_tokens;
  }
  return daemon_->BeginStep(seq.request.salt, seq.daemon_sequence,
                            absl::MakeConstSpan(seq.tokens).first(target_tokens), plan_options,
                            options_.rpc_timeout);
}

absl::Status Engine::AdoptPlan(Sequence& seq, absl::StatusOr<ScopedLease> lease,
                               int64_t target_tokens, bool* blocked) {
  if (absl::IsResourceExhausted(lease.status())) {
    *blocked = true;
    return absl::OkStatus();
  }
  if (absl::IsAborted(lease.status()) && !seq.lease.active() &&
      options_.defer_pending_tokens > 0) {
    // Deferred (defer_pending_tokens): another request is writing its pages.
    *blocked = true;
    seq.deferred = true;
    if (seq.deferred_since == absl::InfinitePast()) seq.deferred_since = absl::Now();
    return absl::OkStatus();
  }
  if (!lease.ok()) return DaemonCallError("PlanStep", lease.status());
  if (const std::string& run = lease->step().daemon_instance; !run.empty()) {
    std::string attached;
    {
      absl::MutexLock lock(&mu_);
      attached = attached_instance_;
      if (run != attached) restarted_to_ = run;
    }
    if (run != attached) {
      // Planned by another run than the one whose pool is mapped here: the
      // daemon restarted. Nothing of this plan is touched (its lease is
      // released); FollowRestart re-maps the pool before the next step.
      const uint64_t lease_id = lease->Detach();
      seq.last_call = EnqueueCall([this, lease_id] {
        (void)daemon_->ReleaseStep(lease_id, std::nullopt, options_.rpc_timeout);
      });
      return absl::UnavailableError(
          absl::StrCat("the cache daemon restarted (run ", attached, " -> ", run, "); retry"));
    }
  }
  SequencePages pages(lease->plan());
  if (seq.lease.active()) {
    // Rows this request already computed (its previous lease, still pinned)
    // are copied into the freshly allocated blocks, not recomputed.
    for (const SequencePages::RowCopy& copy : pages.TakeCopiesFrom(seq.pages)) {
      if (absl::Status s = backend_->CopyPageRows(copy.src_block, copy.dst_block, copy.rows);
          !s.ok()) {
        return s;
      }
      seq.stats.copied_tokens += copy.rows;
      absl::MutexLock lock(&mu_);
      stats_.copied_tokens += copy.rows;
    }
    ReleaseLeases(seq, /*with_agent=*/false);
  }
  if (!seq.planned_once) {
    seq.planned_once = true;
    seq.stats.queue_seconds = SecondsSince(seq.arrival);
    seq.stats.hit_tokens = lease->plan().hit_tokens;
    seq.stats.rebuilt_tokens = lease->plan().rebuild_tokens;
  }
  seq.lease = *std::move(lease);
  seq.spare->Set(0, -1);  // a spare belongs to its lease (already tagged so: belt and braces)
  seq.pages = std::move(pages);
  seq.committed = false;
  seq.renew_due = absl::Now() + seq.lease.step().lease_timeout / 3;
  // Fully resident up to the last fed token: its logits still have to be
  // computed (no K/V write) unless more tokens follow.
  seq.logits_only = seq.pages.done() && target_tokens == static_cast<int64_t>(seq.tokens.size());
  return absl::OkStatus();
}

absl::Status Engine::PlanNext(Sequence& seq, int64_t target_tokens, bool* blocked) {
  // Its commit must have landed, so the plan finds the pages it sealed.
  WaitForCall(seq.last_call);
  if (absl::Status s = seq.call_error->Get(); !s.ok()) return DaemonCallError(kAsyncCalls, s);
  double rpc = 0;
  absl::StatusOr<ScopedLease> lease;
  {
    AddTime timer(&rpc);
    lease = BeginPlan(seq, target_tokens);
  }
  {
    absl::MutexLock lock(&mu_);
    stats_.rpc_seconds += rpc;
  }
  return AdoptPlan(seq, std::move(lease), target_tokens, blocked);
}

std::optional<int64_t> Engine::PlanTarget(Sequence& seq) {
  const int64_t known = static_cast<int64_t>(seq.tokens.size());
  if (!seq.lease.active()) {
    // Plan exactly an imported context first (all of it resident when the
    // import worked); the rest extends it like decode does.
    return seq.imported && !seq.planned_once ? seq.request.kv_source_tokens : known;
  }
  if (!seq.pages.done() || seq.logits_only || seq.pages.context_tokens() >= known) {
    return std::nullopt;
  }
  if (known - seq.pages.context_tokens() == 1 && seq.pages.CanExtendInPlace()) {
    seq.pages.ExtendInPlace();  // a decode token into the private page: no plan
    return std::nullopt;
  }
  return known;
}

void Engine::ForEachConcurrently(size_t n, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto run = [&]() {
    for (size_t i = next++; i < n; i = next++) fn(i);
  };
  const size_t helpers = std::min<size_t>(n, kPlanThreads) - std::min<size_t>(n, 1);
  std::vector<std::thread> threads;
  threads.reserve(helpers);
  for (size_t t = 0; t < helpers; ++t) threads.emplace_back(run);
  run();
  for (std::thread& t : threads) t.join();
}

std::vector<absl::StatusOr<ScopedLease>> Engine::BeginPlans(absl::Span<Sequence* const> seqs,
                                                            absl::Span<const int64_t> targets) {
  std::vector<absl::StatusOr<ScopedLease>> leases;
  leases.reserve(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) leases.emplace_back(absl::UnknownError("not issued"));
  const absl::Time start = absl::Now();
  ForEachConcurrently(seqs.size(),
                      [&](size_t i) { leases[i] = BeginPlan(*seqs[i], targets[i]); });
  absl::MutexLock lock(&mu_);
  stats_.rpc_seconds += SecondsSince(start);
  return leases;
}

bool Engine::RollsOver(const Sequence& seq) const {
  return options_.extend_leases && seq.lease.active() && seq.committed && !seq.logits_only &&
         static_cast<int64_t>(seq.tokens.size()) - seq.pages.context_tokens() == 1 &&
         seq.pages.PrivatePageIsFull();
}

std::vector<Engine::Sequence*> Engine::RollOver(absl::Span<Sequence* const> seqs) {
  // Their commits and earlier extensions must have landed: the private page
  // exists from then on, and the spare they reported is known.
  for (Sequence* seq : seqs) WaitForCall(seq->last_call);
  const int64_t b = config_.block_tokens;
  auto page_of = [b](const Sequence& seq) {
    const int64_t page_end = seq.pages.context_tokens();
    return absl::MakeConstSpan(seq.tokens).subspan(static_cast<size_t>(page_end - b),
                                                  static_cast<size_t>(b));
  };
  // A sequence whose lease has a spare starts the next page in it now; the
  // ExtendLease that seals the full page (and makes the spare the private
  // page, reserving the next spare) goes to the call thread, like a commit:
  // its failure ends the request at its next step.
  std::vector<Sequence*> waited;
  int64_t rolled = 0;
  for (Sequence* seq : seqs) {
    // An earlier call off the step thread failed (a commit, or an extension
    // that never took effect): the daemon's pages are not what this sequence
    // assumes. It is not rolled over; the next step ends it with the error.
    if (!seq->call_error->Get().ok()) continue;
    const uint64_t lease_id = seq->lease.lease_id();
    const int32_t spare = seq->spare->Take(lease_id);
    if (spare < 0) {
      waited.push_back(seq);
      continue;
    }
    const absl::Span<const int32_t> full = page_of(*seq);
    std::vector<int32_t> page(full.begin(), full.end());
    const int64_t position = seq->pages.context_tokens() - b;
    seq->pages.StartPrivatePage(spare);
    // renew_due stays: the daemon renews the lease only once the call lands.
    seq->last_call = EnqueueCall([this, lease_id, position, page = std::move(page), spare,
                                  slot = seq->spare, error = seq->call_error] {
      absl::StatusOr<LeaseExtension> next = daemon_->ExtendLease(
          lease_id, position, page, /*reserve_spare=*/true, options_.rpc_timeout);
      if (!next.ok()) {
        error->Set(next.status());
      } else if (next->block != spare) {
        error->Set(absl::InternalError(
            absl::StrCat("ExtendLease: the daemon made block ", next->block,
                         " the private page, not the lease's spare ", spare)));
      } else {
        slot->Set(lease_id, next->spare);
      }
    });
    ++rolled;
  }
  // The others wait for their answer (the first rollover of a lease, or a
  // pool that could not spare a block).
  std::vector<absl::StatusOr<LeaseExtension>> extensions(
      waited.size(), absl::UnknownError("not issued"));
  const absl::Time start = absl::Now();
  ForEachConcurrently(waited.size(), [&](size_t i) {
    Sequence& seq = *waited[i];  // one sequence per call: no two threads share one
    extensions[i] = seq.lease.Extend(seq.pages.context_tokens() - b, page_of(seq),
                                     /*reserve_spare=*/true, options_.rpc_timeout);
  });
  const double rpc = waited.empty() ? 0.0 : SecondsSince(start);
  std::vector<Sequence*> failed;
  int64_t waited_ok = 0;
  for (size_t i = 0; i < waited.size(); ++i) {
    Sequence& seq = *waited[i];
    const absl::Status& status = extensions[i].status();
    if (absl::IsResourceExhausted(status) || absl::IsUnimplemented(status)) {
      // No block for the next page now, or a daemon without ExtendLease:
      // planning the longer context handles both (it waits, or copies).
      failed.push_back(&seq);
      continue;
    }
    if (!status.ok()) {
      // The lease is gone or the daemon disagrees about its pages: its blocks
      // may belong to others now, so nothing is copied from them. The next
      // step ends the request with the error.
      seq.call_error->Set(status);
      continue;
    }
    if (extensions[i]->position != seq.pages.context_tokens()) {
      seq.call_error->Set(absl::InternalError(
          absl::StrCat("ExtendLease: the daemon's next page starts at ", extensions[i]->position,
                       ", not at ", seq.pages.context_tokens())));
      continue;
    }
    seq.pages.StartPrivatePage(extensions[i]->block);
    seq.spare->Set(seq.lease.lease_id(), extensions[i]->spare);
    seq.renew_due = absl::Now() + extensions[i]->lease_timeout / 3;
    ++rolled;
    ++waited_ok;
  }
  absl::MutexLock lock(&mu_);
  stats_.rpc_seconds += rpc;
  stats_.page_rollovers += rolled;
  stats_.waited_rollovers += waited_ok;
  return failed;
}

absl::Status Engine::Advance(Sequence& seq, bool* blocked) {
  if (absl::Status s = seq.call_error->Get(); !s.ok()) return DaemonCallError(kAsyncCalls, s);
  const std::optional<int64_t> target = PlanTarget(seq);
  if (!target.has_value()) return absl::OkStatus();
  return PlanNext(seq, *target, blocked);
}

void Engine::Admit() {
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < options_.max_running) {
    Sequence& seq = *waiting_.front();
    if (seq.daemon_sequence == 0) {
      seq.daemon_sequence =
          seq.request.session_id.empty()
              ? next_daemon_sequence_++
              : (Mix64(std::hash<std::string>{}(seq.request.salt) ^
                       Mix64(std::hash<std::string>{}(seq.request.session_id))) |
                 1);
    }
    // The head waited for pool space longer than admission_timeout: it ends.
    auto timed_out = [&]() {
      if (absl::Now() - seq.arrival <= options_.admission_timeout) return false;
      Finish(seq, absl::ResourceExhaustedError(absl::StrCat(
                      "no KV blocks for this request within ",
                      absl::FormatDuration(options_.admission_timeout),
                      " (the pool stayed full); retry later or elsewhere")),
             "");
      waiting_.pop_front();
      return true;
    };
    if (!MayRetryAdmission(seq)) {
      if (timed_out()) continue;
      break;  // refused before and nothing came free since: no plan this step
    }
    bool blocked = false;
    absl::Status s = BlocksFor(static_cast<int64_t>(seq.tokens.size())) > pool_blocks_.load()
                         ? absl::ResourceExhaustedError(absl::StrCat(
                               "the context grew to ", seq.tokens.size(),
                               " tokens, more than the daemon's whole pool (", pool_blocks_.load(),
                               " blocks) holds"))
                         : Advance(seq, &blocked);
    if (!s.ok()) {
      Finish(seq, s, "");
      waiting_.pop_front();
      continue;
    }
    if (blocked) {
      refusal_ = AdmissionRefusal{seq.id, absl::Now(), last_release_ticket_, last_commit_ticket_,
                                  seq.deferred};
      {
        absl::MutexLock lock(&mu_);
        ++(seq.deferred ? stats_.deferred_admissions : stats_.admission_refusals);
      }
      seq.deferred = false;
      if (timed_out()) continue;
      break;  // FCFS: later requests wait behind it
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool Engine::MayRetryAdmission(const Sequence& seq) {
  if (!refusal_.has_value() || refusal_->request_id != seq.id) return true;
  if (last_release_ticket_ > refusal_->release_ticket) {
    WaitForCall(last_release_ticket_);  // its blocks are free once it landed
    return true;
  }
  if (refusal_->deferred && last_commit_ticket_ > refusal_->commit_ticket) {
    WaitForCall(last_commit_ticket_);  // the pages it waits for are in the cache once it landed
    return true;
  }
  return absl::Now() - refusal_->at >= options_.admission_retry_interval;
}

void Engine::ReleaseLeases(Sequence& seq, bool with_agent) {
  if (!seq.lease.active()) return;
  std::optional<AgentJob> agent;
  if (with_agent && seq.request.agent.has_value() && !seq.request.agent->job_id.empty()) {
    agent = seq.request.agent;
  }
  // Off the step thread, after the sequence's earlier calls (its commit). A
  // failed release is not fatal: the daemon's lease timeout frees it.
  const uint64_t lease_id = seq.lease.Detach();
  seq.last_call = EnqueueCall([this, lease_id, agent = std::move(agent)] {
    (void)daemon_->ReleaseStep(lease_id, agent, options_.rpc_timeout);
  });
}

void Engine::Finish(Sequence& seq, const absl::Status& status, const std::string& reason) {
  if (seq.lease.active()) {
    ReleaseLeases(seq, /*with_agent=*/status.ok());
    last_release_ticket_ = seq.last_call;  // blocks come free: a refused admission may retry
  }
  {
    absl::MutexLock lock(&mu_);
    --queued_;
    ++stats_.finished_requests;
    cancelled_.erase(seq.id);
    live_.erase(seq.id);
  }
  // The client hears of the end only once the commit and release are done,
  // so a follow-up turn finds the blocks sealed and the pool free.
  seq.last_call = EnqueueCall([sink = seq.sink, status, reason, stats = seq.stats] {
    sink->OnFinish(status, reason, stats);
  });
}

void Engine::Preempt(Sequence& seq) {
  if (seq.lease.active()) {
    ReleaseLeases(seq, /*with_agent=*/false);
    last_release_ticket_ = seq.last_call;
  }
  seq.spare->Set(0, -1);
  seq.pages = SequencePages();
  seq.committed = false;
  seq.logits_only = false;
  seq.blocked = false;
  ++seq.stats.preemptions;
  absl::MutexLock lock(&mu_);
  ++stats_.preemptions;
}

bool Engine::Step() {
  const absl::Time step_start = absl::Now();
  TakeArrivals();
  Admit();
  // Advance running sequences: decode tokens go into private pages; the
  // sequences that need a plan (a full page, a re-plan) get it below, their
  // PlanStep calls issued concurrently.
  std::vector<Sequence*> to_plan;
  std::vector<int64_t> targets;
  std::vector<Sequence*> to_roll_over;
  for (auto it = running_.begin(); it != running_.end();) {
    Sequence& seq = **it;
    seq.blocked = false;
    absl::Status s = seq.call_error->Get();
    if (!s.ok()) s = DaemonCallError(kAsyncCalls, s);
    // Keep leases alive through long decodes (in-place extensions make no
    // RPC). On the call thread, in order with the sequence's commits and
    // extensions: one of those holds the lease for a moment, and a renewal
    // racing it from this thread would find it missing. A failure ends the
    // request at its next step, as a commit's does.
    if (s.ok() && seq.lease.active() && absl::Now() >= seq.renew_due) {
      const uint64_t lease_id = seq.lease.lease_id();
      seq.last_call = EnqueueCall([this, lease_id, error = seq.call_error] {
        absl::StatusOr<absl::Duration> renewed =
            daemon_->RenewLease(lease_id, options_.rpc_timeout);
        if (!renewed.ok()) error->Set(renewed.status());
      });
      seq.renew_due = absl::Now() + seq.lease.step().lease_timeout / 3;
    }
    if (!s.ok()) {
      Finish(seq, s, "");
      it = running_.erase(it);
      continue;
    }
    if (RollsOver(seq)) {
      to_roll_over.push_back(&seq);
    } else if (const std::optional<int64_t> target = PlanTarget(seq); target.has_value()) {
      to_plan.push_back(&seq);
      targets.push_back(*target);
    }
    ++it;
  }
  if (!to_roll_over.empty()) {
    for (Sequence* seq : RollOver(absl::MakeConstSpan(to_roll_over))) {
      to_plan.push_back(seq);
      targets.push_back(static_cast<int64_t>(seq->tokens.size()));
    }
  }
  if (!to_plan.empty()) {
    // Their commits must have landed, so the plans find the pages they sealed.
    for (Sequence* seq : to_plan) WaitForCall(seq->last_call);
    std::vector<absl::StatusOr<ScopedLease>> leases =
        BeginPlans(absl::MakeConstSpan(to_plan), absl::MakeConstSpan(targets));
    absl::flat_hash_set<Sequence*> failed;
    for (size_t i = 0; i < to_plan.size(); ++i) {
      Sequence& seq = *to_plan[i];
      // A call of its own that failed meanwhile (its commit, say): nothing of
      // the previous lease is copied; the new lease goes back with `leases`.
      absl::Status s = seq.call_error->Get();
      if (s.ok()) {
        s = AdoptPlan(seq, std::move(leases[i]), targets[i], &seq.blocked);
      } else {
        s = DaemonCallError(kAsyncCalls, s);
      }
      if (!s.ok()) {
        Finish(seq, s, "");
        failed.insert(&seq);
      }
    }
    if (!failed.empty()) {
      running_.erase(std::remove_if(running_.begin(), running_.end(),
                                    [&](const auto& p) { return failed.contains(p.get()); }),
                     running_.end());
    }
  }

  // This step's work: decode tokens and prefill/rebuild runs.
  std::vector<DecodeWork> decodes;
  std::vector<PrefillWork> prefills;
  std::vector<Sequence*> runnable;  // running order
  const absl::Time plan_time = absl::Now();
  for (auto& seq : running_) {
    if (seq->blocked || !seq->lease.active()) continue;
    const int64_t context = seq->pages.context_tokens();
    if (seq->decoding()) {
      // Its decode so far, for the request-mean TPOT rule; a logits-only
      // re-run has no first token yet (no slack).
      DecodeWork decode{seq->id, context};
      if (seq->generated > 0) {
        decode.tokens_after_first = seq->generated - 1;
        decode.seconds_since_first =
            absl::ToDoubleSeconds(plan_time - seq->arrival) - seq->stats.ttft_seconds;
      }
      decodes.push_back(decode);
    } else if (!seq->pages.done()) {
      prefills.push_back({seq->id, seq->pages.pending(), context,
                          absl::ToDoubleSeconds(plan_time - seq->arrival)});
    } else {
      continue;
    }
    runnable.push_back(seq.get());
  }
  if (runnable.empty()) {
    // Nobody can run: when sequences wait for pool space, give the newest
    // running one's blocks back so the others can go on.
    // Even a lone sequence is preempted: rolling a full decode page over
    // needs one block more for a moment, and re-planning from its sealed
    // pages needs none.
    bool any_blocked = false;
    for (auto& seq : running_) any_blocked |= seq->blocked;
    if (any_blocked) {
      Preempt(*running_.back());
      waiting_.push_front(std::move(running_.back()));
      running_.pop_back();
    }
    return false;
  }
  // Requests left waiting by Admit: the step keeps at least the overload
  // budget of prefill (ChunkSchedulerOptions::overload_budget_tokens).
  const StepSchedule schedule =
      scheduler_.Schedule(decodes, prefills, /*overloaded=*/!waiting_.empty());

  // Assemble the forward pass, sequence by sequence in running order.
  std::vector<int32_t> token_ids, slot_pages, slot_rows, sample_rows;
  std::vector<model::SamplingParams> sampling;
  std::vector<Sequence*> sampled;
  msa::BatchTablesStorage tables;
  struct Ran {
    Sequence* seq;
    std::vector<std::pair<int64_t, int64_t>> ranges;
  };
  std::vector<Ran> ran;
  absl::flat_hash_map<SequenceId, std::vector<std::pair<int64_t, int64_t>>> chunks_of;
  for (const Chunk& c : schedule.chunks) chunks_of[c.sequence].push_back({c.begin, c.end});
  int64_t prefill_tokens = 0;
  for (Sequence* seq : runnable) {
    std::vector<std::pair<int64_t, int64_t>> ranges;
    const int64_t context = seq->pages.context_tokens();
    const bool decode = seq->decoding();
    if (decode) {
      ranges.push_back({context - 1, context});
    } else if (auto c = chunks_of.find(seq->id); c != chunks_of.end()) {
      ranges = c->second;
    }
    if (ranges.empty()) continue;
    int64_t max_position = -1;
    for (const auto& [b, e] : ranges) {
      for (int64_t p = b; p < e; ++p) {
        token_ids.push_back(seq->tokens[p]);
        tables.q_pos.push_back(static_cast<int32_t>(p));
        if (seq->logits_only) {
          slot_pages.push_back(-1);
          slot_rows.push_back(0);
        } else {
          const auto [block, row] = seq->pages.Slot(p);
          slot_pages.push_back(block);
          slot_rows.push_back(row);
        }
      }
      if (!decode) prefill_tokens += e - b;
      max_position = std::max(max_position, e - 1);
    }
    tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
    seq->pages.AppendVisiblePages(max_position, &tables);
    if (max_position == context - 1 && context == static_cast<int64_t>(seq->tokens.size())) {
      sample_rows.push_back(static_cast<int32_t>(tables.q_pos.size()) - 1);
      sampling.push_back(seq->request.sampling);
      sampled.push_back(seq);
    }
    ran.push_back({seq, std::move(ranges)});
  }
  if (ran.empty()) return false;
  bool want_logits = false;
  for (Sequence* seq : sampled) want_logits |= seq->request.return_logits;

  model::ForwardBatch batch;
  batch.token_ids = token_ids;
  batch.tables = tables.view();
  batch.slot_page_ids = slot_pages;
  batch.slot_offsets = slot_rows;
  batch.sample_rows = sample_rows;
  batch.sampling = sampling;
  batch.want_logits = want_logits;
  model::ForwardResult result;
  double forward_s = 0;
  absl::Status forward;
  {
    AddTime timer(&forward_s);
    forward = backend_->Forward(batch, &result);
  }
  if (!forward.ok()) {
    // A backend failure ends the requests of this step (their blocks are
    // released uncommitted: nothing wrong is ever indexed).
    for (const Ran& r : ran) {
      Finish(*r.seq, forward, "");
      r.seq->sink = nullptr;
    }
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const auto& s) { return s->sink == nullptr; }),
                   running_.end());
    return true;
  }

  // Positions computed; tokens sampled.
  for (const Ran& r : ran) {
    ++r.seq->stats.steps;
    if (r.seq->logits_only) {
      r.seq->logits_only = false;
      continue;
    }
    for (const auto& [b, e] : r.ranges) {
      r.seq->pages.MarkComputed(b, e);
      const int64_t prompt_end = std::min<int64_t>(e, r.seq->stats.prompt_tokens);
      if (prompt_end > b) r.seq->stats.computed_prompt_tokens += prompt_end - b;
    }
  }
  const int64_t vocab = config_.vocab_size;
  absl::flat_hash_set<Sequence*> finished;
  std::vector<std::string> finish_reason(sampled.size());
  for (size_t i = 0; i < sampled.size(); ++i) {
    Sequence& seq = *sampled[i];
    const int32_t token = result.tokens[i];
    const int64_t now_us = absl::ToInt64Microseconds(absl::Now() - seq.arrival);
    TokenBatch out;
    out.tokens.push_back(token);
    out.times_us.push_back(now_us);
    if (seq.request.return_logits) {
      out.logits.assign(result.logits.begin() + static_cast<int64_t>(i) * vocab,
                        result.logits.begin() + static_cast<int64_t>(i + 1) * vocab);
    }
    if (seq.generated == 0) seq.stats.ttft_seconds = now_us * 1e-6;
    ++seq.generated;
    seq.tokens.push_back(token);
    seq.sink->OnTokens(std::move(out));
    if (options_.on_token) {
      options_.on_token(now_us * 1e-6,
                        seq.last_token_us < 0 ? -1.0 : (now_us - seq.last_token_us) * 1e-6);
    }
    seq.last_token_us = now_us;
    const bool stop = std::find(seq.request.stop_tokens.begin(), seq.request.stop_tokens.end(),
                                token) != seq.request.stop_tokens.end();
    if (stop) {
      finish_reason[i] = "stop";
    } else if (seq.generated >= seq.request.max_new_tokens ||
               static_cast<int64_t>(seq.tokens.size()) >= max_context_tokens_) {
      finish_reason[i] = "length";
    }
    if (!finish_reason[i].empty()) finished.insert(&seq);
  }
  // Commit leases whose positions are all computed: the partial last page
  // stays private while the request goes on.
  for (const Ran& r : ran) {
    Sequence& seq = *r.seq;
    if (seq.committed || !seq.pages.done() || seq.logits_only) continue;
    const bool keep_partial = !finished.contains(&seq);
    // Off the step thread; the daemon keeps exactly this page private (the
    // last page, partial and allocated by this lease), so no answer is
    // needed. A failure ends the request at its next step.
    const uint64_t lease_id = seq.lease.lease_id();
    seq.last_call = EnqueueCall([this, lease_id, keep_partial, error = seq.call_error] {
      absl::StatusOr<CommitResult> committed = daemon_->CommitStep(
          lease_id, CommitOptions{.keep_partial_last_page = keep_partial}, options_.rpc_timeout);
      if (!committed.ok()) error->Set(committed.status());
    });
    last_commit_ticket_ = seq.last_call;  // pages came into the cache: a deferred head may retry
    seq.committed = true;
    seq.pages.set_last_page_private(keep_partial && seq.pages.LastPageIsOwnPartial());
  }
  for (size_t i = 0; i < sampled.size(); ++i) {
    if (!finish_reason[i].empty() && sampled[i]->sink != nullptr) {
      Finish(*sampled[i], absl::OkStatus(), finish_reason[i]);
      sampled[i]->sink = nullptr;
    }
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const auto& s) { return s->sink == nullptr; }),
                 running_.end());
  {
    absl::MutexLock lock(&mu_);
    ++stats_.steps;
    stats_.generated_tokens += static_cast<int64_t>(sampled.size());
    stats_.prefill_tokens += prefill_tokens;
    stats_.forward_seconds += forward_s;
    stats_.step_seconds += SecondsSince(step_start);
    stats_.running = static_cast<int64_t>(running_.size());
    stats_.waiting = static_cast<int64_t>(waiting_.size());
    int64_t queued = 0;
    for (const auto& a : arrivals_) queued += static_cast<int64_t>(a->tokens.size());
    for (const auto& w : waiting_) queued += static_cast<int64_t>(w->tokens.size());
    for (const auto& r : running_) {
      if (!r->committed) queued += r->pages.pending_tokens();
    }
    stats_.queued_prefill_tokens = queued;
  }
  if (options_.on_step) {
    StepRecord record;
    record.start = step_start;
    record.decodes = std::move(decodes);
    record.chunks = schedule.chunks;
    record.predicted_s = schedule.predicted_latency_s;
    record.forward_s = forward_s;
    record.step_s = SecondsSince(step_start);
    record.waiting = static_cast<int64_t>(waiting_.size());
    options_.on_step(record);
  }
  return true;
}

}  // namespace asymcache::worker
