// msa_gpu_bench: the MSA CUDA benchmark of issue 3 (MSA_NOTES.md section 4).
//
// One run on one GPU measures, with the Llama-3-8B attention shape (32 q heads,
// 8 kv heads, head dim 128, bf16, pages of 16 tokens randomly permuted in a
// pool):
//   copy     device-to-device copy bandwidth (bytes read + written);
//   decode   B in {1,8,32,128} x context {1k,4k,16k,64k} x KV segments
//            {1,4,16,64,256} (B * context <= 2M tokens). A context of S
//            segments is S runs of random length with random position holes
//            between them, each run starting on a fresh page (so S partial
//            pages): the worst case for a paged kernel;
//   rebuild  one sequence, q tokens {16,64,256,1k,4k} at positions
//            {0,4k,16k,32k} (+ 16..1k at 8k), lower-right causal;
//   qseg     512 query tokens at the end of a 16k context split into
//            {1,4,16,32} runs (query-segment overhead, the cost model's c_seg);
//   packed   a 16-token rebuild at 8k alone, and packed with the same
//            sequence's other query segments (marginal cost = with - without);
//            with --prefill_tiling=both (--balance_small_prefill=both) each
//            configuration is planned and timed with both tile-forming rules
//            (small-class split choices), back to back;
//   mixed    decode B=32 @16k + a 512-token chunk at 8k + 4 holes, in one
//            launch vs the parts alone.
// Timing: CUDA events around CUDA-graph replays of K calls (K makes a replay
// >= 100 us), >= 20 warm-up replays, >= 100 timed replays, median and p10/p90
// per call; a cold-L2 variant (256 MiB written before each call) for the
// headline configurations. Plan time (CPU, PlanMsa) is reported separately.
//
// Output: one JSON object per line to --out (default msa_gpu.jsonl) and a
// short table on stdout. Exit code 0 when every configuration ran.
//
// Usage: msa_gpu_bench [--out=FILE] [--quick] [--warmup=N] [--iters=N]
//                      [--budget_s=S] [--seed=N] [--plan_only]
//                      [--prefill_kernel=auto|mma|wgmma|wgmma_overlap|both|all]
//                      [--sections=LIST]
//                      [--prefill_tiling=least_work|first_row|both]
//                      [--balance_small_prefill=off|on|both]
//                      [--decode_batches=LIST] [--decode_contexts=LIST]
//                      [--decode_segments=LIST]
// --prefill_kernel picks MsaPlanOptions::prefill_kernel (default auto);
// `both` times every configuration that has prefill tiles with the mma.sync
// kernel and then the wgmma kernel (`all`: then the overlapped wgmma loop too),
// back to back in the same process (records
// carry "prefill_kernel": the kernel that actually ran). --sections runs a
// comma-separated subset of copy,rebuild,qseg,packed,mixed,decode (default all).
// --plan_only needs no GPU: it builds and plans every configuration (a CPU
// check of the batches; in a build without CUDA the planner still runs).
// --prefill_tiling picks MsaPlanOptions::prefill_tiling (default least_work,
// the planner's default); `both` times the packed case with first_row and
// least_work back to back (the other cases use least_work).
// --balance_small_prefill sets MsaPlanOptions::balance_small_prefill (default
// on, the planner's default); `both` times the packed case with it off and on
// (other cases: on).
// --decode_batches / --decode_contexts / --decode_segments replace the decode
// sweep's batch sizes, contexts (keys per sequence) and KV segment counts
// (comma-separated positive integers; B * context <= 2M still applies), e.g.
// `--sections=decode --decode_batches=1,8,32 --decode_segments=1,4,64`.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/gpu/bench_device.h"
#include "kernels/dtype.h"
#include "kernels/msa.h"
#include "kernels/msa_cuda.h"
#include "kernels/msa_plan.h"
#include "nlohmann/json.hpp"

namespace asymcache::msa::bench {
namespace {

constexpr int kPage = 16;
constexpr int64_t kMaxDecodeTokens = 2 * 1024 * 1024;  // B * context cap (8 GiB of K+V per layer)
constexpr int64_t kPoolPages = 2 * 1024 * 1024 / kPage + 128 * 256 + 1024;
constexpr int32_t kMaxBatch = 160;
constexpr int32_t kMaxTotalQ = 8192;
constexpr size_t kFlushBytes = size_t{256} << 20;

struct BenchOptions {
  std::string out_path = "msa_gpu.jsonl";
  bool quick = false;     // a handful of configurations (smoke test)
  bool plan_only = false; // no GPU: build and plan every configuration (CPU check)
  int warmup = 20;        // warm-up replays (>= 1)
  int iters = 100;        // timed replays (>= 10)
  double budget_s = 3.0;  // cap per measured item (only the largest items hit it)
  uint64_t seed = 0;      // 0: from the clock (logged)
  // Prefill kernels to time each configuration with, in order (--prefill_kernel).
  std::vector<MsaPrefillKernel> prefill_kernels = {MsaPrefillKernel::kAuto};
  std::string sections = "copy,rebuild,qseg,packed,mixed,decode";

  std::string prefill_tiling = "least_work";  // least_work | first_row | both
  std::string balance_small_prefill = "on";   // off | on | both
  // Decode sweep lists; empty: the sweep's own (--quick or full).
  std::vector<int32_t> decode_batches;
  std::vector<int32_t> decode_contexts;
  std::vector<int32_t> decode_segments;

  bool Runs(const std::string& section) const {
    return absl::StrCat(",", sections, ",").find(absl::StrCat(",", section, ",")) !=
           std::string::npos;
  }

  absl::Status Validate() const {
    if (warmup < 1) return absl::InvalidArgumentError("--warmup must be >= 1");
    if (iters < 10) return absl::InvalidArgumentError("--iters must be >= 10");
    if (budget_s <= 0) return absl::InvalidArgumentError("--budget_s must be > 0");
    if (out_path.empty()) return absl::InvalidArgumentError("--out must not be empty");
    for (absl::string_view name : absl::StrSplit(sections, ',', absl::SkipEmpty())) {
      if (name != "copy" && name != "rebuild" && name != "qseg" && name != "packed" &&
          name != "mixed" && name != "decode") {
        return absl::InvalidArgumentError(absl::StrCat("--sections: unknown section ", name));
      }
    }
    if (prefill_tiling != "least_work" && prefill_tiling != "first_row" &&
        prefill_tiling != "both") {
      return absl::InvalidArgumentError(
          "--prefill_tiling must be least_work, first_row or both");
    }
    if (balance_small_prefill != "off" && balance_small_prefill != "on" &&
        balance_small_prefill != "both") {
      return absl::InvalidArgumentError("--balance_small_prefill must be off, on or both");
    }
    return absl::OkStatus();
  }
};

// "1,8,32" -> {1, 8, 32}; INVALID_ARGUMENT naming the flag unless every entry
// is a positive integer.
absl::Status ParsePositiveList(const char* flag, absl::string_view text,
                               std::vector<int32_t>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int32_t value = 0;
    if (!absl::SimpleAtoi(part, &value) || value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": expected positive integers, got '", part, "'"));
    }
    out->push_back(value);
  }
  if (out->empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return absl::OkStatus();
}

absl::StatusOr<BenchOptions> ParseFlags(int argc, char** argv) {
  BenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      o.quick = true;
    } else if (arg == "--plan_only") {
      o.plan_only = true;
    } else if (const char* v = FlagValue(arg, "out")) {
      o.out_path = v;
    } else if (const char* v = FlagValue(arg, "warmup")) {
      o.warmup = std::atoi(v);
    } else if (const char* v = FlagValue(arg, "iters")) {
      o.iters = std::atoi(v);
    } else if (const char* v = FlagValue(arg, "budget_s")) {
      o.budget_s = std::atof(v);
    } else if (const char* v = FlagValue(arg, "seed")) {
      o.seed = std::strtoull(v, nullptr, 10);
    } else if (const char* v = FlagValue(arg, "prefill_kernel")) {
      const std::string k = v;
      if (k == "auto") {
        o.prefill_kernels = {MsaPrefillKernel::kAuto};
      } else if (k == "mma") {
        o.prefill_kernels = {MsaPrefillKernel::kMma};
      } else if (k == "wgmma") {
        o.prefill_kernels = {MsaPrefillKernel::kWgmma};
      } else if (k == "wgmma_overlap") {
        o.prefill_kernels = {MsaPrefillKernel::kWgmmaOverlap};
      } else if (k == "both") {
        o.prefill_kernels = {MsaPrefillKernel::kMma, MsaPrefillKernel::kWgmma};
      } else if (k == "all") {
        o.prefill_kernels = {MsaPrefillKernel::kMma, MsaPrefillKernel::kWgmma,
                             MsaPrefillKernel::kWgmmaOverlap};
      } else {
        return absl::InvalidArgumentError(
            "--prefill_kernel must be auto, mma, wgmma, wgmma_overlap, both or all");
      }
    } else if (const char* v = FlagValue(arg, "sections")) {
      o.sections = v;
    } else if (const char* v = FlagValue(arg, "prefill_tiling")) {
      o.prefill_tiling = v;
    } else if (const char* v = FlagValue(arg, "balance_small_prefill")) {
      o.balance_small_prefill = v;
    } else if (const char* v = FlagValue(arg, "decode_batches")) {
      BENCH_RETURN_IF_ERROR(ParsePositiveList("decode_batches", v, &o.decode_batches));
    } else if (const char* v = FlagValue(arg, "decode_contexts")) {
      BENCH_RETURN_IF_ERROR(ParsePositiveList("decode_contexts", v, &o.decode_contexts));
    } else if (const char* v = FlagValue(arg, "decode_segments")) {
      BENCH_RETURN_IF_ERROR(ParsePositiveList("decode_segments", v, &o.decode_segments));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    }
  }
  BENCH_RETURN_IF_ERROR(o.Validate());
  return o;
}

struct Timing {
  double median_us = 0;
  double p10_us = 0;
  double p90_us = 0;
  int iters = 0;
  int calls_per_replay = 0;
  bool graph = false;
  bool cold_l2 = false;
};

// Times a body that enqueues work on a stream: CUDA graph of K calls (falls back
// to direct launches if capture fails), events around each replay.
class GpuTimer {
 public:
  using Body = std::function<absl::Status(cudaStream_t)>;

  GpuTimer(cudaStream_t stream, void* flush, const BenchOptions& options)
      : stream_(stream), flush_(flush), options_(options) {}

  absl::StatusOr<Timing> Measure(const Body& body, bool cold) {
    // Estimate one call.
    for (int i = 0; i < 3; ++i) BENCH_RETURN_IF_ERROR(body(stream_));
    BENCH_CUDA_OK(cudaStreamSynchronize(stream_));
    cudaEvent_t e0, e1;
    BENCH_CUDA_OK(cudaEventCreate(&e0));
    BENCH_CUDA_OK(cudaEventCreate(&e1));
    BENCH_CUDA_OK(cudaEventRecord(e0, stream_));
    for (int i = 0; i < 5; ++i) BENCH_RETURN_IF_ERROR(body(stream_));
    BENCH_CUDA_OK(cudaEventRecord(e1, stream_));
    BENCH_CUDA_OK(cudaEventSynchronize(e1));
    float est_ms = 0;
    BENCH_CUDA_OK(cudaEventElapsedTime(&est_ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    const double est_us = std::max(1e-3, est_ms * 1000.0 / 5);

    Timing t;
    t.cold_l2 = cold;
    t.calls_per_replay =
        cold ? 1 : std::clamp(static_cast<int>(std::ceil(100.0 / est_us)), 1, 10);
    int iters = options_.iters;
    int warmup = options_.warmup;
    if (est_us * t.calls_per_replay * (iters + warmup) > options_.budget_s * 1e6) {
      iters = std::max(10, static_cast<int>(options_.budget_s * 1e6 /
                                            (est_us * t.calls_per_replay)) - warmup);
      warmup = std::max(2, std::min(warmup, iters / 2));
    }
    t.iters = iters;

    cudaGraphExec_t exec = nullptr;
    t.graph = Capture(body, t.calls_per_replay, &exec);
    auto launch = [&]() -> absl::Status {
      if (exec != nullptr) {
        BENCH_CUDA_OK(cudaGraphLaunch(exec, stream_));
        return absl::OkStatus();
      }
      for (int i = 0; i < t.calls_per_replay; ++i) BENCH_RETURN_IF_ERROR(body(stream_));
      return absl::OkStatus();
    };
    std::vector<cudaEvent_t> starts(iters), ends(iters);
    for (int i = 0; i < iters; ++i) {
      BENCH_CUDA_OK(cudaEventCreate(&starts[i]));
      BENCH_CUDA_OK(cudaEventCreate(&ends[i]));
    }
    absl::Status status = absl::OkStatus();
    for (int i = 0; i < warmup && status.ok(); ++i) {
      if (cold) BENCH_CUDA_OK(cudaMemsetAsync(flush_, i & 0xFF, kFlushBytes, stream_));
      status = launch();
    }
    for (int i = 0; i < iters && status.ok(); ++i) {
      if (cold) BENCH_CUDA_OK(cudaMemsetAsync(flush_, (i + 1) & 0xFF, kFlushBytes, stream_));
      BENCH_CUDA_OK(cudaEventRecord(starts[i], stream_));
      status = launch();
      BENCH_CUDA_OK(cudaEventRecord(ends[i], stream_));
    }
    BENCH_CUDA_OK(cudaStreamSynchronize(stream_));
    std::vector<double> per_call;
    for (int i = 0; i < iters && status.ok(); ++i) {
      float ms = 0;
      BENCH_CUDA_OK(cudaEventElapsedTime(&ms, starts[i], ends[i]));
      per_call.push_back(ms * 1000.0 / t.calls_per_replay);
    }
    for (int i = 0; i < iters; ++i) {
      cudaEventDestroy(starts[i]);
      cudaEventDestroy(ends[i]);
    }
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    BENCH_RETURN_IF_ERROR(status);
    std::sort(per_call.begin(), per_call.end());
    t.median_us = Percentile(per_call, 0.5);
    t.p10_us = Percentile(per_call, 0.1);
    t.p90_us = Percentile(per_call, 0.9);
    return t;
  }

 private:
  bool Capture(const Body& body, int calls, cudaGraphExec_t* exec) {
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    bool ok = true;
    for (int i = 0; i < calls && ok; ++i) ok = body(stream_).ok();
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!ok || end != cudaSuccess || graph == nullptr) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();
      std::fprintf(stderr, "[msa_gpu_bench] graph capture failed; timing direct launches\n");
      return false;
    }
    const cudaError_t inst = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      cudaGetLastError();
      *exec = nullptr;
      return false;
    }
    return true;
  }

  cudaStream_t stream_;
  void* flush_;
  const BenchOptions& options_;
};

// ---- batch construction ----------------------------------------------------

struct Run {
  int32_t start = 0;  // absolute position of the first token
  int32_t len = 0;
};

struct SequenceSpec {
  std::vector<Run> kv;  // position order, non-overlapping
  std::vector<Run> q;   // position order, non-overlapping
};

// Builds the CSR batch; pages come from a random permutation of the pool.
class BatchBuilder {
 public:
  explicit BatchBuilder(std::mt19937_64* rng) : rng_(rng) {
    perm_.resize(kPoolPages);
    std::iota(perm_.begin(), perm_.end(), 0);
    std::shuffle(perm_.begin(), perm_.end(), *rng_);
  }

  absl::Status Add(const SequenceSpec& seq) {
    for (const Run& r : seq.kv) {
      for (int32_t off = 0; off < r.len; off += kPage) {
        if (next_page_ >= perm_.size()) return absl::ResourceExhaustedError("pool too small");
        tables_.kv_page_ids.push_back(perm_[next_page_++]);
        tables_.kv_page_pos.push_back(r.start + off);
        tables_.kv_page_len.push_back(std::min(kPage, r.len - off));
      }
      kv_tokens_ += r.len;
    }
    tables_.kv_indptr.push_back(static_cast<int32_t>(tables_.kv_page_ids.size()));
    for (const Run& q : seq.q) {
      for (int32_t i = 0; i < q.len; ++i) {
        const int32_t qp = q.start + i;
        tables_.q_pos.push_back(qp);
        for (const Run& r : seq.kv) pairs_ += std::clamp<int64_t>(qp - r.start + 1, 0, r.len);
      }
    }
    tables_.q_indptr.push_back(static_cast<int32_t>(tables_.q_pos.size()));
    return absl::OkStatus();
  }

  const BatchTablesStorage& tables() const { return tables_; }
  int64_t kv_tokens() const { return kv_tokens_; }
  int64_t pairs() const { return pairs_; }

 private:
  std::mt19937_64* rng_;
  std::vector<int32_t> perm_;
  size_t next_page_ = 0;
  BatchTablesStorage tables_;
  int64_t kv_tokens_ = 0;
  int64_t pairs_ = 0;
};

// A decode sequence: `tokens` keys in `segments` runs of random length, each
// followed by a random hole of 0..48 positions; the query is the last key.
SequenceSpec DecodeSequence(int32_t tokens, int32_t segments, std::mt19937_64* rng) {
  std::vector<int32_t> cuts;
  if (segments > 1) {
    std::vector<int32_t> all(tokens - 1);
    std::iota(all.begin(), all.end(), 1);
    std::shuffle(all.begin(), all.end(), *rng);
    cuts.assign(all.begin(), all.begin() + (segments - 1));
    std::sort(cuts.begin(), cuts.end());
  }
  cuts.push_back(tokens);
  SequenceSpec s;
  std::uniform_int_distribution<int32_t> hole(0, 48);
  int32_t pos = 0;
  int32_t prev = 0;
  for (int32_t c : cuts) {
    s.kv.push_back({pos, c - prev});
    pos += c - prev;
    prev = c;
    if (c != tokens) pos += hole(*rng);
  }
  s.q.push_back({pos - 1, 1});
  return s;
}

// One sequence whose keys are [0, context) in one run and whose queries are `runs`.
SequenceSpec ContextWithQueries(int32_t context, std::vector<Run> runs) {
  SequenceSpec s;
  s.kv.push_back({0, context});
  s.q = std::move(runs);
  return s;
}

// ---- the benchmark -----------------------------------------------------------

struct Record {
  Record(std::string kind_in, int32_t batch_in, int64_t context_in, int32_t segments_in,
         int32_t q_tokens_in, int32_t pos_in, std::string variant_in = "MSA")
      : kind(std::move(kind_in)), batch(batch_in), context(context_in), segments(segments_in),
        q_tokens(q_tokens_in), pos(pos_in), variant(std::move(variant_in)) {}

  std::string kind;
  int32_t batch;
  int64_t context;   // keys per sequence (decode/qseg) or total keys (rebuild)
  int32_t segments;  // KV segments (decode) or query segments (qseg/packed)
  int32_t q_tokens;
  int32_t pos;
  std::string variant;
};

const char* TilingName(MsaPrefillTiling tiling) {
  return tiling == MsaPrefillTiling::kFromFirstRow ? "first_row" : "least_work";
}

class MsaBench {
 public:
  MsaBench(BenchOptions options, GpuInfo gpu) : options_(std::move(options)), gpu_(std::move(gpu)) {}

  absl::Status Init() {
    uint64_t seed = options_.seed;
    if (seed == 0) seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    seed_ = seed;
    rng_.seed(seed);
    std::fprintf(stderr, "[msa_gpu_bench] seed %llu\n", static_cast<unsigned long long>(seed));
    out_.open(options_.out_path);
    if (!out_) return absl::UnavailableError(absl::StrCat("cannot write ", options_.out_path));

    shape_.num_q_heads = 32;
    shape_.num_kv_heads = 8;
    shape_.head_dim = 128;
    shape_.page_size = kPage;
    shape_.dtype = DType::kBFloat16;
    BENCH_RETURN_IF_ERROR(shape_.Validate());
    plan_options_.num_sms = gpu_.sm_count;
    plan_options_.prefill_tiling = options_.prefill_tiling == "first_row"
                                       ? MsaPrefillTiling::kFromFirstRow
                                       : MsaPrefillTiling::kLeastWork;
    plan_options_.balance_small_prefill = options_.balance_small_prefill != "off";
    BENCH_RETURN_IF_ERROR(plan_options_.Validate());
    const MsaWorkspaceSizes sizes = MsaWorkspaceSizesFor(
        shape_, kMaxBatch, kMaxTotalQ, static_cast<int32_t>(kPoolPages), plan_options_);
    // Plain (pageable) host workspace: the upload is not timed.
    host_ws_bytes_ = (sizes.host_bytes + 63) / 64 * 64;
    host_ws_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, host_ws_bytes_)));
    if (host_ws_ == nullptr) return absl::ResourceExhaustedError("host workspace");
    device_ws_bytes_ = sizes.device_bytes;
    std::fprintf(stderr, "[msa_gpu_bench] workspace host %.1f MiB, device %.1f MiB\n",
                 sizes.host_bytes / double(1 << 20), sizes.device_bytes / double(1 << 20));
    if (options_.plan_only) return absl::OkStatus();

    cudaStream_t s = nullptr;
    BENCH_CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    stream_ = s;

    auto flush = DeviceBuffer::Allocate(kFlushBytes);
    if (!flush.ok()) return flush.status();
    flush_ = std::move(*flush);
    timer_ = std::make_unique<GpuTimer>(stream_, flush_.data(), options_);
    return absl::OkStatus();
  }

  // Device copy bandwidth (before the pool is allocated).
  absl::Status MeasureCopy() {
    const size_t bytes = size_t{2} << 30;
    auto src = DeviceBuffer::Allocate(bytes);
    if (!src.ok()) return src.status();
    auto dst = DeviceBuffer::Allocate(bytes);
    if (!dst.ok()) return dst.status();
    BENCH_CUDA_OK(FillRandomBf16(src->data(), bytes / 2, seed_ + 7, 1.0f, stream_));
    void* d = dst->data();
    const void* sp = src->data();
    auto t = timer_->Measure(
        [&](cudaStream_t st) -> absl::Status {
          BENCH_CUDA_OK(cudaMemcpyAsync(d, sp, bytes, cudaMemcpyDeviceToDevice, st));
          return absl::OkStatus();
        },
        false);
    if (!t.ok()) return t.status();
    nlohmann::json j = {{"kind", "copy"}, {"bytes", 2 * bytes}};
    AddTiming(&j, *t);
    j["gb_per_s"] = 2.0 * bytes / (t->median_us * 1e-6) / 1e9;
    Emit(j);
    std::printf("%-8s %-34s %10.1f us  %8.0f GB/s (read+write)\n", "copy", "2 GiB D2D",
                t->median_us, j["gb_per_s"].get<double>());
    return absl::OkStatus();
  }

  absl::Status AllocateBuffers() {
    const size_t pool_bytes = static_cast<size_t>(kPoolPages) * shape_.PageElements() * 2;
    auto pool = DeviceBuffer::Allocate(pool_bytes);
    if (!pool.ok()) return pool.status();
    pool_ = std::move(*pool);
    BENCH_CUDA_OK(FillRandomBf16(pool_.data(), pool_bytes / 2, seed_ + 1, 1.0f, stream_));
    const size_t q_elems = static_cast<size_t>(kMaxTotalQ) * shape_.num_q_heads * shape_.head_dim;
    auto q = DeviceBuffer::Allocate(q_elems * 2);
    if (!q.ok()) return q.status();
    q_ = std::move(*q);
    BENCH_CUDA_OK(FillRandomBf16(q_.data(), q_elems, seed_ + 2, 1.0f, stream_));
    auto out = DeviceBuffer::Allocate(q_elems * 2);
    if (!out.ok()) return out.status();
    out_buf_ = std::move(*out);
    auto dws = DeviceBuffer::Allocate(device_ws_bytes_);
    if (!dws.ok()) return dws.status();
    device_ws_ = std::move(*dws);
    BENCH_CUDA_OK(cudaStreamSynchronize(stream_));
    std::fprintf(stderr, "[msa_gpu_bench] pool %.2f GiB\n", pool_bytes / double(1 << 30));
    return absl::OkStatus();
  }

  // Plans (timed on the CPU), uploads, checks one run, then times the run.
  // Returns the median time per call in us.
  // kernel_index > 0 (a second prefill kernel of --prefill_kernel=both):
  // configurations without prefill tiles are skipped (NaN, nothing emitted).
  absl::StatusOr<double> RunConfig(const Record& rec, const BatchBuilder& batch, bool cold,
                                   size_t kernel_index) {
    const BatchTables view = batch.tables().view();
    plan_options_.prefill_kernel = options_.prefill_kernels[kernel_index];
    std::vector<double> plan_us;
    absl::StatusOr<MsaPlan> plan = absl::UnknownError("not planned");
    for (int i = 0; i < 5; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      plan = PlanMsa(shape_, view, kPoolPages, plan_options_, host_ws_.get(), host_ws_bytes_);
      const auto t1 = std::chrono::steady_clock::now();
      if (!plan.ok()) return plan.status();
      plan_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    std::sort(plan_us.begin(), plan_us.end());
    if (kernel_index > 0 && plan->num_prefill_items == 0) return NAN;
    if (options_.plan_only) {
      std::printf("plan     %-8s B=%-4d ctx=%-6lld seg=%-4d q=%-5d pos=%-6d %s items %d "
                  "(prefill %d) chunk %d merges %d plan %.0f us\n",
                  rec.kind.c_str(), rec.batch, static_cast<long long>(rec.context), rec.segments,
                  rec.q_tokens, rec.pos, rec.variant.c_str(), plan->num_items(),
                  plan->num_prefill_items, plan->kv_chunk_tokens, plan->num_merge_groups,
                  Percentile(plan_us, 0.5));
      return Percentile(plan_us, 0.5);
    }
    BENCH_RETURN_IF_ERROR(
        UploadMsaPlan(*plan, host_ws_.get(), device_ws_.data(), device_ws_.size(), stream_));
    const MsaPlan p = *plan;
    const char* kernel_name =
        p.num_prefill_items == 0
            ? "none"
            : (ResolvedPrefillKernel(p) == MsaPrefillKernel::kWgmma          ? "wgmma"
               : ResolvedPrefillKernel(p) == MsaPrefillKernel::kWgmmaOverlap ? "wgmma_overlap"
                                                                              : "mma");
    const void* q = q_.data();
    const void* pool = pool_.data();
    void* out = out_buf_.data();
    void* dws = device_ws_.data();
    const AttentionShape shape = shape_;
    auto body = [=](cudaStream_t st) -> absl::Status {
      return RunMsaCuda(p, shape, q, pool, out, nullptr, dws, st);
    };
    // Poison, run once, check every output element is finite (written).
    const int64_t out_elems = int64_t{view.total_q()} * shape_.num_q_heads * shape_.head_dim;
    BENCH_CUDA_OK(cudaMemsetAsync(out, 0xFF, out_elems * 2, stream_));  // 0xFFFF = NaN
    BENCH_RETURN_IF_ERROR(body(stream_));
    BENCH_CUDA_OK(cudaStreamSynchronize(stream_));
    std::vector<bf16_t> host_out(out_elems);
    BENCH_CUDA_OK(cudaMemcpy(host_out.data(), out, out_elems * 2, cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (const bf16_t v : host_out) bad += std::isfinite(FloatFromBf16Bits(v.bits)) ? 0 : 1;

    auto t = timer_->Measure(body, cold);
    if (!t.ok()) return t.status();
    const int64_t kv_bytes = batch.kv_tokens() * 2 * shape_.num_kv_heads * shape_.head_dim * 2;
    const int64_t flops = 4LL * shape_.head_dim * shape_.num_q_heads * batch.pairs();
    nlohmann::json j = {{"kind", rec.kind},         {"variant", rec.variant},
                        {"batch", rec.batch},       {"context", rec.context},
                        {"segments", rec.segments}, {"q_tokens", rec.q_tokens},
                        {"pos", rec.pos},           {"kv_tokens", batch.kv_tokens()},
                        {"kv_bytes", kv_bytes},     {"flops", flops},
                        {"plan_us", Percentile(plan_us, 0.5)},
                        {"items", p.num_items()},   {"kv_chunk_tokens", p.kv_chunk_tokens},
                        {"prefill_kernel", kernel_name},
                        {"prefill_tiling", TilingName(plan_options_.prefill_tiling)},
                        {"balance_small_prefill", plan_options_.balance_small_prefill},
                        {"nonfinite_outputs", bad}};
    AddTiming(&j, *t);
    const double secs = t->median_us * 1e-6;
    j["kv_read_gb_per_s"] = kv_bytes / secs / 1e9;
    j["tflops"] = flops / secs / 1e12;
    Emit(j);
    std::printf("%-8s B=%-4d ctx=%-6lld seg=%-4d q=%-5d pos=%-6d %s %-5s %10.1f us [%.1f, %.1f] "
                "%7.0f GB/s %6.1f TF/s plan %.0f us%s\n",
                rec.kind.c_str(), rec.batch, static_cast<long long>(rec.context), rec.segments,
                rec.q_tokens, rec.pos, cold ? "cold" : "warm", kernel_name, t->median_us, t->p10_us,
                t->p90_us, j["kv_read_gb_per_s"].get<double>(), j["tflops"].get<double>(),
                j["plan_us"].get<double>(), bad ? " NONFINITE OUTPUT" : "");
    std::fflush(stdout);
    if (bad != 0) ++nonfinite_configs_;
    return t->median_us;
  }

  // Runs one config with each prefill kernel of --prefill_kernel; returns the
  // first kernel's time. An error is logged and recorded, never fatal.
  double Try(const Record& rec, const BatchBuilder& batch, bool cold) {
    double first = NAN;
    for (size_t k = 0; k < options_.prefill_kernels.size(); ++k) {
      const double t = TryKernel(rec, batch, cold, k);
      if (k == 0) first = t;
    }
    return first;
  }

  double TryKernel(const Record& rec, const BatchBuilder& batch, bool cold, size_t kernel_index) {
    auto t = RunConfig(rec, batch, cold, kernel_index);
    if (!t.ok()) {
      ++failures_;
      std::fprintf(stderr, "[msa_gpu_bench] %s B=%d ctx=%lld seg=%d q=%d pos=%d failed: %s\n",
                   rec.kind.c_str(), rec.batch, static_cast<long long>(rec.context), rec.segments,
                   rec.q_tokens, rec.pos, t.status().ToString().c_str());
      Emit({{"kind", rec.kind},         {"variant", rec.variant}, {"batch", rec.batch},
            {"context", rec.context},   {"segments", rec.segments},
            {"q_tokens", rec.q_tokens}, {"pos", rec.pos},         {"error", t.status().ToString()}});
      cudaGetLastError();
      return NAN;
    }
    return *t;
  }

  void DecodeSweep() {
    std::vector<int32_t> batches = {1, 8, 32, 128};
    std::vector<int32_t> contexts = {1024, 4096, 16384, 65536};
    std::vector<int32_t> segments = {1, 4, 16, 64, 256};
    if (options_.quick) {
      batches = {1, 32};
      contexts = {4096, 16384};
      segments = {1, 64};
    }
    if (!options_.decode_batches.empty()) batches = options_.decode_batches;
    if (!options_.decode_contexts.empty()) contexts = options_.decode_contexts;
    if (!options_.decode_segments.empty()) segments = options_.decode_segments;
    for (int32_t b : batches) {
      for (int32_t n : contexts) {
        if (int64_t{b} * n > kMaxDecodeTokens) continue;
        for (int32_t s : segments) {
          if (s > n) continue;  // a segment holds >= 1 key
          BatchBuilder builder(&rng_);
          absl::Status st = absl::OkStatus();
          for (int32_t i = 0; i < b && st.ok(); ++i) st = builder.Add(DecodeSequence(n, s, &rng_));
          Record rec{"decode", b, n, s, 1, n};
          if (!st.ok()) {
            ++failures_;
            continue;
          }
          const bool headline = (n == 16384 && (b == 32 || ((b == 1 || b == 8) && s == 1)) &&
                                 (s == 1 || s == 64));
          Try(rec, builder, false);
          if (headline) Try(rec, builder, true);
        }
      }
    }
  }

  void RebuildSweep() {
    std::vector<std::pair<int32_t, int32_t>> configs;
    for (int32_t c : {16, 64, 256, 1024, 4096}) {
      for (int32_t p : {0, 4096, 16384, 32768}) configs.push_back({c, p});
    }
    for (int32_t c : {16, 64, 256, 512, 1024}) configs.push_back({c, 8192});
    if (options_.quick) configs = {{16, 8192}, {512, 8192}, {4096, 0}};
    for (auto [c, p] : configs) {
      BatchBuilder builder(&rng_);
      if (!builder.Add(ContextWithQueries(p + c, {{p, c}})).ok()) continue;
      Record rec{"rebuild", 1, p + c, 1, c, p};
      Try(rec, builder, false);
      if ((c == 512 || c == 16) && p == 8192) Try(rec, builder, true);
    }
  }

  // 512 query tokens at the end of a 16k context in S runs separated by
  // 16-token gaps of cached keys: the same work in more query segments.
  void QuerySegmentSweep() {
    for (int32_t s : {1, 4, 16, 32}) {
      const int32_t run = 512 / s;
      std::vector<Run> runs;
      int32_t pos = 16384;
      for (int32_t i = 0; i < s; ++i) {
        runs.push_back({pos, run});
        pos += run + 16;
      }
      const int32_t context = pos - 16;
      BatchBuilder builder(&rng_);
      if (!builder.Add(ContextWithQueries(context, runs)).ok()) continue;
      Record rec{"qseg", 1, context, s, 512, 16384};
      qseg_us_.push_back({s, Try(rec, builder, false)});
    }
  }

  // A 16-token rebuild at 8k: alone, and packed with the same sequence's other
  // query segments (holes at 2k..14k and 64 new tokens at 16k). With
  // --prefill_tiling=both / --balance_small_prefill=both, each configuration
  // is planned and timed with each setting back to back (variant
  // "<case>/<tiling>[/balanced]").
  void PackedRebuild() {
    std::vector<MsaPrefillTiling> tilings = {plan_options_.prefill_tiling};
    if (options_.prefill_tiling == "both") {
      tilings = {MsaPrefillTiling::kFromFirstRow, MsaPrefillTiling::kLeastWork};
    }
    std::vector<bool> balances = {plan_options_.balance_small_prefill};
    if (options_.balance_small_prefill == "both") balances = {false, true};
    const bool several = tilings.size() > 1 || balances.size() > 1;
    const MsaPlanOptions saved = plan_options_;
    const int32_t context = 16384 + 64;
    std::vector<Run> others = {{2048, 16},  {4096, 16},  {6144, 16}, {10240, 16},
                               {12288, 16}, {14336, 16}, {16384, 64}};
    std::vector<Run> with = others;
    with.push_back({8192, 16});
    std::sort(with.begin(), with.end(), [](const Run& a, const Run& b) { return a.start < b.start; });
    struct Case {
      const char* variant;
      std::vector<Run> runs;
    };
    for (const Case& c : {Case{"alone", {{8192, 16}}}, Case{"without", others}, Case{"with", with}}) {
      BatchBuilder builder(&rng_);
      if (!builder.Add(ContextWithQueries(context, c.runs)).ok()) continue;
      int32_t q = 0;
      for (const Run& r : c.runs) q += r.len;
      for (const MsaPrefillTiling tiling : tilings) {
        for (const bool balance : balances) {
          plan_options_.prefill_tiling = tiling;
          plan_options_.balance_small_prefill = balance;
          const std::string variant =
              several ? absl::StrCat(c.variant, "/", TilingName(tiling), balance ? "/balanced" : "")
                      : c.variant;
          Record rec{"packed", 1, context, static_cast<int32_t>(c.runs.size()), q, 8192, variant};
          Try(rec, builder, false);
        }
      }
    }
    plan_options_ = saved;
  }

  // Decode B=32 @16k + one 512-token chunk at 8k + 4 sequences with a 16-token
  // hole at 8k of 16k contexts: one launch vs the three parts alone.
  void MixedBatch() {
    auto add_decode = [&](BatchBuilder* b) {
      for (int i = 0; i < 32; ++i) {
        if (!b->Add(DecodeSequence(16384, 1, &rng_)).ok()) return false;
      }
      return true;
    };
    auto add_chunk = [&](BatchBuilder* b) {
      return b->Add(ContextWithQueries(8192 + 512, {{8192, 512}})).ok();
    };
    auto add_holes = [&](BatchBuilder* b) {
      for (int i = 0; i < 4; ++i) {
        if (!b->Add(ContextWithQueries(16384, {{8192, 16}})).ok()) return false;
      }
      return true;
    };
    struct Part {
      const char* variant;
      bool decode, chunk, holes;
    };
    for (const Part& part : {Part{"decode_only", true, false, false},
                             Part{"chunk_only", false, true, false},
                             Part{"holes_only", false, false, true},
                             Part{"mixed", true, true, true}}) {
      BatchBuilder builder(&rng_);
      bool ok = true;
      if (part.decode) ok = ok && add_decode(&builder);
      if (part.chunk) ok = ok && add_chunk(&builder);
      if (part.holes) ok = ok && add_holes(&builder);
      if (!ok) continue;
      Record rec{"mixed", builder.tables().view().batch_size(), 16384, 1,
                 builder.tables().view().total_q(), 0, part.variant};
      Try(rec, builder, false);
    }
  }

  int failures() const { return failures_; }
  int nonfinite_configs() const { return nonfinite_configs_; }

  void EmitMeta(const std::string& command) {
    int clock_khz = 0, mem_clock_khz = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
    cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0);
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    Emit({{"kind", "meta"},
          {"device", gpu_.name},
          {"sm_count", gpu_.sm_count},
          {"cc", absl::StrCat(gpu_.cc_major, ".", gpu_.cc_minor)},
          {"total_bytes", gpu_.total_bytes},
          {"l2_bytes", gpu_.l2_bytes},
          {"max_clock_khz", clock_khz},
          {"mem_clock_khz", mem_clock_khz},
          {"cuda_runtime", runtime},
          {"cuda_driver", driver},
          {"seed", seed_},
          {"command", command},
          {"shape", "Hq=32 Hkv=8 D=128 bf16 page=16"}});
  }

 private:
  static void AddTiming(nlohmann::json* j, const Timing& t) {
    (*j)["median_us"] = t.median_us;
    (*j)["p10_us"] = t.p10_us;
    (*j)["p90_us"] = t.p90_us;
    (*j)["iters"] = t.iters;
    (*j)["calls_per_replay"] = t.calls_per_replay;
    (*j)["graph"] = t.graph;
    (*j)["cold_l2"] = t.cold_l2;
  }

  void Emit(const nlohmann::json& j) {
    out_ << j.dump() << "\n";
    out_.flush();
  }

  BenchOptions options_;
  GpuInfo gpu_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::ofstream out_;
  cudaStream_t stream_ = nullptr;
  AttentionShape shape_;
  MsaPlanOptions plan_options_;
  DeviceBuffer flush_, pool_, q_, out_buf_, device_ws_;
  struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t[], FreeDeleter> host_ws_;
  size_t host_ws_bytes_ = 0;
  size_t device_ws_bytes_ = 0;
  std::unique_ptr<GpuTimer> timer_;
  std::vector<std::pair<int32_t, double>> qseg_us_;
  int failures_ = 0;
  int nonfinite_configs_ = 0;
};

int Main(int argc, char** argv) {
  auto options = ParseFlags(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n", options.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<GpuInfo> gpu = GpuInfo{"none (--plan_only)", 132, 9, 0, 0, 0, 0};
  if (!options->plan_only) gpu = QueryGpu(0);
  if (!gpu.ok()) {
    std::fprintf(stderr, "[msa_gpu_bench] no usable GPU: %s\n", gpu.status().ToString().c_str());
    return 2;
  }
  std::printf("# msa_gpu_bench on %s (%d SMs)\n", gpu->name.c_str(), gpu->sm_count);
  std::string command = argv[0];
  for (int i = 1; i < argc; ++i) absl::StrAppend(&command, " ", argv[i]);
  MsaBench bench(*options, *gpu);
  absl::Status st = bench.Init();
  if (!st.ok()) {
    std::fprintf(stderr, "[msa_gpu_bench] init: %s\n", st.ToString().c_str());
    return 1;
  }
  if (!options->plan_only) {
    bench.EmitMeta(command);
    std::printf("# wgmma prefill kernel available: %s\n", MsaWgmmaAvailable() ? "yes" : "no");
    if (options->Runs("copy")) {
      st = bench.MeasureCopy();
      if (!st.ok()) std::fprintf(stderr, "[msa_gpu_bench] copy: %s\n", st.ToString().c_str());
    }
    st = bench.AllocateBuffers();
    if (!st.ok()) {
      std::fprintf(stderr, "[msa_gpu_bench] buffers: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  if (options->Runs("rebuild")) bench.RebuildSweep();
  if (options->Runs("qseg")) bench.QuerySegmentSweep();
  if (options->Runs("packed")) bench.PackedRebuild();
  if (options->Runs("mixed")) bench.MixedBatch();
  if (options->Runs("decode")) bench.DecodeSweep();
  std::printf("# done: %d failed configurations, %d with non-finite outputs\n", bench.failures(),
              bench.nonfinite_configs());
  return bench.failures() == 0 && bench.nonfinite_configs() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace asymcache::msa::bench

int main(int argc, char** argv) { return asymcache::msa::bench::Main(argc, argv); }
