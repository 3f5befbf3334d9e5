// Clock: the seam through which time enters cachecore.
//
// Contract: every TTL, idle time and eviction decision in cachecore reads time
// through a Clock*, never from the system directly, so tests drive time with a
// FakeClock and never sleep. RealClock is thread-safe; FakeClock is
// thread-safe (its time is guarded by a mutex).
#ifndef ASYMCACHE_CACHECORE_CLOCK_H_
#define ASYMCACHE_CACHECORE_CLOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace asymcache {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// Wall clock (absl::Now()).
class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  // A process-wide instance; never destroyed.
  static RealClock* Get() {
    static RealClock* clock = new RealClock();
    return clock;
  }
};

// Manually advanced clock for tests and the simulator (modeled time).
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch()) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_CLOCK_H_
