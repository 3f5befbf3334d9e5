// Generate(): one asymcache.v1.Worker/Generate call read to its end, through a
// blocking stub (a worker's, or the coordinator's proxy: the same service),
// with what the stream carried gathered in a Generated. The worker's process
// and proxy tests share it.
//
// Contract: test-only; blocks until the stream ends or `deadline` passes (the
// status says which). Thread-compatible (one call per stub at a time is not
// required; the stub is gRPC's and thread-safe).
#ifndef ASYMCACHE_TESTS_SERVICES_WORKER_GENERATE_STREAM_H_
#define ASYMCACHE_TESTS_SERVICES_WORKER_GENERATE_STREAM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"

namespace asymcache::testing {

// What one Generate stream carried.
struct Generated {
  std::vector<int32_t> tokens;    // every message's tokens, in order
  std::vector<int64_t> times_us;  // their token_times_us
  std::string finish_reason;      // the last message's
  v1::RequestStats stats;         // the last message's
  int messages = 0;
  grpc::Status status;  // how the stream ended
};

inline Generated Generate(v1::Worker::Stub& stub, const v1::GenerateRequest& request,
                          absl::Duration deadline = absl::Seconds(30)) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  Generated out;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ++out.messages;
    out.tokens.insert(out.tokens.end(), response.tokens().begin(), response.tokens().end());
    out.times_us.insert(out.times_us.end(), response.token_times_us().begin(),
                        response.token_times_us().end());
    if (!response.finish_reason().empty()) {
      out.finish_reason = response.finish_reason();
      out.stats = response.stats();
    }
  }
  out.status = reader->Finish();
  return out;
}

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_WORKER_GENERATE_STREAM_H_
