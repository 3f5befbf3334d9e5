#include "services/coordinator/coordinator_service.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"
#include "services/common/tenant_salt.h"
#include "services/common/transport_security.h"

namespace asymcache {

namespace {

absl::StatusOr<MemberKind> KindFromProto(v1::MemberKind kind) {
  switch (kind) {
    case v1::MEMBER_KIND_DAEMON: return MemberKind::kDaemon;
    case v1::MEMBER_KIND_WORKER: return MemberKind::kWorker;
    case v1::MEMBER_KIND_UNSPECIFIED:
      return absl::InvalidArgumentError(
          "Register: kind is MEMBER_KIND_UNSPECIFIED; set MEMBER_KIND_DAEMON or MEMBER_KIND_WORKER");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("Register: kind ", static_cast<int>(kind), " is not a MemberKind"));
  }
}

v1::MemberKind KindToProto(MemberKind kind) {
  return kind == MemberKind::kDaemon ? v1::MEMBER_KIND_DAEMON : v1::MEMBER_KIND_WORKER;
}

absl::StatusOr<MemberRole> RoleFromProto(v1::Role role) {
  switch (role) {
    case v1::ROLE_UNSPECIFIED:  // treated as ROLE_BOTH (coordinator.proto)
    case v1::ROLE_BOTH: return MemberRole::kBoth;
    case v1::ROLE_PREFILL: return MemberRole::kPrefill;
    case v1::ROLE_DECODE: return MemberRole::kDecode;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("Register: role ", static_cast<int>(role), " is not a Role"));
  }
}

v1::Role RoleToProto(MemberRole role) {
  switch (role) {
    case MemberRole::kBoth: return v1::ROLE_BOTH;
    case MemberRole::kPrefill: return v1::ROLE_PREFILL;
    case MemberRole::kDecode: return v1::ROLE_DECODE;
  }
  return v1::ROLE_BOTH;
}

// Largest accepted load value: 2^40 (10^12 tokens or blocks, far beyond any
// real daemon). Bounding the inputs keeps every sum the registry and the
// router form (a daemon's and its workers' loads plus routed work, min_load +
// imbalance_abs_tokens) far from int64 overflow.
constexpr int64_t kMaxLoadValue = int64_t{1} << 40;

absl::StatusOr<MemberLoad> LoadFromProto(absl::string_view method, const v1::MemberLoad& in) {
  const std::pair<absl::string_view, int64_t> fields[] = {
      {"queued_prefill_tokens", in.queued_prefill_tokens()},
      {"decode_batch", in.decode_batch()},
      {"free_blocks", in.free_blocks()},
      {"capacity_blocks", in.capacity_blocks()},
      {"busy_blocks", in.busy_blocks()},
  };
  for (const auto& [field, value] : fields) {
    if (value < 0 || value > kMaxLoadValue) {
      return absl::InvalidArgumentError(absl::StrCat(method, ": load.", field, " = ", value,
                                                     " is outside [0, 2^40]"));
    }
  }
  MemberLoad load;
  load.queued_prefill_tokens = in.queued_prefill_tokens();
  load.decode_batch = in.decode_batch();
  load.free_blocks = in.free_blocks();
  load.capacity_blocks = in.capacity_blocks();
  load.last_event_sequence = in.last_event_sequence();
  load.busy_blocks = in.busy_blocks();
  return load;
}

void LoadToProto(const MemberLoad& load, v1::MemberLoad* out) {
  out->set_queued_prefill_tokens(load.queued_prefill_tokens);
  out->set_decode_batch(load.decode_batch);
  out->set_free_blocks(load.free_blocks);
  out->set_capacity_blocks(load.capacity_blocks);
  out->set_last_event_sequence(load.last_event_sequence);
  out->set_busy_blocks(load.busy_blocks);
}

void TargetToProto(const RoutedTarget& target, v1::RouteTarget* out) {
  if (target.daemon != nullptr) {
    out->set_daemon_id(target.daemon->member_id);
    out->set_daemon_address(target.daemon->address);
  }
  if (target.worker != nullptr) {
    out->set_worker_id(target.worker->member_id);
    out->set_worker_address(target.worker->address);
  }
}

void ScoreToProto(const std::shared_ptr<const MemberIdentity>& daemon, const CandidateScore& s,
                  v1::TtftPrediction* out) {
  if (daemon != nullptr) out->set_daemon_id(daemon->member_id);
  out->set_predicted_ttft_s(s.predicted_ttft_s);
  out->set_queue_s(s.queue_s);
  out->set_compute_s(s.compute_s);
  out->set_fetch_s(s.fetch_s);
  out->set_hit_tokens(s.hit_tokens);
  out->set_contiguous_hit_tokens(s.contiguous_hit_tokens);
  out->set_rebuild_tokens(s.rebuild_tokens);
  out->set_new_tokens(s.new_tokens);
  out->set_fetched_blocks(s.fetched_blocks);
  out->set_fetch_bytes(s.fetch_bytes);
  out->set_load_tokens(s.load_tokens);
}

absl::Status CheckMemberId(absl::string_view method, absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(method, ": member_id is empty"));
  return absl::OkStatus();
}

// Membership RPCs come from cluster components only: with TLS, a peer not in
// --trusted-peers (a tenant's certificate) gets PERMISSION_DENIED.
absl::Status CheckComponent(const TenantSaltPolicy& policy, const grpc::CallbackServerContext& ctx,
                            absl::string_view method) {
  const std::string peer = PeerIdentity(ctx);
  if (policy.IsTrusted(peer)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat(method, ": peer '", peer,
                   "' is not a cluster component (not in the coordinator's --trusted-peers); only "
                   "daemons and workers register"));
}

}  // namespace

CoordinatorService::CoordinatorService(CoordinatorState* state) : state_(state) {}

template <typename Body>
grpc::ServerUnaryReactor* CoordinatorService::Serve(grpc::CallbackServerContext* ctx,
                                                    absl::string_view method, Body&& body) {
  const absl::Time start = absl::Now();
  absl::Status status =
      accepting_.load()
          ? body()
          : absl::UnavailableError(
                absl::StrCat(method, ": the coordinator is shutting down; use another replica"));
  if (CoordinatorMetrics* metrics = state_->metrics()) {
    metrics->ObserveRpc(method, status.code(), absl::Now() - start);
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* CoordinatorService::Register(grpc::CallbackServerContext* ctx,
                                                       const v1::RegisterRequest* request,
                                                       v1::RegisterResponse* response) {
  return Serve(ctx, "Register", [&]() -> absl::Status {
    if (absl::Status s = CheckComponent(state_->tenant_salts(), *ctx, "Register"); !s.ok()) return s;
    MemberRegistration r;
    r.member_id = request->member_id();
    absl::StatusOr<MemberKind> kind = KindFromProto(request->kind());
    if (!kind.ok()) return kind.status();
    r.kind = *kind;
    absl::StatusOr<MemberRole> role = RoleFromProto(request->role());
    if (!role.ok()) return role.status();
    r.role = *role;
    r.address = request->address();
    r.gpu = request->gpu();
    r.daemon_id = request->daemon_id();
    r.instance = request->instance();
    if (request->has_model() && request->model().ByteSizeLong() > 0) {
      absl::StatusOr<ModelConfig> model = FromProto(request->model(), "model");
      if (!model.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("Register: ", model.status().message()));
      }
      r.model = *std::move(model);
    }
    if (request->has_calibration() && request->calibration().ByteSizeLong() > 0) {
      r.calibration = FromProto(request->calibration());
    }
    if (absl::Status s = state_->Register(r); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("Register: ", s.message()));
    }
    response->set_heartbeat_interval_s(absl::ToDoubleSeconds(state_->options().heartbeat_interval));
    response->set_member_timeout_s(absl::ToDoubleSeconds(state_->options().member_timeout));
    response->set_coordinator_instance(state_->instance());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                        const v1::HeartbeatRequest* request,
                                                        v1::HeartbeatResponse* /*response*/) {
  return Serve(ctx, "Heartbeat", [&]() -> absl::Status {
    if (absl::Status s = CheckComponent(state_->tenant_salts(), *ctx, "Heartbeat"); !s.ok()) return s;
    if (absl::Status s = CheckMemberId("Heartbeat", request->member_id()); !s.ok()) return s;
    absl::StatusOr<MemberLoad> load = LoadFromProto("Heartbeat", request->load());
    if (!load.ok()) return load.status();
    if (absl::Status s = state_->Heartbeat(request->member_id(), *load); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("Heartbeat: ", s.message()));
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Deregister(grpc::CallbackServerContext* ctx,
                                                         const v1::DeregisterRequest* request,
                                                         v1::DeregisterResponse* /*response*/) {
  return Serve(ctx, "Deregister", [&]() -> absl::Status {
    if (absl::Status s = CheckComponent(state_->tenant_salts(), *ctx, "Deregister"); !s.ok()) return s;
    if (absl::Status s = CheckMemberId("Deregister", request->member_id()); !s.ok()) return s;
    if (absl::Status s = state_->Deregister(request->member_id()); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("Deregister: ", s.message()));
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Route(grpc::CallbackServerContext* ctx,
                                                    const v1::RouteRequest* request,
                                                    v1::RouteResponse* response) {
  return Serve(ctx, "Route", [&]() -> absl::Status {
    if (absl::Status limited = state_->client_limiter().Admit(*ctx, "Route"); !limited.ok()) {
      return limited;
    }
    RouteInput in;
    const std::string peer = PeerIdentity(*ctx);
    const TenantSaltPolicy& tenants = state_->tenant_salts();
    absl::StatusOr<std::string> salt = tenants.SaltFor(peer, request->salt());
    if (!salt.ok()) {
      return absl::Status(salt.status().code(), absl::StrCat("Route: ", salt.status().message()));
    }
    in.salt = *salt;
    in.tokens = absl::MakeConstSpan(request->token_ids().data(),
                                    static_cast<size_t>(request->token_ids_size()));
    std::vector<BlockHash> hashes;
    if (in.tokens.empty()) {
      // A tenant's hashes would carry whatever salt it chose: with TLS only
      // a component may route by hashes.
      if (!tenants.IsTrusted(peer)) {
        return absl::PermissionDeniedError(absl::StrCat(
            "Route: peer '", peer,
            "' is a tenant (not in --trusted-peers): send token_ids, not block_hashes, so that "
            "the coordinator hashes them under the tenant's salt"));
      }
      hashes = FromProto(request->block_hashes());
      in.block_hashes = hashes;
      in.num_tokens = request->num_tokens();
    }
    in.reserve_tokens = request->reserve_tokens();
    in.job_id = request->agent().job_id();
    in.tool = request->agent().tool();
    in.last_step = request->agent().last_step();
    in.explain = request->explain();
    absl::StatusOr<RouteOutcome> out = state_->Route(in);
    if (!out.ok()) return out.status();

    response->set_route_id(out->route_id);
    TargetToProto(out->prefill, response->mutable_prefill());
    TargetToProto(out->decode, response->mutable_decode());
    response->set_split(out->split);
    response->set_reason(std::string(RouteReasonName(out->reason)));
    response->set_routing_mode(std::string(RoutingModeName(out->mode)));
    ScoreToProto(out->prefill.daemon, out->score, response->mutable_prediction());
    const int64_t block_tokens = out->block_tokens;
    for (const RebuildRun& run : out->rebuild) {
      v1::RebuildRun* r = response->add_rebuild();
      r->set_first_position(run.first_block * block_tokens);
      r->set_tokens(run.tokens);
    }
    for (const RoutedFetch& fetch : out->fetch) {
      v1::FetchRun* f = response->add_fetch();
      if (fetch.from != nullptr) {
        f->set_from_daemon_id(fetch.from->member_id);
        f->set_from_daemon_address(fetch.from->address);
      }
      f->set_first_position(fetch.first_block * block_tokens);
      f->set_blocks(fetch.blocks);
      f->set_bytes(fetch.bytes);
    }
    for (const ScoredCandidate& c : out->candidates) {
      ScoreToProto(c.daemon, c.score, response->add_candidates());
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::ReportTtft(grpc::CallbackServerContext* ctx,
                                                         const v1::ReportTtftRequest* request,
                                                         v1::ReportTtftResponse* response) {
  return Serve(ctx, "ReportTtft", [&]() -> absl::Status {
    absl::StatusOr<TtftReport> report = state_->ReportTtft(request->route_id(), request->ttft_s());
    if (!report.ok()) return report.status();
    response->set_predicted_ttft_s(report->predicted_ttft_s);
    response->set_relative_error(report->relative_error);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::ListMembers(grpc::CallbackServerContext* ctx,
                                                          const v1::ListMembersRequest* /*request*/,
                                                          v1::ListMembersResponse* response) {
  return Serve(ctx, "ListMembers", [&]() -> absl::Status {
    const CoordinatorListing listing = state_->List();
    response->set_coordinator_instance(state_->instance());
    for (const MemberStatus& status : listing.members) {
      const MemberSnapshot& m = status.member;
      v1::MemberInfo* info = response->add_members();
      info->set_member_id(m.member_id);
      info->set_kind(KindToProto(m.kind));
      info->set_address(m.address);
      info->set_gpu(m.gpu);
      info->set_role(RoleToProto(m.role));
      info->set_effective_role(RoleToProto(m.effective_role));
      info->set_daemon_id(m.daemon_id);
      LoadToProto(m.load, info->mutable_load());
      info->set_since_heartbeat_s(absl::ToDoubleSeconds(m.since_heartbeat));
      info->set_index_entries(status.index_entries);
      info->set_applied_event_sequence(status.applied_event_sequence);
      info->set_events_connected(status.events_connected);
      info->set_instance(m.instance);
      info->set_ramp_weight(m.ramp_weight);
    }
    response->set_index_entries(listing.index_entries);
    response->set_index_dropped_stored(listing.index_dropped_stored);
    response->set_stale_removed(listing.stale_removed);
    response->set_routing_mode(std::string(RoutingModeName(listing.mode)));
    if (listing.model.has_value()) ToProto(*listing.model, response->mutable_model());
    return absl::OkStatus();
  });
}

}  // namespace asymcache
