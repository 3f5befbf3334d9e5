// asymcache-sim: replays a workload (built-in generator or JSONL trace) on one
// or more systems and prints their comparison; optionally sweeps the arrival
// rate and reports capacity at SLO, or (--cluster N) replays it over N engines
// behind the router, once per routing mode. See docs/simulator.md.
//
// All flags are parsed into SimOptions in one place (ParseOptions).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "util/absl_flags_main.h"
#include "sim/cluster.h"
#include "sim/comparison.h"
#include "sim/engine.h"
#include "sim/generators.h"
#include "sim/report.h"
#include "sim/system.h"
#include "sim/trace.h"

ABSL_FLAG(std::string, workload, "chat",
          "built-in workload: chat | agent | long-agent | doc-qa | long-doc-qa");
ABSL_FLAG(std::string, trace, "", "JSONL trace file to replay instead of --workload");
ABSL_FLAG(std::string, system, "all",
          "comma-separated systems: all | vllm | pensieve | asymcache | asym-fixed | "
          "front-first-adaptive | lru-fixed | none | asymcache-arrival; fixed-budget systems "
          "take :N, e.g. vllm:512; any takes @arrival or @least-remaining last (the prefill "
          "order), e.g. asym-fixed@least-remaining");
ABSL_FLAG(double, rate, 0,
          "session (job) starts per second; 0 = the workload's default (traces: as recorded)");
ABSL_FLAG(double, duration, 0, "generate every session starting in [0, duration) seconds "
                               "(instead of --requests)");
ABSL_FLAG(int64_t, requests, 0, "sessions (jobs) to generate; 0 = the workload's default");
ABSL_FLAG(uint64_t, seed, 1, "generator seed");
ABSL_FLAG(int64_t, pool_blocks, 0, "KV pool capacity in blocks (overrides --pool-gib)");
ABSL_FLAG(double, pool_gib, 0, "KV pool capacity in GiB; 0 = the workload's default");
ABSL_FLAG(std::string, model, "llama-3-8b", "model shape (cachecore ModelConfig::Named)");
ABSL_FLAG(std::string, calibration, "",
          "calibration JSON; default: the built-in H100 Llama-3-8B calibration");
ABSL_FLAG(int64_t, budget, 2048, "token budget per step of fixed-budget systems");
ABSL_FLAG(double, tpot_target_ms, 50, "adaptive chunking: the TPOT SLO (ms)");
ABSL_FLAG(std::string, tpot_slo, "request-mean",
          "what --tpot_target_ms bounds: request-mean (each request's mean TPOT; steps may spend "
          "banked slack up to --max_step_latency_ms) or per-step (every step; the rule of "
          "2026-11-27 and earlier)");
ABSL_FLAG(double, max_step_latency_ms,
          absl::ToDoubleMilliseconds(asymcache::ChunkSchedulerOptions{}.max_step_latency),
          "request-mean: the longest step that banked slack may buy (ms; below --tpot_target_ms it "
          "acts as that)");
ABSL_FLAG(std::string, sweep, "", "comma-separated session rates to sweep, e.g. 0.5,1,2");
ABSL_FLAG(bool, sweep_auto, false,
          "sweep from --rate upward by --sweep-factor until every system misses the SLO");
ABSL_FLAG(double, sweep_factor, 1.25, "rate step of --sweep-auto");
ABSL_FLAG(int, sweep_max_points, 12, "most rates --sweep-auto runs");
ABSL_FLAG(double, slo_ttft, 0, "SLO on mean TTFT in seconds; 0 = the workload's default");
ABSL_FLAG(double, slo_tpot_ms, 100, "SLO on mean TPOT in ms");
ABSL_FLAG(std::string, agent_pins, "auto",
          "Continuum-style pins on tool calls: auto (on when the workload has tool calls) | on | off");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");
ABSL_FLAG(std::string, dump_trace, "", "write the generated workload as a JSONL trace and exit");
ABSL_FLAG(bool, progress, false, "progress bar on stderr (only when stderr is a terminal)");
ABSL_FLAG(int, threads, 0, "worker threads for independent runs; 0 = hardware threads");
ABSL_FLAG(int, max_running, 256, "most requests running at once (vLLM max_num_seqs)");
ABSL_FLAG(int64_t, max_chunk_tokens, 16384,
          "adaptive chunking: most prefill tokens in a step with no decode waiting (the worker's "
          "--max-chunk-tokens; asymcache-bench predicts with 8064)");
ABSL_FLAG(int64_t, overload_budget_tokens, 2048,
          "adaptive chunking: least prefill tokens a step takes while requests wait for "
          "admission (0 = off; the worker's --overload-budget-tokens)");
ABSL_FLAG(bool, commit_at_prefill_end, false,
          "commit a request's blocks when its prefill completes (as the worker does) instead "
          "of at finish: later requests on the same document hit them while it decodes");
ABSL_FLAG(bool, grow_output_blocks, false,
          "hold memory as the worker does (needs --commit-at-prefill-end): admission plans the "
          "prompt only, a decoding request takes one block per 16 tokens, skips steps while the "
          "pool cannot supply one, and the newest request is preempted when none can run; off: "
          "admission reserves the outputs' blocks with the prompt");
ABSL_FLAG(int64_t, defer_pending_tokens, 0,
          "the worker's deferral of duplicate prefill (needs --commit-at-prefill-end): a request "
          "whose admission plan has at least this many tokens in pages a running request is "
          "computing waits for that request's commit and hits them; 0 = never (the worker's "
          "default is 2048)");
ABSL_FLAG(std::string, requests_csv, "",
          "single-rate runs: write every request of every system (queue / prefill time, hit / "
          "rebuilt / new tokens) and each run's step mix as CSV to this file");
ABSL_FLAG(std::string, step_trace_dir, "",
          "single-rate, single-engine runs: write each system's modeled steps as a step trace "
          "(asymcache.step_trace.v1, cachecore/step_trace.h) to DIR/<system>.steps.jsonl, created "
          "if missing; compare with a worker's by bench/step_trace_summary.py");
ABSL_FLAG(int, cluster, 0,
          "cluster mode: replay over N engines (each with its own --pool-gib/--pool-blocks pool) "
          "behind the router, one run per system x --routing mode; 0 = one engine. In cluster "
          "mode the default --rate and --requests are the workload's defaults times N. No block "
          "transfer between engines is modeled");
ABSL_FLAG(std::string, routing, "hole-aware,contiguous-prefix,round-robin",
          "cluster mode: comma-separated routing modes: hole-aware | contiguous-prefix | "
          "round-robin");
ABSL_FLAG(std::string, csv, "", "cluster mode: also write the table as CSV to this file");

namespace asymcache {
namespace {

// Per-workload defaults (docs/simulator.md, "Defaults").
struct WorkloadDefaults {
  double rate;      // session starts per second
  double pool_gib;  // KV pool
  double slo_ttft_s;
};
// Rates sit just below where `vllm` saturates with the default pool; the pool
// (24 GiB of KV, about half of what an 80 GB H100 has left after Llama-3-8B's
// weights) keeps memory under pressure; SLOs are documented per workload.
WorkloadDefaults DefaultsFor(const std::string& workload) {
  if (workload == "chat") return {1.5, 24, 2};
  if (workload == "agent") return {0.2, 24, 4};
  if (workload == "long-agent") return {0.025, 24, 15};
  if (workload == "doc-qa") return {1.0, 24, 4};
  if (workload == "long-doc-qa") return {0.1, 24, 15};
  return {1.0, 24, 5};  // traces
}

struct SimOptions {
  std::string workload;
  std::string trace;
  std::vector<SystemSpec> systems;
  double rate = 0;
  double duration_s = 0;
  int64_t sessions = 0;
  uint64_t seed = 1;
  int64_t pool_blocks = 0;
  double pool_gib = 0;
  ModelConfig model;
  CalibrationParams calibration;
  std::vector<double> sweep;
  bool sweep_auto = false;
  double sweep_factor = 1.25;
  int sweep_max_points = 12;
  SloTargets slo;
  std::string agent_pins;
  std::string json;
  std::string dump_trace;
  bool progress = false;
  int threads = 1;
  EngineOptions engine;
  int cluster = 0;                   // engines; 0 = single-engine mode
  std::vector<RoutingMode> routing;  // cluster mode
  std::string csv;
  std::string requests_csv;
  std::string step_trace_dir;
};

absl::StatusOr<SimOptions> ParseOptions() {
  SimOptions o;
  o.workload = absl::GetFlag(FLAGS_workload);
  o.trace = absl::GetFlag(FLAGS_trace);
  const WorkloadDefaults defaults = DefaultsFor(o.trace.empty() ? o.workload : "");
  absl::StatusOr<std::vector<SystemSpec>> systems =
      ParseSystems(absl::GetFlag(FLAGS_system), absl::GetFlag(FLAGS_budget),
                   o.engine.tile_tokens);
  if (!systems.ok()) return systems.status();
  o.systems = *std::move(systems);
  o.cluster = absl::GetFlag(FLAGS_cluster);
  if (o.cluster < 0 || o.cluster > 4096) {
    return absl::InvalidArgumentError("--cluster must be in [0, 4096]");
  }
  const int scale = std::max(1, o.cluster);
  o.rate = absl::GetFlag(FLAGS_rate);
  if (o.rate < 0 || !std::isfinite(o.rate)) return absl::InvalidArgumentError("--rate must be >= 0");
  if (o.rate == 0 && o.trace.empty()) o.rate = defaults.rate * scale;
  o.duration_s = absl::GetFlag(FLAGS_duration);
  o.sessions = absl::GetFlag(FLAGS_requests);
  if (o.sessions == 0 && o.duration_s <= 0 && o.trace.empty() && o.cluster > 0) {
    o.sessions = DefaultSessions(o.workload) * scale;
  }
  o.seed = absl::GetFlag(FLAGS_seed);
  absl::StatusOr<ModelConfig> model = ModelConfig::Named(absl::GetFlag(FLAGS_model));
  if (!model.ok()) return model.status();
  o.model = *model;
  const std::string calibration = absl::GetFlag(FLAGS_calibration);
  if (calibration.empty()) {
    o.calibration = CostModel::DefaultH100Llama3_8B();
  } else {
    absl::StatusOr<CalibrationParams> params = CostModel::LoadCalibrationFile(calibration);
    if (!params.ok()) return params.status();
    o.calibration = *params;
  }
  o.pool_gib = absl::GetFlag(FLAGS_pool_gib);
  if (o.pool_gib <= 0) o.pool_gib = defaults.pool_gib;
  o.pool_blocks = absl::GetFlag(FLAGS_pool_blocks);
  if (o.pool_blocks <= 0) o.pool_blocks = PoolBlocksForGiB(o.model, o.pool_gib);
  o.pool_gib = static_cast<double>(o.pool_blocks) * o.model.KvBytesPerBlock() / (1 << 30);
  for (absl::string_view r : absl::StrSplit(absl::GetFlag(FLAGS_sweep), ',', absl::SkipEmpty())) {
    double rate = 0;
    if (!absl::SimpleAtod(r, &rate) || !(rate > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("--sweep: bad rate '", r, "'"));
    }
    o.sweep.push_back(rate);
  }
  o.sweep_auto = absl::GetFlag(FLAGS_sweep_auto);
  o.sweep_factor = absl::GetFlag(FLAGS_sweep_factor);
  o.sweep_max_points = absl::GetFlag(FLAGS_sweep_max_points);
  if (o.sweep_auto && !o.sweep.empty()) {
    return absl::InvalidArgumentError("--sweep and --sweep-auto are exclusive");
  }
  o.slo.ttft_s = absl::GetFlag(FLAGS_slo_ttft);
  if (o.slo.ttft_s <= 0) o.slo.ttft_s = defaults.slo_ttft_s;
  o.slo.tpot_s = absl::GetFlag(FLAGS_slo_tpot_ms) / 1e3;
  o.agent_pins = absl::GetFlag(FLAGS_agent_pins);
  if (o.agent_pins != "auto" && o.agent_pins != "on" && o.agent_pins != "off") {
    return absl::InvalidArgumentError("--agent-pins must be auto, on or off");
  }
  o.json = absl::GetFlag(FLAGS_json);
  o.dump_trace = absl::GetFlag(FLAGS_dump_trace);
  o.progress = absl::GetFlag(FLAGS_progress) && isatty(STDERR_FILENO);
  o.threads = absl::GetFlag(FLAGS_threads);
  if (o.threads <= 0) o.threads = std::max(1u, std::thread::hardware_concurrency());
  o.engine.pool_blocks = o.pool_blocks;
  o.engine.max_running_requests = absl::GetFlag(FLAGS_max_running);
  o.engine.tpot_target = absl::Milliseconds(absl::GetFlag(FLAGS_tpot_target_ms));
  absl::StatusOr<ChunkSchedulerOptions::TpotSlo> slo = ParseTpotSlo(absl::GetFlag(FLAGS_tpot_slo));
  if (!slo.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--tpot_slo ", slo.status().message()));
  }
  o.engine.tpot_slo = *slo;
  o.engine.max_step_latency = absl::Milliseconds(absl::GetFlag(FLAGS_max_step_latency_ms));
  o.engine.max_budget_tokens = absl::GetFlag(FLAGS_max_chunk_tokens);
  o.engine.overload_budget_tokens = absl::GetFlag(FLAGS_overload_budget_tokens);
  o.engine.commit_at_prefill_end = absl::GetFlag(FLAGS_commit_at_prefill_end);
  o.engine.grow_output_blocks = absl::GetFlag(FLAGS_grow_output_blocks);
  o.engine.defer_pending_tokens = absl::GetFlag(FLAGS_defer_pending_tokens);
  if (absl::Status s = o.engine.Validate(); !s.ok()) return s;
  absl::StatusOr<std::vector<RoutingMode>> routing =
      ParseRoutingModes(absl::GetFlag(FLAGS_routing));
  if (!routing.ok()) return routing.status();
  o.routing = *std::move(routing);
  o.csv = absl::GetFlag(FLAGS_csv);
  o.requests_csv = absl::GetFlag(FLAGS_requests_csv);
  if (!o.requests_csv.empty() && (o.cluster > 0 || !o.sweep.empty() || o.sweep_auto)) {
    return absl::InvalidArgumentError("--requests-csv needs a single-rate, single-engine run");
  }
  o.step_trace_dir = absl::GetFlag(FLAGS_step_trace_dir);
  if (!o.step_trace_dir.empty() && (o.cluster > 0 || !o.sweep.empty() || o.sweep_auto)) {
    return absl::InvalidArgumentError("--step-trace-dir needs a single-rate, single-engine run");
  }
  o.engine.record_steps = !o.step_trace_dir.empty();
  if (o.cluster == 0 && !o.csv.empty()) {
    return absl::InvalidArgumentError("--csv needs --cluster (cluster mode)");
  }
  if (o.cluster > 0 && (!o.sweep.empty() || o.sweep_auto)) {
    return absl::InvalidArgumentError("--cluster does not combine with --sweep/--sweep-auto");
  }
  return o;
}

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  ~ProgressBar() { Done(); }
  void Update(double fraction) {
    if (!enabled_) return;
    absl::MutexLock lock(&mu_);
    const int percent = static_cast<int>(fraction * 100);
    if (percent == last_) return;
    last_ = percent;
    const int filled = percent * 40 / 100;
    std::fprintf(stderr, "\r[%s%s] %3d%%", std::string(filled, '#').c_str(),
                 std::string(40 - filled, ' ').c_str(), percent);
    std::fflush(stderr);
  }
  void Done() {
    if (enabled_ && last_ >= 0) std::fprintf(stderr, "\r%60s\r", "");
    last_ = -1;
  }

 private:
  const bool enabled_;
  absl::Mutex mu_;
  int last_ = -1;
};

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

absl::Status Main() {
  absl::StatusOr<SimOptions> parsed = ParseOptions();
  if (!parsed.ok()) return parsed.status();
  const SimOptions& o = *parsed;

  // Parse the whole trace (or generate) before running anything.
  std::optional<Workload> trace;
  if (!o.trace.empty()) {
    absl::StatusOr<Workload> w = ReadTraceFile(o.trace);
    if (!w.ok()) return w.status();
    trace = *std::move(w);
  }
  WorkloadAtRate make = [&](double rate) -> absl::StatusOr<Workload> {
    if (trace.has_value()) {
      if (rate <= 0) return *trace;
      return trace->WithSessionRate(rate);
    }
    GeneratorOptions g;
    g.workload = o.workload;
    g.rate = rate;
    g.sessions = o.sessions;
    g.duration_s = o.duration_s;
    g.seed = o.seed;
    return GenerateWorkload(g);
  };
  absl::StatusOr<Workload> workload = make(o.rate);
  if (!workload.ok()) return workload.status();
  if (!o.dump_trace.empty()) {
    if (absl::Status s = WriteTraceFile(*workload, o.dump_trace); !s.ok()) return s;
    std::cout << "wrote " << workload->sessions.size() << " sessions ("
              << workload->total_steps() << " steps) to " << o.dump_trace << "\n";
    return absl::OkStatus();
  }

  bool has_tools = false;
  for (const SessionSpec& s : workload->sessions) has_tools = has_tools || s.is_job();
  SimOptions run = o;
  run.engine.agent_pins = o.agent_pins == "on" || (o.agent_pins == "auto" && has_tools);
  const CostModel cost(o.model, o.calibration);

  RunHeader header;
  header.workload = trace.has_value() ? o.trace : o.workload;
  header.sessions = static_cast<int64_t>(workload->sessions.size());
  header.requests = workload->total_steps();
  header.rate = trace.has_value() && o.rate <= 0 ? workload->session_rate() : o.rate;
  header.pool_blocks = o.pool_blocks;
  header.pool_gib = o.pool_gib;
  header.model = o.model.name;
  header.calibration = o.calibration.device + (absl::GetFlag(FLAGS_calibration).empty()
                                                   ? " (built-in calibration)"
                                                   : " (" + absl::GetFlag(FLAGS_calibration) + ")");
  header.seed = o.seed;
  header.agent_pins = run.engine.agent_pins;
  header.tpot_target_ms = absl::ToDoubleMilliseconds(o.engine.tpot_target);
  header.tpot_slo = std::string(TpotSloName(o.engine.tpot_slo));
  header.max_step_latency_ms = absl::ToDoubleMilliseconds(o.engine.max_step_latency);

  ProgressBar bar(o.progress);
  ComparisonOptions compare;
  compare.engine = run.engine;
  compare.threads = o.threads;
  if (o.progress) compare.progress = [&bar](double f) { bar.Update(f); };

  std::cout << FormatHeader(header);
  const absl::Time started = absl::Now();
  if (o.cluster > 0) {
    std::vector<std::string> modes;
    for (RoutingMode m : o.routing) modes.emplace_back(RoutingModeName(m));
    std::cout << absl::StrFormat(
        "cluster: %d engines, pool %d blocks each | routing %s | agent stickiness %s | "
        "no block transfer between engines\n",
        o.cluster, o.pool_blocks, absl::StrJoin(modes, ","),
        run.engine.agent_pins ? "on" : "off");
    ClusterComparisonOptions cluster;
    cluster.cluster.engine = run.engine;
    cluster.cluster.engines = o.cluster;
    cluster.threads = o.threads;
    if (o.progress) cluster.progress = [&bar](double f) { bar.Update(f); };
    absl::StatusOr<std::vector<ClusterResult>> runs =
        RunClusters(*workload, o.systems, o.routing, cost, cluster);
    bar.Done();
    if (!runs.ok()) return runs.status();
    std::vector<ClusterSummary> rows;
    for (const ClusterResult& r : *runs) rows.push_back(Summarize(r));
    std::cout << "\n" << FormatClusterTable(rows);
    if (!o.json.empty()) {
      if (absl::Status s = WriteFile(o.json, ClusterToJson(header, rows)); !s.ok()) return s;
    }
    if (!o.csv.empty()) {
      if (absl::Status s = WriteFile(o.csv, ClusterToCsv(rows)); !s.ok()) return s;
    }
  } else if (o.sweep.empty() && !o.sweep_auto) {
    absl::StatusOr<std::vector<RunResult>> runs = RunSystems(*workload, o.systems, cost, compare);
    bar.Done();
    if (!runs.ok()) return runs.status();
    std::vector<SystemSummary> rows;
    for (const RunResult& r : *runs) rows.push_back(Summarize(r));
    std::cout << "\n" << FormatTable(rows);
    if (!o.json.empty()) {
      if (absl::Status s = WriteFile(o.json, ToJson(header, rows)); !s.ok()) return s;
    }
    if (!o.requests_csv.empty()) {
      if (absl::Status s = WriteFile(o.requests_csv, RequestsToCsv(*runs)); !s.ok()) return s;
    }
    if (!o.step_trace_dir.empty()) {
      std::error_code error;
      std::filesystem::create_directories(o.step_trace_dir, error);
      if (error) {
        return absl::InvalidArgumentError(absl::StrCat("--step-trace-dir: cannot create '",
                                                       o.step_trace_dir, "' (", error.message(),
                                                       ")"));
      }
      for (const RunResult& r : *runs) {
        const std::string path = absl::StrCat(o.step_trace_dir, "/", r.system, ".steps.jsonl");
        if (absl::Status s = WriteFile(path, StepsToTrace(r, o.model)); !s.ok()) return s;
      }
    }
  } else {
    absl::StatusOr<std::vector<SweepPoint>> sweep =
        o.sweep_auto ? RunAutoSweep(make, o.rate > 0 ? o.rate : header.rate, o.sweep_factor,
                                    o.sweep_max_points, o.slo, o.systems, cost, compare)
                     : RunSweep(make, o.sweep, o.systems, cost, compare);
    bar.Done();
    if (!sweep.ok()) return sweep.status();
    std::cout << "\n" << FormatSweep(*sweep, o.slo);
    if (!o.json.empty()) {
      if (absl::Status s = WriteFile(o.json, SweepToJson(header, *sweep, o.slo)); !s.ok()) {
        return s;
      }
    }
  }
  std::cout << absl::StrFormat("\n(simulated on %d threads in %.1f s wall time; times above are "
                               "modeled)\n",
                               o.threads, absl::ToDoubleSeconds(absl::Now() - started));
  return absl::OkStatus();
}

}  // namespace
}  // namespace asymcache

int main(int argc, char** argv) {
  asymcache::ParseDashedAbslFlags(argc, argv, "sim_main",
      "Replays LLM-serving workloads on KV-cache systems (vllm, pensieve, asymcache, ablations) "
      "in modeled time.\nExample: asymcache-sim --workload long-agent --system all --sweep-auto\n"
      "Cluster mode: asymcache-sim --workload long-doc-qa --system asymcache --cluster 4 "
      "--routing hole-aware,contiguous-prefix,round-robin");
  const absl::Status status = asymcache::Main();
  if (!status.ok()) {
    std::cerr << "asymcache-sim: " << status << "\n";
    return absl::IsInvalidArgument(status) || absl::IsNotFound(status) ? 2 : 1;
  }
  return 0;
}
