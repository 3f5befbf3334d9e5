// Fuzz target: the workload trace parser (sim/trace.h, JSON Lines,
// schema asymcache.trace.v1).
//
// Input: the bytes of a trace file.
//
// Invariants checked (beyond "no crash, no sanitizer report"):
//   - a refusal is INVALID_ARGUMENT naming the origin ("fuzz.jsonl:LINE: ..."
//     or "fuzz.jsonl: ..."), as trace.h promises;
//   - an accepted workload passes Workload::Validate(), its sessions are
//     sorted by start, and its lengths add up without overflow (every step's
//     prompt grows the context, output_tokens >= 1);
//   - round trip: ParseTrace(WriteTrace(w)) == w (source_line aside), and
//     writing that again gives the same text.
// The workload's token ids are never materialized (a part may claim 2^31
// tokens); only lengths are computed.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "fuzz/fuzz_check.h"
#include "sim/trace.h"
#include "sim/workload.h"

namespace asymcache {
namespace {

constexpr absl::string_view kOrigin = "fuzz.jsonl";

// The workload without the trace line numbers (a written trace has its own).
Workload WithoutSourceLines(Workload w) {
  for (SessionSpec& s : w.sessions) {
    for (StepSpec& step : s.steps) step.source_line = 0;
  }
  return w;
}

void CheckLengths(const Workload& w) {
  for (size_t i = 0; i < w.sessions.size(); ++i) {
    const SessionSpec& s = w.sessions[i];
    FUZZ_CHECK(!s.steps.empty(), "session ", i, " has no steps");
    if (i > 0) {
      FUZZ_CHECK(w.sessions[i - 1].steps[0].arrival_s <= s.steps[0].arrival_s,
                 "sessions not sorted by start at ", i);
    }
    int64_t previous_context = 0;
    for (const StepLengths& l : SessionLengths(s)) {
      FUZZ_CHECK(l.prompt_tokens >= previous_context && l.context_tokens > l.prompt_tokens,
                 "session '", s.id, "': lengths ", l.prompt_tokens, " -> ", l.context_tokens,
                 " after ", previous_context);
      previous_context = l.context_tokens;
    }
  }
  FUZZ_CHECK(w.max_context_tokens() > 0, "an accepted workload with no tokens");
}

void Run(absl::string_view text) {
  absl::StatusOr<Workload> parsed = ParseTrace(text, kOrigin);
  if (!parsed.ok()) {
    FUZZ_CHECK(fuzz::IsRefusalNaming(parsed.status(), absl::StrCat(kOrigin, ":")),
               "refusal not INVALID_ARGUMENT naming the origin: ", parsed.status().ToString());
    return;
  }
  const absl::Status valid = parsed->Validate();
  FUZZ_CHECK(valid.ok(), "accepted but invalid: ", valid.ToString());
  FUZZ_CHECK(parsed->name == kOrigin, "workload named '", parsed->name, "'");
  CheckLengths(*parsed);

  const std::string written = WriteTrace(*parsed);
  absl::StatusOr<Workload> reparsed = ParseTrace(written, kOrigin);
  FUZZ_CHECK(reparsed.ok(), "WriteTrace's output is refused: ", reparsed.status().ToString(),
             "\n--- written:\n", written);
  const Workload a = WithoutSourceLines(*parsed);
  const Workload b = WithoutSourceLines(*reparsed);
  FUZZ_CHECK(a.name == b.name && a.sessions == b.sessions,
             "ParseTrace(WriteTrace(w)) != w\n--- written:\n", written);
  const std::string rewritten = WriteTrace(*reparsed);
  FUZZ_CHECK(rewritten == written, "WriteTrace is not stable\n--- first:\n", written,
             "--- second:\n", rewritten);
}

}  // namespace
}  // namespace asymcache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::Run(asymcache::fuzz::AsText(data, size));
  return 0;
}
