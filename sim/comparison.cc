#include "sim/comparison.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sim/parallel_runs.h"

namespace asymcache {
namespace {

struct RunJob {
  const Workload* workload;
  const SystemSpec* system;
};

// Runs `jobs` on a few threads; results in job order.
absl::StatusOr<std::vector<RunResult>> RunJobs(const std::vector<RunJob>& jobs,
                                               const CostModel& cost,
                                               const ComparisonOptions& options,
                                               double progress_offset, double progress_scale) {
  std::function<void(double)> progress;
  if (options.progress) {
    progress = [&](double f) { options.progress(progress_offset + progress_scale * f); };
  }
  return RunInParallel<RunResult>(
      jobs.size(), options.threads, progress,
      [&](size_t i, std::function<void(double)> job_progress) -> absl::StatusOr<RunResult> {
        EngineOptions engine = options.engine;
        engine.progress = std::move(job_progress);
        absl::StatusOr<RunResult> r =
            RunSystem(*jobs[i].workload, *jobs[i].system, cost, engine);
        if (r.ok() && options.check_consistency) {
          if (absl::Status s = CheckCacheAfterRun(jobs[i].system->name, r->consistency,
                                                  r->final_pool);
              !s.ok()) {
            return s;
          }
        }
        return r;
      });
}

absl::StatusOr<std::vector<SweepPoint>> RunRates(const WorkloadAtRate& make,
                                                 const std::vector<double>& rates,
                                                 const std::vector<SystemSpec>& systems,
                                                 const CostModel& cost,
                                                 const ComparisonOptions& options,
                                                 double progress_offset, double progress_scale) {
  std::vector<Workload> workloads;
  for (double rate : rates) {
    absl::StatusOr<Workload> w = make(rate);
    if (!w.ok()) return w.status();
    workloads.push_back(*std::move(w));
  }
  std::vector<RunJob> jobs;
  for (const Workload& w : workloads) {
    for (const SystemSpec& s : systems) jobs.push_back(RunJob{&w, &s});
  }
  absl::StatusOr<std::vector<RunResult>> runs =
      RunJobs(jobs, cost, options, progress_offset, progress_scale);
  if (!runs.ok()) return runs.status();
  std::vector<SweepPoint> points;
  for (size_t r = 0; r < rates.size(); ++r) {
    SweepPoint p;
    p.rate = rates[r];
    for (size_t s = 0; s < systems.size(); ++s) {
      p.systems.push_back(Summarize((*runs)[r * systems.size() + s]));
    }
    points.push_back(std::move(p));
  }
  return points;
}

bool AnyMeets(const SweepPoint& p, const SloTargets& slo, bool all) {
  bool any = false, every = true;
  for (const SystemSummary& s : p.systems) {
    if (s.system == "none") continue;
    const bool ok = MeetsSlo(s, slo);
    any = any || ok;
    every = every && ok;
  }
  return all ? every : any;
}

}  // namespace

absl::StatusOr<std::vector<RunResult>> RunSystems(const Workload& workload,
                                                  const std::vector<SystemSpec>& systems,
                                                  const CostModel& cost,
                                                  const ComparisonOptions& options) {
  std::vector<RunJob> jobs;
  for (const SystemSpec& s : systems) jobs.push_back(RunJob{&workload, &s});
  return RunJobs(jobs, cost, options, 0, 1);
}

absl::StatusOr<std::vector<SweepPoint>> RunSweep(const WorkloadAtRate& workload,
                                                 const std::vector<double>& rates,
                                                 const std::vector<SystemSpec>& systems,
                                                 const CostModel& cost,
                                                 const ComparisonOptions& options) {
  return RunRates(workload, rates, systems, cost, options, 0, 1);
}

absl::StatusOr<std::vector<SweepPoint>> RunAutoSweep(const WorkloadAtRate& workload,
                                                     double start_rate, double factor,
                                                     int max_points, const SloTargets& slo,
                                                     const std::vector<SystemSpec>& systems,
                                                     const CostModel& cost,
                                                     const ComparisonOptions& options) {
  if (!(start_rate > 0) || !(factor > 1) || max_points < 1) {
    return absl::InvalidArgumentError("auto sweep needs start_rate > 0, factor > 1, max_points >= 1");
  }
  std::vector<SweepPoint> points;
  auto run_one = [&](double rate) -> absl::Status {
    const double done = static_cast<double>(points.size()) / max_points;
    absl::StatusOr<std::vector<SweepPoint>> p =
        RunRates(workload, {rate}, systems, cost, options, done, 1.0 / max_points);
    if (!p.ok()) return p.status();
    points.push_back(std::move((*p)[0]));
    return absl::OkStatus();
  };
  if (absl::Status s = run_one(start_rate); !s.ok()) return s;
  double low = start_rate;
  for (int k = 0; k < max_points / 2 && !AnyMeets(points.back(), slo, /*all=*/true) &&
                  static_cast<int>(points.size()) < max_points;
       ++k) {
    low /= factor;
    if (absl::Status s = run_one(low); !s.ok()) return s;
  }
  double high = start_rate;
  while (static_cast<int>(points.size()) < max_points) {
    // Stop once the highest rate so far fails for every system.
    const SweepPoint* top = &points[0];
    for (const SweepPoint& p : points) {
      if (p.rate > top->rate) top = &p;
    }
    if (!AnyMeets(*top, slo, /*all=*/false)) break;
    high *= factor;
    if (absl::Status s = run_one(high); !s.ok()) return s;
  }
  std::sort(points.begin(), points.end(),
            [](const SweepPoint& a, const SweepPoint& b) { return a.rate < b.rate; });
  return points;
}

}  // namespace asymcache
