// worker_gpu_bench: drives a running asymcache-worker over gRPC (issue 6) in
// one of three modes, chosen by flag.
//
//   --write-model-dir=DIR [--shape=tiny] [--dtype=bf16] [--seed=N]
//       [--max-position-embeddings=N] [--daemon-config-out=FILE]
//     Writes a Hugging Face directory (config.json + model.safetensors) of
//     seeded random weights: the named shape's dimensions with `dtype` as the
//     model's dtype and the tensors' storage type (model::WeightSource::Random
//     + WriteHfDirectory). Prints the daemon's `model:` YAML mapping for the
//     same KV shape (and writes it as a whole daemon --config file to
//     --daemon-config-out), then `kv_bytes_per_block=N`, so a script can size
//     the daemon's pool in blocks.
//
//   --exactness --worker=ADDR --model-dir=DIR [--requests=N] [--seed=S] ...
//     Sends N requests (random prompts, three-turn conversations with session
//     ids, questions over shared documents, greedy and seeded top-p sampling,
//     return_logits) with --concurrency chains in flight, and compares each
//     with model::GenerateDense over the SAME weights (FromDirectory: bf16
//     values read as fp32) on the host, in a pool of reference threads while
//     the worker keeps generating. With --prefill-worker and --kv-source, each
//     request is disaggregated: its first token comes from the prefill worker
//     (max_new_tokens 1), the rest from --worker with kv_source.
//
//     Tolerance (per generated token compared), by the model's dtype (flags
//     override): bf16/fp16 max|g - r| <= 0.08 * RMS(r) and
//     ||g - r||_2 / ||r||_2 <= 2e-2 (the CUDA backend tests' bounds); fp32
//     1e-4 * RMS(r) and 1e-5 (the CPU backend is exact to rounding).
//     A token mismatch at generated index i stops the request's comparison
//     (the contexts diverge), unless --resyncs=K (default 0) lets the
//     reference restart up to K times from the worker's own context (prompt +
//     its tokens 0..i), so the tokens after a divergence are compared too.
//     A mismatch is a NEAR-TIE, counted and reported, when
//       (1) the worker's logits at i pass the tolerance test, and
//       (2) the host sampling rule (model/sampling.h) applied to the worker's
//           own logits gives the worker's token.
//     Then the worker's logits are themselves a perturbation of the
//     reference's, within tolerance, under which the rule picks the other
//     token: rounding alone explains the divergence. For greedy, (1) implies
//     that the reference's logits of the two tokens are within 2 * tol * RMS
//     (the top-2 criterion). For sampled requests the report adds the
//     gap between the reference's Gumbel scores of the two tokens (Gumbel-max
//     over the nucleus, model/sampling.cc), beside the most that a
//     perturbation of tol * RMS per logit can move it: 2 tol RMS / T (the
//     sampled analogue of greedy's top-2 criterion). Anything
//     else is a FAILURE: logits outside tolerance, a token the rule would not
//     pick from the worker's own logits (checked on every token), a missing
//     token, an error status.
//     Output: a markdown row (--out-md, appended; header when new), a JSON
//     document (--out-json), and a summary on stdout. Exit 1 on any failure.
//
//   --load --worker=ADDR [--concurrency=1,32,128] [--prompt-tokens=1024]
//       [--max-new-tokens=64] [--requests=R[,R...]]
//     For each concurrency C (with its request count R), C closed-loop streams
//     of random distinct prompts (greedy, exactly M new tokens) until R
//     requests finished, after --warmup-requests unmeasured ones. Per request
//     TTFT = token_times_us[0] and per-token TPOT = the differences (times the
//     worker stamped); GetWorkerStats before/after gives the share of step
//     time spent in daemon RPCs (plan/commit/release) and in the model's
//     forward pass. Output: one markdown row per level (--out-md), JSON
//     (--out-json), exit 1 if any request failed.
//
// Common flags: --label=TEXT (the row's name), --daemon=ADDR (exactness:
// report the daemon's eviction/hit/rebuild deltas), --request-timeout=SECONDS.
//
// Contract: a command-line tool; every error goes to stderr with the flag or
// request at fault, exit status 2 for bad flags, 1 for a failed run.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "model/dense_reference.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/sampling.h"
#include "model/weight_source.h"
#include "nlohmann/json.hpp"
#include "services/client/client.h"
#include "services/common/command_line.h"
#include "services/common/grpc_status.h"

namespace asymcache::worker::bench {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------- options

enum class Mode { kNone, kWriteModel, kExactness, kLoad };

struct ToolOptions {
  Mode mode = Mode::kNone;
  std::string label;  // the row's name; default: the mode's

  // --write-model-dir
  std::string write_model_dir;
  std::string shape = "tiny";
  std::string dtype = "bf16";
  // 4096 for the written model: keeps the rotary table small and is far above
  // the exactness run's contexts (< 1k). 0 keeps the shape's.
  int64_t max_position_embeddings = 4096;
  std::string daemon_config_out;

  // shared by --exactness / --load
  std::string worker;
  std::string daemon;  // optional: daemon stats deltas
  uint64_t seed = 1;
  // Deadline of one Generate call. 120 s: a request queued behind 127 others
  // at 1k-token prompts on a GPU finishes well inside; a hung worker surfaces.
  double request_timeout_s = 120;
  std::string out_json;
  std::string out_md;

  // --exactness
  std::string model_dir;  // the weights the worker serves (required)
  // Requests in all (a 3-turn conversation counts 3). 48: 8 conversations,
  // 12 document questions, 12 single prompts; seconds on a GPU.
  int32_t requests = 48;
  // Chains (conversations or single requests) in flight. 8: enough for
  // batching, evictions and preemptions on a small pool.
  int32_t concurrency = 8;
  // Prompt lengths (single prompts; conversations and documents scale from
  // them) and new tokens per request: 50..600 and 8..32, the ranges.
  int32_t min_prompt_tokens = 50;
  int32_t max_prompt_tokens = 600;
  int32_t min_new_tokens = 8;
  int32_t max_new_tokens = 32;
  double logit_tolerance = -1;  // max|diff| / RMS(ref); < 0: by dtype
  double l2_tolerance = -1;     // relative L2; < 0: by dtype
  // Threads computing references. 0: the hardware's (the reference is the
  // slow side of the comparison; the GPU worker barely uses the host).
  int32_t reference_threads = 0;
  // Near-ties after which a request's reference is run again from the
  // worker's own tokens (so later tokens are compared too). 0: the comparison
  // stops at the first divergence, as the issue words it.
  int32_t resyncs = 0;
  std::string prefill_worker;  // disaggregation: the prefill worker
  std::string kv_source;       // disaggregation: the prefill worker's daemon

  // --load: the batches 1/32/128, 1k-token prompts, 64 new tokens.
  std::vector<int32_t> load_concurrency = {1, 32, 128};
  // Requests per level, or one count for all; empty: 4 * C, at least 16
  // (every stream runs a few requests, so ramp-up is a small share).
  std::vector<int32_t> load_requests;
  int32_t prompt_tokens = 1024;
  int32_t load_new_tokens = 64;
  // Unmeasured requests first, one at a time. 2: the first cuBLAS calls
  // (heuristics, workspace) and the allocator's first growth stay out.
  int32_t warmup_requests = 2;

  absl::Status Validate() const {
    auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
    switch (mode) {
      case Mode::kNone:
        return bad("one of --write-model-dir, --exactness, --load is required");
      case Mode::kWriteModel:
        if (dtype != "bf16" && dtype != "fp16" && dtype != "fp32") {
          return bad("--dtype: '", dtype, "' is not bf16, fp16 or fp32");
        }
        if (max_position_embeddings < 0) return bad("--max-position-embeddings must be >= 0");
        return absl::OkStatus();
      case Mode::kExactness:
        if (worker.empty()) return bad("--worker is required");
        if (model_dir.empty()) return bad("--model-dir is required");
        if (requests < 1) return bad("--requests must be >= 1");
        if (concurrency < 1) return bad("--concurrency must be >= 1");
        if (min_prompt_tokens < 8 || max_prompt_tokens < min_prompt_tokens) {
          return bad("--min-prompt-tokens must be >= 8 and <= --max-prompt-tokens");
        }
        if (min_new_tokens < 1 || max_new_tokens < min_new_tokens) {
          return bad("--min-new-tokens must be >= 1 and <= --max-new-tokens");
        }
        if (prefill_worker.empty() != kv_source.empty()) {
          return bad("--prefill-worker and --kv-source go together");
        }
        if (!prefill_worker.empty() && min_new_tokens < 2) {
          return bad("--min-new-tokens must be >= 2 with --prefill-worker");
        }
        if (reference_threads < 0) return bad("--reference-threads must be >= 0");
        if (resyncs < 0) return bad("--resyncs must be >= 0");
        break;
      case Mode::kLoad:
        if (worker.empty()) return bad("--worker is required");
        if (load_concurrency.empty()) return bad("--concurrency: no level given");
        for (int32_t c : load_concurrency) {
          if (c < 1) return bad("--concurrency: levels must be >= 1");
        }
        if (!load_requests.empty() && load_requests.size() != 1 &&
            load_requests.size() != load_concurrency.size()) {
          return bad("--requests: one count, or one per --concurrency level");
        }
        for (int32_t r : load_requests) {
          if (r < 1) return bad("--requests must be >= 1");
        }
        if (prompt_tokens < 1) return bad("--prompt-tokens must be >= 1");
        if (load_new_tokens < 2) return bad("--max-new-tokens must be >= 2 (TPOT needs two)");
        if (warmup_requests < 0) return bad("--warmup-requests must be >= 0");
        if (prefill_worker.empty() != kv_source.empty()) {
          return bad("--prefill-worker and --kv-source go together");
        }
        break;
    }
    if (!(request_timeout_s > 0)) return bad("--request-timeout must be > 0 seconds");
    return absl::OkStatus();
  }
};

template <typename T>
absl::Status ParseNumber(const CommandLineFlag& flag, T* out) {
  if constexpr (std::is_floating_point_v<T>) {
    if (absl::SimpleAtod(flag.value, out)) return absl::OkStatus();
  } else {
    if (absl::SimpleAtoi(flag.value, out)) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag.name, ": '", flag.value, "' is not a number"));
}

absl::Status ParseList(const CommandLineFlag& flag, std::vector<int32_t>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(flag.value, ',', absl::SkipEmpty())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag.name, ": '", part, "' is not an integer"));
    }
    out->push_back(v);
  }
  return absl::OkStatus();
}

absl::StatusOr<ToolOptions> ParseFlags(int argc, char** argv) {
  absl::StatusOr<ParsedCommandLine> parsed = ParseCommandLine(
      argc, argv, [](absl::string_view name) { return name == "exactness" || name == "load"; });
  if (!parsed.ok()) return parsed.status();
  if (parsed->help) {
    return absl::InvalidArgumentError("usage: see the comment atop worker_gpu_bench.cc");
  }
  ToolOptions o;
  std::optional<CommandLineFlag> requests_flag;
  std::optional<CommandLineFlag> concurrency_flag;
  std::optional<CommandLineFlag> new_tokens_flag;
  auto set_mode = [&o](Mode mode, const std::string& name) -> absl::Status {
    if (o.mode != Mode::kNone && o.mode != mode) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": only one mode at a time"));
    }
    o.mode = mode;
    return absl::OkStatus();
  };
  for (const CommandLineFlag& f : parsed->flags) {
    absl::Status s;
    const std::string& n = f.name;
    if (n == "exactness" || n == "load") {
      if (f.value == "true") s = set_mode(n == "load" ? Mode::kLoad : Mode::kExactness, n);
    } else if (n == "write-model-dir") {
      o.write_model_dir = f.value;
      s = set_mode(Mode::kWriteModel, n);
    } else if (n == "shape") {
      o.shape = f.value;
    } else if (n == "dtype") {
      o.dtype = f.value;
    } else if (n == "max-position-embeddings") {
      s = ParseNumber(f, &o.max_position_embeddings);
    } else if (n == "daemon-config-out") {
      o.daemon_config_out = f.value;
    } else if (n == "label") {
      o.label = f.value;
    } else if (n == "worker") {
      o.worker = f.value;
    } else if (n == "daemon") {
      o.daemon = f.value;
    } else if (n == "seed") {
      s = ParseNumber(f, &o.seed);
    } else if (n == "request-timeout") {
      s = ParseNumber(f, &o.request_timeout_s);
    } else if (n == "out-json") {
      o.out_json = f.value;
    } else if (n == "out-md") {
      o.out_md = f.value;
    } else if (n == "model-dir") {
      o.model_dir = f.value;
    } else if (n == "requests") {
      requests_flag = f;
    } else if (n == "concurrency") {
      concurrency_flag = f;
    } else if (n == "max-new-tokens") {
      new_tokens_flag = f;
    } else if (n == "min-prompt-tokens") {
      s = ParseNumber(f, &o.min_prompt_tokens);
    } else if (n == "max-prompt-tokens") {
      s = ParseNumber(f, &o.max_prompt_tokens);
    } else if (n == "min-new-tokens") {
      s = ParseNumber(f, &o.min_new_tokens);
    } else if (n == "logit-tolerance") {
      s = ParseNumber(f, &o.logit_tolerance);
    } else if (n == "l2-tolerance") {
      s = ParseNumber(f, &o.l2_tolerance);
    } else if (n == "reference-threads") {
      s = ParseNumber(f, &o.reference_threads);
    } else if (n == "resyncs") {
      s = ParseNumber(f, &o.resyncs);
    } else if (n == "prefill-worker") {
      o.prefill_worker = f.value;
    } else if (n == "kv-source") {
      o.kv_source = f.value;
    } else if (n == "prompt-tokens") {
      s = ParseNumber(f, &o.prompt_tokens);
    } else if (n == "warmup-requests") {
      s = ParseNumber(f, &o.warmup_requests);
    } else {
      s = absl::InvalidArgumentError(absl::StrCat("unknown flag --", n));
    }
    if (!s.ok()) return s;
  }
  // Flags whose meaning depends on the mode.
  if (requests_flag) {
    if (o.mode == Mode::kLoad) {
      if (absl::Status s = ParseList(*requests_flag, &o.load_requests); !s.ok()) return s;
    } else if (absl::Status s = ParseNumber(*requests_flag, &o.requests); !s.ok()) {
      return s;
    }
  }
  if (concurrency_flag) {
    if (o.mode == Mode::kLoad) {
      if (absl::Status s = ParseList(*concurrency_flag, &o.load_concurrency); !s.ok()) return s;
    } else if (absl::Status s = ParseNumber(*concurrency_flag, &o.concurrency); !s.ok()) {
      return s;
    }
  }
  if (new_tokens_flag) {
    int32_t* target = o.mode == Mode::kLoad ? &o.load_new_tokens : &o.max_new_tokens;
    if (absl::Status s = ParseNumber(*new_tokens_flag, target); !s.ok()) return s;
  }
  if (absl::Status s = o.Validate(); !s.ok()) return s;
  return o;
}

// ---------------------------------------------------------------- helpers

struct Percentiles {
  double mean = 0;
  double p50 = 0;
  double p99 = 0;
  int64_t count = 0;
};

// Nearest-rank percentiles (0 for an empty sample).
Percentiles Summarize(std::vector<double> values) {
  Percentiles p;
  p.count = static_cast<int64_t>(values.size());
  if (values.empty()) return p;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  p.mean = sum / values.size();
  auto rank = [&](double q) {
    const size_t k = static_cast<size_t>(std::ceil(q * values.size()));
    return values[std::clamp<size_t>(k, 1, values.size()) - 1];
  };
  p.p50 = rank(0.50);
  p.p99 = rank(0.99);
  return p;
}

Json ToJson(const Percentiles& p) {
  return Json{{"mean", p.mean}, {"p50", p.p50}, {"p99", p.p99}, {"count", p.count}};
}

absl::Status WriteFile(const std::string& path, const std::string& text, bool append) {
  std::ofstream out(path, append ? std::ios::app : std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Appends rows to a markdown table, with the header first when the file is new or empty.
absl::Status AppendMarkdown(const std::string& path, const std::string& header,
                            const std::string& rows) {
  if (path.empty()) return absl::OkStatus();
  std::ifstream existing(path);
  const bool empty = !existing || existing.peek() == std::ifstream::traits_type::eof();
  return WriteFile(path, empty ? header + rows : rows, /*append=*/true);
}

// The gRPC-generated client of asymcache.v1.Worker (a worker or the
// coordinator's Generate proxy).
using WorkerClient = v1::Worker::Stub;

// A client on its own channel to `address`.
std::unique_ptr<WorkerClient> ConnectWorker(const std::string& address, int channel_tag = 0) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Distinct arguments give each load stream its own connection.
  args.SetInt("asymcache.worker_gpu_bench_channel", channel_tag);
  return v1::Worker::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// One finished Generate stream.
struct Generated {
  std::vector<int32_t> tokens;
  std::vector<int64_t> times_us;
  std::vector<float> logits;
  std::string finish_reason;
  v1::RequestStats stats;
};

absl::StatusOr<Generated> Generate(WorkerClient& worker_client, const v1::GenerateRequest& request,
                                   double timeout_s, int64_t vocab) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(timeout_s)));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      worker_client.Generate(&context, request);
  Generated out;
  v1::GenerateResponse message;
  while (reader->Read(&message)) {
    out.tokens.insert(out.tokens.end(), message.tokens().begin(), message.tokens().end());
    out.times_us.insert(out.times_us.end(), message.token_times_us().begin(),
                        message.token_times_us().end());
    out.logits.insert(out.logits.end(), message.logits().begin(), message.logits().end());
    if (!message.finish_reason().empty()) {
      out.finish_reason = message.finish_reason();
      out.stats = message.stats();
    }
  }
  if (absl::Status s = FromGrpcStatus(reader->Finish()); !s.ok()) return s;
  if (out.times_us.size() != out.tokens.size()) {
    return absl::DataLossError(
        absl::StrCat(out.tokens.size(), " tokens but ", out.times_us.size(), " token_times_us"));
  }
  if (request.return_logits() &&
      out.logits.size() != out.tokens.size() * static_cast<size_t>(vocab)) {
    return absl::DataLossError(absl::StrCat(out.tokens.size(), " tokens but ", out.logits.size(),
                                            " logits (vocab ", vocab, ")"));
  }
  if (out.finish_reason.empty()) return absl::DataLossError("stream ended without finish_reason");
  return out;
}

absl::StatusOr<v1::GetWorkerStatsResponse> WorkerStats(WorkerClient& worker_client) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::GetWorkerStatsResponse response;
  if (absl::Status s = FromGrpcStatus(worker_client.GetWorkerStats(&context, {}, &response)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("GetWorkerStats: ", s.message()));
  }
  return response;
}

std::optional<DaemonStats> DaemonStatsOrNull(const std::string& address) {
  if (address.empty()) return std::nullopt;
  ClientOptions options;
  options.target = address;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) return std::nullopt;
  absl::StatusOr<DaemonStats> stats = (*client)->GetStats(absl::Seconds(10));
  if (!stats.ok()) {
    std::fprintf(stderr, "[worker_gpu_bench] daemon %s: %s\n", address.c_str(),
                 stats.status().ToString().c_str());
    return std::nullopt;
  }
  return *stats;
}

// ---------------------------------------------------------------- --write-model-dir

absl::Status WriteModel(const ToolOptions& o) {
  absl::StatusOr<model::LlamaConfig> named = model::LlamaConfig::Named(o.shape);
  if (!named.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--shape: ", named.status().message()));
  }
  model::LlamaConfig config = *named;
  config.dtype = o.dtype == "bf16"   ? msa::DType::kBFloat16
                 : o.dtype == "fp16" ? msa::DType::kFloat16
                                     : msa::DType::kFloat32;
  config.name = absl::StrCat(o.shape, "-", o.dtype);
  if (o.max_position_embeddings > 0) config.max_position_embeddings = o.max_position_embeddings;
  absl::StatusOr<model::WeightSource> weights = model::WeightSource::Random(config, o.seed);
  if (!weights.ok()) return weights.status();
  if (absl::Status s = model::WriteHfDirectory(*weights, config.dtype, o.write_model_dir);
      !s.ok()) {
    return s;
  }
  const ModelConfig kv = config.ToCacheModel();
  const std::string yaml = absl::StrCat(
      "model:\n  name: ", kv.name, "\n  num_layers: ", kv.num_layers,
      "\n  num_q_heads: ", kv.num_q_heads, "\n  num_kv_heads: ", kv.num_kv_heads,
      "\n  head_dim: ", kv.head_dim, "\n  dtype_bytes: ", kv.dtype_bytes,
      "\n  block_tokens: ", kv.block_tokens, "\n  hidden_size: ", kv.hidden_size,
      "\n  intermediate_size: ", kv.intermediate_size, "\n  vocab_size: ", kv.vocab_size, "\n");
  if (!o.daemon_config_out.empty()) {
    if (absl::Status s = WriteFile(o.daemon_config_out, yaml, false); !s.ok()) return s;
  }
  std::printf("%skv_bytes_per_block=%lld\n", yaml.c_str(),
              static_cast<long long>(kv.KvBytesPerBlock()));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- --exactness

struct Tolerance {
  double logit = 0;  // max|g - r| <= logit * RMS(r)
  double l2 = 0;     // ||g - r|| / ||r|| <= l2
};

struct LogitError {
  double max_over_rms = 0;
  double relative_l2 = 0;
  double rms = 0;
  bool finite = true;
};

LogitError CompareLogits(absl::Span<const float> got, absl::Span<const float> want) {
  LogitError e;
  double diff2 = 0;
  double ref2 = 0;
  double max_abs = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) e.finite = false;
    const double d = static_cast<double>(got[i]) - want[i];
    max_abs = std::max(max_abs, std::fabs(d));
    diff2 += d * d;
    ref2 += static_cast<double>(want[i]) * want[i];
  }
  e.rms = std::sqrt(ref2 / std::max<size_t>(want.size(), 1));
  e.max_over_rms = max_abs / std::max(e.rms, 1e-30);
  e.relative_l2 = std::sqrt(diff2 / std::max(ref2, 1e-30));
  if (!e.finite) e.max_over_rms = e.relative_l2 = std::numeric_limits<double>::infinity();
  return e;
}

// For a sampled mismatch: the reference's Gumbel scores (model/sampling.cc
// step 6) of its own token and of the worker's, their gap (>= 0; -1 when the
// worker's token is outside the reference's nucleus or has zero weight there:
// then the nucleus edge moved, which the gap does not measure), and the most
// that a perturbation of `delta` per logit can move a score difference with
// the nucleus fixed: 2 delta / T.
struct ScoreGap {
  double gap = -1;
  double movable = 0;
};

ScoreGap SampledScoreGap(absl::Span<const float> ref, const model::SamplingParams& params,
                         int64_t position, int32_t worker, int32_t reference, double delta) {
  ScoreGap out;
  const double temperature = params.temperature;
  out.movable = 2.0 * delta / temperature;
  const size_t vocab = ref.size();
  const double m = ref[model::ArgmaxToken(ref)];
  std::vector<double> w(vocab);
  for (size_t i = 0; i < vocab; ++i) {
    w[i] = std::isnan(ref[i]) ? 0.0 : std::exp((double{ref[i]} - m) / temperature);
  }
  std::vector<int32_t> order(vocab);
  for (size_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(),
            [&w](int32_t a, int32_t b) { return w[a] != w[b] ? w[a] > w[b] : a < b; });
  double total = 0;
  for (int32_t t : order) total += w[t];
  double running = 0;
  bool worker_in_nucleus = false;
  for (int32_t t : order) {
    worker_in_nucleus = worker_in_nucleus || t == worker;
    running += w[t];
    if (running >= params.top_p * total) break;
  }
  if (!worker_in_nucleus || !(w[worker] > 0)) return out;
  auto score = [&](int32_t t) {
    return (double{ref[t]} - m) / temperature + model::SampleGumbel(params.seed, position, t);
  };
  out.gap = score(reference) - score(worker);
  return out;
}

// One request as sent, its worker result and its (later) verdict.
struct Outcome {
  std::string name;
  v1::GenerateRequest request;
  absl::Status status;
  Generated result;
  double seconds = 0;
};

struct Verdict {
  std::string name;
  int64_t tokens_generated = 0;
  int64_t tokens_compared = 0;
  double max_over_rms = 0;
  double max_relative_l2 = 0;
  std::vector<double> over_rms;        // per compared token
  std::vector<double> relative_l2;     // per compared token
  std::vector<std::string> near_ties;  // descriptions, in token order
  std::string failure;                 // description, empty when none
};

model::SamplingParams ToModel(const v1::SamplingParams& p) {
  model::SamplingParams out;
  out.temperature = p.temperature();
  out.top_p = p.top_p() == 0 ? 1.0f : p.top_p();
  out.seed = p.seed();
  return out;
}

// Why tokens `worker` and `reference` at generated index i may differ: the
// reference's numbers next to the tolerance.
std::string DescribeNearTie(absl::Span<const float> r, const model::SamplingParams& sampling,
                            int64_t position, size_t i, int32_t worker, int32_t reference,
                            double delta) {
  if (sampling.temperature <= 0) {
    return absl::StrFormat(
        "greedy token %d: worker %d, reference %d; reference logits %.4f vs %.4f "
        "(gap %.4f <= 2*tol*RMS %.4f)",
        i, worker, reference, r[reference], r[worker], double{r[reference]} - r[worker], 2 * delta);
  }
  const ScoreGap g = SampledScoreGap(r, sampling, position, worker, reference, delta);
  return absl::StrFormat(
      "sampled token %d (T %.2f, top_p %.2f): worker %d, reference %d; reference Gumbel "
      "scores %s (a tol*RMS perturbation moves a gap up to %.3g)",
      i, sampling.temperature, sampling.top_p, worker, reference,
      g.gap < 0 ? std::string("n/a: the worker's token is outside the reference nucleus "
                              "(the nucleus edge moved)")
                : absl::StrFormat("%.4g apart", g.gap),
      g.movable);
}

// Compares one request with the dense reference (see the file comment). After
// a near-tie at generated index i, and at most `resyncs` times per request,
// the reference is run again from the worker's own context (prompt + its
// tokens 0..i), so the tokens after a divergence are compared too; otherwise
// the comparison stops there.
Verdict Judge(const model::WeightSource& weights, const Outcome& outcome, const Tolerance& tol,
              int resyncs) {
  Verdict v;
  v.name = outcome.name;
  if (!outcome.status.ok()) {
    v.failure = absl::StrCat("worker error: ", outcome.status.ToString());
    return v;
  }
  const v1::GenerateRequest& request = outcome.request;
  const Generated& got = outcome.result;
  v.tokens_generated = static_cast<int64_t>(got.tokens.size());
  const size_t wanted = static_cast<size_t>(request.max_new_tokens());
  if (got.tokens.size() != wanted) {
    v.failure = absl::StrCat(got.tokens.size(), " tokens, want ", wanted, " (finish_reason ",
                             got.finish_reason, ")");
    return v;
  }
  std::vector<int32_t> context(request.prompt_tokens().begin(), request.prompt_tokens().end());
  const size_t prompt_size = context.size();
  const size_t vocab = static_cast<size_t>(weights.config().vocab_size);
  model::DenseGenerateOptions options;
  options.sampling = ToModel(request.sampling());
  options.keep_logits = true;
  size_t i = 0;  // generated index the reference run starts at
  while (i < wanted) {
    // The reference from the context of generated index i (its first sampled
    // token occupies position prompt + i, as in the worker).
    options.max_new_tokens = static_cast<int32_t>(wanted - i);
    absl::StatusOr<model::DenseGeneration> want = model::GenerateDense(weights, context, options);
    if (!want.ok()) {
      v.failure = absl::StrCat("reference: ", want.status().ToString());
      return v;
    }
    bool diverged = false;
    for (size_t j = 0; j < want->tokens.size(); ++j, ++i) {
      const absl::Span<const float> g(got.logits.data() + i * vocab, vocab);
      const absl::Span<const float> r(want->logits[j]);
      const LogitError e = CompareLogits(g, r);
      ++v.tokens_compared;
      v.max_over_rms = std::max(v.max_over_rms, e.max_over_rms);
      v.max_relative_l2 = std::max(v.max_relative_l2, e.relative_l2);
      v.over_rms.push_back(e.max_over_rms);
      v.relative_l2.push_back(e.relative_l2);
      if (!(e.max_over_rms <= tol.logit) || !(e.relative_l2 <= tol.l2)) {
        v.failure = absl::StrFormat(
            "token %d: logits max|diff|/RMS %.3g (tol %.3g), relative L2 %.3g (tol %.3g)", i,
            e.max_over_rms, tol.logit, e.relative_l2, tol.l2);
        return v;
      }
      const int64_t position = static_cast<int64_t>(prompt_size + i);
      const int32_t by_rule = model::SampleToken(g, options.sampling, position);
      if (by_rule != got.tokens[i]) {
        v.failure = absl::StrCat("token ", i, ": the worker emitted ", got.tokens[i],
                                 " but the sampling rule on its own logits gives ", by_rule);
        return v;
      }
      context.push_back(got.tokens[i]);
      if (got.tokens[i] == want->tokens[j]) continue;
      // A mismatch with logits within tolerance and the rule followed.
      v.near_ties.push_back(DescribeNearTie(r, options.sampling, position, i, got.tokens[i],
                                            want->tokens[j], tol.logit * e.rms));
      diverged = true;
      ++i;
      break;
    }
    if (!diverged) break;
    if (static_cast<int>(v.near_ties.size()) > resyncs) break;  // the contexts diverge from here
  }
  return v;
}

// A conversation (several turns, a session id) or a single request.
struct Chain {
  std::string name;
  std::string session_id;
  std::string salt;
  // Turn 0: the whole prompt; later turns: the new message appended to the
  // previous prompt and the worker's reply.
  std::vector<std::vector<int32_t>> messages;
  std::vector<int32_t> max_new_tokens;
  std::vector<v1::SamplingParams> sampling;
};

std::vector<Chain> MakeWorkload(const ToolOptions& o, int64_t vocab) {
  std::mt19937_64 rng(o.seed);
  auto uniform = [&rng](int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  auto tokens = [&](int64_t n) {
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int32_t& t : out) t = static_cast<int32_t>(uniform(0, vocab - 1));
    return out;
  };
  int64_t request_index = 0;
  // Odd requests sample (seeded top-p), even ones are greedy.
  auto sampling = [&]() {
    v1::SamplingParams p;
    if (request_index++ % 2 == 1) {
      p.set_temperature(0.6f + 0.1f * static_cast<float>(uniform(0, 4)));
      p.set_top_p(0.8f + 0.05f * static_cast<float>(uniform(0, 3)));
      p.set_seed(rng());
    }
    return p;
  };
  auto new_tokens = [&]() {
    return static_cast<int32_t>(uniform(o.min_new_tokens, o.max_new_tokens));
  };
  const int64_t lo = o.min_prompt_tokens;
  const int64_t hi = o.max_prompt_tokens;
  // Composition: half of the requests in 3-turn conversations, a quarter
  // questions over two shared documents, the rest single prompts (reuse is
  // what makes hits, holes and rebuilds on a small pool).
  const int64_t conversations = o.requests >= 3 ? std::max<int64_t>(1, o.requests / 6) : 0;
  const int64_t questions = std::min<int64_t>(o.requests - 3 * conversations, o.requests / 4);
  const int64_t singles = o.requests - 3 * conversations - questions;
  std::vector<Chain> chains;
  for (int64_t c = 0; c < conversations; ++c) {
    Chain chain;
    chain.name = absl::StrCat("conversation-", c);
    chain.session_id = absl::StrCat("conv-", o.seed, "-", c);
    chain.salt = c % 2 == 0 ? "tenant-a" : "tenant-b";
    for (int turn = 0; turn < 3; ++turn) {
      // Turn 0 up to a third of the longest prompt; each later message up to
      // a sixth, so the third turn stays within about 2/3 of it plus replies.
      chain.messages.push_back(
          turn == 0 ? tokens(uniform(lo, std::max(lo, hi / 3)))
                    : tokens(uniform(std::max<int64_t>(1, lo / 5), std::max<int64_t>(2, hi / 6))));
      chain.max_new_tokens.push_back(new_tokens());
      chain.sampling.push_back(sampling());
    }
    chains.push_back(std::move(chain));
  }
  std::vector<std::vector<int32_t>> documents;
  for (int d = 0; d < 2; ++d) {
    documents.push_back(tokens(uniform(hi / 2, std::max(hi / 2, 2 * hi / 3))));
  }
  for (int64_t q = 0; q < questions; ++q) {
    Chain chain;
    chain.name = absl::StrCat("document-", q % 2, "-question-", q);
    chain.salt = "tenant-a";
    std::vector<int32_t> prompt = documents[q % 2];
    const std::vector<int32_t> question =
        tokens(uniform(std::max<int64_t>(1, lo / 5), std::max<int64_t>(2, hi / 4)));
    prompt.insert(prompt.end(), question.begin(), question.end());
    chain.messages.push_back(std::move(prompt));
    chain.max_new_tokens.push_back(new_tokens());
    chain.sampling.push_back(sampling());
    chains.push_back(std::move(chain));
  }
  for (int64_t s = 0; s < singles; ++s) {
    Chain chain;
    chain.name = absl::StrCat("single-", s);
    chain.salt = s % 3 == 0 ? "tenant-b" : "tenant-a";
    chain.messages.push_back(tokens(uniform(lo, hi)));
    chain.max_new_tokens.push_back(new_tokens());
    chain.sampling.push_back(sampling());
    chains.push_back(std::move(chain));
  }
  std::shuffle(chains.begin(), chains.end(), rng);
  return chains;
}

// Reference threads: judge outcomes while the worker keeps generating.
class ReferencePool {
 public:
  ReferencePool(const model::WeightSource* weights, Tolerance tol, int resyncs, int threads)
      : weights_(weights), tol_(tol), resyncs_(resyncs) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~ReferencePool() { Finish(); }

  void Add(Outcome outcome) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(outcome));
  }
  // Waits for every queued outcome to be judged; the verdicts in completion order.
  std::vector<Verdict> Finish() {
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
    }
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    absl::MutexLock lock(&mu_);
    return verdicts_;
  }

 private:
  void Run() {
    while (true) {
      Outcome outcome;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](ReferencePool* p)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->closed_ || !p->queue_.empty(); },
            this));
        if (queue_.empty()) return;  // closed and drained
        outcome = std::move(queue_.front());
        queue_.pop_front();
      }
      Verdict verdict = Judge(*weights_, outcome, tol_, resyncs_);
      absl::MutexLock lock(&mu_);
      verdicts_.push_back(std::move(verdict));
    }
  }

  const model::WeightSource* const weights_;
  const Tolerance tol_;
  const int resyncs_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::deque<Outcome> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<Verdict> verdicts_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// Sends one request (disaggregated when a prefill client is given): the first
// token from the prefill worker, the rest from the decode worker with kv_source.
absl::StatusOr<Generated> RunRequest(const ToolOptions& o, WorkerClient& worker,
                                     WorkerClient* prefill, const v1::GenerateRequest& request,
                                     int64_t vocab) {
  if (prefill == nullptr) return Generate(worker, request, o.request_timeout_s, vocab);
  v1::GenerateRequest first = request;
  first.set_max_new_tokens(1);
  const absl::Time sent = absl::Now();
  absl::StatusOr<Generated> head = Generate(*prefill, first, o.request_timeout_s, vocab);
  if (!head.ok()) {
    return absl::Status(head.status().code(), absl::StrCat("prefill: ", head.status().message()));
  }
  if (head->tokens.size() != 1) return absl::DataLossError("prefill: not exactly one token");
  v1::GenerateRequest rest = request;
  rest.add_prompt_tokens(head->tokens[0]);
  rest.set_max_new_tokens(request.max_new_tokens() - 1);
  rest.set_kv_source(o.kv_source);
  rest.set_kv_source_tokens(request.prompt_tokens_size());
  // The decode worker's token times count from its own arrival: shift them to
  // this request's start so that TPOT across the hand-over is real.
  const int64_t handover_us = absl::ToInt64Microseconds(absl::Now() - sent);
  absl::StatusOr<Generated> tail = Generate(worker, rest, o.request_timeout_s, vocab);
  if (!tail.ok()) {
    return absl::Status(tail.status().code(), absl::StrCat("decode: ", tail.status().message()));
  }
  Generated out = *std::move(head);
  out.tokens.insert(out.tokens.end(), tail->tokens.begin(), tail->tokens.end());
  for (int64_t t : tail->times_us) out.times_us.push_back(t + handover_us);
  out.logits.insert(out.logits.end(), tail->logits.begin(), tail->logits.end());
  out.finish_reason = tail->finish_reason;
  // Decode-side stats, with the prefill's computed prompt tokens kept.
  const int64_t prefill_computed = out.stats.computed_prompt_tokens();
  out.stats = tail->stats;
  out.stats.set_computed_prompt_tokens(prefill_computed);
  return out;
}

int RunExactness(const ToolOptions& o) {
  absl::StatusOr<model::WeightSource> weights = model::WeightSource::FromDirectory(o.model_dir);
  if (!weights.ok()) {
    std::fprintf(stderr, "worker_gpu_bench: --model-dir: %s\n",
                 weights.status().ToString().c_str());
    return 1;
  }
  const model::LlamaConfig& config = weights->config();
  const bool fp32 = config.dtype == msa::DType::kFloat32;
  Tolerance tol;
  tol.logit = o.logit_tolerance >= 0 ? o.logit_tolerance : (fp32 ? 1e-4 : 0.08);
  tol.l2 = o.l2_tolerance >= 0 ? o.l2_tolerance : (fp32 ? 1e-5 : 2e-2);

  std::unique_ptr<WorkerClient> worker_client = ConnectWorker(o.worker);
  std::unique_ptr<WorkerClient> prefill_client =
      o.prefill_worker.empty() ? nullptr : ConnectWorker(o.prefill_worker);
  absl::StatusOr<v1::GetWorkerStatsResponse> before = WorkerStats(*worker_client);
  if (!before.ok()) {
    std::fprintf(stderr, "worker_gpu_bench: --worker %s: %s\n", o.worker.c_str(),
                 before.status().ToString().c_str());
    return 1;
  }
  if (before->model().vocab_size() != config.vocab_size ||
      before->model().num_layers() != config.num_layers) {
    std::fprintf(stderr,
                 "worker_gpu_bench: the worker's model (layers %d, vocab %lld) is not "
                 "--model-dir's (layers %d, vocab %lld)\n",
                 before->model().num_layers(), static_cast<long long>(before->model().vocab_size()),
                 config.num_layers, static_cast<long long>(config.vocab_size));
    return 1;
  }
  const std::optional<DaemonStats> daemon_before = DaemonStatsOrNull(o.daemon);

  const std::vector<Chain> chains = MakeWorkload(o, config.vocab_size);
  unsigned hw = std::thread::hardware_concurrency();
  const int reference_threads =
      o.reference_threads > 0 ? o.reference_threads : std::max(1, static_cast<int>(hw));
  ReferencePool references(&*weights, tol, o.resyncs, reference_threads);

  std::atomic<size_t> next_chain{0};
  absl::Mutex totals_mu;
  int64_t hit_tokens = 0, rebuilt_tokens = 0, preemptions = 0, imported_blocks = 0,
          computed_prompt_tokens = 0, prompt_tokens = 0;
  const absl::Time start = absl::Now();
  std::vector<std::thread> clients;
  for (int c = 0; c < o.concurrency; ++c) {
    clients.emplace_back([&] {
      for (size_t k = next_chain++; k < chains.size(); k = next_chain++) {
        const Chain& chain = chains[k];
        std::vector<int32_t> context;
        for (size_t turn = 0; turn < chain.messages.size(); ++turn) {
          context.insert(context.end(), chain.messages[turn].begin(), chain.messages[turn].end());
          Outcome outcome;
          outcome.name =
              chain.messages.size() > 1 ? absl::StrCat(chain.name, "-turn-", turn) : chain.name;
          v1::GenerateRequest& request = outcome.request;
          request.mutable_prompt_tokens()->Add(context.begin(), context.end());
          request.set_max_new_tokens(chain.max_new_tokens[turn]);
          *request.mutable_sampling() = chain.sampling[turn];
          request.set_salt(chain.salt);
          request.set_session_id(chain.session_id);
          request.set_return_logits(true);
          const absl::Time sent = absl::Now();
          absl::StatusOr<Generated> got =
              RunRequest(o, *worker_client, prefill_client.get(), request, config.vocab_size);
          outcome.seconds = absl::ToDoubleSeconds(absl::Now() - sent);
          if (got.ok()) {
            outcome.result = *std::move(got);
            const v1::RequestStats& s = outcome.result.stats;
            absl::MutexLock lock(&totals_mu);
            hit_tokens += s.hit_tokens();
            rebuilt_tokens += s.rebuilt_tokens();
            preemptions += s.preemptions();
            imported_blocks += s.imported_blocks();
            computed_prompt_tokens += s.computed_prompt_tokens();
            prompt_tokens += static_cast<int64_t>(context.size());
          } else {
            outcome.status = got.status();
          }
          const bool ok = outcome.status.ok();
          // The next turn continues the worker's reply (whatever the reference says).
          if (ok) {
            context.insert(context.end(), outcome.result.tokens.begin(),
                           outcome.result.tokens.end());
          }
          references.Add(std::move(outcome));
          if (!ok) break;
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  const double generate_s = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<Verdict> verdicts = references.Finish();
  const double total_s = absl::ToDoubleSeconds(absl::Now() - start);
  const std::optional<DaemonStats> daemon_after = DaemonStatsOrNull(o.daemon);

  std::sort(verdicts.begin(), verdicts.end(),
            [](const Verdict& a, const Verdict& b) { return a.name < b.name; });
  int64_t tokens_generated = 0, tokens_compared = 0, near_ties = 0, near_tie_requests = 0,
          failures = 0;
  double max_over_rms = 0, max_l2 = 0;
  std::vector<double> all_over_rms, all_l2;
  Json details = Json::array();
  for (const Verdict& v : verdicts) {
    all_over_rms.insert(all_over_rms.end(), v.over_rms.begin(), v.over_rms.end());
    all_l2.insert(all_l2.end(), v.relative_l2.begin(), v.relative_l2.end());
    tokens_generated += v.tokens_generated;
    tokens_compared += v.tokens_compared;
    max_over_rms = std::max(max_over_rms, v.max_over_rms);
    max_l2 = std::max(max_l2, v.max_relative_l2);
    near_ties += static_cast<int64_t>(v.near_ties.size());
    near_tie_requests += v.near_ties.empty() ? 0 : 1;
    for (const std::string& near_tie : v.near_ties) {
      std::printf("[ near-tie ] %s: %s\n", v.name.c_str(), near_tie.c_str());
      details.push_back({{"request", v.name}, {"near_tie", near_tie}});
    }
    if (!v.failure.empty()) {
      ++failures;
      std::printf("[ FAILURE  ] %s: %s\n", v.name.c_str(), v.failure.c_str());
      details.push_back({{"request", v.name}, {"failure", v.failure}});
    }
  }
  const std::string label = o.label.empty() ? "exactness" : o.label;
  Json doc = {
      {"mode", "exactness"},
      {"label", label},
      {"worker_backend", before->backend()},
      {"model", config.name},
      {"model_dtype", fp32 ? "fp32" : "bf16/fp16"},
      {"disaggregated", !o.prefill_worker.empty()},
      {"tolerance", {{"max_abs_over_rms", tol.logit}, {"relative_l2", tol.l2}}},
      {"requests", static_cast<int64_t>(verdicts.size())},
      {"tokens_generated", tokens_generated},
      {"tokens_compared", tokens_compared},
      {"resyncs_per_request", o.resyncs},
      {"max_abs_over_rms", max_over_rms},
      {"max_relative_l2", max_l2},
      {"abs_over_rms_per_token", ToJson(Summarize(all_over_rms))},
      {"relative_l2_per_token", ToJson(Summarize(all_l2))},
      {"near_tie_divergences", near_ties},
      {"requests_with_near_ties", near_tie_requests},
      {"failures", failures},
      {"prompt_tokens", prompt_tokens},
      {"hit_tokens", hit_tokens},
      {"rebuilt_tokens", rebuilt_tokens},
      {"computed_prompt_tokens", computed_prompt_tokens},
      {"preemptions", preemptions},
      {"imported_blocks", imported_blocks},
      {"generate_seconds", generate_s},
      {"total_seconds", total_s},
      {"seed", o.seed},
      {"details", details},
  };
  int64_t evictions = -1;
  if (daemon_before && daemon_after) {
    evictions = daemon_after->evictions - daemon_before->evictions;
    doc["daemon"] = {
        {"policy", daemon_after->policy},
        {"capacity_blocks", daemon_after->capacity_blocks},
        {"evictions", evictions},
        {"hit_tokens", daemon_after->hit_tokens - daemon_before->hit_tokens},
        {"rebuild_tokens", daemon_after->rebuild_tokens - daemon_before->rebuild_tokens}};
  }
  const std::string row = absl::StrFormat(
      "| %s | %d | %d / %d | %.3g | %.3g | %d (%d) | %d | %d | %d | %d | %s | %s |\n", label,
      static_cast<int64_t>(verdicts.size()), tokens_compared, tokens_generated, max_over_rms,
      max_l2, near_ties, near_tie_requests, failures, hit_tokens, rebuilt_tokens, preemptions,
      evictions >= 0 ? absl::StrCat(evictions) : std::string("-"),
      o.prefill_worker.empty() ? std::string("-") : absl::StrCat(imported_blocks));
  const std::string header =
      "| run | requests | tokens compared / generated | max abs/RMS | max rel L2 | "
      "near-ties (requests) | failures | hit tokens | rebuilt tokens | preemptions | evictions | "
      "imported blocks |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::printf("%s%s", header.c_str(), row.c_str());
  std::printf(
      "tolerance: max|diff| <= %.3g * RMS(ref), relative L2 <= %.3g; %.1f s generating, "
      "%.1f s in all\n",
      tol.logit, tol.l2, generate_s, total_s);
  if (absl::Status s = AppendMarkdown(o.out_md, header, row); !s.ok()) {
    std::fprintf(stderr, "worker_gpu_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  if (!o.out_json.empty()) {
    if (absl::Status s = WriteFile(o.out_json, doc.dump(2) + "\n", false); !s.ok()) {
      std::fprintf(stderr, "worker_gpu_bench: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  return failures == 0 && !verdicts.empty() ? 0 : 1;
}

// ---------------------------------------------------------------- --load

struct LevelResult {
  int32_t concurrency = 0;
  int32_t requests = 0;
  int32_t errors = 0;
  std::string first_error;
  double wall_s = 0;
  Percentiles ttft_ms;
  Percentiles tpot_ms;
  Percentiles e2e_ms;
  Percentiles transfer_ms;  // disaggregated: the decode side's import of the prompt's blocks
  int64_t imported_blocks = 0;
  int64_t output_tokens = 0;
  v1::GetWorkerStatsResponse delta;
};

v1::GetWorkerStatsResponse Delta(const v1::GetWorkerStatsResponse& a,
                                 const v1::GetWorkerStatsResponse& b) {
  v1::GetWorkerStatsResponse d;
  d.set_steps(b.steps() - a.steps());
  d.set_generated_tokens(b.generated_tokens() - a.generated_tokens());
  d.set_prefill_tokens(b.prefill_tokens() - a.prefill_tokens());
  d.set_copied_tokens(b.copied_tokens() - a.copied_tokens());
  d.set_preemptions(b.preemptions() - a.preemptions());
  d.set_step_seconds(b.step_seconds() - a.step_seconds());
  d.set_plan_rpc_seconds(b.plan_rpc_seconds() - a.plan_rpc_seconds());
  d.set_forward_seconds(b.forward_seconds() - a.forward_seconds());
  return d;
}

v1::GenerateRequest LoadRequest(const ToolOptions& o, int64_t vocab, uint64_t index) {
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + index);
  v1::GenerateRequest request;
  for (int32_t i = 0; i < o.prompt_tokens; ++i) {
    request.add_prompt_tokens(static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)));
  }
  request.set_max_new_tokens(o.load_new_tokens);
  request.set_salt("load");
  return request;
}

absl::StatusOr<LevelResult> RunLevel(const ToolOptions& o, int64_t vocab, int32_t concurrency,
                                     int32_t requests, uint64_t* next_index) {
  std::unique_ptr<WorkerClient> control = ConnectWorker(o.worker);
  absl::StatusOr<v1::GetWorkerStatsResponse> before = WorkerStats(*control);
  if (!before.ok()) return before.status();
  LevelResult level;
  level.concurrency = concurrency;
  level.requests = requests;
  absl::Mutex mu;
  std::vector<double> ttft, tpot, e2e, transfer;
  std::atomic<int32_t> issued{0};
  const uint64_t base = *next_index;
  const absl::Time start = absl::Now();
  std::vector<std::thread> streams;
  for (int32_t c = 0; c < concurrency; ++c) {
    streams.emplace_back([&, c] {
      std::unique_ptr<WorkerClient> worker_client = ConnectWorker(o.worker, c + 1);
      std::unique_ptr<WorkerClient> prefill_client =
          o.prefill_worker.empty() ? nullptr : ConnectWorker(o.prefill_worker, c + 1);
      for (int32_t k = issued++; k < requests; k = issued++) {
        const v1::GenerateRequest request = LoadRequest(o, vocab, base + k);
        const absl::Time sent = absl::Now();
        absl::StatusOr<Generated> got =
            RunRequest(o, *worker_client, prefill_client.get(), request, vocab);
        const double e2e_ms = absl::ToDoubleMilliseconds(absl::Now() - sent);
        absl::MutexLock lock(&mu);
        if (!got.ok() || got->tokens.size() != static_cast<size_t>(o.load_new_tokens)) {
          if (level.errors++ == 0) {
            level.first_error =
                got.ok() ? absl::StrCat(got->tokens.size(), " tokens, want ", o.load_new_tokens)
                         : got.status().ToString();
          }
          continue;
        }
        e2e.push_back(e2e_ms);
        if (prefill_client != nullptr) {
          transfer.push_back(got->stats.import_seconds() * 1000.0);
          level.imported_blocks += got->stats.imported_blocks();
        }
        ttft.push_back(got->times_us[0] / 1000.0);
        for (size_t i = 1; i < got->times_us.size(); ++i) {
          tpot.push_back((got->times_us[i] - got->times_us[i - 1]) / 1000.0);
        }
        level.output_tokens += static_cast<int64_t>(got->tokens.size());
      }
    });
  }
  for (std::thread& t : streams) t.join();
  level.wall_s = absl::ToDoubleSeconds(absl::Now() - start);
  *next_index = base + static_cast<uint64_t>(requests);
  absl::StatusOr<v1::GetWorkerStatsResponse> after = WorkerStats(*control);
  if (!after.ok()) return after.status();
  level.delta = Delta(*before, *after);
  level.ttft_ms = Summarize(std::move(ttft));
  level.tpot_ms = Summarize(std::move(tpot));
  level.e2e_ms = Summarize(std::move(e2e));
  level.transfer_ms = Summarize(std::move(transfer));
  return level;
}

int RunLoad(const ToolOptions& o) {
  std::unique_ptr<WorkerClient> control = ConnectWorker(o.worker);
  absl::StatusOr<v1::GetWorkerStatsResponse> info = WorkerStats(*control);
  if (!info.ok()) {
    std::fprintf(stderr, "worker_gpu_bench: --worker %s: %s\n", o.worker.c_str(),
                 info.status().ToString().c_str());
    return 1;
  }
  const int64_t vocab = info->model().vocab_size();
  uint64_t next_index = 0;
  // Warm-up: one at a time, not measured (first cuBLAS calls, allocator).
  for (int32_t w = 0; w < o.warmup_requests; ++w) {
    absl::StatusOr<Generated> got =
        Generate(*control, LoadRequest(o, vocab, next_index++), o.request_timeout_s, vocab);
    if (!got.ok()) {
      std::fprintf(stderr, "worker_gpu_bench: warm-up request: %s\n",
                   got.status().ToString().c_str());
      return 1;
    }
  }
  const std::string label = o.label.empty() ? info->model().name() : o.label;
  const std::string header =
      "| run | concurrency | prompt | new | requests | errors | TTFT mean / p50 / p99 (ms) | "
      "TPOT mean / p50 / p99 (ms) | output tok/s | step mean (ms) | plan RPC share | "
      "plan RPC per step (ms) | forward share | preemptions |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  Json levels = Json::array();
  int errors = 0;
  for (size_t i = 0; i < o.load_concurrency.size(); ++i) {
    const int32_t c = o.load_concurrency[i];
    const int32_t r = o.load_requests.empty()       ? std::max(16, 4 * c)
                      : o.load_requests.size() == 1 ? o.load_requests[0]
                                                    : o.load_requests[i];
    std::fprintf(stderr, "[worker_gpu_bench] load: concurrency %d, %d requests of %d + %d tokens\n",
                 c, r, o.prompt_tokens, o.load_new_tokens);
    absl::StatusOr<LevelResult> level = RunLevel(o, vocab, c, r, &next_index);
    if (!level.ok()) {
      std::fprintf(stderr, "worker_gpu_bench: concurrency %d: %s\n", c,
                   level.status().ToString().c_str());
      return 1;
    }
    errors += level->errors;
    if (level->errors > 0) {
      std::fprintf(stderr, "worker_gpu_bench: concurrency %d: %d failed requests, first: %s\n", c,
                   level->errors, level->first_error.c_str());
    }
    const v1::GetWorkerStatsResponse& d = level->delta;
    const double step_s = d.step_seconds();
    const double plan_share = step_s > 0 ? d.plan_rpc_seconds() / step_s : 0;
    const double forward_share = step_s > 0 ? d.forward_seconds() / step_s : 0;
    const double step_ms = d.steps() > 0 ? 1000.0 * step_s / d.steps() : 0;
    const double plan_ms = d.steps() > 0 ? 1000.0 * d.plan_rpc_seconds() / d.steps() : 0;
    const double out_tps = level->wall_s > 0 ? level->output_tokens / level->wall_s : 0;
    const double prompt_tps =
        level->wall_s > 0 ? static_cast<double>(r - level->errors) * o.prompt_tokens / level->wall_s
                          : 0;
    if (!o.prefill_worker.empty()) {
      std::fprintf(stderr,
                   "[worker_gpu_bench] disaggregated: KV transfer per request mean %.2f / p50 "
                   "%.2f / p99 %.2f ms, %lld blocks imported\n",
                   level->transfer_ms.mean, level->transfer_ms.p50, level->transfer_ms.p99,
                   static_cast<long long>(level->imported_blocks));
    }
    const std::string row = absl::StrFormat(
        "| %s | %d | %d | %d | %d | %d | %.1f / %.1f / %.1f | %.2f / %.2f / %.2f | %.0f | %.2f | "
        "%.2f%% | %.3f | %.1f%% | %d |\n",
        label, c, o.prompt_tokens, o.load_new_tokens, r, level->errors, level->ttft_ms.mean,
        level->ttft_ms.p50, level->ttft_ms.p99, level->tpot_ms.mean, level->tpot_ms.p50,
        level->tpot_ms.p99, out_tps, step_ms, 100 * plan_share, plan_ms, 100 * forward_share,
        d.preemptions());
    levels.push_back({
        {"concurrency", c},
        {"requests", r},
        {"errors", level->errors},
        {"first_error", level->first_error},
        {"wall_seconds", level->wall_s},
        {"ttft_ms", ToJson(level->ttft_ms)},
        {"tpot_ms", ToJson(level->tpot_ms)},
        {"e2e_ms", ToJson(level->e2e_ms)},
        {"disaggregated", !o.prefill_worker.empty()},
        {"kv_transfer_ms", ToJson(level->transfer_ms)},
        {"imported_blocks", level->imported_blocks},
        {"output_tokens_per_s", out_tps},
        {"prompt_tokens_per_s", prompt_tps},
        {"worker",
         {{"steps", d.steps()},
          {"generated_tokens", d.generated_tokens()},
          {"prefill_tokens", d.prefill_tokens()},
          {"copied_tokens", d.copied_tokens()},
          {"preemptions", d.preemptions()},
          {"step_seconds", step_s},
          {"plan_rpc_seconds", d.plan_rpc_seconds()},
          {"forward_seconds", d.forward_seconds()},
          {"mean_step_ms", step_ms},
          {"plan_rpc_ms_per_step", plan_ms},
          {"plan_rpc_share", plan_share},
          {"forward_share", forward_share}}},
    });
    // Written after every level, so a later level that overruns its time
    // limit leaves the earlier ones on disk.
    std::printf("%s%s", i == 0 ? header.c_str() : "", row.c_str());
    std::fflush(stdout);
    Json doc = {{"mode", "load"},
                {"label", label},
                {"worker_backend", info->backend()},
                {"model", info->model().name()},
                {"prompt_tokens", o.prompt_tokens},
                {"max_new_tokens", o.load_new_tokens},
                {"warmup_requests", o.warmup_requests},
                {"levels", levels}};
    absl::Status written = AppendMarkdown(o.out_md, header, row);
    if (written.ok() && !o.out_json.empty()) {
      written = WriteFile(o.out_json, doc.dump(2) + "\n", false);
    }
    if (!written.ok()) {
      std::fprintf(stderr, "worker_gpu_bench: %s\n", written.ToString().c_str());
      return 1;
    }
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace asymcache::worker::bench

int main(int argc, char** argv) {
  using namespace asymcache::worker::bench;  // NOLINT: the tool's own namespace
  absl::StatusOr<ToolOptions> options = ParseFlags(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "worker_gpu_bench: %s\n", options.status().ToString().c_str());
    return 2;
  }
  switch (options->mode) {
    case Mode::kWriteModel:
      if (absl::Status s = WriteModel(*options); !s.ok()) {
        std::fprintf(stderr, "worker_gpu_bench: %s\n", s.ToString().c_str());
        return 1;
      }
      return 0;
    case Mode::kExactness:
      return RunExactness(*options);
    case Mode::kLoad:
      return RunLoad(*options);
    case Mode::kNone:
      break;
  }
  return 2;
}
