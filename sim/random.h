// Deterministic pseudo-randomness for workload generation.
//
// Contract: SimRandom is a small value-type generator (SplitMix64) whose output
// depends only on its seed, never on the platform's standard library, so a
// workload generated from a seed is identical on every machine and compiler.
// Draws (uniform integers, uniform reals, exponentials, a Zipf pick) are
// implemented here for the same reason (std::*_distribution is
// implementation-defined). Not thread-safe; copy one per thread.
//
// Also holds the stable 64-bit string/integer mixing used to derive
// pseudo-token ids (FNV-1a for strings, SplitMix64 finalizer for integers).
#ifndef ASYMCACHE_SIM_RANDOM_H_
#define ASYMCACHE_SIM_RANDOM_H_

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "cachecore/mix64.h"

namespace asymcache {

// FNV-1a 64 of a string, then mixed: stable across processes (absl::Hash is not).
inline uint64_t StableHash(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return Mix64(h);
}

inline uint64_t HashCombine(uint64_t a, uint64_t b) { return Mix64(a ^ Mix64(b + 0x632be59bd9b4e019ULL)); }

class SimRandom {
 public:
  explicit SimRandom(uint64_t seed) : state_(seed) {}
  // Independent stream `stream` of `seed` (e.g. one per session).
  SimRandom(uint64_t seed, uint64_t stream) : state_(HashCombine(seed, stream)) {}

  // SplitMix64: advance the state by the golden-ratio increment and mix it.
  // Mix64 adds that increment itself, so mixing the pre-advance state is the
  // same draw.
  uint64_t Next() {
    const uint64_t draw = Mix64(state_);
    state_ += 0x9e3779b97f4a7c15ULL;
    return draw;
  }
  // Uniform in [0, 1) with 53 bits.
  double UniformReal() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [lo, hi] (inclusive). Precondition: lo <= hi.
  int64_t UniformInt(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int64_t>(span == 0 ? Next() : Next() % span);
  }
  // Exponential with the given mean (mean <= 0 gives 0).
  double Exponential(double mean) {
    if (mean <= 0) return 0;
    return -mean * std::log1p(-UniformReal());
  }
  // Index in [0, cdf.size()) drawn from a cumulative distribution whose last
  // entry is the total weight.
  size_t PickFromCdf(const std::vector<double>& cdf) {
    const double x = UniformReal() * cdf.back();
    size_t lo = 0, hi = cdf.size() - 1;
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (cdf[mid] > x) hi = mid; else lo = mid + 1;
    }
    return lo;
  }

 private:
  uint64_t state_;
};

// Cumulative weights of a Zipf(s) popularity over n items (item 0 most popular).
inline std::vector<double> ZipfCdf(int n, double s) {
  std::vector<double> cdf(n);
  double total = 0;
  for (int i = 0; i < n; ++i) {
    total += 1.0 / std::pow(static_cast<double>(i + 1), s);
    cdf[i] = total;
  }
  return cdf;
}

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_RANDOM_H_
