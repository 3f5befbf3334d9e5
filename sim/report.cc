#include "sim/report.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cachecore/step_trace.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "nlohmann/json.hpp"

namespace asymcache {
namespace {

using json = nlohmann::json;

// Renders rows of cells as an aligned table: first column left, others right.
std::string Align(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      if (c == 0) {
        absl::StrAppend(&line, row[c], pad);
      } else {
        absl::StrAppend(&line, "  ", pad, row[c]);
      }
    }
    absl::StrAppend(&out, line, "\n");
    if (r == 0) {
      size_t total = 0;
      for (size_t w : width) total += w + 2;
      absl::StrAppend(&out, std::string(total - 2, '-'), "\n");
    }
  }
  return out;
}

std::string Seconds(double s) {
  if (s <= 0) return "0";
  if (s < 1) return absl::StrFormat("%.0fms", s * 1e3);
  if (s < 100) return absl::StrFormat("%.2fs", s);
  return absl::StrFormat("%.0fs", s);
}
std::string Millis(double s) { return absl::StrFormat("%.1f", s * 1e3); }
std::string Ratio(double reference, double value) {
  if (reference <= 0 || value <= 0) return "-";
  return absl::StrFormat("%.2fx", reference / value);
}
std::string Tokens(int64_t n) {
  if (n >= 10'000'000) return absl::StrFormat("%.1fM", n / 1e6);
  if (n >= 10'000) return absl::StrFormat("%.0fk", n / 1e3);
  return absl::StrCat(n);
}

json DistJson(const Distribution& d) {
  return json{{"count", d.count}, {"mean", d.mean}, {"p50", d.p50}, {"p99", d.p99}};
}

json SummaryJson(const SystemSummary& s) {
  return json{{"system", s.system},
              {"requests", s.requests},
              {"finished", s.finished},
              {"rejected", s.rejected},
              {"block_hit_rate", s.block_hit_rate},
              {"prompt_tokens", s.prompt_tokens},
              {"hit_tokens", s.hit_tokens},
              {"rebuilt_tokens", s.rebuilt_tokens},
              {"new_tokens", s.new_tokens},
              {"ttft_s", DistJson(s.ttft_s)},
              {"tpot_s", DistJson(s.tpot_s)},
              {"jobs", s.jobs},
              {"jobs_finished", s.jobs_finished},
              {"job_latency_mean_s", s.job_latency_mean_s},
              {"output_tokens", s.output_tokens},
              {"makespan_s", s.makespan_s},
              {"throughput_tok_s", s.throughput_tok_s},
              {"engine_steps", s.engine_steps},
              {"evictions", s.evictions},
              {"pins_granted", s.pins_granted},
              {"preemptions", s.preemptions},
              {"blocked_decode_steps", s.blocked_decode_steps}};
}

json HeaderJson(const RunHeader& h) {
  return json{{"workload", h.workload},       {"sessions", h.sessions},
              {"requests", h.requests},       {"rate", h.rate},
              {"pool_blocks", h.pool_blocks}, {"pool_gib", h.pool_gib},
              {"model", h.model},             {"calibration", h.calibration},
              {"seed", h.seed},               {"agent_pins", h.agent_pins},
              {"tpot_target_ms", h.tpot_target_ms}, {"tpot_slo", h.tpot_slo},
              {"max_step_latency_ms", h.max_step_latency_ms}};
}

bool IsBaseline(const std::string& name) {
  for (const char* base : {"vllm", "pensieve", "lru-fixed"}) {
    if (name == base || absl::StartsWith(name, absl::StrCat(base, ":"))) return true;
  }
  return false;
}

}  // namespace

Distribution Summarize(std::vector<double> values) {
  Distribution d;
  if (values.empty()) return d;
  std::sort(values.begin(), values.end());
  d.count = static_cast<int64_t>(values.size());
  double sum = 0;
  for (double v : values) sum += v;
  d.mean = sum / static_cast<double>(values.size());
  auto rank = [&](double q) {
    const size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, k == 0 ? 0 : k - 1)];
  };
  d.p50 = rank(0.50);
  d.p90 = rank(0.90);
  d.p99 = rank(0.99);
  d.max = values.back();
  return d;
}

SystemSummary Summarize(const RunResult& run) {
  SystemSummary s;
  s.system = run.system;
  std::vector<double> ttft, tpot;
  int64_t prompt_blocks = 0, hit_blocks = 0;
  for (const RequestRecord& r : run.requests) {
    ++s.requests;
    if (r.rejected) ++s.rejected;
    if (!r.finished()) continue;
    ++s.finished;
    prompt_blocks += r.prompt_blocks;
    hit_blocks += r.hit_blocks;
    s.prompt_tokens += r.prompt_tokens;
    s.hit_tokens += r.hit_tokens;
    s.rebuilt_tokens += r.rebuild_tokens;
    s.new_tokens += r.new_tokens;
    s.output_tokens += r.output_tokens;
    ttft.push_back(r.ttft_s());
    if (r.output_tokens > 1) tpot.push_back(r.tpot_s());
  }
  s.block_hit_rate = prompt_blocks > 0 ? static_cast<double>(hit_blocks) / prompt_blocks : 0;
  s.ttft_s = Summarize(std::move(ttft));
  s.tpot_s = Summarize(std::move(tpot));
  double job_sum = 0;
  for (const JobRecord& j : run.jobs) {
    ++s.jobs;
    if (j.finish_s < 0) continue;
    ++s.jobs_finished;
    job_sum += j.finish_s - j.start_s;
  }
  s.job_latency_mean_s = s.jobs_finished > 0 ? job_sum / s.jobs_finished : 0;
  s.makespan_s = run.makespan_s;
  s.throughput_tok_s = run.makespan_s > 0 ? s.output_tokens / run.makespan_s : 0;
  s.engine_steps = run.engine_steps;
  s.evictions = run.evictions;
  s.pins_granted = run.pins_granted;
  s.preemptions = run.preemptions;
  s.blocked_decode_steps = run.blocked_decode_steps;
  return s;
}

std::string StepsToTrace(const RunResult& run, const ModelConfig& model) {
  std::string text = absl::StrCat(StepTraceHeader(model, absl::UnixEpoch()), "\n");
  for (const SimStep& step : run.steps) {
    StepTraceEntry entry;
    entry.start_s = step.start_s;
    entry.decodes = step.decodes;
    entry.chunks = step.chunks;
    entry.predicted_s = entry.forward_s = entry.step_s = step.latency_s;
    entry.waiting = step.waiting;
    absl::StrAppend(&text, StepTraceLine(entry), "\n");
  }
  return text;
}

std::string RequestsToCsv(const std::vector<RunResult>& runs) {
  std::string out =
      "system,session,step,arrival_s,admitted_s,first_token_s,finish_s,ttft_s,queue_s,prefill_s,"
      "prefill_steps,prefill_step_s,prompt_tokens,hit_tokens,rebuild_tokens,new_tokens,"
      "output_tokens,tpot_s,preemptions,blocked_decode_steps\n";
  for (const RunResult& run : runs) {
    for (const RequestRecord& r : run.requests) {
      const bool admitted = r.admitted_s >= 0;
      const bool first = r.first_token_s >= 0;
      absl::StrAppendFormat(
          &out, "%s,%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%d,%.6f,%d,%d,%d,%d,%d,%.6f,%d,%d\n",
          run.system, r.session, r.step, r.arrival_s, r.admitted_s, r.first_token_s, r.finish_s,
          first ? r.ttft_s() : -1, admitted ? r.admitted_s - r.arrival_s : -1,
          admitted && first ? r.first_token_s - r.admitted_s : -1, r.prefill_steps,
          r.prefill_step_s, r.prompt_tokens, r.hit_tokens, r.rebuild_tokens, r.new_tokens,
          r.output_tokens, r.finished() ? r.tpot_s() : -1, r.preemptions, r.blocked_decode_steps);
    }
    const int64_t decode_only = run.engine_steps - run.mixed_steps - run.prefill_only_steps;
    absl::StrAppendFormat(
        &out,
        "#steps,%s,total,%d,%.6f,mixed,%d,%.6f,prefill_only,%d,%.6f,decode_only,%d,%.6f,"
        "prefill_tokens,%d,decode_tokens,%d,evictions,%d,memory_blocked_s,%.6f,"
        "memory_blocked_busy_fraction,%.4f,makespan_s,%.6f,preemptions,%d,"
        "blocked_decode_steps,%d\n",
        run.system, run.engine_steps, run.busy_s, run.mixed_steps, run.mixed_busy_s,
        run.prefill_only_steps, run.prefill_only_busy_s, decode_only,
        run.busy_s - run.mixed_busy_s - run.prefill_only_busy_s, run.prefill_tokens,
        run.decode_tokens, run.evictions, run.memory_blocked_s, run.memory_blocked_busy_fraction,
        run.makespan_s, run.preemptions, run.blocked_decode_steps);
  }
  return out;
}

int FindReference(const std::vector<SystemSummary>& rows, const std::string& base) {
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].system == base) return static_cast<int>(i);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    if (absl::StartsWith(rows[i].system, absl::StrCat(base, ":"))) return static_cast<int>(i);
  }
  return -1;
}

std::string FormatHeader(const RunHeader& h) {
  return absl::StrFormat(
      "workload %s: %d sessions, %d requests, %.3g sessions/s | pool %d blocks (%.1f GiB) | "
      "model %s | cost model: %s | seed %d | agent pins %s | adaptive TPOT target %.0f ms (%s, "
      "steps <= %.0f ms)\n",
      h.workload, h.sessions, h.requests, h.rate, h.pool_blocks, h.pool_gib, h.model,
      h.calibration, h.seed, h.agent_pins ? "on" : "off", h.tpot_target_ms,
      h.tpot_slo.empty() ? "per-step" : h.tpot_slo, h.max_step_latency_ms);
}

std::string FormatTable(const std::vector<SystemSummary>& rows) {
  const int vllm = FindReference(rows, "vllm");
  const int pensieve = FindReference(rows, "pensieve");
  const bool jobs = std::any_of(rows.begin(), rows.end(), [](const SystemSummary& s) { return s.jobs > 0; });
  std::vector<std::vector<std::string>> table;
  std::vector<std::string> head = {"system", "hit%", "rebuilt", "TTFT p50", "TTFT p99", "TTFT mean",
                                   "TPOT p50 ms", "TPOT p99 ms", "TPOT mean ms"};
  if (jobs) head.push_back("job mean");
  head.push_back("tok/s");
  if (vllm >= 0) {
    head.push_back("TTFT vs vllm");
    head.push_back("TPOT vs vllm");
  }
  if (pensieve >= 0) {
    head.push_back("TTFT vs pensieve");
    head.push_back("TPOT vs pensieve");
  }
  table.push_back(head);
  for (const SystemSummary& s : rows) {
    std::vector<std::string> row = {
        s.rejected > 0 ? absl::StrCat(s.system, " (", s.rejected, " rejected)") : s.system,
        absl::StrFormat("%.1f", 100 * s.block_hit_rate),
        Tokens(s.rebuilt_tokens),
        Seconds(s.ttft_s.p50),
        Seconds(s.ttft_s.p99),
        Seconds(s.ttft_s.mean),
        Millis(s.tpot_s.p50),
        Millis(s.tpot_s.p99),
        Millis(s.tpot_s.mean)};
    if (jobs) row.push_back(Seconds(s.job_latency_mean_s));
    row.push_back(absl::StrFormat("%.0f", s.throughput_tok_s));
    for (int ref : {vllm, pensieve}) {
      if (ref < 0) continue;
      row.push_back(Ratio(rows[ref].ttft_s.mean, s.ttft_s.mean));
      row.push_back(Ratio(rows[ref].tpot_s.mean, s.tpot_s.mean));
    }
    table.push_back(std::move(row));
  }
  return Align(table);
}

std::string ToJson(const RunHeader& header, const std::vector<SystemSummary>& rows) {
  json out;
  out["schema"] = "asymcache.sim.report.v1";
  out["run"] = HeaderJson(header);
  json systems = json::array();
  for (const SystemSummary& s : rows) systems.push_back(SummaryJson(s));
  out["systems"] = std::move(systems);
  return out.dump(2) + "\n";
}

bool MeetsSlo(const SystemSummary& s, const SloTargets& slo) {
  return s.rejected == 0 && s.finished > 0 && s.ttft_s.mean <= slo.ttft_s &&
         s.tpot_s.mean <= slo.tpot_s;
}

std::vector<Capacity> CapacityAtSlo(const std::vector<SweepPoint>& sweep, const SloTargets& slo) {
  std::vector<Capacity> out;
  if (sweep.empty()) return out;
  std::vector<const SweepPoint*> by_rate;
  for (const SweepPoint& p : sweep) by_rate.push_back(&p);
  std::sort(by_rate.begin(), by_rate.end(),
            [](const SweepPoint* a, const SweepPoint* b) { return a->rate < b->rate; });
  for (size_t k = 0; k < sweep.front().systems.size(); ++k) {
    Capacity c;
    c.system = sweep.front().systems[k].system;
    for (const SweepPoint* p : by_rate) {
      if (!MeetsSlo(p->systems[k], slo)) {
        c.saturated = true;
        break;
      }
      c.rate = p->rate;
    }
    out.push_back(c);
  }
  return out;
}

std::string FormatSweep(const std::vector<SweepPoint>& sweep, const SloTargets& slo) {
  std::string out;
  std::vector<std::vector<std::string>> table;
  table.push_back({"rate/s", "system", "hit%", "TTFT mean", "TTFT p99", "TPOT mean ms",
                   "TPOT p99 ms", "tok/s", "SLO", "TTFT vs vllm", "TPOT vs vllm",
                   "TTFT vs pensieve", "TPOT vs pensieve"});
  for (const SweepPoint& p : sweep) {
    const int vllm = FindReference(p.systems, "vllm");
    const int pensieve = FindReference(p.systems, "pensieve");
    for (const SystemSummary& s : p.systems) {
      std::vector<std::string> row = {absl::StrFormat("%.3g", p.rate), s.system,
                                      absl::StrFormat("%.1f", 100 * s.block_hit_rate),
                                      Seconds(s.ttft_s.mean), Seconds(s.ttft_s.p99),
                                      Millis(s.tpot_s.mean), Millis(s.tpot_s.p99),
                                      absl::StrFormat("%.0f", s.throughput_tok_s),
                                      MeetsSlo(s, slo) ? "ok" : "MISS"};
      for (int ref : {vllm, pensieve}) {
        row.push_back(ref < 0 ? "-" : Ratio(p.systems[ref].ttft_s.mean, s.ttft_s.mean));
        row.push_back(ref < 0 ? "-" : Ratio(p.systems[ref].tpot_s.mean, s.tpot_s.mean));
      }
      table.push_back(std::move(row));
    }
  }
  absl::StrAppend(&out, Align(table));
  const std::vector<Capacity> capacity = CapacityAtSlo(sweep, slo);
  double best_baseline = 0;
  std::string best_name = "-";
  for (const Capacity& c : capacity) {
    if (IsBaseline(c.system) && c.rate > best_baseline) {
      best_baseline = c.rate;
      best_name = c.system;
    }
  }
  absl::StrAppendFormat(&out,
                        "\nCapacity at SLO (mean TTFT <= %s, mean TPOT <= %s ms; highest swept "
                        "rate meeting it at every lower rate):\n",
                        Seconds(slo.ttft_s), Millis(slo.tpot_s));
  std::vector<std::vector<std::string>> cap_table;
  cap_table.push_back({"system", "capacity sessions/s", "bounded by sweep",
                       absl::StrCat("vs best baseline (", best_name, ")")});
  for (const Capacity& c : capacity) {
    std::string vs = "-";
    if (best_baseline > 0 && c.rate > 0) {
      vs = absl::StrFormat("%+.0f%%", 100 * (c.rate / best_baseline - 1));
    }
    cap_table.push_back({c.system, c.rate > 0 ? absl::StrFormat("%.3g", c.rate) : "< lowest",
                         c.saturated ? "yes" : "no (still meets SLO at the top rate)", vs});
  }
  absl::StrAppend(&out, Align(cap_table));
  return out;
}

std::string SweepToJson(const RunHeader& header, const std::vector<SweepPoint>& sweep,
                        const SloTargets& slo) {
  json out;
  out["schema"] = "asymcache.sim.sweep.v1";
  out["run"] = HeaderJson(header);
  out["slo"] = json{{"ttft_s", slo.ttft_s}, {"tpot_s", slo.tpot_s}};
  json points = json::array();
  for (const SweepPoint& p : sweep) {
    json systems = json::array();
    for (const SystemSummary& s : p.systems) {
      json j = SummaryJson(s);
      j["meets_slo"] = MeetsSlo(s, slo);
      systems.push_back(std::move(j));
    }
    points.push_back(json{{"rate", p.rate}, {"systems", std::move(systems)}});
  }
  out["points"] = std::move(points);
  json capacity = json::array();
  for (const Capacity& c : CapacityAtSlo(sweep, slo)) {
    capacity.push_back(json{{"system", c.system}, {"rate", c.rate}, {"saturated", c.saturated}});
  }
  out["capacity"] = std::move(capacity);
  return out.dump(2) + "\n";
}

std::string FormatClusterTable(const std::vector<ClusterSummary>& rows) {
  const bool jobs = std::any_of(rows.begin(), rows.end(),
                                [](const ClusterSummary& c) { return c.summary.jobs > 0; });
  std::vector<std::vector<std::string>> table;
  std::vector<std::string> head = {"system",   "routing",     "hit%",        "rebuilt",
                                   "TTFT mean", "TTFT p50",   "TTFT p99",    "TPOT mean ms",
                                   "TPOT p99 ms"};
  if (jobs) head.push_back("job mean");
  head.push_back("imbalance");
  table.push_back(head);
  for (const ClusterSummary& c : rows) {
    const SystemSummary& s = c.summary;
    std::vector<std::string> row = {
        s.rejected > 0 ? absl::StrCat(s.system, " (", s.rejected, " rejected)") : s.system,
        c.routing,
        absl::StrFormat("%.1f", 100 * s.block_hit_rate),
        Tokens(s.rebuilt_tokens),
        Seconds(s.ttft_s.mean),
        Seconds(s.ttft_s.p50),
        Seconds(s.ttft_s.p99),
        Millis(s.tpot_s.mean),
        Millis(s.tpot_s.p99)};
    if (jobs) row.push_back(Seconds(s.job_latency_mean_s));
    row.push_back(absl::StrFormat("%.2f", c.load_imbalance));
    table.push_back(std::move(row));
  }
  return Align(table);
}

std::string ClusterToJson(const RunHeader& header, const std::vector<ClusterSummary>& rows) {
  json out;
  out["schema"] = "asymcache.sim.cluster.v1";
  out["run"] = HeaderJson(header);
  json runs = json::array();
  for (const ClusterSummary& c : rows) {
    json j = SummaryJson(c.summary);
    j["routing"] = c.routing;
    j["engines"] = c.engines;
    j["load_imbalance"] = c.load_imbalance;
    json reasons = json::object();
    for (const auto& [name, count] : c.route_reasons) reasons[name] = count;
    j["route_reasons"] = std::move(reasons);
    j["engine_requests"] = c.engine_requests;
    j["engine_work_tokens"] = c.engine_work_tokens;
    runs.push_back(std::move(j));
  }
  out["runs"] = std::move(runs);
  return out.dump(2) + "\n";
}

std::string ClusterToCsv(const std::vector<ClusterSummary>& rows) {
  std::string out =
      "system,routing,engines,requests,finished,rejected,block_hit_rate,rebuilt_tokens,"
      "ttft_mean_s,ttft_p50_s,ttft_p99_s,tpot_mean_s,tpot_p99_s,job_latency_mean_s,"
      "load_imbalance\n";
  for (const ClusterSummary& c : rows) {
    const SystemSummary& s = c.summary;
    absl::StrAppendFormat(&out, "%s,%s,%d,%d,%d,%d,%.6f,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f\n",
                          s.system, c.routing, c.engines, s.requests, s.finished, s.rejected,
                          s.block_hit_rate, s.rebuilt_tokens, s.ttft_s.mean, s.ttft_s.p50,
                          s.ttft_s.p99, s.tpot_s.mean, s.tpot_s.p99, s.job_latency_mean_s,
                          c.load_imbalance);
  }
  return out;
}

}  // namespace asymcache
