// FUZZ_CHECK: the invariant checks of the fuzz targets (fuzz/*_fuzz.cc).
//
// A broken invariant prints where (file:line), the condition and what was
// seen, then aborts: libFuzzer reports that as a crash ("deadly signal") and
// writes the input that caused it, exactly as for a sanitizer error.
//
// Contract: header-only helpers; thread-safe.
#ifndef ASYMCACHE_FUZZ_FUZZ_CHECK_H_
#define ASYMCACHE_FUZZ_FUZZ_CHECK_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace asymcache::fuzz {

[[noreturn]] inline void FailCheck(const char* file, int line, const char* condition,
                                   const std::string& what) {
  std::fprintf(stderr, "%s:%d: invariant broken: %s\n  %s\n", file, line, condition, what.c_str());
  std::fflush(stderr);
  std::abort();
}

// The fuzzer's bytes as text (parsers of text formats take any bytes).
inline absl::string_view AsText(const uint8_t* data, size_t size) {
  return absl::string_view(reinterpret_cast<const char*>(data), size);
}

// A refusal as the parsers of this project promise it: INVALID_ARGUMENT whose
// message starts with `prefix` (the origin the parser was given, so that a
// user can find the bad byte).
inline bool IsRefusalNaming(const absl::Status& status, absl::string_view prefix) {
  return status.code() == absl::StatusCode::kInvalidArgument &&
         absl::StartsWith(status.message(), prefix);
}

}  // namespace asymcache::fuzz

// FUZZ_CHECK(condition, what...): `what` (absl::StrCat arguments) is only
// evaluated when the condition is false.
#define FUZZ_CHECK(condition, ...)                                                         \
  do {                                                                                      \
    if (!(condition)) {                                                                     \
      ::asymcache::fuzz::FailCheck(__FILE__, __LINE__, #condition, absl::StrCat(__VA_ARGS__)); \
    }                                                                                       \
  } while (0)

#endif  // ASYMCACHE_FUZZ_FUZZ_CHECK_H_
