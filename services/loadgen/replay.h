// Replay: drives a running AsymCache cluster with a workload over gRPC — the
// measuring half of asymcache-bench (docs/bench.md).
//
// What it does. Every session of the Workload (sim/workload.h: chat
// conversations, agent jobs, document-Q&A users) is replayed against one
// asymcache.v1.Worker/Generate endpoint (a worker, or a coordinator's proxy):
//   * step 0 of a session is sent open-loop at its arrival_s after the start;
//     step k > 0 is sent closed-loop, delay_after_s() (a tool call or a user's
//     think time) after step k-1's last token arrived;
//   * the prompt of step k is the session's context: every earlier prompt
//     part plus the tokens the model ACTUALLY generated for earlier steps
//     (not the trace's pseudo-tokens), then step k's input parts — so a
//     follow-up prompt extends the previous context token for token, as a
//     real serving frontend's does, and its prefix can hit;
//   * token ids are the workload's (sim/workload.h), folded into the model's
//     vocabulary (id mod vocab_size);
//   * every step asks for exactly output_tokens tokens (no stop tokens),
//     greedy unless told otherwise, so the run's work is the trace's;
//   * agent steps carry AgentJob fields (job id, tool, last step) when
//     agent_pins is set: the daemon's Continuum-style TTL pins.
// What it records, per request: client-side send time, first-token and
// last-token arrival (TTFT = first - send; TPOT = (last - first)/(n - 1)),
// the worker's RequestStats (hits, rebuilt tokens, queueing), the generated
// tokens (so runs of different systems can be compared token for token), and
// the gRPC status of a failed request (its session's later steps are not
// sent). Per agent job: start (step 0's planned arrival) to its last token.
//
// Contract: Replay() blocks until every session finished or failed, or the
// run deadline passed (then the rest are cancelled and recorded with
// DEADLINE_EXCEEDED). Each in-flight request is one thread running a blocking
// stream; at most `max_in_flight` at once (later sends wait, their lateness
// recorded: a late send is the bench's own bottleneck, reported, not hidden).
// Thread-safe to call from one thread at a time; the progress callback runs
// on the calling thread.
//
// Errors: INVALID_ARGUMENT for bad options or an invalid workload (naming the
// field); UNAVAILABLE when the target cannot be reached within
// connect_timeout. Failed requests are results, not errors.
#ifndef ASYMCACHE_SERVICES_LOADGEN_REPLAY_H_
#define ASYMCACHE_SERVICES_LOADGEN_REPLAY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/common/transport_security.h"
#include "sim/workload.h"

namespace asymcache::loadgen {

struct ReplayOptions {
  // gRPC address (host:port) serving asymcache.v1.Worker/Generate. Required.
  std::string target;
  // How to reach it (services/common/transport_security.h): plaintext by
  // default (the library's default; asymcache-bench takes --tls-* flags).
  TransportSecurityOptions security;
  // Model vocabulary: workload token ids are folded into [0, vocab_size).
  // Required (> 0); asymcache-bench reads it from the worker's stats.
  int64_t vocab_size = 0;
  // Requests (steps) in flight at once. 512: above any batch the reference
  // worker runs (max-running 128) plus its queue's useful depth, so the open
  // loop is not throttled by the client at the loads the bench sweeps. >= 1.
  int max_in_flight = 512;
  // Mark each request with its session's salt (the workload's tenant) plus
  // this prefix. Default "": tenants as the trace says. A distinct prefix per
  // run keeps runs on one cluster from hitting each other's blocks.
  std::string salt_prefix;
  // No reuse: every request gets a salt of its own (the `none` system), so
  // nothing it computes can ever be hit. Default false.
  bool fresh_salt_per_request = false;
  // Send AgentJob fields (job id = session id, tool, last step) on agent
  // steps, so the daemon pins the job's blocks across tool calls. Default
  // false (the systems without pins).
  bool agent_pins = false;
  // Sampling: greedy by default (temperature 0), so runs are comparable token
  // for token. temperature > 0 samples top-p with a per-request seed.
  float temperature = 0;
  float top_p = 1;
  // Deadline of one request, from its send. 10 min: far beyond any request
  // the bench's workloads make on a loaded GPU; a hung request still ends.
  absl::Duration request_timeout = absl::Minutes(10);
  // Deadline of the whole replay, from its start. 1 h.
  absl::Duration run_timeout = absl::Hours(1);
  // How long Replay() waits for the target's channel to connect. 10 s.
  absl::Duration connect_timeout = absl::Seconds(10);
  // When set and it becomes true (a signal handler's flag), the replay ends as
  // if run_timeout had passed: requests in flight are cancelled. Optional.
  const std::atomic<bool>* interrupt = nullptr;
  // Called on the calling thread about 10 times a second with
  // (requests done, requests known so far); optional.
  std::function<void(int64_t done, int64_t known)> progress;
};

// One request (one step of a session) as it was replayed. Times are seconds
// from the replay's start; -1 when it did not happen.
struct RequestRecord {
  int32_t session = 0;  // index into Workload::sessions
  int32_t step = 0;
  double planned_s = 0;       // when it should have been sent (arrival or previous finish + delay)
  double sent_s = -1;
  double first_token_s = -1;
  double finish_s = -1;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;  // tokens received
  // From the worker's RequestStats (the last message).
  int64_t hit_tokens = 0;
  int64_t rebuilt_tokens = 0;
  int64_t computed_prompt_tokens = 0;
  int64_t preemptions = 0;
  double server_queue_s = 0;
  std::vector<int32_t> tokens;  // generated tokens
  absl::Status status;          // OK, or why it failed

  bool finished() const { return status.ok() && finish_s >= 0; }
  double ttft_s() const { return first_token_s - sent_s; }
  double tpot_s() const {
    return output_tokens > 1 ? (finish_s - first_token_s) / static_cast<double>(output_tokens - 1)
                             : 0;
  }
};

struct JobRecord {
  int32_t session = 0;
  double start_s = 0;    // step 0's planned arrival
  double finish_s = -1;  // last step's last token; -1 if a step failed
};

struct ReplayResult {
  std::vector<RequestRecord> requests;  // in (session, step) order
  std::vector<JobRecord> jobs;          // agent sessions (SessionSpec::is_job), session order
  double duration_s = 0;                // start to the last request's end
  double max_send_lateness_s = 0;       // worst sent_s - planned_s (client-side backlog)
};

absl::Status ValidateReplayOptions(const ReplayOptions& options);

absl::StatusOr<ReplayResult> Replay(const Workload& workload, const ReplayOptions& options);

}  // namespace asymcache::loadgen

#endif  // ASYMCACHE_SERVICES_LOADGEN_REPLAY_H_
