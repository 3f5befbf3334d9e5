// RunInParallel: independent simulator runs on a few threads, with one overall
// progress callback (used by the side-by-side comparison, the rate sweeps and
// the cluster mode).
//
// Contract: runs `count` jobs, job i as run(i, job_progress); each job runs
// once, on one of up to `threads` threads (the caller's thread included).
// Results come back in job order whatever the thread count, so deterministic
// jobs give deterministic results. `progress`, when set, is called (serialized
// by an internal mutex, from any worker) with the overall fraction done, the
// mean of the fractions each job reported through its `job_progress`
// (nullptr when `progress` is empty). The first failed job's status (in job
// order) is returned; every job runs to completion first.
#ifndef ASYMCACHE_SIM_PARALLEL_RUNS_H_
#define ASYMCACHE_SIM_PARALLEL_RUNS_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace asymcache {

template <typename T>
absl::StatusOr<std::vector<T>> RunInParallel(
    size_t count, int threads, const std::function<void(double)>& progress,
    const std::function<absl::StatusOr<T>(size_t, std::function<void(double)>)>& run) {
  std::vector<absl::StatusOr<T>> results(count, absl::UnknownError("not run"));
  std::vector<double> fraction(count, 0.0);
  absl::Mutex mu;
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    while (true) {
      const size_t i = next.fetch_add(1);
      if (i >= count) return;
      std::function<void(double)> job_progress;
      if (progress) {
        job_progress = [&, i](double f) {
          absl::MutexLock lock(&mu);
          fraction[i] = f;
          double total = 0;
          for (double x : fraction) total += x;
          progress(total / static_cast<double>(count));
        };
      }
      absl::StatusOr<T> r = run(i, std::move(job_progress));
      absl::MutexLock lock(&mu);
      results[i] = std::move(r);
    }
  };
  const int used = std::max(1, std::min<int>(threads, static_cast<int>(count)));
  std::vector<std::thread> pool;
  for (int t = 1; t < used; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  std::vector<T> out;
  out.reserve(count);
  for (absl::StatusOr<T>& r : results) {
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_PARALLEL_RUNS_H_
