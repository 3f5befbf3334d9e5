// The measurement half of gpu_calibration.h on CUDA: MSA (kernels/msa_cuda.h)
// for the attention parameters and the step overhead, cuBLAS GEMMs for the
// linear-layer curve. CUDA runtime + cuBLAS only (plain C++). The header
// documents what is measured and how.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kernels/dtype.h"
#include "kernels/msa.h"
#include "kernels/msa_cuda.h"
#include "kernels/msa_plan.h"
#include "services/daemon/gpu_calibration.h"

namespace asymcache::daemon {
namespace {

using msa::AttentionShape;
using msa::BatchTablesStorage;
using msa::MsaPlan;
using msa::MsaPlanOptions;

#define CAL_RETURN_IF_ERROR(expr)          \
  do {                                     \
    const absl::Status cal_st_ = (expr);   \
    if (!cal_st_.ok()) return cal_st_;     \
  } while (0)

absl::Status CudaError(cudaError_t error, absl::string_view what) {
  const std::string message =
      absl::StrCat("GPU calibration: ", what, ": ", cudaGetErrorName(error), " (",
                   cudaGetErrorString(error), ")");
  cudaGetLastError();  // clear the last-error state for the caller
  if (error == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

#define CAL_CUDA(expr)                                                  \
  do {                                                                  \
    const cudaError_t cal_err_ = (expr);                                \
    if (cal_err_ != cudaSuccess) return CudaError(cal_err_, #expr);     \
  } while (0)

absl::Status CublasError(cublasStatus_t status, absl::string_view what) {
  const std::string message =
      absl::StrCat("GPU calibration: ", what, ": ", cublasGetStatusName(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

// Makes `device` current for the scope and restores the caller's device.
class ScopedDevice {
 public:
  ScopedDevice() = default;
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  ~ScopedDevice() {
    if (saved_ >= 0) cudaSetDevice(saved_);
  }
  absl::Status Enter(int device) {
    if (cudaGetDevice(&saved_) != cudaSuccess) saved_ = -1;
    CAL_CUDA(cudaSetDevice(device));
    return absl::OkStatus();
  }

 private:
  int saved_ = -1;
};

// Owning device allocation whose failure to allocate is RESOURCE_EXHAUSTED.
class Scratch {
 public:
  Scratch() = default;
  Scratch(Scratch&& other) noexcept : data_(std::exchange(other.data_, nullptr)) {}
  Scratch& operator=(Scratch&& other) noexcept {
    std::swap(data_, other.data_);
    return *this;
  }
  ~Scratch() {
    if (data_ != nullptr) cudaFree(data_);
  }
  static absl::StatusOr<Scratch> Allocate(size_t bytes, absl::string_view what) {
    Scratch scratch;
    if (const cudaError_t error = cudaMalloc(&scratch.data_, std::max<size_t>(bytes, 16));
        error != cudaSuccess) {
      scratch.data_ = nullptr;
      return CudaError(error, absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what));
    }
    return scratch;
  }
  uint8_t* data() const { return static_cast<uint8_t*>(data_); }

 private:
  void* data_ = nullptr;
};

// Owning non-blocking stream.
class Stream {
 public:
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  absl::Status Create() {
    CAL_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    return absl::OkStatus();
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Fills device memory with uniform bf16 values in [-1, 1): a 1 MiB random
// pattern, copied to the start of the target and doubled in place.
class RandomFiller {
 public:
  absl::Status Init(uint64_t seed, cudaStream_t stream) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<uint16_t> host(kPatternBytes / 2);
    for (uint16_t& v : host) v = msa::Bf16BitsFromFloat(uniform(rng));
    absl::StatusOr<Scratch> pattern = Scratch::Allocate(kPatternBytes, "random pattern");
    if (!pattern.ok()) return pattern.status();
    pattern_ = std::move(*pattern);
    CAL_CUDA(cudaMemcpyAsync(pattern_.data(), host.data(), kPatternBytes, cudaMemcpyHostToDevice,
                             stream));
    CAL_CUDA(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }
  absl::Status Fill(void* dst, size_t bytes, cudaStream_t stream) const {
    auto* out = static_cast<uint8_t*>(dst);
    size_t done = std::min(bytes, kPatternBytes);
    CAL_CUDA(cudaMemcpyAsync(out, pattern_.data(), done, cudaMemcpyDeviceToDevice, stream));
    while (done < bytes) {
      const size_t chunk = std::min(done, bytes - done);
      CAL_CUDA(cudaMemcpyAsync(out + done, out, chunk, cudaMemcpyDeviceToDevice, stream));
      done += chunk;
    }
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kPatternBytes = size_t{1} << 20;
  Scratch pattern_;
};

// Splits the remaining time before the deadline among the measurements still
// to run, by weight, so that set-up costs and overruns are absorbed.
class BudgetPlanner {
 public:
  BudgetPlanner(absl::Time deadline, double total_weight)
      : deadline_(deadline), remaining_weight_(total_weight) {}
  // Seconds this measurement may take (>= 0).
  double Take(double weight) {
    const double left = std::max(0.0, absl::ToDoubleSeconds(deadline_ - absl::Now()));
    const double share = remaining_weight_ > 0 ? left * std::min(1.0, weight / remaining_weight_)
                                               : 0.0;
    remaining_weight_ = std::max(0.0, remaining_weight_ - weight);
    return share;
  }

 private:
  absl::Time deadline_;
  double remaining_weight_;
};

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Least-squares slope of y over x (0 with fewer than two distinct x).
double Slope(const std::vector<std::pair<double, double>>& points) {
  if (points.size() < 2) return 0;
  double mx = 0, my = 0;
  for (const auto& [x, y] : points) {
    mx += x;
    my += y;
  }
  mx /= points.size();
  my /= points.size();
  double num = 0, den = 0;
  for (const auto& [x, y] : points) {
    num += (x - mx) * (y - my);
    den += (x - mx) * (x - mx);
  }
  return den > 0 ? num / den : 0;
}

// One timed measurement: its median milliseconds per call and samples taken.
struct Timing {
  double median_ms = 0;
  int samples = 0;
  int calls_per_sample = 0;
};

using Body = std::function<absl::Status(cudaStream_t)>;

// Owns the CUDA events of one timing run.
class EventPool {
 public:
  EventPool() = default;
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;
  ~EventPool() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  absl::Status Create(int count) {
    while (static_cast<int>(events_.size()) < count) {
      cudaEvent_t e = nullptr;
      CAL_CUDA(cudaEventCreate(&e));
      events_.push_back(e);
    }
    return absl::OkStatus();
  }
  cudaEvent_t operator[](int i) const { return events_[i]; }

 private:
  std::vector<cudaEvent_t> events_;
};

// Milliseconds between two recorded events (waits for the second).
absl::StatusOr<double> ElapsedMs(cudaEvent_t start, cudaEvent_t stop) {
  CAL_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  CAL_CUDA(cudaEventElapsedTime(&ms, start, stop));
  return static_cast<double>(ms);
}

// Times body(stream) with CUDA events: one warm-up call, one pilot call to
// size the run, then samples of `calls_per_sample` calls each (more than one
// only for bodies under 50 us, so launch gaps do not dominate): at least 3,
// at most `max_samples`, as many as fit in `share_s`. The median per call.
absl::StatusOr<Timing> TimeBody(cudaStream_t stream, const Body& body, double share_s,
                                int max_samples) {
  CAL_RETURN_IF_ERROR(body(stream));
  CAL_CUDA(cudaStreamSynchronize(stream));
  EventPool events;
  CAL_RETURN_IF_ERROR(events.Create(2 * max_samples));
  CAL_CUDA(cudaEventRecord(events[0], stream));
  CAL_RETURN_IF_ERROR(body(stream));
  CAL_CUDA(cudaEventRecord(events[1], stream));
  absl::StatusOr<double> pilot_ms = ElapsedMs(events[0], events[1]);
  if (!pilot_ms.ok()) return pilot_ms.status();
  const double est_ms = std::max(1e-3, *pilot_ms);

  Timing timing;
  timing.calls_per_sample = std::clamp(static_cast<int>(std::ceil(0.05 / est_ms)), 1, 64);
  const double sample_s = est_ms * timing.calls_per_sample * 1e-3;
  timing.samples = std::clamp(static_cast<int>(share_s / sample_s), 3, max_samples);
  for (int s = 0; s < timing.samples; ++s) {
    CAL_CUDA(cudaEventRecord(events[2 * s], stream));
    for (int c = 0; c < timing.calls_per_sample; ++c) CAL_RETURN_IF_ERROR(body(stream));
    CAL_CUDA(cudaEventRecord(events[2 * s + 1], stream));
  }
  std::vector<double> per_call_ms;
  for (int s = 0; s < timing.samples; ++s) {
    absl::StatusOr<double> ms = ElapsedMs(events[2 * s], events[2 * s + 1]);
    if (!ms.ok()) return ms.status();
    per_call_ms.push_back(*ms / timing.calls_per_sample);
  }
  timing.median_ms = Median(per_call_ms);
  if (!(timing.median_ms > 0) || !std::isfinite(timing.median_ms)) {
    return absl::InternalError(
        absl::StrCat("GPU calibration: measured a non-positive time ", timing.median_ms, " ms"));
  }
  return timing;
}

// ---- attention (MSA) ------------------------------------------------------------

struct Run {
  int32_t start = 0;
  int32_t len = 0;
};

// One MSA batch of the calibration, in CSR form, with its work counts.
struct AttentionCase {
  std::string label;
  BatchTablesStorage tables;
  int64_t pairs = 0;      // (query, key) pairs, causal by position
  int64_t kv_tokens = 0;  // distinct KV tokens scanned
  int32_t query_segments = 1;
};

// Adds sequences to a case; pages come from `perm` in order.
class CaseBuilder {
 public:
  CaseBuilder(std::string label, int32_t page_size, const std::vector<int32_t>* perm)
      : page_size_(page_size), perm_(perm) {
    case_.label = std::move(label);
  }
  void Add(const std::vector<Run>& kv, const std::vector<Run>& q) {
    BatchTablesStorage& t = case_.tables;
    for (const Run& r : kv) {
      for (int32_t off = 0; off < r.len; off += page_size_) {
        t.kv_page_ids.push_back((*perm_)[next_page_++ % perm_->size()]);
        t.kv_page_pos.push_back(r.start + off);
        t.kv_page_len.push_back(std::min(page_size_, r.len - off));
      }
      case_.kv_tokens += r.len;
    }
    t.kv_indptr.push_back(static_cast<int32_t>(t.kv_page_ids.size()));
    for (const Run& run : q) {
      for (int32_t i = 0; i < run.len; ++i) {
        const int32_t qp = run.start + i;
        t.q_pos.push_back(qp);
        for (const Run& r : kv) case_.pairs += std::clamp<int64_t>(qp - r.start + 1, 0, r.len);
      }
    }
    t.q_indptr.push_back(static_cast<int32_t>(t.q_pos.size()));
  }
  AttentionCase Take(int32_t query_segments) {
    case_.query_segments = query_segments;
    return std::move(case_);
  }

 private:
  int32_t page_size_;
  const std::vector<int32_t>* perm_;
  size_t next_page_ = 0;
  AttentionCase case_;
};

int64_t PagesFor(int64_t tokens, int32_t page_size) { return (tokens + page_size - 1) / page_size; }

struct AttentionResult {
  double flops_per_s = 0;
  double kv_bytes_per_s = 0;
  double segment_overhead_s = 0;
  double step_overhead_s = 0;
};

constexpr int kDecodeBatch = 32;
constexpr int32_t kDecodeContexts[] = {4096, 8192};
constexpr std::pair<int32_t, int32_t> kRebuilds[] = {{1024, 8192}, {2048, 16384}};  // (q, pos)
constexpr int32_t kQuerySegments[] = {1, 4, 16, 32};
constexpr int32_t kQsegQueries = 512;
constexpr int32_t kQsegStart = 16384;
constexpr int kStepKernelsPerLayer = 8;

class Calibrator {
 public:
  Calibrator(const ModelConfig& model, const GpuCalibrationOptions& options,
             msa::GpuInfo gpu, cudaStream_t stream, const RandomFiller* filler,
             BudgetPlanner* budget, std::vector<std::string>* details)
      : model_(model), options_(options), gpu_(std::move(gpu)), stream_(stream),
        filler_(filler), budget_(budget), details_(details) {
    shape_.num_q_heads = model.num_q_heads;
    shape_.num_kv_heads = model.num_kv_heads;
    shape_.head_dim = model.head_dim;
    shape_.page_size = model.block_tokens;
    shape_.dtype = msa::DType::kBFloat16;
    plan_options_.num_sms = std::max(1, gpu_.sm_count);
  }

  static int NumAttentionMeasurements() {
    return static_cast<int>(std::size(kDecodeContexts) + std::size(kRebuilds) +
                            std::size(kQuerySegments));
  }

  absl::StatusOr<AttentionResult> Attention(uint64_t seed) {
    const int32_t page = shape_.page_size;
    // Cases first (CPU), to size the pool and workspaces: the pool holds the
    // pages of the largest case; every case takes its pages from the start of
    // one random permutation of the pool, so no case reads a page twice.
    const int32_t max_segments =
        *std::max_element(std::begin(kQuerySegments), std::end(kQuerySegments));
    int64_t max_pages = PagesFor(kQsegStart + kQsegQueries + 16 * max_segments, page);
    for (int32_t ctx : kDecodeContexts) {
      max_pages = std::max(max_pages, kDecodeBatch * PagesFor(ctx, page));
    }
    for (auto [q, pos] : kRebuilds) max_pages = std::max(max_pages, PagesFor(pos + q, page));
    const int64_t pool_pages = max_pages;
    std::vector<int32_t> perm(pool_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(perm.begin(), perm.end(), rng);

    std::vector<AttentionCase> rebuilds, decodes, qsegs;
    for (auto [q, pos] : kRebuilds) {
      CaseBuilder b(absl::StrCat("rebuild ", q, " queries after ", pos, " keys"), page, &perm);
      b.Add({{0, pos + q}}, {{pos, q}});
      rebuilds.push_back(b.Take(1));
    }
    for (int32_t ctx : kDecodeContexts) {
      CaseBuilder b(absl::StrCat("decode batch ", kDecodeBatch, " x ", ctx, " keys"), page, &perm);
      for (int i = 0; i < kDecodeBatch; ++i) b.Add({{0, ctx}}, {{ctx - 1, 1}});
      decodes.push_back(b.Take(1));
    }
    for (int32_t s : kQuerySegments) {
      const int32_t run = kQsegQueries / s;
      std::vector<Run> runs;
      int32_t pos = kQsegStart;
      for (int32_t i = 0; i < s; ++i) {
        runs.push_back({pos, run});
        pos += run + 16;
      }
      CaseBuilder b(absl::StrCat(kQsegQueries, " queries in ", s, " segments at 16k"), page,
                    &perm);
      b.Add({{0, pos - 16}}, runs);
      qsegs.push_back(b.Take(s));
    }
    int32_t max_q = 0;
    for (const auto* group : {&rebuilds, &decodes, &qsegs}) {
      for (const AttentionCase& c : *group) max_q = std::max(max_q, c.tables.view().total_q());
    }

    // Device buffers.
    const size_t page_bytes = static_cast<size_t>(shape_.PageElements()) * 2;
    const size_t pool_bytes = page_bytes * static_cast<size_t>(pool_pages);
    const size_t q_bytes = static_cast<size_t>(max_q) * shape_.num_q_heads * shape_.head_dim * 2;
    const msa::MsaWorkspaceSizes sizes = msa::MsaWorkspaceSizesFor(
        shape_, kDecodeBatch, max_q, static_cast<int32_t>(max_pages), plan_options_);
    absl::StatusOr<Scratch> pool = Scratch::Allocate(pool_bytes, "the MSA scratch pool");
    if (!pool.ok()) return pool.status();
    absl::StatusOr<Scratch> q = Scratch::Allocate(q_bytes, "MSA queries");
    if (!q.ok()) return q.status();
    absl::StatusOr<Scratch> out = Scratch::Allocate(q_bytes, "MSA outputs");
    if (!out.ok()) return out.status();
    absl::StatusOr<Scratch> dws = Scratch::Allocate(sizes.device_bytes, "the MSA workspace");
    if (!dws.ok()) return dws.status();
    CAL_RETURN_IF_ERROR(filler_->Fill(pool->data(), pool_bytes, stream_));
    CAL_RETURN_IF_ERROR(filler_->Fill(q->data(), q_bytes, stream_));
    CAL_CUDA(cudaStreamSynchronize(stream_));
    const size_t host_bytes = (sizes.host_bytes + 63) / 64 * 64;
    std::unique_ptr<void, decltype(&std::free)> host_ws(std::aligned_alloc(64, host_bytes),
                                                        &std::free);
    if (host_ws == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("GPU calibration: host MSA workspace of ", host_bytes, " bytes"));
    }

    // Runs one case: plan, upload, time one layer.
    auto measure = [&](const AttentionCase& c) -> absl::StatusOr<double> {
      absl::StatusOr<MsaPlan> plan = msa::PlanMsa(shape_, c.tables.view(), pool_pages,
                                                  plan_options_, host_ws.get(), host_bytes);
      if (!plan.ok()) return plan.status();
      CAL_RETURN_IF_ERROR(msa::UploadMsaPlan(*plan, host_ws.get(), dws->data(),
                                             sizes.device_bytes, stream_));
      CAL_CUDA(cudaStreamSynchronize(stream_));
      const MsaPlan p = *plan;
      const AttentionShape shape = shape_;
      const void* qp = q->data();
      const void* kv = pool->data();
      void* o = out->data();
      void* ws = dws->data();
      Body body = [=](cudaStream_t s) {
        return msa::RunMsaCuda(p, shape, qp, kv, o, nullptr, ws, s);
      };
      absl::StatusOr<Timing> t = TimeBody(stream_, body, budget_->Take(1), options_.repeats);
      if (!t.ok()) return t.status();
      const double seconds = t->median_ms * 1e-3;
      const double tflops = 4.0 * shape_.head_dim * shape_.num_q_heads * c.pairs / seconds / 1e12;
      const double gbps = KvBytes(c) / seconds / 1e9;
      details_->push_back(absl::StrFormat(
          "MSA %s: %.1f us per layer, %.1f TFLOP/s, %.0f GB/s KV (median of %d x %d calls)",
          c.label, seconds * 1e6, tflops, gbps, t->samples, t->calls_per_sample));
      return seconds;
    };

    AttentionResult result;
    std::vector<double> flops_rates, byte_rates;
    for (const AttentionCase& c : rebuilds) {
      absl::StatusOr<double> s = measure(c);
      if (!s.ok()) return s.status();
      flops_rates.push_back(4.0 * shape_.head_dim * shape_.num_q_heads * c.pairs / *s);
    }
    for (const AttentionCase& c : decodes) {
      absl::StatusOr<double> s = measure(c);
      if (!s.ok()) return s.status();
      byte_rates.push_back(KvBytes(c) / *s);
    }
    std::vector<std::pair<double, double>> seg_points;
    for (const AttentionCase& c : qsegs) {
      absl::StatusOr<double> s = measure(c);
      if (!s.ok()) return s.status();
      seg_points.push_back({static_cast<double>(c.query_segments), *s});
    }
    result.flops_per_s = Median(flops_rates);
    result.kv_bytes_per_s = Median(byte_rates);
    const double slope = Slope(seg_points);
    result.segment_overhead_s = std::max(0.0, slope);
    details_->push_back(absl::StrFormat(
        "segment overhead: slope %.3f us per query segment per layer (clamped at 0)",
        slope * 1e6));

    absl::StatusOr<double> step = StepOverhead(pool->data(), pool_pages, q->data());
    if (!step.ok()) return step.status();
    result.step_overhead_s = *step;
    return result;
  }

  // Host wall time of one CUDA-graph step of num_layers * 8 near-empty MSA
  // kernels (AppendKvCuda of one token to a skipped slot) + synchronize.
  absl::StatusOr<double> StepOverhead(void* pool, int64_t pool_pages, const void* kv_rows) {
    const double share_s = budget_->Take(1);
    absl::StatusOr<Scratch> slots = Scratch::Allocate(2 * sizeof(int32_t), "step slots");
    if (!slots.ok()) return slots.status();
    const int32_t host_slots[2] = {-1, 0};  // page -1: skipped, nothing is written
    CAL_CUDA(cudaMemcpy(slots->data(), host_slots, sizeof(host_slots), cudaMemcpyHostToDevice));
    const auto* page_ids = reinterpret_cast<const int32_t*>(slots->data());
    const int32_t* offsets = page_ids + 1;
    const int kernels = model_.num_layers * kStepKernelsPerLayer;

    CAL_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    absl::Status body = absl::OkStatus();
    for (int i = 0; i < kernels && body.ok(); ++i) {
      body = msa::AppendKvCuda(shape_, page_ids, offsets, 1, kv_rows, kv_rows, pool, pool_pages,
                               stream_);
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!body.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return body;
    }
    if (end != cudaSuccess) return CudaError(end, "cudaStreamEndCapture (step graph)");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (inst != cudaSuccess) return CudaError(inst, "cudaGraphInstantiate (step graph)");
    std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec_owner(
        exec, &cudaGraphExecDestroy);

    auto replay = [&]() -> absl::StatusOr<double> {
      const auto t0 = std::chrono::steady_clock::now();
      CAL_CUDA(cudaGraphLaunch(exec, stream_));
      CAL_CUDA(cudaStreamSynchronize(stream_));
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    for (int i = 0; i < 5; ++i) {
      absl::StatusOr<double> t = replay();
      if (!t.ok()) return t.status();
    }
    std::vector<double> times;
    const auto start = std::chrono::steady_clock::now();
    while (times.size() < 10 ||
           (times.size() < 200 &&
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
                share_s)) {
      absl::StatusOr<double> t = replay();
      if (!t.ok()) return t.status();
      times.push_back(*t);
    }
    const double median = Median(times);
    details_->push_back(absl::StrFormat(
        "step overhead: %.1f us (graph of %d near-empty kernels + synchronize, median of %d)",
        median * 1e6, kernels, times.size()));
    return median;
  }

  // ---- linear layers (cuBLAS) ---------------------------------------------------

  absl::StatusOr<std::vector<std::pair<int64_t, double>>> LinearSteps(cublasHandle_t cublas) {
    const int64_t hidden = model_.hidden_size;
    const int64_t inter = model_.intermediate_size;
    const int64_t attn = int64_t{model_.num_q_heads} * model_.head_dim;
    const int64_t qkv = int64_t{model_.num_q_heads + 2 * model_.num_kv_heads} * model_.head_dim;
    const int64_t vocab = model_.vocab_size;
    const int64_t t_max = options_.linear_tokens.back();
    const int64_t lm_max = std::min(options_.lm_head_tokens, t_max);
    // Weights of one layer, row-major [out][in] (nn.Linear), bf16.
    const int64_t layer_elems = qkv * hidden + hidden * attn + 2 * inter * hidden + hidden * inter;
    const int64_t layer_bytes = layer_elems * 2;
    const int64_t l2 = std::max<int64_t>(gpu_.l2_bytes, 1 << 20);
    const int64_t sets = std::clamp<int64_t>((4 * l2 + layer_bytes - 1) / layer_bytes, 1,
                                             model_.num_layers);
    const int64_t lm_bytes = vocab * hidden * 2;
    const int64_t act_elems = t_max * (hidden + attn + inter) +
                              t_max * (qkv + hidden + 2 * inter + hidden) + lm_max * vocab;
    const int64_t total = sets * layer_bytes + lm_bytes + act_elems * 2;
    size_t free = 0, device_total = 0;
    CAL_CUDA(cudaMemGetInfo(&free, &device_total));
    if (static_cast<double>(total) > 0.9 * static_cast<double>(free)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "GPU calibration: the linear-layer measurement needs ", total, " bytes (", sets,
          " weight sets of ", layer_bytes, ", LM head ", lm_bytes, ", activations for ", t_max,
          " tokens); ", free, " bytes are free"));
    }
    absl::StatusOr<Scratch> weights = Scratch::Allocate(sets * layer_bytes, "linear weights");
    if (!weights.ok()) return weights.status();
    absl::StatusOr<Scratch> lm_head = Scratch::Allocate(lm_bytes, "LM head");
    if (!lm_head.ok()) return lm_head.status();
    absl::StatusOr<Scratch> acts = Scratch::Allocate(act_elems * 2, "activations");
    if (!acts.ok()) return acts.status();
    CAL_RETURN_IF_ERROR(filler_->Fill(weights->data(), sets * layer_bytes, stream_));
    CAL_RETURN_IF_ERROR(filler_->Fill(lm_head->data(), lm_bytes, stream_));
    CAL_RETURN_IF_ERROR(filler_->Fill(acts->data(), act_elems * 2, stream_));
    CAL_CUDA(cudaStreamSynchronize(stream_));

    // Carve the buffers.
    uint8_t* a = acts->data();
    auto take = [&a](int64_t elems) {
      uint8_t* p = a;
      a += elems * 2;
      return p;
    };
    uint8_t* x = take(t_max * hidden);      // input of QKV, gate/up, LM head
    uint8_t* ao = take(t_max * attn);       // attention output: input of O
    uint8_t* h = take(t_max * inter);       // MLP hidden: input of down
    uint8_t* y_qkv = take(t_max * qkv);
    uint8_t* y_o = take(t_max * hidden);
    uint8_t* y_gu = take(t_max * 2 * inter);
    uint8_t* y_down = take(t_max * hidden);
    uint8_t* y_lm = take(lm_max * vocab);
    struct LayerWeights {
      const uint8_t* qkv;
      const uint8_t* o;
      const uint8_t* gate_up;
      const uint8_t* down;
    };
    std::vector<LayerWeights> layer_sets;
    for (int64_t s = 0; s < sets; ++s) {
      const uint8_t* w = weights->data() + s * layer_bytes;
      LayerWeights lw;
      lw.qkv = w;
      lw.o = lw.qkv + qkv * hidden * 2;
      lw.gate_up = lw.o + hidden * attn * 2;
      lw.down = lw.gate_up + 2 * inter * hidden * 2;
      layer_sets.push_back(lw);
    }
    const uint8_t* lm = lm_head->data();

    // Y[T][N] = X[T][K] * W[N][K]^T: column-major Y^T (N x T) = op_T(W) * X^T.
    auto gemm = [cublas](const void* w, const void* in, void* y, int64_t n, int64_t t,
                         int64_t k) -> absl::Status {
      const float alpha = 1.0f;
      const float beta = 0.0f;
      const cublasStatus_t st = cublasGemmEx(
          cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(t),
          static_cast<int>(k), &alpha, w, CUDA_R_16BF, static_cast<int>(k), in, CUDA_R_16BF,
          static_cast<int>(k), &beta, y, CUDA_R_16BF, static_cast<int>(n), CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS) return CublasError(st, "cublasGemmEx");
      return absl::OkStatus();
    };
    if (const cublasStatus_t st = cublasSetStream(cublas, stream_); st != CUBLAS_STATUS_SUCCESS) {
      return CublasError(st, "cublasSetStream");
    }

    std::vector<std::pair<int64_t, double>> points;
    for (int64_t t : options_.linear_tokens) {
      const int64_t lm_tokens = std::min(options_.lm_head_tokens, t);
      Body step = [&, t, lm_tokens](cudaStream_t) -> absl::Status {
        for (int32_t l = 0; l < model_.num_layers; ++l) {
          const LayerWeights& w = layer_sets[l % layer_sets.size()];
          CAL_RETURN_IF_ERROR(gemm(w.qkv, x, y_qkv, qkv, t, hidden));
          CAL_RETURN_IF_ERROR(gemm(w.o, ao, y_o, hidden, t, attn));
          CAL_RETURN_IF_ERROR(gemm(w.gate_up, x, y_gu, 2 * inter, t, hidden));
          CAL_RETURN_IF_ERROR(gemm(w.down, h, y_down, hidden, t, inter));
        }
        return gemm(lm, x, y_lm, vocab, lm_tokens, hidden);
      };
      absl::StatusOr<Timing> timing = TimeBody(stream_, step, budget_->Take(kLinearWeight),
                                               options_.repeats);
      if (!timing.ok()) return timing.status();
      const double seconds = timing->median_ms * 1e-3;
      const double flops =
          2.0 * t * model_.num_layers * layer_elems + 2.0 * lm_tokens * vocab * hidden;
      details_->push_back(absl::StrFormat(
          "linear step of %d tokens: %.3f ms, %.1f TFLOP/s (%d layers over %d weight sets, LM "
          "head %d tokens; median of %d)",
          t, seconds * 1e3, flops / seconds / 1e12, model_.num_layers, sets, lm_tokens,
          timing->samples));
      points.push_back({t, seconds});
    }
    // Non-decreasing, as the cost model requires (noise at the weight-bound end).
    for (size_t i = 1; i < points.size(); ++i) {
      if (points[i].second < points[i - 1].second) {
        details_->push_back(absl::StrFormat(
            "linear step of %d tokens measured below the previous point: raised to it",
            points[i].first));
        points[i].second = points[i - 1].second;
      }
    }
    return points;
  }

  static constexpr double kLinearWeight = 3.0;

 private:
  double KvBytes(const AttentionCase& c) const {
    return static_cast<double>(c.kv_tokens) * 2.0 * shape_.num_kv_heads * shape_.head_dim * 2.0;
  }

  const ModelConfig& model_;
  const GpuCalibrationOptions& options_;
  const msa::GpuInfo gpu_;
  const cudaStream_t stream_;
  const RandomFiller* const filler_;
  BudgetPlanner* const budget_;
  std::vector<std::string>* const details_;
  AttentionShape shape_;
  MsaPlanOptions plan_options_;
};

// Owning cuBLAS handle.
class CublasHandle {
 public:
  ~CublasHandle() {
    if (handle_ != nullptr) cublasDestroy(handle_);
  }
  absl::Status Create() {
    if (const cublasStatus_t st = cublasCreate(&handle_); st != CUBLAS_STATUS_SUCCESS) {
      handle_ = nullptr;
      return CublasError(st, "cublasCreate");
    }
    return absl::OkStatus();
  }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace

absl::StatusOr<GpuCalibrationReport> MeasureGpuCalibration(const ModelConfig& model,
                                                           const GpuCalibrationOptions& options) {
  const absl::Time start = absl::Now();
  int count = 0;
  if (const cudaError_t error = cudaGetDeviceCount(&count); error != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "GPU calibration: no CUDA device (cudaGetDeviceCount: ",
        error == cudaSuccess ? "0 devices" : cudaGetErrorString(error), ")"));
  }
  if (options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("GPU calibration: CUDA device ", options.device,
                                                   " does not exist (", count, " devices)"));
  }
  ScopedDevice scoped;
  CAL_RETURN_IF_ERROR(scoped.Enter(options.device));
  absl::StatusOr<msa::GpuInfo> gpu = msa::QueryGpu(options.device);
  if (!gpu.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU calibration: no usable CUDA device: ", gpu.status().message()));
  }
  Stream stream;
  CAL_RETURN_IF_ERROR(stream.Create());
  const auto seed = static_cast<uint64_t>(absl::ToUnixNanos(start));
  RandomFiller filler;
  CAL_RETURN_IF_ERROR(filler.Init(seed, stream.get()));
  CublasHandle cublas;
  CAL_RETURN_IF_ERROR(cublas.Create());

  GpuCalibrationReport report;
  report.details.push_back(absl::StrFormat(
      "device %d: %s, %d SMs, L2 %d MiB; model %s (L=%d Hq=%d Hkv=%d D=%d B=%d hidden=%d "
      "intermediate=%d vocab=%d); budget %s, seed %d",
      options.device, gpu->name, gpu->sm_count, gpu->l2_bytes >> 20, model.name,
      model.num_layers, model.num_q_heads, model.num_kv_heads, model.head_dim,
      model.block_tokens, model.hidden_size, model.intermediate_size, model.vocab_size,
      absl::FormatDuration(options.budget), seed));
  const double total_weight = Calibrator::NumAttentionMeasurements() + 1.0 +
                              Calibrator::kLinearWeight * options.linear_tokens.size();
  BudgetPlanner budget(start + options.budget, total_weight);
  Calibrator calibrator(model, options, *gpu, stream.get(), &filler, &budget, &report.details);
  absl::StatusOr<AttentionResult> attention = calibrator.Attention(seed);
  if (!attention.ok()) return attention.status();
  absl::StatusOr<std::vector<std::pair<int64_t, double>>> linear =
      calibrator.LinearSteps(cublas.get());
  if (!linear.ok()) return linear.status();

  CalibrationParams& params = report.params;
  params.device = gpu->name;
  params.source = absl::StrCat("asymcache-daemon on-start calibration ",
                               absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(),
                                                absl::UTCTimeZone()));
  params.linear_step_s = std::move(*linear);
  params.attn_flops_per_s = attention->flops_per_s;
  params.attn_kv_bytes_per_s = attention->kv_bytes_per_s;
  params.segment_overhead_s = attention->segment_overhead_s;
  params.step_overhead_s = attention->step_overhead_s;
  // The cost model prices prefill launches on this card's SMs (msa_waves.h).
  params.num_sms = std::max(1, gpu->sm_count);
  if (absl::Status status = params.Validate(); !status.ok()) {
    return absl::InternalError(absl::StrCat(
        "GPU calibration produced invalid parameters: ", status.message()));
  }
  report.elapsed = absl::Now() - start;
  return report;
}

}  // namespace asymcache::daemon
