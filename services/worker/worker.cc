#include "services/worker/worker.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/server.h"
#include "model/model_backend.h"
#include "model/weight_source.h"
#include "services/client/client.h"
#include "services/common/grpc_server_parts.h"
#include "services/common/member_address.h"
#include "services/common/metrics_exposer.h"
#include "services/common/transport_security.h"
#include "services/coordinator/member_registrar.h"
#include "services/worker/step_trace.h"
#include "services/worker/worker_metrics.h"
#include "services/worker/worker_service.h"

namespace asymcache::worker {

namespace {

v1::Role ToProtoRole(WorkerRole role) {
  switch (role) {
    case WorkerRole::kPrefill:
      return v1::ROLE_PREFILL;
    case WorkerRole::kDecode:
      return v1::ROLE_DECODE;
    case WorkerRole::kBoth:
      break;
  }
  return v1::ROLE_BOTH;
}

// `status` with "WHAT: " prepended (its code kept).
absl::Status Prefixed(absl::string_view what, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
}

absl::StatusOr<model::WeightSource> LoadWeights(const WorkerOptions& options) {
  if (!options.model_dir.empty()) {
    absl::StatusOr<model::WeightSource> stored =
        model::WeightSource::FromDirectory(options.model_dir);
    if (!stored.ok()) return Prefixed("--model-dir", stored.status());
    return stored;
  }
  absl::StatusOr<model::LlamaConfig> shape = model::LlamaConfig::Named(options.model);
  if (!shape.ok()) return Prefixed("--model", shape.status());
  absl::StatusOr<model::WeightSource> random = model::WeightSource::Random(*shape, options.seed);
  if (!random.ok()) return Prefixed("--model", random.status());
  return random;
}

// Maps the daemon's pool for `config` (the daemon checks the KV shape) and
// checks that its memory is what `options.backend` computes on.
absl::StatusOr<AttachedPool> MapDaemonPool(Client& daemon, const WorkerOptions& options,
                                           const model::LlamaConfig& config) {
  const std::string daemon_what = absl::StrCat("daemon ", options.daemon);
  absl::StatusOr<AttachedPool> pool =
      daemon.AttachPool(config.ToCacheModel(), options.engine.rpc_timeout);
  if (!pool.ok()) return Prefixed(absl::StrCat(daemon_what, ": AttachPool"), pool.status());
  const absl::string_view pool_backend = pool->backend();
  const absl::string_view wanted_pool = options.backend == "cuda" ? "cuda" : "host";
  if (pool_backend != wanted_pool) {
    return absl::FailedPreconditionError(absl::StrCat(
        daemon_what, " keeps its pool in ", pool_backend, " memory, but --backend=",
        options.backend, " needs a ", wanted_pool, " pool (start the daemon with --backend=",
        wanted_pool, ")"));
  }
  return pool;
}

// The model backend (options.backend) over `pool`.
absl::StatusOr<std::unique_ptr<model::ModelBackend>> CreateBackend(
    const WorkerOptions& options, const model::WeightSource& weights, const AttachedPool& pool) {
  model::KvPoolView view;
  view.base = pool.base();
  view.num_blocks = pool.layout().num_blocks;
  view.layer_stride_bytes = pool.layout().layer_stride_bytes();
  absl::StatusOr<std::unique_ptr<model::ModelBackend>> backend;
  if (options.backend == "cuda") {
    model::CudaBackendOptions cuda;
    cuda.device = options.gpu;
    cuda.max_step_tokens = options.engine.max_step_tokens;
    cuda.max_batch = std::max(cuda.max_batch, options.engine.max_running);
    backend = model::CreateCudaBackend(weights, view, cuda);
  } else {
    model::CpuBackendOptions cpu;
    cpu.num_threads = options.cpu_threads;
    backend = model::CreateCpuBackend(weights, view, cpu);
  }
  if (!backend.ok()) return Prefixed(absl::StrCat(options.backend, " backend"), backend.status());
  return backend;
}

}  // namespace

struct Worker::Server {
  // Declaration order = reverse destruction order: the registrar and the
  // stats thread (which read the engine) go first, then the server, the
  // service, the engine, the metrics it may report to, the backend it
  // borrows, the weights and the pool mapping the backend reads, the daemon
  // client; the exposer (whose registry holds the metrics) last.
  std::unique_ptr<MetricsExposer> exposer;
  std::unique_ptr<Client> daemon;
  std::unique_ptr<AttachedPool> pool;
  std::unique_ptr<model::WeightSource> weights;
  std::unique_ptr<model::ModelBackend> backend;
  std::unique_ptr<WorkerMetrics> metrics;
  std::unique_ptr<StepTraceWriter> step_trace;  // written by the engine's step thread
  std::unique_ptr<Engine> engine;
  std::unique_ptr<WorkerService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;
  std::string member_id;
  std::string advertise_address;
  absl::Duration shutdown_grace;
  std::unique_ptr<MemberRegistrar> registrar;

  ShutdownLatch shutdown;
  std::unique_ptr<PeriodicThread> stats_thread;
};

absl::StatusOr<std::unique_ptr<Worker>> Worker::Start(const WorkerOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto server = std::make_unique<Server>();
  server->shutdown_grace = options.shutdown_grace;

  // Bind the metrics port first: a port clash fails before the model loads.
  if (options.metrics_port >= 0) {
    MetricsExposerOptions exposer;
    exposer.host = options.metrics_host;
    exposer.port = options.metrics_port;
    absl::StatusOr<std::unique_ptr<MetricsExposer>> started = MetricsExposer::Start(exposer);
    if (!started.ok()) return Prefixed("--metrics-port", started.status());
    server->exposer = *std::move(started);
  }

  // One set of channel credentials for every call the worker makes (its
  // daemon, the coordinators).
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel_credentials =
      MakeChannelCredentials(options.security);
  if (!channel_credentials.ok()) return channel_credentials.status();

  // The co-located daemon: its channel, its calibration.
  const std::string daemon_what = absl::StrCat("daemon ", options.daemon);
  ClientOptions client_options;
  client_options.credentials = *channel_credentials;
  client_options.target = options.daemon;
  client_options.default_timeout = options.engine.rpc_timeout;
  client_options.max_message_bytes = options.max_message_bytes;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(client_options);
  if (!client.ok()) return Prefixed("--daemon", client.status());
  server->daemon = *std::move(client);
  if (absl::Status s = server->daemon->WaitForReady(options.daemon_connect_timeout); !s.ok()) {
    return Prefixed(daemon_what, s);
  }
  absl::StatusOr<DaemonStats> daemon_stats = server->daemon->GetStats(options.engine.rpc_timeout);
  if (!daemon_stats.ok()) return Prefixed(daemon_what, daemon_stats.status());

  // The model, then the daemon's pool mapped for it (the daemon checks the KV
  // shape), then the backend over the mapping.
  absl::StatusOr<model::WeightSource> weights = LoadWeights(options);
  if (!weights.ok()) return weights.status();
  server->weights = std::make_unique<model::WeightSource>(*std::move(weights));
  const model::LlamaConfig& config = server->weights->config();
  absl::StatusOr<AttachedPool> pool = MapDaemonPool(*server->daemon, options, config);
  if (!pool.ok()) return pool.status();
  server->pool = std::make_unique<AttachedPool>(*std::move(pool));
  absl::StatusOr<std::unique_ptr<model::ModelBackend>> backend =
      CreateBackend(options, *server->weights, *server->pool);
  if (!backend.ok()) return backend.status();
  server->backend = *std::move(backend);

  if (server->exposer != nullptr) {
    WorkerMetrics::Info info;
    info.role = std::string(WorkerRoleName(options.engine.role));
    info.backend = std::string(server->backend->name());
    info.model = config.name;
    absl::StatusOr<std::unique_ptr<WorkerMetrics>> metrics =
        WorkerMetrics::Create(server->exposer->registry(), info);
    if (!metrics.ok()) return metrics.status();
    server->metrics = *std::move(metrics);
  }

  EngineOptions engine_options = options.engine;
  engine_options.calibration = daemon_stats->calibration;
  engine_options.daemon_instance = server->pool->daemon_instance();
  // A restarted daemon (same address, new run, new empty pool): map its pool
  // and compute on a backend over it; the engine calls this on its step
  // thread with nothing running, the only user of the backend and the pool.
  engine_options.reattach = [s = server.get(), options]() -> absl::StatusOr<ReattachedPool> {
    absl::StatusOr<AttachedPool> pool = MapDaemonPool(*s->daemon, options, s->weights->config());
    if (!pool.ok()) return pool.status();
    auto mapped = std::make_unique<AttachedPool>(*std::move(pool));
    absl::StatusOr<std::unique_ptr<model::ModelBackend>> backend =
        CreateBackend(options, *s->weights, *mapped);
    if (!backend.ok()) return backend.status();
    s->backend = *std::move(backend);  // the old backend, then its mapping, go
    s->pool = std::move(mapped);
    return ReattachedPool{.backend = s->backend.get(),
                          .daemon_instance = s->pool->daemon_instance(),
                          .capacity_blocks = s->pool->layout().num_blocks};
  };
  if (server->metrics != nullptr) {
    engine_options.on_token = [metrics = server->metrics.get()](double since_arrival_s,
                                                                 double since_previous_s) {
      if (since_previous_s < 0) {
        metrics->ObserveTtft(since_arrival_s);
      } else {
        metrics->ObserveTpot(since_previous_s);
      }
    };
  }
  if (!options.step_trace.empty()) {
    absl::StatusOr<std::unique_ptr<StepTraceWriter>> trace =
        StepTraceWriter::Open(options.step_trace, config.ToCacheModel());
    if (!trace.ok()) return trace.status();
    server->step_trace = *std::move(trace);
    engine_options.on_step = [trace = server->step_trace.get()](const StepRecord& record) {
      trace->Write(record);
    };
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Start(server->backend.get(), server->daemon.get(), std::move(engine_options));
  if (!engine.ok()) return Prefixed("engine", engine.status());
  server->engine = *std::move(engine);

  server->service = std::make_unique<WorkerService>(
      server->engine.get(), TenantSaltPolicy(options.security), options.client_rate_limit,
      options.security.trusted_peers, options.max_stream_buffered_bytes);
  absl::StatusOr<StartedGrpcServer> grpc_server =
      StartGrpcServer(options.listen, options.security, options.max_message_bytes,
                      server->service.get());
  if (!grpc_server.ok()) return grpc_server.status();
  server->grpc_server = std::move(grpc_server->server);
  server->grpc_port = grpc_server->port;

  server->advertise_address =
      AdvertiseAddress(options.advertise_address, options.listen, server->grpc_port);
  server->member_id = MemberIdOrDefault(options.member_id, server->grpc_port);
  if (!options.coordinators.empty()) {
    MemberRegistrarOptions registrar;
    registrar.credentials = *channel_credentials;
    registrar.coordinators = options.coordinators;
    registrar.rpc_timeout = options.coordinator_rpc_timeout;
    registrar.max_backoff = options.coordinator_retry_max;
    registrar.initial_backoff = std::min(registrar.initial_backoff, registrar.max_backoff);
    MemberRegistrar::Identity identity;
    identity.member_id = server->member_id;
    identity.kind = v1::MEMBER_KIND_WORKER;
    identity.address = server->advertise_address;
    identity.gpu = options.backend == "cuda" ? options.gpu : -1;
    identity.role = ToProtoRole(options.engine.role);
    identity.model = config.ToCacheModel();
    identity.daemon_id = options.daemon_member_id;
    Engine* engine_ptr = server->engine.get();
    absl::StatusOr<std::unique_ptr<MemberRegistrar>> started = MemberRegistrar::Start(
        std::move(registrar), std::move(identity), [engine_ptr]() {
          const EngineStats stats = engine_ptr->stats();
          MemberRegistrar::Load load;
          load.queued_prefill_tokens = stats.queued_prefill_tokens;
          load.decode_batch = stats.running;
          return load;
        });
    if (!started.ok()) {
      server->grpc_server->Shutdown();
      // Options were validated; what is left is a derived default (e.g. a
      // host name that is not a valid member id: set --member-id).
      return absl::InvalidArgumentError(
          absl::StrCat("joining the coordinators: ", started.status().message()));
    }
    server->registrar = *std::move(started);
  }

  if (server->metrics != nullptr) {
    Engine* engine_ptr = server->engine.get();
    WorkerMetrics* metrics_ptr = server->metrics.get();
    metrics_ptr->Update(engine_ptr->stats());
    server->stats_thread = std::make_unique<PeriodicThread>(
        options.stats_interval,
        [engine_ptr, metrics_ptr]() { metrics_ptr->Update(engine_ptr->stats()); });
  }
  return std::unique_ptr<Worker>(new Worker(std::move(server)));
}

Worker::Worker(std::unique_ptr<Server> server) : server_(std::move(server)) {}

Worker::~Worker() { Shutdown(); }

int Worker::grpc_port() const { return server_->grpc_port; }
int Worker::metrics_port() const {
  return server_->exposer != nullptr ? server_->exposer->port() : -1;
}
std::string Worker::local_address() const { return absl::StrCat("127.0.0.1:", server_->grpc_port); }
const std::string& Worker::member_id() const { return server_->member_id; }
const std::string& Worker::advertise_address() const { return server_->advertise_address; }
MemberRegistrar* Worker::registrar() { return server_->registrar.get(); }
Engine& Worker::engine() { return *server_->engine; }

void Worker::Shutdown() {
  Server& s = *server_;
  if (!s.shutdown.Begin()) return;  // another caller shut down
  // 1. Leave the cluster (bounded by the registrar's deregister timeout), so
  //    coordinators stop routing here before requests are refused.
  if (s.registrar != nullptr) s.registrar->Stop();
  // 2. Tell load balancers and refuse new work.
  MarkNotServing(*s.grpc_server);
  s.service->StopAccepting();
  // 3. In-flight streams get the grace period, then are cancelled (the engine,
  //    still running, ends them and releases their blocks).
  StopGrpcServer(*s.grpc_server, s.shutdown_grace);
  // 4. The last counters, then the step loop.
  if (s.stats_thread != nullptr) {
    s.stats_thread->Stop();
    s.metrics->Update(s.engine->stats());
  }
  s.engine->Shutdown();
  s.shutdown.Finish();
}

void Worker::Wait() { server_->shutdown.Wait(); }

}  // namespace asymcache::worker
