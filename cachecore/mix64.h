// Mix64: the SplitMix64 finalizer, a bijective 64-bit mix (distinct inputs
// give distinct outputs). Used for lease ids (cachecore) and the simulator's
// deterministic randomness. Pure function; header only.
#ifndef ASYMCACHE_CACHECORE_MIX64_H_
#define ASYMCACHE_CACHECORE_MIX64_H_

#include <cstdint>

namespace asymcache {

inline uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_MIX64_H_
