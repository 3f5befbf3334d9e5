#include "services/daemon/daemon_state.h"

#include <unistd.h>

#include <cstdio>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cachecore/eviction_policy.h"
#include "services/daemon/calibration_process.h"
#include "services/transport/ucx_transport.h"

namespace asymcache {

namespace {

absl::Status Annotate(const absl::Status& status, absl::string_view what) {
  return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
}

// The calibration the cost model uses, by the documented precedence:
// file > on-start GPU measurement (cuda) > built-in (cpu for host, H100 for cuda).
absl::StatusOr<CalibrationParams> ChooseCalibration(const DaemonOptions& options,
                                                    daemon::PoolBackend backend) {
  if (!options.calibration_file.empty()) {
    absl::StatusOr<CalibrationParams> loaded =
        CostModel::LoadCalibrationFile(options.calibration_file);
    if (!loaded.ok()) return Annotate(loaded.status(), "--calibration");
    return loaded;
  }
  if (backend == daemon::PoolBackend::kCuda) {
    if (options.calibrate_on_start) {
      // Budget x 6 + 60 s: CUDA start-up and a slow first cuBLAS call included.
      const absl::Duration timeout = options.calibration_budget * 6 + absl::Seconds(60);
      const std::string calibrator =
          options.calibrator.empty() ? DefaultCalibratorPath() : options.calibrator;
      return CalibrateInChildProcess(calibrator, options.model, options.cuda_device,
                                     options.calibration_budget, timeout, options.cancel);
    }
    CalibrationParams params = CostModel::DefaultH100Llama3_8B();
    params.source = "built-in H100 defaults (--calibrate-on-start=false, no --calibration)";
    return params;
  }
  CalibrationParams params = CostModel::DefaultCpu(options.model);
  params.source = "built-in CPU defaults (host backend, no --calibration)";
  return params;
}

}  // namespace

CacheDaemonState::CacheDaemonState(const DaemonOptions& options) : options_(options) {}

CacheDaemonState::~CacheDaemonState() {
  // The listener points at the hub and the metrics: detach it first.
  if (cache_) cache_->SetEventListener(nullptr);
  // Pins and exports hold blocks of the cache: drop them before it.
  transfer_.reset();
  pins_.reset();
}

absl::StatusOr<std::unique_ptr<CacheDaemonState>> CacheDaemonState::Create(
    const DaemonOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<CacheDaemonState> state(new CacheDaemonState(options));
  state->started_ = absl::Now();
  state->instance_ = absl::StrFormat("%d-%016x", static_cast<int>(getpid()),
                                     absl::Uniform<uint64_t>(absl::BitGen()));
  if (options.clock != nullptr) {
    state->clock_ = options.clock;
  } else {
    state->owned_clock_ = std::make_unique<RealClock>();
    state->clock_ = state->owned_clock_.get();
  }

  absl::StatusOr<daemon::PoolBackend> backend = daemon::ParsePoolBackend(options.backend);
  if (!backend.ok()) return Annotate(backend.status(), "--backend");

  // Calibration first: the on-start GPU measurement needs scratch memory that
  // a pool sized as a fraction of free memory would otherwise take.
  absl::StatusOr<CalibrationParams> calibration = ChooseCalibration(options, *backend);
  if (!calibration.ok()) return calibration.status();
  state->calibration_ = *std::move(calibration);
  if (!options.calibration_out.empty()) {
    std::FILE* out = std::fopen(options.calibration_out.c_str(), "w");
    const std::string json = CostModel::CalibrationToJson(state->calibration_, options.model);
    if (out == nullptr || std::fwrite(json.data(), 1, json.size(), out) != json.size()) {
      if (out != nullptr) std::fclose(out);
      return absl::InvalidArgumentError(
          absl::StrCat("--calibration-out: cannot write '", options.calibration_out, "'"));
    }
    std::fclose(out);
  }
  // Pool.
  daemon::PoolSizeSpec size;
  size.bytes = options.pool_fraction > 0 ? 0 : options.pool_bytes;
  size.fraction_of_free = options.pool_fraction;
  absl::StatusOr<int64_t> blocks =
      daemon::ResolvePoolBlocks(*backend, options.cuda_device, size, options.model);
  if (!blocks.ok()) return Annotate(blocks.status(), "pool size");
  absl::StatusOr<daemon::PoolLayout> layout = daemon::PoolLayout::FromModel(options.model, *blocks);
  if (!layout.ok()) return Annotate(layout.status(), "pool layout");
  absl::StatusOr<std::unique_ptr<daemon::PoolMemory>> pool =
      *backend == daemon::PoolBackend::kCuda
          ? daemon::CreateCudaPoolMemory(*layout, options.cuda_device)
          : daemon::CreateHostPoolMemory(*layout, options.shm_name);
  if (!pool.ok()) return Annotate(pool.status(), "KV pool");
  state->pool_ = *std::move(pool);

  // Cost model and policy.
  state->cost_ = std::make_unique<CostModel>(options.model, state->calibration_);
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy =
      MakeEvictionPolicy(options.policy, state->cost_.get(), options.policy_options);
  if (!policy.ok()) return Annotate(policy.status(), "--policy");

  KvCacheOptions cache_options;
  cache_options.model = options.model;
  cache_options.capacity_blocks = *blocks;
  cache_options.lease_timeout = options.lease_timeout;
  cache_options.session_chain_token_budget = options.session_chain_token_budget;
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      KvCache::Create(cache_options, *std::move(policy), state->clock_);
  if (!cache.ok()) return cache.status();
  state->cache_ = *std::move(cache);
  state->pins_ = std::make_unique<AgentPinTable>(*blocks, options.agent_pins, state->clock_);

  KvEventHubOptions hub;
  hub.history = options.event_history;
  hub.max_watchers = options.max_watchers;
  state->events_ = std::make_unique<KvEventHub>(hub);

  // Metrics (before the listener, which counts events).
  if (options.metrics_port >= 0) {
    MetricsExposerOptions exposer;
    exposer.host = options.metrics_host;
    exposer.port = options.metrics_port;
    absl::StatusOr<std::unique_ptr<MetricsExposer>> started = MetricsExposer::Start(exposer);
    if (!started.ok()) return Annotate(started.status(), "--metrics-port");
    state->exposer_ = *std::move(started);
    DaemonMetricsOptions m;
    m.policy = options.policy;
    m.backend = options.backend;
    m.model = options.model.name;
    absl::StatusOr<std::unique_ptr<DaemonMetrics>> metrics =
        DaemonMetrics::Create(state->exposer_->registry(), m);
    if (!metrics.ok()) return metrics.status();
    state->metrics_ = *std::move(metrics);
    state->metrics_->SetCalibration(state->calibration_);
  }
  KvEventHub* events = state->events_.get();
  DaemonMetrics* metrics = state->metrics_.get();
  state->cache_->SetEventListener([events, metrics](const KvEvent& event) {
    events->Publish(event);
    if (metrics != nullptr) metrics->AddKvEvents(event.kind, 1);
  });

  // Transport.
  UcxTransportOptions ucx;
  ucx.transports = options.ucx_transports;
  absl::StatusOr<std::unique_ptr<UcxTransport>> transport = UcxTransport::Create(ucx);
  if (!transport.ok()) return Annotate(transport.status(), "UCX transport");
  state->transport_ = *std::move(transport);
  BlockTransferOptions transfer;
  transfer.export_timeout = options.export_timeout;
  transfer.max_blocks = options.max_transfer_blocks;
  absl::StatusOr<std::unique_ptr<BlockTransfer>> block_transfer =
      BlockTransfer::Create(state->cache_.get(), state->pool_.get(), state->transport_.get(),
                            state->clock_, transfer);
  if (!block_transfer.ok()) return block_transfer.status();
  state->transfer_ = *std::move(block_transfer);
  state->RunMaintenance();
  return state;
}

void CacheDaemonState::RunMaintenance() {
  cache_->ExpireLeases();
  transfer_->ExpireExports();
  pins_->ExpirePins();
  if (metrics_ == nullptr) return;
  const KvCache::Stats stats = cache_->GetStats();
  metrics_->SetBlockStates(stats.pool);
  metrics_->SetLeases(stats.active_leases);
  metrics_->SetWritingPages(stats.writing_pages);
  if (stats.deferred_plans > deferred_plans_seen_) {
    metrics_->AddDeferredPlans(stats.deferred_plans - deferred_plans_seen_);
    deferred_plans_seen_ = stats.deferred_plans;
  }
  metrics_->SetAgentPins(pins_->pinned_blocks(), static_cast<int64_t>(pins_->pinned_jobs()));
  if (stats.pool.evictions > evictions_seen_) {
    metrics_->AddEvictions(EvictionReason::kCapacity, stats.pool.evictions - evictions_seen_);
    evictions_seen_ = stats.pool.evictions;
  }
}

absl::Duration CacheDaemonState::NoteBlocked(SequenceId sequence) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&blocked_mu_);
  if (blocked_since_.size() >= kMaxBlockedSequences && !blocked_since_.contains(sequence)) {
    blocked_since_.clear();
  }
  const auto [it, inserted] = blocked_since_.try_emplace(sequence, now);
  return inserted ? absl::ZeroDuration() : now - it->second;
}

void CacheDaemonState::ClearBlocked(SequenceId sequence) {
  absl::MutexLock lock(&blocked_mu_);
  blocked_since_.erase(sequence);
}

}  // namespace asymcache
