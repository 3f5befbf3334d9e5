// asymcache-bench: end-to-end load generator (docs/bench.md). Replays a
// workload (the simulator's generators or a JSONL trace) against a real
// cluster for each system and load, and reports TTFT, TPOT, hit rate,
// rebuilt tokens and agent job latency per run — plus, per run, what the
// simulator predicts for the same workload with the daemon's calibration, and
// whether every system generated the same tokens.
//
// The systems differ only in the daemons' eviction policy, the workers'
// chunking and whether requests may reuse the cache (sim/system.h names):
// each (system, rate) run gets a freshly started cluster (LocalCluster), so
// every run starts cold and nothing else differs. `NAME+pins` adds the
// Continuum-style agent pins (AgentJob fields on agent steps) to a system.
// With --target the bench drives an already running cluster instead (one run
// per rate, labelled --label). With --repredict=RUN.json it starts nothing:
// it re-runs the simulator's prediction of every run of an earlier bench JSON
// (the same workload flags regenerate its workload) with that run's recorded
// calibration or --calibration's, against the run's measurements — how a new
// calibration would have predicted a GPU run, on any machine.
#include <unistd.h>

#include <atomic>
#include <csignal>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "nlohmann/json.hpp"
#include "services/common/proto_convert.h"
#include "services/common/transport_security.h"
#include "services/loadgen/local_cluster.h"
#include "services/loadgen/replay.h"
#include "services/loadgen/run_summary.h"
#include "sim/engine.h"
#include "sim/generators.h"
#include "sim/system.h"
#include "sim/trace.h"
#include "sim/workload.h"
#include "util/absl_flags_main.h"

ABSL_FLAG(std::string, workload, "chat",
          "built-in workload(s), comma-separated and merged: chat, agent, long-agent, doc-qa, "
          "long-doc-qa");
ABSL_FLAG(std::string, trace, "", "JSONL trace (asymcache.trace.v1) to replay instead of --workload");
ABSL_FLAG(int64_t, sessions, 0, "sessions (jobs) to generate; 0 = the workload's default");
ABSL_FLAG(uint64_t, seed, 1, "workload generator seed");
ABSL_FLAG(std::string, rates, "",
          "comma-separated session start rates (per second) to run; empty = the workload's own");
ABSL_FLAG(double, scale_lengths, 1.0,
          "multiply every token length of the workload by this (e.g. 0.05 for the CPU tiny model)");
ABSL_FLAG(double, scale_delays, 1.0,
          "multiply every tool-call and think time of the workload by this (demo runs: 0.1)");
ABSL_FLAG(std::string, systems, "vllm,pensieve,asymcache",
          "systems (asymcache-sim names, `all`, NAME:BUDGET, NAME@arrival or "
          "NAME@least-remaining for the prefill order, NAME+pins for agent pins)");
ABSL_FLAG(int64_t, budget, 2048, "prefill tokens per step of fixed-budget systems");
ABSL_FLAG(std::string, target, "",
          "drive this running cluster (HOST:PORT of a coordinator or worker) instead of "
          "starting one per run");
ABSL_FLAG(std::string, label, "target", "with --target: the run's system label");
ABSL_FLAG(std::string, target_daemon, "",
          "with --target: a daemon of the cluster (for its calibration and pool size; optional)");
ABSL_FLAG(std::string, tls_cert, "",
          "with --target: client certificate (PEM) for a cluster serving mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "with --target: its private key (PEM)");
ABSL_FLAG(std::string, tls_ca, "", "with --target: CA bundle (PEM) the servers' certificates chain to");
ABSL_FLAG(std::string, bin_dir, "", "directory of the service binaries; empty = beside this one");
ABSL_FLAG(std::string, log_dir, "", "children's logs; empty = /tmp/asymcache-bench-<pid>");
ABSL_FLAG(int, daemons, 1, "daemons (one worker each) per started cluster");
ABSL_FLAG(bool, coordinator, false, "start a coordinator and route through it");
ABSL_FLAG(bool, split_roles, false, "prefill worker on daemon 0, decode worker on daemon 1");
ABSL_FLAG(std::string, model, "tiny", "model shape: tiny, llama-3-8b, llama-3-70b-tp");
ABSL_FLAG(std::string, backend, "host", "host (CPU worker, shared-memory pool) or cuda");
ABSL_FLAG(std::string, pool_bytes, "16MiB", "KV pool per daemon (e.g. 16MiB, 24GiB)");
ABSL_FLAG(std::string, calibration, "", "calibration file for the daemons (empty = theirs)");
ABSL_FLAG(double, tpot_target_ms, 50, "adaptive chunking's TPOT SLO (ms)");
ABSL_FLAG(std::string, tpot_slo, "request-mean",
          "what --tpot_target_ms bounds in adaptive chunking (the workers' --tpot-slo and the "
          "prediction's): request-mean or per-step");
ABSL_FLAG(int64_t, overload_budget_tokens, 2048,
          "adaptive chunking's budget floor while requests wait for admission (0 = off; the "
          "worker's --overload-budget-tokens)");
ABSL_FLAG(int, cpu_threads, 0, "cpu worker threads (0 = all cores)");
ABSL_FLAG(std::string, gpus, "0", "GPU of daemon i: the i-th of this comma-separated list");
ABSL_FLAG(std::string, worker_flags, "", "extra worker flags, space-separated");
ABSL_FLAG(bool, step_traces, false,
          "started clusters: each worker writes a step trace (one JSON line per step) to "
          "<log-dir>/<system>-<rate>/worker-<i>.steps.jsonl (asymcache-fit-steps --trace reads it)");
ABSL_FLAG(std::string, daemon_flags, "", "extra daemon flags, space-separated");
ABSL_FLAG(int, max_in_flight, 512, "requests in flight at once");
ABSL_FLAG(double, request_timeout_s, 600, "deadline of one request (s)");
ABSL_FLAG(double, run_timeout_s, 3600, "deadline of one run (s)");
ABSL_FLAG(bool, predict, true, "also run the simulator with the daemon's calibration");
ABSL_FLAG(std::string, predict_memory, "worker",
          "the prediction's memory model: worker (as the worker holds KV blocks: the prompt at "
          "admission, one block per 16 decode tokens, commit when computed, preemption) or "
          "reserve (outputs reserved at admission, commit at finish: the predictions recorded "
          "before 2026-11-28)");
ABSL_FLAG(bool, predict_only, false,
          "start nothing: print (and with --json write) the simulator's prediction of every "
          "--systems x --rates run of the workload on --pool-blocks blocks, with --calibration "
          "(required) and the worker's defaults");
ABSL_FLAG(int64_t, pool_blocks, 0,
          "with --predict-only: the pool in blocks (what a run's daemon reports as pool_blocks: "
          "12288 for llama-3-8b in 24GiB)");
ABSL_FLAG(std::string, repredict, "",
          "start nothing: predict every run of this bench JSON again (with --calibration, or the "
          "calibration the run recorded) and compare with its measurements; the workload flags "
          "must regenerate the run's workload");
ABSL_FLAG(bool, require_same_tokens, false,
          "exit 1 unless every system generated the same tokens (greedy, batch-invariant "
          "backends: the CPU worker)");
ABSL_FLAG(bool, require_no_errors, false, "exit 1 if any request failed");
ABSL_FLAG(std::string, json, "", "write every run (summaries and per-request times) here");
ABSL_FLAG(bool, show_endpoints, false,
          "print each started cluster's gRPC and metrics endpoints before its run");
ABSL_FLAG(bool, progress, true, "progress bar on stderr when it is a terminal");

namespace asymcache::loadgen {
namespace {

// Set by SIGINT/SIGTERM: the run in progress is cancelled, its cluster
// stopped gracefully, and the bench exits 130.
std::atomic<bool> interrupted{false};
void OnSignal(int) { interrupted.store(true); }

struct SystemRun {
  SystemSpec spec;
  bool agent_pins = false;
  std::string label;
};

absl::StatusOr<std::vector<SystemRun>> ParseSystemRuns(const std::string& list, int64_t budget) {
  std::vector<SystemRun> runs;
  for (absl::string_view item : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    bool pins = absl::ConsumeSuffix(&item, "+pins");
    absl::StatusOr<std::vector<SystemSpec>> specs = ParseSystems(item, budget);
    if (!specs.ok()) return specs.status();
    for (SystemSpec& spec : *specs) {
      SystemRun run;
      run.label = pins ? absl::StrCat(spec.name, "+pins") : spec.name;
      run.spec = std::move(spec);
      run.agent_pins = pins;
      runs.push_back(std::move(run));
    }
  }
  if (runs.empty()) return absl::InvalidArgumentError("--systems: no system named");
  return runs;
}

absl::StatusOr<std::vector<double>> ParseRates(const std::string& list) {
  std::vector<double> rates;
  for (absl::string_view item : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    double rate = 0;
    if (!absl::SimpleAtod(item, &rate) || !(rate > 0) || !std::isfinite(rate)) {
      return absl::InvalidArgumentError(absl::StrCat("--rates: bad rate '", item, "' (> 0)"));
    }
    rates.push_back(rate);
  }
  return rates;
}

// Every tool-call and think time of the workload times `factor`.
Workload ScaleDelays(Workload w, double factor) {
  for (SessionSpec& session : w.sessions) {
    for (StepSpec& step : session.steps) {
      step.tool_s *= factor;
      step.think_s *= factor;
    }
  }
  return w;
}

// The sessions of several workloads as one, ordered by start.
Workload Merge(std::vector<Workload> parts) {
  Workload merged;
  for (Workload& part : parts) {
    merged.name = merged.name.empty() ? part.name : absl::StrCat(merged.name, "+", part.name);
    for (SessionSpec& session : part.sessions) merged.sessions.push_back(std::move(session));
  }
  std::stable_sort(merged.sessions.begin(), merged.sessions.end(),
                   [](const SessionSpec& a, const SessionSpec& b) {
                     return a.steps[0].arrival_s < b.steps[0].arrival_s;
                   });
  return merged;
}

// Every token length of the workload times `factor` (at least 1 token).
Workload ScaleLengths(Workload w, double factor) {
  auto scale = [factor](int64_t n) {
    return std::max<int64_t>(1, static_cast<int64_t>(std::llround(static_cast<double>(n) * factor)));
  };
  for (SessionSpec& session : w.sessions) {
    for (StepSpec& step : session.steps) {
      for (InputPart& part : step.input) {
        if (part.kind != InputPart::Kind::kExplicit) part.length = scale(part.length);
      }
      step.output_tokens = scale(step.output_tokens);
    }
  }
  return w;
}

std::vector<std::string> SplitFlags(const std::string& text) {
  return absl::StrSplit(text, ' ', absl::SkipEmpty());
}

absl::Status FromGrpc(const grpc::Status& s) {
  return s.ok() ? absl::OkStatus()
                : absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// What the bench reads from the cluster before a run.
struct ClusterFacts {
  v1::ModelShape model;
  std::optional<v1::GetStatsResponse> daemon;  // calibration and pool size
};

absl::StatusOr<ClusterFacts> ReadClusterFacts(const std::string& worker, const std::string& daemon,
                                              const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  ClusterFacts facts;
  auto worker_stub = v1::Worker::NewStub(grpc::CreateChannel(worker, creds));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::GetWorkerStatsResponse stats;
  if (absl::Status s = FromGrpc(
          worker_stub->GetWorkerStats(&context, v1::GetWorkerStatsRequest(), &stats));
      !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("GetWorkerStats from ", worker, ": ", s.message()));
  }
  facts.model = stats.model();
  if (!daemon.empty()) {
    auto daemon_stub = v1::CacheDaemon::NewStub(grpc::CreateChannel(daemon, creds));
    grpc::ClientContext daemon_context;
    daemon_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::GetStatsResponse daemon_stats;
    if (absl::Status s = FromGrpc(
            daemon_stub->GetStats(&daemon_context, v1::GetStatsRequest(), &daemon_stats));
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("GetStats from ", daemon, ": ", s.message()));
    }
    facts.daemon = std::move(daemon_stats);
  }
  return facts;
}

// The worker's counters (where its time went), for the run's record. The
// engine counts a step after its tokens went out, so the counters are read
// once the worker has settled (nothing running, the step count unchanged
// over 50 ms), or after 2 s (a shared --target may never idle): the last read.
absl::StatusOr<v1::GetWorkerStatsResponse> ReadWorkerStats(
    const std::string& worker, const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  auto stub = v1::Worker::NewStub(grpc::CreateChannel(worker, creds));
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  v1::GetWorkerStatsResponse stats;
  int64_t previous_steps = -1;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (absl::Status s =
            FromGrpc(stub->GetWorkerStats(&context, v1::GetWorkerStatsRequest(), &stats));
        !s.ok()) {
      return s;
    }
    if ((stats.running() == 0 && stats.steps() == previous_steps) || absl::Now() >= give_up) {
      return stats;
    }
    previous_steps = stats.steps();
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// --predict-memory: whether the prediction holds KV blocks as the worker does.
absl::StatusOr<bool> ParsePredictMemory(const std::string& value) {
  if (value == "worker") return true;
  if (value == "reserve") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("--predict-memory must be worker or reserve, got '", value, "'"));
}

// The simulator's options for predicting a run of the worker with its
// default limits (the worker's --max-running and --max-chunk-tokens).
EngineOptions PredictionOptions(const SystemRun& system, int64_t pool_blocks,
                                double tpot_target_ms, int64_t overload_budget_tokens,
                                ChunkSchedulerOptions::TpotSlo tpot_slo, bool worker_memory) {
  EngineOptions engine;
  engine.pool_blocks = pool_blocks;
  engine.max_running_requests = 128;  // the worker's --max-running default
  engine.tpot_target = absl::Milliseconds(tpot_target_ms);
  engine.max_budget_tokens = 8192 - 128;  // the worker's --max-chunk-tokens default
  engine.overload_budget_tokens = overload_budget_tokens;
  // max_step_latency: EngineOptions' default is the worker's (--max-step-latency).
  engine.tpot_slo = tpot_slo;
  engine.agent_pins = system.agent_pins;
  // The worker commits a lease once its positions are computed and grows a
  // context page by page (services/worker/engine.h).
  engine.commit_at_prefill_end = worker_memory;
  engine.grow_output_blocks = worker_memory;
  // The worker's --defer-pending-tokens default: an admission waits for the
  // pages another request is computing.
  engine.defer_pending_tokens = worker_memory ? 2048 : 0;
  return engine;
}

// The options a prediction used, for the run's record.
nlohmann::json EngineOptionsJson(const EngineOptions& o) {
  return {{"pool_blocks", o.pool_blocks},
          {"max_running_requests", o.max_running_requests},
          {"tpot_target_ms", absl::ToDoubleMilliseconds(o.tpot_target)},
          {"tpot_slo", TpotSloName(o.tpot_slo)},
          {"max_step_latency_ms", absl::ToDoubleMilliseconds(o.max_step_latency)},
          {"max_budget_tokens", o.max_budget_tokens},
          {"overload_budget_tokens", o.overload_budget_tokens},
          {"tile_tokens", o.tile_tokens},
          {"agent_pins", o.agent_pins},
          {"commit_at_prefill_end", o.commit_at_prefill_end},
          {"grow_output_blocks", o.grow_output_blocks},
          {"defer_pending_tokens", o.defer_pending_tokens}};
}

// The simulator's replay of the same workload on the same system, pool and
// calibration with `engine` (what the cost model predicts for this run).
absl::StatusOr<RunSummary> Predict(const Workload& workload, const SystemRun& system,
                                   const ModelConfig& model, const CalibrationParams& calibration,
                                   const EngineOptions& engine) {
  const CostModel cost(model, calibration);
  absl::StatusOr<RunResult> run = RunSystem(workload, system.spec, cost, engine);
  if (!run.ok()) return run.status();
  // The simulator's records in the bench's shape, summarized the same way.
  ReplayResult as_replay;
  for (const asymcache::RequestRecord& r : run->requests) {
    loadgen::RequestRecord record;
    record.session = r.session;
    record.step = r.step;
    record.sent_s = r.arrival_s;
    record.first_token_s = r.first_token_s;
    record.finish_s = r.finish_s;
    record.prompt_tokens = r.prompt_tokens;
    record.output_tokens = r.output_tokens;
    record.hit_tokens = r.hit_tokens;
    record.rebuilt_tokens = r.rebuild_tokens;
    record.preemptions = r.preemptions;
    if (!r.finished()) record.status = absl::ResourceExhaustedError("rejected by the simulator");
    as_replay.requests.push_back(std::move(record));
  }
  for (const asymcache::JobRecord& j : run->jobs) {
    as_replay.jobs.push_back(loadgen::JobRecord{j.session, j.start_s, j.finish_s});
  }
  as_replay.duration_s = run->makespan_s;
  return SummarizeRun(as_replay);
}

nlohmann::json DistributionJson(const Distribution& d) {
  return {{"mean", d.mean}, {"p50", d.p50}, {"p90", d.p90}, {"p99", d.p99}, {"max", d.max},
          {"count", d.count}};
}

nlohmann::json SummaryJson(const RunSummary& s) {
  return {{"requests", s.requests},
          {"finished", s.finished},
          {"failed", s.failed},
          {"not_sent", s.not_sent},
          {"first_error", s.first_error},
          {"ttft_s", DistributionJson(s.ttft_s)},
          {"tpot_s", DistributionJson(s.tpot_s)},
          {"job_latency_s", DistributionJson(s.job_latency_s)},
          {"prompt_tokens", s.prompt_tokens},
          {"hit_tokens", s.hit_tokens},
          {"hit_rate", s.hit_rate},
          {"rebuilt_tokens", s.rebuilt_tokens},
          {"computed_prompt_tokens", s.computed_prompt_tokens},
          {"generated_tokens", s.generated_tokens},
          {"preemptions", s.preemptions},
          {"duration_s", s.duration_s},
          {"throughput_tokens_per_s", s.throughput_tokens_per_s},
          {"max_send_lateness_s", s.max_send_lateness_s}};
}

// One line of the progress bar: "[label @ rate] ####....  done/known".
class ProgressLine {
 public:
  ProgressLine(bool enabled, std::string label) : enabled_(enabled), label_(std::move(label)) {}
  ~ProgressLine() {
    if (enabled_) std::fprintf(stderr, "\r%*s\r", 78, "");
  }
  void Update(int64_t done, int64_t known) {
    if (!enabled_ || known <= 0) return;
    const int filled = static_cast<int>(30 * done / known);
    std::fprintf(stderr, "\r%-28.28s [%s%s] %lld/%lld", label_.c_str(),
                 std::string(filled, '#').c_str(), std::string(30 - filled, '.').c_str(),
                 static_cast<long long>(done), static_cast<long long>(known));
    std::fflush(stderr);
  }

 private:
  const bool enabled_;
  const std::string label_;
};

// Writes `json` to `path` (nothing when path is empty).
absl::Status WriteJson(const std::string& path, const nlohmann::json& json) {
  if (path.empty()) return absl::OkStatus();
  std::ofstream file(path, std::ios::trunc);
  file << json.dump(1) << "\n";
  if (!file) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string Ms(double seconds) { return absl::StrFormat("%.1f", seconds * 1e3); }

// `status` with `prefix` before its message.
absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

// (predicted - measured) / measured, 0 when nothing was measured.
double RelativeError(double predicted, double measured) {
  return measured > 0 ? (predicted - measured) / measured : 0;
}

// --repredict: every run of the bench JSON at `path`, predicted again.
absl::Status Repredict(const Workload& workload, double scale_lengths, double scale_delays,
                       bool worker_memory, const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const nlohmann::json doc = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || doc.value("schema", std::string()) != "asymcache.bench.v1" ||
      !doc.contains("runs") || !doc["runs"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not an asymcache.bench.v1 JSON (asymcache-bench --json)"));
  }
  const int64_t sessions = doc.value("sessions", int64_t{-1});
  const int64_t steps = doc.value("steps", int64_t{-1});
  if (sessions != static_cast<int64_t>(workload.sessions.size()) ||
      steps != workload.total_steps()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the workload flags do not regenerate ", path, "'s workload: ", workload.sessions.size(),
        " sessions and ", workload.total_steps(), " steps here, ", sessions, " and ", steps,
        " there (give the run's --workload, --sessions, --seed, --scale-lengths, --trace)"));
  }
  // Recorded since 2026-11-27 (older files: sessions and steps only).
  auto differs = [&](const char* key, double here) {
    return doc.contains(key) && doc[key].is_number() && doc[key].get<double>() != here;
  };
  if (differs("scale_lengths", scale_lengths) || differs("scale_delays", scale_delays) ||
      differs("seed", static_cast<double>(absl::GetFlag(FLAGS_seed))) ||
      (doc.contains("trace") && doc["trace"] != absl::GetFlag(FLAGS_trace))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the workload flags do not regenerate ", path, "'s workload: it was made with --seed=",
        doc.value("seed", nlohmann::json()).dump(), " --scale-lengths=",
        doc.value("scale_lengths", nlohmann::json()).dump(), " --scale-delays=",
        doc.value("scale_delays", nlohmann::json()).dump(), " --trace=",
        doc.value("trace", nlohmann::json()).dump()));
  }
  absl::StatusOr<ModelConfig> model = ModelConfig::Named(doc.value("model", std::string()));
  if (!model.ok()) return Prefixed(model.status(), absl::StrCat(path, ": model: "));
  std::optional<CalibrationParams> override_calibration;
  const std::string calibration_path = absl::GetFlag(FLAGS_calibration);
  if (!calibration_path.empty()) {
    absl::StatusOr<CalibrationParams> c = CostModel::LoadCalibrationFile(calibration_path);
    if (!c.ok()) return c.status();
    override_calibration = *c;
  }
  std::printf("re-predicting %s (%s) with %s, %s memory\n", path.c_str(),
              doc.value("workload", "").c_str(),
              calibration_path.empty() ? "each run's recorded calibration"
                                       : calibration_path.c_str(),
              worker_memory ? "the worker's" : "reserved-output");
  std::printf("%-22s %6s %10s %10s %7s %9s %9s %7s\n", "system", "rate", "ttft_ms", "sim_ttft",
              "err", "tpot_ms", "sim_tpot", "err");
  nlohmann::json out = {{"schema", "asymcache.repredict.v1"},
                        {"runs_from", path},
                        {"calibration", calibration_path},
                        {"runs", nlohmann::json::array()}};
  const double tpot_target_ms = absl::GetFlag(FLAGS_tpot_target_ms);
  size_t index = 0;
  for (const nlohmann::json& run : doc["runs"]) {
    const std::string where = absl::StrCat(path, ": runs[", index++, "]");
    if (!run.is_object() || !run.contains("system") || !run["system"].is_string() ||
        !run.contains("rate") || !run["rate"].is_number() || !run.contains("pool_blocks") ||
        !run["pool_blocks"].is_number_integer() || !run.contains("summary") ||
        !run["summary"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": needs system, rate, pool_blocks and summary"));
    }
    CalibrationParams calibration;
    if (override_calibration.has_value()) {
      calibration = *override_calibration;
    } else if (run.contains("calibration")) {
      absl::StatusOr<CalibrationParams> recorded =
          CostModel::ParseCalibration(run["calibration"].dump(), where);
      if (!recorded.ok()) return recorded.status();
      calibration = *recorded;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " records no calibration (an older bench): pass --calibration"));
    }
    absl::StatusOr<std::vector<SystemRun>> parsed = ParseSystemRuns(
        run["system"].get<std::string>(), run.value("fixed_budget_tokens", int64_t{2048}));
    if (!parsed.ok()) return Prefixed(parsed.status(), absl::StrCat(where, ": "));
    SystemRun system = parsed->front();
    // The prefill order the run's workers used (recorded since 2026-11-28;
    // older runs: arrival, the only order then).
    const absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> prefill_order =
        ParsePrefillOrder(run.value("prefill_order", std::string("arrival")));
    if (!prefill_order.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": prefill_order ", prefill_order.status().message()));
    }
    system.spec.least_remaining_first =
        *prefill_order == ChunkSchedulerOptions::PrefillOrder::kLeastRemaining;
    const double rate = run["rate"].get<double>();
    const Workload at_rate =
        workload.session_rate() > 0 ? workload.WithSessionRate(rate) : workload;
    // Recorded since 2026-11-28; older runs bounded every step.
    const absl::StatusOr<ChunkSchedulerOptions::TpotSlo> tpot_slo =
        ParseTpotSlo(run.value("tpot_slo", std::string("per-step")));
    if (!tpot_slo.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tpot_slo ", tpot_slo.status().message()));
    }
    EngineOptions engine = PredictionOptions(
        system, run["pool_blocks"].get<int64_t>(),
        // Recorded since 2026-11-28; older files: --tpot-target-ms (give the run's).
        run.value("tpot_target_ms", tpot_target_ms),
        // Recorded since 2026-11-27 (evening); older runs had no floor.
        run.value("overload_budget_tokens", int64_t{0}), *tpot_slo, worker_memory);
    // The stall cap the run was predicted with (recorded with its engine
    // options since 2026-11-28; older runs: EngineOptions' default, theirs).
    const nlohmann::json recorded_options =
        run.value("predicted_engine_options", nlohmann::json::object());
    // The deferral of duplicate prefill (recorded since 2026-11-28; older
    // runs' workers had none).
    if (worker_memory) {
      const nlohmann::json defer = recorded_options.is_object()
                                       ? recorded_options.value("defer_pending_tokens", nlohmann::json(0))
                                       : nlohmann::json(0);
      if (!defer.is_number_integer() || defer.get<int64_t>() < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": predicted_engine_options.defer_pending_tokens must be an integer >= 0, got ",
            defer.dump()));
      }
      engine.defer_pending_tokens = defer.get<int64_t>();
    }
    if (recorded_options.is_object() && recorded_options.contains("max_step_latency_ms")) {
      const nlohmann::json& cap = recorded_options["max_step_latency_ms"];
      if (!cap.is_number() || !std::isfinite(cap.get<double>()) || cap.get<double>() < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": predicted_engine_options.max_step_latency_ms must be a number >= 0, got ",
            cap.dump()));
      }
      engine.max_step_latency = absl::Milliseconds(cap.get<double>());
    }
    absl::StatusOr<RunSummary> predicted = Predict(at_rate, system, *model, calibration, engine);
    if (!predicted.ok()) return Prefixed(predicted.status(), absl::StrCat(where, ": "));
    const nlohmann::json& measured = run["summary"];
    const double ttft = measured.value("ttft_s", nlohmann::json::object()).value("mean", 0.0);
    const double tpot = measured.value("tpot_s", nlohmann::json::object()).value("mean", 0.0);
    const double ttft_error = RelativeError(predicted->ttft_s.mean, ttft);
    const double tpot_error = RelativeError(predicted->tpot_s.mean, tpot);
    std::printf("%-22s %6.3g %10s %10s %+6.0f%% %9s %9s %+6.0f%%\n", system.label.c_str(), rate,
                Ms(ttft).c_str(), Ms(predicted->ttft_s.mean).c_str(), ttft_error * 100,
                Ms(tpot).c_str(), Ms(predicted->tpot_s.mean).c_str(), tpot_error * 100);
    out["runs"].push_back({{"system", system.label},
                           {"rate", rate},
                           {"measured_ttft_s", ttft},
                           {"measured_tpot_s", tpot},
                           {"predicted", SummaryJson(*predicted)},
                           {"predicted_engine_options", EngineOptionsJson(engine)},
                           {"predicted_ttft_error", ttft_error},
                           {"predicted_tpot_error", tpot_error}});
  }
  return WriteJson(absl::GetFlag(FLAGS_json), out);
}

// --predict-only: the simulator's prediction of each (system, rate) run on
// `pool_blocks` blocks, with the worker's defaults (PredictionOptions).
absl::Status PredictOnly(const Workload& workload, const std::vector<SystemRun>& systems,
                         const std::vector<double>& rates, int64_t pool_blocks,
                         int64_t overload_budget_tokens, ChunkSchedulerOptions::TpotSlo tpot_slo,
                         bool worker_memory) {
  if (pool_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--predict-only needs --pool-blocks > 0 (a run's pool_blocks), got ", pool_blocks));
  }
  const std::string calibration_path = absl::GetFlag(FLAGS_calibration);
  if (calibration_path.empty()) {
    return absl::InvalidArgumentError(
        "--predict-only needs --calibration (the card's calibration file, e.g. "
        "calibration/h200-llama-3-8b-engine.json)");
  }
  absl::StatusOr<CalibrationParams> calibration =
      CostModel::LoadCalibrationFile(calibration_path);
  if (!calibration.ok()) return calibration.status();
  absl::StatusOr<ModelConfig> model = ModelConfig::Named(absl::GetFlag(FLAGS_model));
  if (!model.ok()) return Prefixed(model.status(), "--model: ");
  std::printf("predicting %s (%zu sessions) on %lld blocks with %s, %s memory\n",
              workload.name.c_str(), workload.sessions.size(),
              static_cast<long long>(pool_blocks), calibration_path.c_str(),
              worker_memory ? "the worker's" : "reserved-output");
  std::printf("%-36s %6s %9s %9s %9s %9s %7s %9s\n", "system", "rate", "ttft_ms", "p99_ms",
              "tpot_ms", "p99_ms", "hit", "rebuilt");
  nlohmann::json out = {{"schema", "asymcache.predict.v1"},
                        {"workload", workload.name},
                        {"sessions", workload.sessions.size()},
                        {"steps", workload.total_steps()},
                        {"seed", absl::GetFlag(FLAGS_seed)},
                        {"model", absl::GetFlag(FLAGS_model)},
                        {"calibration", calibration_path},
                        {"runs", nlohmann::json::array()}};
  for (double rate : rates) {
    const Workload at_rate =
        workload.session_rate() > 0 ? workload.WithSessionRate(rate) : workload;
    for (const SystemRun& system : systems) {
      const EngineOptions engine =
          PredictionOptions(system, pool_blocks, absl::GetFlag(FLAGS_tpot_target_ms),
                            overload_budget_tokens, tpot_slo, worker_memory);
      absl::StatusOr<RunSummary> predicted =
          Predict(at_rate, system, *model, *calibration, engine);
      if (!predicted.ok()) return Prefixed(predicted.status(), absl::StrCat(system.label, ": "));
      std::printf("%-36s %6.3g %9s %9s %9s %9s %6.1f%% %9lld\n", system.label.c_str(), rate,
                  Ms(predicted->ttft_s.mean).c_str(), Ms(predicted->ttft_s.p99).c_str(),
                  Ms(predicted->tpot_s.mean).c_str(), Ms(predicted->tpot_s.p99).c_str(),
                  predicted->hit_rate * 100, static_cast<long long>(predicted->rebuilt_tokens));
      out["runs"].push_back(
          {{"system", system.label},
           {"rate", rate},
           {"prefill_order", std::string(PrefillOrderName(PrefillOrderOf(system.spec)))},
           {"predicted", SummaryJson(*predicted)},
           {"predicted_engine_options", EngineOptionsJson(engine)}});
    }
  }
  return WriteJson(absl::GetFlag(FLAGS_json), out);
}

absl::Status Main(int argc, char** argv) {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  const std::string target = absl::GetFlag(FLAGS_target);
  absl::StatusOr<std::vector<SystemRun>> systems =
      target.empty() ? ParseSystemRuns(absl::GetFlag(FLAGS_systems), absl::GetFlag(FLAGS_budget))
                     : absl::StatusOr<std::vector<SystemRun>>(std::vector<SystemRun>{});
  if (!systems.ok()) return systems.status();
  if (!target.empty()) {
    SystemRun run;
    run.label = absl::GetFlag(FLAGS_label);
    run.spec.name = run.spec.base = run.label;
    run.spec.policy = "asym";
    systems->push_back(std::move(run));
  }
  absl::StatusOr<std::vector<double>> rates = ParseRates(absl::GetFlag(FLAGS_rates));
  if (!rates.ok()) return rates.status();
  const double scale = absl::GetFlag(FLAGS_scale_lengths);
  if (!(scale > 0) || !std::isfinite(scale)) {
    return absl::InvalidArgumentError("--scale-lengths must be > 0");
  }
  const absl::StatusOr<ChunkSchedulerOptions::TpotSlo> tpot_slo =
      ParseTpotSlo(absl::GetFlag(FLAGS_tpot_slo));
  if (!tpot_slo.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tpot-slo ", tpot_slo.status().message()));
  }
  const int64_t overload = absl::GetFlag(FLAGS_overload_budget_tokens);
  if (overload < 0 || overload % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--overload-budget-tokens must be 0 (off) or a positive multiple of 16, got ", overload));
  }
  const absl::StatusOr<bool> worker_memory =
      ParsePredictMemory(absl::GetFlag(FLAGS_predict_memory));
  if (!worker_memory.ok()) return worker_memory.status();
  std::vector<int> gpus;
  for (absl::string_view g : absl::StrSplit(absl::GetFlag(FLAGS_gpus), ',', absl::SkipEmpty())) {
    int gpu = 0;
    if (!absl::SimpleAtoi(g, &gpu) || gpu < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--gpus: bad GPU index '", g, "'"));
    }
    gpus.push_back(gpu);
  }

  absl::StatusOr<Workload> base;
  if (!absl::GetFlag(FLAGS_trace).empty()) {
    base = ReadTraceFile(absl::GetFlag(FLAGS_trace));
  } else {
    std::vector<Workload> parts;
    for (absl::string_view name :
         absl::StrSplit(absl::GetFlag(FLAGS_workload), ',', absl::SkipEmpty())) {
      GeneratorOptions generator;
      generator.workload = std::string(name);
      generator.sessions = absl::GetFlag(FLAGS_sessions);
      generator.seed = absl::GetFlag(FLAGS_seed);
      absl::StatusOr<Workload> part = GenerateWorkload(generator);
      if (!part.ok()) return part.status();
      parts.push_back(*std::move(part));
    }
    if (parts.empty()) return absl::InvalidArgumentError("--workload: no workload named");
    base = Merge(std::move(parts));
  }
  if (!base.ok()) return base.status();
  const double delay_scale = absl::GetFlag(FLAGS_scale_delays);
  if (!(delay_scale >= 0) || !std::isfinite(delay_scale)) {
    return absl::InvalidArgumentError("--scale-delays must be >= 0");
  }
  Workload workload = scale == 1.0 ? *std::move(base) : ScaleLengths(*std::move(base), scale);
  if (delay_scale != 1.0) workload = ScaleDelays(std::move(workload), delay_scale);
  if (absl::Status s = workload.Validate(); !s.ok()) return s;
  if (!absl::GetFlag(FLAGS_repredict).empty()) {
    return Repredict(workload, scale, delay_scale, *worker_memory,
                     absl::GetFlag(FLAGS_repredict));
  }
  if (rates->empty()) rates->push_back(workload.session_rate() > 0 ? workload.session_rate() : 1);
  if (absl::GetFlag(FLAGS_predict_only)) {
    if (!target.empty()) {
      return absl::InvalidArgumentError("--predict-only starts nothing: drop --target");
    }
    return PredictOnly(workload, *systems, *rates, absl::GetFlag(FLAGS_pool_blocks), overload,
                       *tpot_slo, *worker_memory);
  }

  // Launched clusters are plaintext on 127.0.0.1; --target may need TLS.
  TransportSecurityOptions security;
  if (!absl::GetFlag(FLAGS_tls_cert).empty() || !absl::GetFlag(FLAGS_tls_key).empty() ||
      !absl::GetFlag(FLAGS_tls_ca).empty()) {
    if (target.empty()) {
      return absl::InvalidArgumentError(
          "--tls-cert/--tls-key/--tls-ca go with --target (started clusters are plaintext on "
          "127.0.0.1)");
    }
    security.plaintext = false;
    security.cert_file = absl::GetFlag(FLAGS_tls_cert);
    security.key_file = absl::GetFlag(FLAGS_tls_key);
    security.ca_file = absl::GetFlag(FLAGS_tls_ca);
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(security);
  if (!credentials.ok()) return credentials.status();
  const std::string log_dir = absl::GetFlag(FLAGS_log_dir).empty()
                                  ? absl::StrCat("/tmp/asymcache-bench-", getpid())
                                  : absl::GetFlag(FLAGS_log_dir);
  const bool progress = absl::GetFlag(FLAGS_progress) && isatty(STDERR_FILENO);
  std::string command;
  for (int i = 0; i < argc; ++i) absl::StrAppend(&command, i ? " " : "", argv[i]);

  nlohmann::json out = {{"schema", "asymcache.bench.v1"},
                        {"command", command},
                        {"date", absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::Now(),
                                                  absl::UTCTimeZone())},
                        {"workload", workload.name},
                        {"sessions", workload.sessions.size()},
                        {"steps", workload.total_steps()},
                        {"scale_lengths", scale},
                        {"scale_delays", delay_scale},
                        {"seed", absl::GetFlag(FLAGS_seed)},
                        {"trace", absl::GetFlag(FLAGS_trace)},
                        {"model", absl::GetFlag(FLAGS_model)},
                        {"backend", absl::GetFlag(FLAGS_backend)},
                        {"pool_bytes", absl::GetFlag(FLAGS_pool_bytes)},
                        {"runs", nlohmann::json::array()}};
  std::printf("workload %s: %zu sessions, %lld steps, max context %lld tokens\n",
              workload.name.c_str(), workload.sessions.size(),
              static_cast<long long>(workload.total_steps()),
              static_cast<long long>(workload.max_context_tokens()));
  std::printf("%-22s %6s %5s %5s %9s %9s %9s %9s %7s %9s %9s %10s %8s\n", "system", "rate", "done",
              "fail", "ttft_ms", "p99_ms", "tpot_ms", "p99_ms", "hit", "rebuilt", "job_s",
              "sim_ttft", "err");
  bool all_ok = true;
  int64_t token_mismatches = 0;
  for (double rate : *rates) {
    const Workload at_rate = workload.session_rate() > 0 ? workload.WithSessionRate(rate) : workload;
    std::optional<ReplayResult> reference;
    std::string reference_label;
    for (const SystemRun& system : *systems) {
      std::unique_ptr<LocalCluster> cluster;
      std::string run_target = target, worker = target, daemon = absl::GetFlag(FLAGS_target_daemon);
      if (target.empty()) {
        LocalClusterOptions c;
        c.bin_dir = absl::GetFlag(FLAGS_bin_dir);
        c.log_dir = absl::StrCat(log_dir, "/", system.label, "-", rate);
        c.daemons = absl::GetFlag(FLAGS_daemons);
        c.coordinator = absl::GetFlag(FLAGS_coordinator) || absl::GetFlag(FLAGS_split_roles);
        c.split_roles = absl::GetFlag(FLAGS_split_roles);
        c.model = absl::GetFlag(FLAGS_model);
        c.backend = absl::GetFlag(FLAGS_backend);
        c.pool_bytes = absl::GetFlag(FLAGS_pool_bytes);
        c.policy = system.spec.policy;
        c.calibration = absl::GetFlag(FLAGS_calibration);
        c.chunking = system.spec.adaptive_chunking ? "adaptive" : "fixed";
        c.fixed_budget_tokens = system.spec.fixed_budget_tokens;
        c.prefill_order = std::string(PrefillOrderName(PrefillOrderOf(system.spec)));
        c.tpot_target = absl::Milliseconds(absl::GetFlag(FLAGS_tpot_target_ms));
        c.overload_budget_tokens = absl::GetFlag(FLAGS_overload_budget_tokens);
        c.tpot_slo = absl::GetFlag(FLAGS_tpot_slo);
        c.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
        if (!gpus.empty()) c.gpus = gpus;
        c.daemon_flags = SplitFlags(absl::GetFlag(FLAGS_daemon_flags));
        c.worker_flags = SplitFlags(absl::GetFlag(FLAGS_worker_flags));
        c.step_traces = absl::GetFlag(FLAGS_step_traces);
        absl::StatusOr<std::unique_ptr<LocalCluster>> started = LocalCluster::Start(c);
        if (!started.ok()) return started.status();
        cluster = std::move(*started);
        if (absl::GetFlag(FLAGS_show_endpoints)) {
          std::fprintf(stderr, "cluster for %s (logs in %s):\n", system.label.c_str(),
                       c.log_dir.c_str());
          for (const std::string& line : cluster->Endpoints()) {
            std::fprintf(stderr, "  %s\n", line.c_str());
          }
        }
        run_target = cluster->target();
        worker = cluster->worker_address(0);
        daemon = cluster->daemon_address(0);
      }
      absl::StatusOr<ClusterFacts> facts = ReadClusterFacts(worker, daemon, *credentials);
      if (!facts.ok()) return facts.status();

      ReplayOptions replay;
      replay.target = run_target;
      replay.security = security;
      replay.vocab_size = facts->model.vocab_size();
      replay.max_in_flight = absl::GetFlag(FLAGS_max_in_flight);
      replay.fresh_salt_per_request = !system.spec.reuse;
      replay.agent_pins = system.agent_pins;
      replay.request_timeout = absl::Seconds(absl::GetFlag(FLAGS_request_timeout_s));
      replay.run_timeout = absl::Seconds(absl::GetFlag(FLAGS_run_timeout_s));
      replay.interrupt = &interrupted;
      // A cluster driven across several runs: each run its own tenants.
      if (!target.empty()) replay.salt_prefix = absl::StrCat("bench-", getpid(), "-", rate, "/");
      ProgressLine line(progress, absl::StrCat(system.label, " @ ", rate, "/s"));
      replay.progress = [&line](int64_t done, int64_t known) { line.Update(done, known); };
      absl::StatusOr<ReplayResult> result = Replay(at_rate, replay);
      if (!result.ok()) return result.status();
      // Read before the cluster stops: the worker's step breakdown of this run.
      absl::StatusOr<v1::GetWorkerStatsResponse> worker_stats = ReadWorkerStats(worker, *credentials);
      if (cluster != nullptr) {
        if (absl::Status s = cluster->Stop(); !s.ok()) {
          std::fprintf(stderr, "warning: %s\n", std::string(s.message()).c_str());
        }
      }
      if (interrupted.load()) return absl::CancelledError("interrupted; every cluster stopped");
      const RunSummary summary = SummarizeRun(*result);
      std::optional<RunSummary> predicted;
      std::string predict_error;
      std::optional<ModelConfig> daemon_model;
      if (facts->daemon.has_value()) {
        absl::StatusOr<ModelConfig> m = FromProto(facts->daemon->model(), "daemon model");
        if (m.ok()) {
          daemon_model = *m;
        } else {
          predict_error = m.status().ToString();
        }
      } else {
        predict_error = "no daemon to read";
      }
      std::optional<EngineOptions> predicted_engine;
      if (absl::GetFlag(FLAGS_predict) && daemon_model.has_value()) {
        predicted_engine = PredictionOptions(
            system, facts->daemon->capacity_blocks(), absl::GetFlag(FLAGS_tpot_target_ms),
            absl::GetFlag(FLAGS_overload_budget_tokens), *tpot_slo,
            *worker_memory);
        absl::StatusOr<RunSummary> p = Predict(at_rate, system, *daemon_model,
                                               FromProto(facts->daemon->calibration()),
                                               *predicted_engine);
        if (p.ok()) {
          predicted = *p;
        } else {
          predict_error = p.status().ToString();
        }
      }
      int64_t mismatches = 0;
      if (!reference.has_value()) {
        reference = *result;
        reference_label = system.label;
      } else {
        mismatches = CountTokenMismatches(*reference, *result);
        token_mismatches += mismatches;
      }
      all_ok = all_ok && summary.failed == 0 && summary.not_sent == 0;
      const double sim_error =
          predicted.has_value() && summary.ttft_s.mean > 0
              ? (predicted->ttft_s.mean - summary.ttft_s.mean) / summary.ttft_s.mean
              : 0;
      std::printf("%-22s %6.3g %5lld %5lld %9s %9s %9s %9s %6.1f%% %9lld %9.2f %10s %7s\n",
                  system.label.c_str(), rate, static_cast<long long>(summary.finished),
                  static_cast<long long>(summary.failed + summary.not_sent),
                  Ms(summary.ttft_s.mean).c_str(), Ms(summary.ttft_s.p99).c_str(),
                  Ms(summary.tpot_s.mean).c_str(), Ms(summary.tpot_s.p99).c_str(),
                  summary.hit_rate * 100, static_cast<long long>(summary.rebuilt_tokens),
                  summary.job_latency_s.mean,
                  predicted.has_value() ? Ms(predicted->ttft_s.mean).c_str() : "-",
                  predicted.has_value() ? absl::StrFormat("%+.0f%%", sim_error * 100).c_str()
                                        : "-");
      if (!summary.first_error.empty()) {
        std::printf("  first error: %s\n", summary.first_error.c_str());
      }
      std::fflush(stdout);
      nlohmann::json run = {{"system", system.label},
                            {"policy", system.spec.policy},
                            {"chunking", system.spec.adaptive_chunking ? "adaptive" : "fixed"},
                            {"fixed_budget_tokens", system.spec.fixed_budget_tokens},
                            {"prefill_order",
                             std::string(PrefillOrderName(PrefillOrderOf(system.spec)))},
                            {"tpot_target_ms", absl::GetFlag(FLAGS_tpot_target_ms)},
                            {"overload_budget_tokens", absl::GetFlag(FLAGS_overload_budget_tokens)},
                            {"tpot_slo", absl::GetFlag(FLAGS_tpot_slo)},
                            {"reuse", system.spec.reuse},
                            {"agent_pins", system.agent_pins},
                            {"rate", rate},
                            {"summary", SummaryJson(summary)},
                            {"token_mismatches_vs", reference_label},
                            {"token_mismatches", mismatches}};
      if (worker_stats.ok()) {
        const v1::GetWorkerStatsResponse& w = *worker_stats;
        run["worker"] = {{"steps", w.steps()},
                         {"step_seconds", w.step_seconds()},
                         {"forward_seconds", w.forward_seconds()},
                         {"plan_rpc_seconds", w.plan_rpc_seconds()},
                         {"async_rpc_seconds", w.async_rpc_seconds()},
                         {"import_seconds", w.import_seconds()},
                         {"prefill_tokens", w.prefill_tokens()},
                         {"generated_tokens", w.generated_tokens()},
                         {"copied_tokens", w.copied_tokens()},
                         {"preemptions", w.preemptions()}};
      }
      if (facts->daemon.has_value()) {
        run["pool_blocks"] = facts->daemon->capacity_blocks();
        run["calibration_device"] = facts->daemon->calibration().device();
        if (daemon_model.has_value()) {
          // What --repredict uses by default.
          run["calibration"] = nlohmann::json::parse(
              CostModel::CalibrationToJson(FromProto(facts->daemon->calibration()), *daemon_model));
        }
      }
      if (predicted.has_value()) {
        run["predicted"] = SummaryJson(*predicted);
        run["predicted_engine_options"] = EngineOptionsJson(*predicted_engine);
        run["predicted_ttft_error"] = sim_error;
      } else if (!predict_error.empty() && absl::GetFlag(FLAGS_predict)) {
        run["predict_error"] = predict_error;
      }
      nlohmann::json ttft = nlohmann::json::array(), tpot = nlohmann::json::array();
      for (const RequestRecord& r : result->requests) {
        if (!r.finished()) continue;
        ttft.push_back(r.ttft_s());
        if (r.output_tokens > 1) tpot.push_back(r.tpot_s());
      }
      run["ttft_s"] = std::move(ttft);
      run["tpot_s"] = std::move(tpot);
      out["runs"].push_back(std::move(run));
      out["token_mismatches"] = token_mismatches;
      // After every run, so a sweep cut short keeps the runs it finished.
      if (absl::Status s = WriteJson(absl::GetFlag(FLAGS_json), out); !s.ok()) return s;
    }
  }
  std::printf("outputs across systems: %s\n",
              systems->size() < 2 ? "(one system)"
              : token_mismatches == 0
                  ? "identical token for token"
                  : absl::StrCat(token_mismatches, " requests differ").c_str());
  if (absl::GetFlag(FLAGS_require_no_errors) && !all_ok) {
    return absl::InternalError("some requests failed (see the table)");
  }
  if (absl::GetFlag(FLAGS_require_same_tokens) && token_mismatches > 0) {
    return absl::InternalError(
        absl::StrCat(token_mismatches, " requests generated different tokens across systems"));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace asymcache::loadgen

int main(int argc, char** argv) {
  asymcache::ParseDashedAbslFlags(argc, argv, "bench_main",
      "Replays a workload against real AsymCache clusters, one per system and rate, and reports "
      "TTFT, TPOT, hit rate and job latency.\nExample: asymcache-bench --workload agent "
      "--sessions 8 --scale-lengths 0.05 --systems vllm,asymcache");
  const absl::Status status = asymcache::loadgen::Main(argc, argv);
  if (!status.ok()) {
    std::cerr << "asymcache-bench: " << status << "\n";
    if (absl::IsCancelled(status)) return 130;
    return absl::IsInvalidArgument(status) || absl::IsNotFound(status) ? 2 : 1;
  }
  return 0;
}
