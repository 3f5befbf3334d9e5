#include "services/daemon/cache_daemon.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/server.h"
#include "services/common/grpc_server_parts.h"
#include "services/common/member_address.h"
#include "services/common/transport_security.h"
#include "services/coordinator/member_registrar.h"
#include "services/daemon/cache_daemon_service.h"
#include "services/daemon/daemon_state.h"

namespace asymcache {

namespace {

v1::Role ParseRole(const std::string& role) {
  if (role == "prefill") return v1::ROLE_PREFILL;
  if (role == "decode") return v1::ROLE_DECODE;
  return v1::ROLE_BOTH;  // "both" (Validate() allows nothing else)
}

// Registers the daemon with its coordinators. The load it reports is the
// daemon's own view: pool free/capacity blocks and the latest KV event; the
// active step leases stand for the decode batch, and queued prefill tokens
// are 0 (the daemon does not see the engines' queues; workers report theirs).
absl::StatusOr<std::unique_ptr<MemberRegistrar>> StartRegistrar(
    CacheDaemonState* state, const std::string& member_id, const std::string& address,
    std::shared_ptr<grpc::ChannelCredentials> credentials) {
  const DaemonOptions& options = state->options();
  MemberRegistrarOptions registrar;
  registrar.credentials = std::move(credentials);
  registrar.coordinators = options.coordinators;
  registrar.rpc_timeout = options.coordinator_rpc_timeout;
  registrar.max_backoff = options.coordinator_retry_max;
  registrar.initial_backoff = std::min(registrar.initial_backoff, registrar.max_backoff);
  MemberRegistrar::Identity identity;
  identity.member_id = member_id;
  identity.kind = v1::MEMBER_KIND_DAEMON;
  identity.address = address;
  identity.gpu = options.gpu.value_or(options.backend == "cuda" ? options.cuda_device : -1);
  identity.role = ParseRole(options.role);
  identity.model = state->model();
  identity.calibration = state->calibration();
  identity.instance = state->instance();
  return MemberRegistrar::Start(std::move(registrar), std::move(identity), [state]() {
    const KvCache::Stats stats = state->cache().GetStats();
    MemberRegistrar::Load load;
    load.queued_prefill_tokens = 0;
    load.decode_batch = stats.active_leases;
    load.free_blocks = stats.pool.free;
    load.capacity_blocks = stats.pool.capacity;
    load.busy_blocks = stats.pool.writing + stats.pool.pinned + stats.pool.in_transfer;
    load.last_event_sequence = state->events().last_sequence();
    return load;
  });
}

}  // namespace

struct CacheDaemon::Server {
  std::unique_ptr<CacheDaemonState> state;
  std::unique_ptr<CacheDaemonService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;
  std::string member_id;
  std::string advertise_address;
  // Declared after `state`, so destroyed (stopped) before it.
  std::unique_ptr<MemberRegistrar> registrar;

  ShutdownLatch shutdown;
  std::unique_ptr<PeriodicThread> maintenance;
};

absl::StatusOr<std::unique_ptr<CacheDaemon>> CacheDaemon::Start(const DaemonOptions& options) {
  auto server = std::make_unique<Server>();
  absl::StatusOr<std::unique_ptr<CacheDaemonState>> state = CacheDaemonState::Create(options);
  if (!state.ok()) return state.status();
  server->state = *std::move(state);
  if (options.cancel != nullptr && options.cancel->load()) {
    return absl::CancelledError("start cancelled (shutdown requested) before serving");
  }
  // One set of channel credentials for every call the daemon makes (peer
  // daemons, coordinators).
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel_credentials =
      MakeChannelCredentials(options.security);
  if (!channel_credentials.ok()) return channel_credentials.status();
  server->service =
      std::make_unique<CacheDaemonService>(server->state.get(), *channel_credentials);

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
    absl::StatusOr<std::unique_ptr<MemberRegistrar>> registrar =
        StartRegistrar(server->state.get(), server->member_id, server->advertise_address,
                       *channel_credentials);
    if (!registrar.ok()) {
      server->grpc_server->Shutdown();
      // Options were validated; what is left is a derived default (e.g. a
      // host name that is not a valid member id: set --member-id).
      return absl::InvalidArgumentError(
          absl::StrCat("joining the coordinators: ", registrar.status().message()));
    }
    server->registrar = *std::move(registrar);
  }

  CacheDaemonState* state_ptr = server->state.get();
  server->maintenance = std::make_unique<PeriodicThread>(
      state_ptr->options().maintenance_interval, [state_ptr]() { state_ptr->RunMaintenance(); });
  return std::unique_ptr<CacheDaemon>(new CacheDaemon(std::move(server)));
}

CacheDaemon::CacheDaemon(std::unique_ptr<Server> server) : server_(std::move(server)) {}

CacheDaemon::~CacheDaemon() { Shutdown(); }

int CacheDaemon::grpc_port() const { return server_->grpc_port; }
int CacheDaemon::metrics_port() const { return server_->state->metrics_port(); }
std::string CacheDaemon::local_address() const {
  return absl::StrCat("127.0.0.1:", server_->grpc_port);
}
CacheDaemonState& CacheDaemon::state() { return *server_->state; }
const std::string& CacheDaemon::member_id() const { return server_->member_id; }
const std::string& CacheDaemon::advertise_address() const { return server_->advertise_address; }
MemberRegistrar* CacheDaemon::registrar() { return server_->registrar.get(); }

void CacheDaemon::Shutdown() {
  Server& s = *server_;
  if (!s.shutdown.Begin()) return;  // another caller shut down
  // 0. Leave the cluster (bounded by the registrar's deregister timeout), so
  //    coordinators stop routing here before requests are refused.
  if (s.registrar != nullptr) s.registrar->Stop();
  // 1. Tell load balancers and refuse new work.
  MarkNotServing(*s.grpc_server);
  s.service->StopAccepting();
  // 2. End event streams once they have delivered what was published.
  s.state->events().Close();
  // 3. In-flight RPCs get the grace period, then are cancelled.
  StopGrpcServer(*s.grpc_server, s.state->options().shutdown_grace);
  s.maintenance->Stop();
  // 4. Leases, exports and pins are released with the state.
  s.shutdown.Finish();
}

void CacheDaemon::Wait() { server_->shutdown.Wait(); }

}  // namespace asymcache
