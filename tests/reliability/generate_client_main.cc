// reliability_generate_client: a Generate client the reliability tests run as
// a child process so that they can SIGKILL it mid-stream (a client that
// disappears without cancelling: its connection just drops).
//
//   reliability_generate_client --target=HOST:PORT --prompt-tokens=N
//       --max-new-tokens=M [--salt=S] [--seed=K]
//
// Sends one asymcache.v1.Worker/Generate request (N pseudo-random prompt
// tokens of the tiny shape's vocabulary, drawn from --seed) and reads the
// stream. Prints "STREAMING" once the first token arrived, then, if the stream
// ends before it is killed, "END <grpc code> <tokens>". Exit status 0 when the
// stream ended OK, 1 when it ended with an error, 2 for bad arguments.
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace {

// The tiny shape's vocabulary.
constexpr uint32_t kVocab = 1024;
// Bound on the whole stream: far beyond what a test waits before killing.
constexpr auto kStreamDeadline = std::chrono::minutes(5);

int Usage(const std::string& why) {
  std::fprintf(stderr,
               "reliability_generate_client: %s\nusage: reliability_generate_client "
               "--target=HOST:PORT --prompt-tokens=N --max-new-tokens=M [--salt=S] [--seed=K]\n",
               why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args = {{"salt", "reliability-client"}, {"seed", "1"}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      return Usage(absl::StrCat("bad argument '", arg, "'"));
    }
    args[arg.substr(2, eq - 2)] = arg.substr(eq + 1);
  }
  int prompt_tokens = 0;
  int max_new_tokens = 0;
  uint64_t seed = 0;
  if (args["target"].empty()) return Usage("--target is required");
  if (!absl::SimpleAtoi(args["prompt-tokens"], &prompt_tokens) || prompt_tokens < 1) {
    return Usage("--prompt-tokens must be a positive integer");
  }
  if (!absl::SimpleAtoi(args["max-new-tokens"], &max_new_tokens) || max_new_tokens < 1) {
    return Usage("--max-new-tokens must be a positive integer");
  }
  if (!absl::SimpleAtoi(args["seed"], &seed)) return Usage("--seed must be an integer");

  asymcache::v1::GenerateRequest request;
  std::mt19937_64 rng(seed);
  for (int i = 0; i < prompt_tokens; ++i) {
    request.add_prompt_tokens(static_cast<int32_t>(rng() % kVocab));
  }
  request.set_max_new_tokens(max_new_tokens);
  request.set_salt(args["salt"]);

  std::unique_ptr<asymcache::v1::Worker::Stub> stub = asymcache::v1::Worker::NewStub(
      grpc::CreateChannel(args["target"], grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kStreamDeadline);
  std::unique_ptr<grpc::ClientReader<asymcache::v1::GenerateResponse>> reader =
      stub->Generate(&context, request);
  asymcache::v1::GenerateResponse response;
  int64_t tokens = 0;
  bool announced = false;
  while (reader->Read(&response)) {
    tokens += response.tokens_size();
    if (!announced && tokens > 0) {
      std::printf("STREAMING\n");
      std::fflush(stdout);
      announced = true;
    }
  }
  const grpc::Status status = reader->Finish();
  std::printf("END %d %lld\n", static_cast<int>(status.error_code()),
              static_cast<long long>(tokens));
  return status.ok() ? 0 : 1;
}
