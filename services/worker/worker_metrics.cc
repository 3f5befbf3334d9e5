#include "services/worker/worker_metrics.h"

#include <algorithm>
#include <cmath>

namespace asymcache::worker {

namespace {

// Advances `counter` by now - before when positive (cumulative sources).
template <typename T>
void Advance(prometheus::Counter* counter, T before, T now) {
  if (now > before) counter->Increment(static_cast<double>(now - before));
}

void ObserveIfValid(prometheus::Histogram* histogram, double seconds) {
  if (std::isfinite(seconds) && seconds >= 0) histogram->Observe(seconds);
}

}  // namespace

const std::vector<double>& WorkerMetrics::StepLatencyBuckets() {
  // A tiny CPU step takes ~1 ms; an 8B decode step ~10-30 ms; a long
  // prefill chunk up to seconds.
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *kBuckets;
}

const std::vector<double>& WorkerMetrics::TtftBuckets() {
  // Interactive TTFT targets are 0.1-1 s; queueing and long prompts reach
  // tens of seconds.
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *kBuckets;
}

const std::vector<double>& WorkerMetrics::TpotBuckets() {
  // Around the 50 ms default TPOT target, finer below it.
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 3e-2, 4e-2, 5e-2, 7.5e-2, 0.1, 0.15, 0.25, 0.5, 1};
  return *kBuckets;
}

absl::StatusOr<std::unique_ptr<WorkerMetrics>> WorkerMetrics::Create(
    prometheus::Registry& registry, const Info& info) {
  std::unique_ptr<WorkerMetrics> metrics;
  absl::Status registered =
      RegisterMetricFamilies(registry, "worker", [&](MetricFamilyRegistrar& families) {
        metrics.reset(new WorkerMetrics(families, info));
      });
  if (!registered.ok()) return registered;
  return metrics;
}

WorkerMetrics::WorkerMetrics(MetricFamilyRegistrar& families, const Info& info) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  auto counter = [&](const char* name, const char* help) {
    return &families.Add(BuildCounter(), name, help).Add({});
  };
  auto gauge = [&](const char* name, const char* help) {
    return &families.Add(BuildGauge(), name, help).Add({});
  };
  auto histogram = [&](const char* name, const char* help, const std::vector<double>& buckets) {
    return &families.Add(BuildHistogram(), name, help).Add({}, buckets);
  };

  families
      .Add(BuildGauge(), "asymcache_worker_info",
           "The worker's role, model backend and model; always 1.")
      .Add({{"role", info.role}, {"backend", info.backend}, {"model", info.model}})
      .Set(1);
  steps_ = counter("asymcache_worker_steps_total", "Forward steps the engine ran.");
  step_duration_ = histogram(
      "asymcache_worker_step_duration_seconds",
      "Engine step time in seconds (planning, forward pass, commits). Count and sum are exact; "
      "the steps of one stats interval are bucketed at that interval's mean.",
      StepLatencyBuckets());
  forward_seconds_ = counter("asymcache_worker_forward_seconds_total",
                             "Seconds the engine spent in the model backend's forward pass.");
  rpc_seconds_ = counter("asymcache_worker_daemon_rpc_seconds_total",
                         "Seconds the engine spent in RPCs to its cache daemon (plan, commit, "
                         "renew, release, import).");
  generated_tokens_ = counter("asymcache_worker_generated_tokens_total", "Tokens generated.");
  prefill_tokens_ = counter("asymcache_worker_prefill_tokens_total",
                            "Prompt and hole tokens computed by the model (query tokens of "
                            "prefill/rebuild chunks).");
  copied_tokens_ = counter("asymcache_worker_copied_tokens_total",
                           "K/V rows copied from a request's own pages instead of recomputed.");
  page_rollovers_ = counter("asymcache_worker_page_rollovers_total",
                            "Decode pages rolled over by the daemon's ExtendLease (no plan).");
  deferred_admissions_ = counter(
      "asymcache_worker_deferred_admissions_total",
      "Admission plans deferred while another request computed the same pages "
      "(--defer-pending-tokens).");
  preemptions_ = counter("asymcache_worker_preemptions_total",
                         "Sequences whose blocks were given back under pool pressure.");
  finished_requests_ = counter("asymcache_worker_finished_requests_total",
                               "Requests that ended (any outcome).");
  running_ = gauge("asymcache_worker_running_sequences", "Sequences in the running batch.");
  waiting_ = gauge("asymcache_worker_waiting_requests", "Requests admitted but not yet planned.");
  ttft_ = histogram("asymcache_worker_ttft_seconds",
                    "Time from a request's arrival to its first token, in seconds.",
                    TtftBuckets());
  tpot_ = histogram("asymcache_worker_tpot_seconds",
                    "Time between consecutive tokens of a request, in seconds.", TpotBuckets());
}

void WorkerMetrics::Update(const EngineStats& stats) {
  absl::MutexLock lock(&mu_);
  Advance(steps_, last_.steps, stats.steps);
  if (stats.steps > last_.steps && stats.step_seconds >= last_.step_seconds) {
    const double steps = static_cast<double>(stats.steps - last_.steps);
    const double seconds = stats.step_seconds - last_.step_seconds;
    const std::vector<double>& bounds = StepLatencyBuckets();
    std::vector<double> increments(bounds.size() + 1, 0.0);  // the last: +Inf
    const size_t bucket = static_cast<size_t>(
        std::lower_bound(bounds.begin(), bounds.end(), seconds / steps) - bounds.begin());
    increments[bucket] = steps;
    step_duration_->ObserveMultiple(increments, seconds);
  }
  Advance(forward_seconds_, last_.forward_seconds, stats.forward_seconds);
  Advance(rpc_seconds_, last_.rpc_seconds, stats.rpc_seconds);
  Advance(generated_tokens_, last_.generated_tokens, stats.generated_tokens);
  Advance(prefill_tokens_, last_.prefill_tokens, stats.prefill_tokens);
  Advance(copied_tokens_, last_.copied_tokens, stats.copied_tokens);
  Advance(page_rollovers_, last_.page_rollovers, stats.page_rollovers);
  Advance(deferred_admissions_, last_.deferred_admissions, stats.deferred_admissions);
  Advance(preemptions_, last_.preemptions, stats.preemptions);
  Advance(finished_requests_, last_.finished_requests, stats.finished_requests);
  running_->Set(static_cast<double>(stats.running));
  waiting_->Set(static_cast<double>(stats.waiting));
  last_ = stats;
}

void WorkerMetrics::ObserveTtft(double seconds) { ObserveIfValid(ttft_, seconds); }
void WorkerMetrics::ObserveTpot(double seconds) { ObserveIfValid(tpot_, seconds); }

}  // namespace asymcache::worker
