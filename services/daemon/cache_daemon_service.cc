#include "services/daemon/cache_daemon_service.h"

#include <chrono>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "cachecore/block_hash.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"

namespace asymcache {

namespace {

// Peers cached for ImportBlocks; beyond this the map is cleared (bounded memory).
constexpr size_t kMaxPeerChannels = 256;
// Deadline of the ExportBlocks/ReleaseExport calls an importer makes.
constexpr absl::Duration kPeerCallTimeout = absl::Seconds(10);
// How long WatchEvents waits for events before checking for cancellation.
constexpr absl::Duration kWatchPoll = absl::Milliseconds(200);

int64_t ToMillis(absl::Duration d) { return absl::ToInt64Milliseconds(d); }
int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

// INVALID_ARGUMENT naming `field`'s first token outside [0, vocab_size).
absl::Status CheckVocabulary(absl::string_view method, absl::string_view field,
                             const google::protobuf::RepeatedField<int32_t>& tokens,
                             const DaemonOptions& options) {
  const int64_t vocab = options.model.vocab_size;
  for (int i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(method, ": ", field, "[", i, "] = ",
                                                     tokens[i], " is outside the vocabulary [0, ",
                                                     vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTokens(absl::string_view method, const google::protobuf::RepeatedField<int32_t>& tokens,
                         const DaemonOptions& options) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(method, ": tokens is empty"));
  }
  if (tokens.size() > options.max_context_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(method, ": ", tokens.size(),
                                                   " tokens, more than max_context_tokens ",
                                                   options.max_context_tokens));
  }
  return CheckVocabulary(method, "tokens", tokens, options);
}

absl::Status CheckHashCount(absl::string_view method, int count, int64_t limit) {
  if (count == 0) return absl::InvalidArgumentError(absl::StrCat(method, ": hashes is empty"));
  if (count > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(method, ": ", count, " hashes, more than the limit of ", limit));
  }
  return absl::OkStatus();
}

void ToProto(const PinDecision& decision, int64_t blocks, v1::PinDecision* out) {
  out->set_pinned(decision.pinned);
  out->set_outcome(std::string(PinOutcomeName(decision.outcome)));
  out->set_ttl_ms(ToMillis(decision.ttl));
  out->set_blocks(blocks);
  out->set_reason(decision.reason);
}

// What rebuilding the pinned blocks would cost the job's next step: each
// block rebuilt at its position, packed with the rest of its context
// (sigma = 0) in a step of its own.
double ExpectedRebuildCost(const CacheDaemonState& state, const BlockPool::PinSet& pins) {
  double cost = 0;
  for (BlockId id : pins.ids()) {
    std::optional<IndexedBlockInfo> info = state.cache().pool().sealed_info(id);
    if (!info.has_value()) continue;
    cost += state.cost().RebuildCost(info->tokens, info->position, 0.0, 0);
  }
  return cost;
}

}  // namespace

CacheDaemonService::CacheDaemonService(CacheDaemonState* state,
                                       std::shared_ptr<grpc::ChannelCredentials> peer_credentials)
    : state_(state), peer_credentials_(std::move(peer_credentials)) {}

template <typename Body>
grpc::Status CacheDaemonService::Serve(absl::string_view method, Body&& body) {
  const absl::Time start = absl::Now();
  absl::Status status = accepting_.load()
                            ? body()
                            : absl::UnavailableError(absl::StrCat(
                                  method, ": the daemon is shutting down; retry elsewhere"));
  if (DaemonMetrics* metrics = state_->metrics()) {
    metrics->ObserveRpc(method, status.code(), absl::Now() - start);
  }
  return ToGrpcStatus(status);
}

template <typename Body>
grpc::ServerUnaryReactor* CacheDaemonService::ServeUnary(grpc::CallbackServerContext* ctx,
                                                         absl::string_view method, Body&& body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(Serve(method, std::forward<Body>(body)));
  return reactor;
}

// ---------------------------------------------------------------- steps

grpc::ServerUnaryReactor* CacheDaemonService::PlanStep(grpc::CallbackServerContext* ctx, const v1::PlanStepRequest* request,
                                          v1::PlanStepResponse* response) {
  return ServeUnary(ctx, "PlanStep", [&]() -> absl::Status {
    const DaemonOptions& options = state_->options();
    if (request->sequence_id() == 0) {
      return absl::InvalidArgumentError("PlanStep: sequence_id must be non-zero");
    }
    if (absl::Status s = CheckTokens("PlanStep", request->tokens(), options); !s.ok()) return s;
    if (absl::Status s = CheckSameShape(request->expected_model(), state_->model(),
                                        "PlanStep: expected_model");
        !s.ok()) {
      return s;
    }
    const absl::Span<const TokenId> tokens(request->tokens().data(), request->tokens().size());
    if (!request->block_hashes().empty()) {
      const std::vector<BlockHash> ours =
          ChainHashes(request->salt(), tokens, state_->model().block_tokens);
      if (static_cast<size_t>(request->block_hashes_size()) != ours.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "PlanStep: ", request->block_hashes_size(), " block_hashes for ", tokens.size(),
            " tokens; expected ", ours.size(), " (one per block of ",
            state_->model().block_tokens, " tokens, the last may be partial)"));
      }
      for (size_t i = 0; i < ours.size(); ++i) {
        if (FromProto(request->block_hashes(static_cast<int>(i))) != ours[i]) {
          return absl::InvalidArgumentError(absl::StrCat(
              "PlanStep: block_hashes[", i, "] does not match the hash of its tokens (expected ",
              ours[i].ToHex(), ")"));
        }
      }
    }
    if (request->defer_if_pending_tokens() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PlanStep: defer_if_pending_tokens must be >= 0 (0 = never defer), got ",
          request->defer_if_pending_tokens()));
    }
    const BeginStepOptions begin{.defer_if_pending_tokens = request->defer_if_pending_tokens()};
    const absl::Time start = absl::Now();
    absl::StatusOr<StepLease> lease =
        state_->cache().BeginStep(request->salt(), request->sequence_id(), tokens, begin);
    if (!lease.ok() && absl::IsResourceExhausted(lease.status())) {
      // Soft pins: a request refused for memory for longer than a pinned
      // job's expected benefit (the rebuild time its pins save) takes those
      // pins, oldest first; then one retry. A first refusal releases nothing
      // (waited zero): callers retry while blocked, and the wait grows.
      const absl::Duration waited = state_->NoteBlocked(request->sequence_id());
      const int64_t needed = (static_cast<int64_t>(tokens.size()) + options.model.block_tokens - 1) /
                             options.model.block_tokens;
      // (The retry can still be deferred — ABORTED — when another lease began
      // writing these pages meanwhile: the released pins then bought nothing
      // this time, as when the retry finds the pool taken again.)
      if (state_->pins().ReleaseUnderPressure(needed, waited) > 0) {
        lease = state_->cache().BeginStep(request->salt(), request->sequence_id(), tokens, begin);
      }
    }
    if (!lease.ok()) return lease.status();
    state_->ClearBlocked(request->sequence_id());
    const PlanTokenCounts counts = CountPlanTokens(lease->plan);
    if (DaemonMetrics* metrics = state_->metrics()) {
      metrics->ObservePlan(absl::Now() - start, counts);
    }
    // The plan pinned what it reads; the job's own pins can go now.
    if (!request->agent().job_id().empty()) state_->pins().OnJobResumed(request->agent().job_id());
    response->set_lease_id(lease->lease_id);
    response->set_lease_timeout_ms(ToMillis(options.lease_timeout));
    response->set_daemon_instance(state_->instance());
    ToProto(lease->plan, counts.contiguous_hit_tokens, response->mutable_plan());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::CommitStep(grpc::CallbackServerContext* ctx,
                                            const v1::CommitStepRequest* request,
                                            v1::CommitStepResponse* response) {
  return ServeUnary(ctx, "CommitStep", [&]() -> absl::Status {
    KvCache::CommitResult result;
    const KvCache::CommitOptions options{.keep_partial_last_page =
                                             request->keep_partial_last_page()};
    if (absl::Status s = state_->cache().CommitStep(request->lease_id(), options, &result);
        !s.ok()) {
      return s;
    }
    response->set_sealed_blocks(result.sealed_blocks);
    response->set_duplicate_blocks(result.duplicate_blocks);
    response->set_private_blocks(result.private_blocks);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::ReleaseStep(grpc::CallbackServerContext* ctx,
                                             const v1::ReleaseStepRequest* request,
                                             v1::ReleaseStepResponse* response) {
  return ServeUnary(ctx, "ReleaseStep", [&]() -> absl::Status {
    const v1::AgentJob& agent = request->agent();
    if (agent.job_id().empty()) {
      if (!agent.tool().empty() || agent.last_step()) {
        return absl::InvalidArgumentError("ReleaseStep: agent fields without agent.job_id");
      }
      return state_->cache().ReleaseStep(request->lease_id());
    }
    if (agent.tool().empty() && !agent.last_step()) {
      return absl::InvalidArgumentError(
          "ReleaseStep: agent.tool is required unless agent.last_step is set");
    }
    absl::StatusOr<BlockPool::PinSet> pins = state_->cache().ReleaseStepKeepPins(request->lease_id());
    if (!pins.ok()) return pins.status();
    const int64_t blocks = static_cast<int64_t>(pins->size());
    const double cost = ExpectedRebuildCost(*state_, *pins);
    const PinDecision decision =
        state_->pins().PinJob(agent.job_id(), agent.tool(), agent.last_step(), *std::move(pins), cost);
    ToProto(decision, blocks, response->mutable_pin());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::RenewLease(grpc::CallbackServerContext* ctx,
                                            const v1::RenewLeaseRequest* request,
                                            v1::RenewLeaseResponse* response) {
  return ServeUnary(ctx, "RenewLease", [&]() -> absl::Status {
    if (absl::Status s = state_->cache().RenewLease(request->lease_id()); !s.ok()) return s;
    response->set_lease_timeout_ms(ToMillis(state_->options().lease_timeout));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::ExtendLease(grpc::CallbackServerContext* ctx,
                                                         const v1::ExtendLeaseRequest* request,
                                                         v1::ExtendLeaseResponse* response) {
  return ServeUnary(ctx, "ExtendLease", [&]() -> absl::Status {
    const DaemonOptions& options = state_->options();
    if (absl::Status s = CheckVocabulary("ExtendLease", "page_tokens", request->page_tokens(),
                                         options);
        !s.ok()) {
      return s;
    }
    // The next page's first token must fit the context limit PlanStep applies.
    const int64_t next_page = request->position() + options.model.block_tokens;
    if (request->position() < 0 || next_page >= options.max_context_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ExtendLease: position ", request->position(), ": the next page would start at ",
          next_page, ", not below max_context_tokens ", options.max_context_tokens));
    }
    const absl::Span<const TokenId> page(request->page_tokens().data(),
                                         static_cast<size_t>(request->page_tokens_size()));
    absl::StatusOr<KvCache::LeaseExtension> extension = state_->cache().ExtendLease(
        request->lease_id(), request->position(), page, request->reserve_spare());
    if (!extension.ok()) return extension.status();
    response->set_block_id(extension->block);
    response->set_position(extension->position);
    response->set_sealed(extension->sealed);
    response->set_lease_timeout_ms(ToMillis(state_->options().lease_timeout));
    if (extension->spare != kNoBlock) response->set_spare_block_id(extension->spare);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------- lookup

grpc::ServerUnaryReactor* CacheDaemonService::Lookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest* request,
                                        v1::LookupResponse* response) {
  return ServeUnary(ctx, "Lookup", [&]() -> absl::Status {
    const DaemonOptions& options = state_->options();
    const int64_t limit = (options.max_context_tokens + options.model.block_tokens - 1) /
                          options.model.block_tokens;
    if (absl::Status s = CheckHashCount("Lookup", request->hashes_size(), limit); !s.ok()) return s;
    const std::vector<BlockHash> hashes = FromProto(request->hashes());
    for (int64_t position : state_->cache().LookupPositions(hashes)) {
      response->add_resident(position >= 0);
      response->add_positions(position);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::InvalidateBlocks(grpc::CallbackServerContext* ctx,
                                                  const v1::InvalidateBlocksRequest* request,
                                                  v1::InvalidateBlocksResponse* response) {
  return ServeUnary(ctx, "InvalidateBlocks", [&]() -> absl::Status {
    if (request->block_ids().empty()) {
      return absl::InvalidArgumentError("InvalidateBlocks: block_ids is empty");
    }
    const BlockPool& pool = state_->cache().pool();
    const int64_t capacity = pool.capacity();
    // Validate every id before touching any (all or nothing).
    for (int i = 0; i < request->block_ids_size(); ++i) {
      const int32_t id = request->block_ids(i);
      if (id < 0 || id >= capacity) {
        return absl::OutOfRangeError(absl::StrCat("InvalidateBlocks: block_ids[", i, "] = ", id,
                                                  " is outside the pool [0, ", capacity, ")"));
      }
      if (pool.state(id) != BlockState::kSealed) {
        return absl::FailedPreconditionError(
            absl::StrCat("InvalidateBlocks: block ", id, " is ", BlockStateName(pool.state(id)),
                         "; only sealed, unpinned blocks can be invalidated"));
      }
    }
    int64_t done = 0;
    for (int32_t id : request->block_ids()) {
      // A block pinned or evicted since the check above is skipped, not an error.
      if (state_->cache().InvalidateBlock(id).ok()) ++done;
    }
    if (DaemonMetrics* metrics = state_->metrics()) {
      metrics->AddEvictions(EvictionReason::kInvalidate, done);
    }
    response->set_invalidated(done);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------- agent pins

grpc::ServerUnaryReactor* CacheDaemonService::PinJob(grpc::CallbackServerContext* ctx, const v1::PinJobRequest* request,
                                        v1::PinJobResponse* response) {
  return ServeUnary(ctx, "PinJob", [&]() -> absl::Status {
    const v1::AgentJob& agent = request->agent();
    if (agent.job_id().empty()) return absl::InvalidArgumentError("PinJob: agent.job_id is empty");
    if (agent.tool().empty() && !agent.last_step()) {
      return absl::InvalidArgumentError(
          "PinJob: agent.tool is required unless agent.last_step is set");
    }
    if (absl::Status s = CheckTokens("PinJob", request->tokens(), state_->options()); !s.ok()) {
      return s;
    }
    const absl::Span<const TokenId> tokens(request->tokens().data(), request->tokens().size());
    absl::StatusOr<BlockPool::PinSet> pins = state_->cache().PinContext(request->salt(), tokens);
    if (!pins.ok()) return pins.status();
    const int64_t blocks = static_cast<int64_t>(pins->size());
    const double cost = ExpectedRebuildCost(*state_, *pins);
    const PinDecision decision =
        state_->pins().PinJob(agent.job_id(), agent.tool(), agent.last_step(), *std::move(pins), cost);
    ToProto(decision, blocks, response->mutable_decision());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::RefreshPin(grpc::CallbackServerContext* ctx,
                                            const v1::RefreshPinRequest* request,
                                            v1::RefreshPinResponse*) {
  return ServeUnary(ctx, "RefreshPin", [&]() -> absl::Status {
    if (request->job_id().empty()) return absl::InvalidArgumentError("RefreshPin: job_id is empty");
    absl::Status s = state_->pins().Refresh(request->job_id(), absl::Milliseconds(request->ttl_ms()));
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat("RefreshPin: ", s.message()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::Unpin(grpc::CallbackServerContext* ctx, const v1::UnpinRequest* request,
                                       v1::UnpinResponse* response) {
  return ServeUnary(ctx, "Unpin", [&]() -> absl::Status {
    if (request->job_id().empty()) return absl::InvalidArgumentError("Unpin: job_id is empty");
    response->set_unpinned(state_->pins().Unpin(request->job_id()));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::ListPins(grpc::CallbackServerContext* ctx, const v1::ListPinsRequest*,
                                          v1::ListPinsResponse* response) {
  return ServeUnary(ctx, "ListPins", [&]() -> absl::Status {
    for (const JobPinInfo& job : state_->pins().List()) {
      v1::ListPinsResponse::Job* out = response->add_jobs();
      out->set_job_id(job.job_id);
      out->set_tool(job.tool);
      out->set_blocks(job.blocks);
      out->set_pinned_at_unix_ms(UnixMillis(job.pinned_at));
      out->set_expires_at_unix_ms(UnixMillis(job.expires_at));
      out->set_expected_benefit_s(job.expected_benefit_s);
    }
    response->set_pinned_blocks(state_->pins().pinned_blocks());
    response->set_pinned_capacity_cap(state_->pins().pinned_capacity_cap());
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------- transfer

grpc::ServerUnaryReactor* CacheDaemonService::ExportBlocks(grpc::CallbackServerContext* ctx,
                                              const v1::ExportBlocksRequest* request,
                                              v1::ExportBlocksResponse* response) {
  return ServeUnary(ctx, "ExportBlocks", [&]() -> absl::Status {
    if (absl::Status s = CheckHashCount("ExportBlocks", request->hashes_size(),
                                        state_->options().max_transfer_blocks);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckSameShape(request->model(), state_->model(), "ExportBlocks: model");
        !s.ok()) {
      return s;
    }
    const std::vector<BlockHash> hashes = FromProto(request->hashes());
    absl::StatusOr<ExportDescriptor> exported = state_->transfer().Export(hashes);
    if (!exported.ok()) return exported.status();
    response->set_export_id(exported->export_id);
    response->set_ucx_worker_address(exported->worker_address);
    response->set_ucx_rkey(exported->rkey);
    response->set_remote_base(exported->remote_base);
    response->set_layer_stride_bytes(exported->layer_stride_bytes);
    response->set_piece_bytes(exported->piece_bytes);
    response->set_num_layers(exported->num_layers);
    response->set_export_timeout_ms(ToMillis(exported->timeout));
    if (DaemonMetrics* metrics = state_->metrics()) {
      // Bytes offered to the peer (it reads them; a failed read shows on its side).
      metrics->AddTransfer(TransferDirection::kExport,
                           static_cast<int64_t>(exported->blocks.size()) *
                               state_->pool().layout().block_bytes(),
                           true);
    }
    for (const ExportDescriptor::Block& b : exported->blocks) {
      v1::ExportBlocksResponse::Block* out = response->add_blocks();
      ToProto(b.info.hash, out->mutable_hash());
      ToProto(b.info.parent_hash, out->mutable_parent_hash());
      out->set_block_id(b.info.id);
      out->set_position(b.info.position);
      out->set_tokens(static_cast<int32_t>(b.info.tokens));
      out->set_remote_offset(b.remote_offset);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::ReleaseExport(grpc::CallbackServerContext* ctx,
                                               const v1::ReleaseExportRequest* request,
                                               v1::ReleaseExportResponse*) {
  return ServeUnary(ctx, "ReleaseExport",
               [&]() -> absl::Status { return state_->transfer().ReleaseExport(request->export_id()); });
}

std::shared_ptr<v1::CacheDaemon::Stub> CacheDaemonService::PeerStub(const std::string& address) {
  absl::MutexLock lock(&peers_mu_);
  auto it = peers_.find(address);
  if (it != peers_.end()) return it->second;
  // Imports in flight keep their own reference to a stub cleared here.
  if (peers_.size() >= kMaxPeerChannels) peers_.clear();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(state_->options().max_message_bytes);
  std::shared_ptr<v1::CacheDaemon::Stub> stub = v1::CacheDaemon::NewStub(
      grpc::CreateCustomChannel(address, peer_credentials_, args));
  return peers_.emplace(address, std::move(stub)).first->second;
}

grpc::Status CacheDaemonService::ImportBlocks(grpc::ServerContext*,
                                              const v1::ImportBlocksRequest* request,
                                              v1::ImportBlocksResponse* response) {
  return Serve("ImportBlocks", [&]() -> absl::Status {
    if (request->peer().empty()) return absl::InvalidArgumentError("ImportBlocks: peer is empty");
    if (absl::Status s = CheckHashCount("ImportBlocks", request->hashes_size(),
                                        state_->options().max_transfer_blocks);
        !s.ok()) {
      return s;
    }
    const std::shared_ptr<v1::CacheDaemon::Stub> peer = PeerStub(request->peer());
    v1::ExportBlocksRequest export_request;
    *export_request.mutable_hashes() = request->hashes();
    ToProto(state_->model(), export_request.mutable_model());
    v1::ExportBlocksResponse exported;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(kPeerCallTimeout));
      absl::Status s = FromGrpcStatus(peer->ExportBlocks(&ctx, export_request, &exported));
      if (!s.ok()) {
        // The peer's answer is not ours to pass on as is: a peer that is
        // unreachable or refuses makes this import UNAVAILABLE / its code.
        return absl::Status(s.code(), absl::StrCat("ImportBlocks: ExportBlocks on peer ",
                                                   request->peer(), " failed: ", s.message()));
      }
    }
    // A peer answers with a subset of what was asked, each hash at most once.
    {
      absl::flat_hash_set<BlockHash> asked;
      for (const v1::BlockHash& h : request->hashes()) asked.insert(FromProto(h));
      for (const v1::ExportBlocksResponse::Block& b : exported.blocks()) {
        if (asked.erase(FromProto(b.hash())) == 0) {
          return absl::UnavailableError(absl::StrCat(
              "ImportBlocks: peer ", request->peer(), " answered block ", FromProto(b.hash()).ToHex(),
              " that was not asked for (or twice); nothing imported"));
        }
      }
    }
    ExportDescriptor remote;
    remote.export_id = exported.export_id();
    remote.worker_address = exported.ucx_worker_address();
    remote.rkey = exported.ucx_rkey();
    remote.remote_base = exported.remote_base();
    remote.layer_stride_bytes = exported.layer_stride_bytes();
    remote.piece_bytes = exported.piece_bytes();
    remote.num_layers = exported.num_layers();
    for (const v1::ExportBlocksResponse::Block& b : exported.blocks()) {
      ExportDescriptor::Block block;
      block.info.id = b.block_id();
      block.info.hash = FromProto(b.hash());
      block.info.parent_hash = FromProto(b.parent_hash());
      block.info.position = b.position();
      block.info.tokens = b.tokens();
      block.remote_offset = b.remote_offset();
      remote.blocks.push_back(block);
    }
    absl::StatusOr<ImportResult> imported = state_->transfer().Import(remote);
    {
      // Best effort: an export not released expires on the peer.
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(kPeerCallTimeout));
      v1::ReleaseExportRequest release;
      release.set_export_id(exported.export_id());
      v1::ReleaseExportResponse ignored;
      (void)peer->ReleaseExport(&ctx, release, &ignored);
    }
    DaemonMetrics* metrics = state_->metrics();
    if (!imported.ok()) {
      if (metrics != nullptr) metrics->AddTransfer(TransferDirection::kImport, 0, false);
      return imported.status();
    }
    if (metrics != nullptr) metrics->AddTransfer(TransferDirection::kImport, imported->bytes, true);
    response->set_imported(imported->imported);
    response->set_already_resident(imported->already_resident);
    response->set_not_on_peer(request->hashes_size() - exported.blocks_size());
    response->set_bytes(imported->bytes);
    response->set_transfer_seconds(absl::ToDoubleSeconds(imported->elapsed));
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------- events

grpc::Status CacheDaemonService::WatchEvents(grpc::ServerContext* ctx,
                                             const v1::WatchEventsRequest* request,
                                             grpc::ServerWriter<v1::KvEventBatch>* writer) {
  return Serve("WatchEvents", [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<KvEventHub::Watcher>> watcher =
        state_->events().Watch(request->after_sequence(), request->snapshot());
    if (!watcher.ok()) return watcher.status();
    v1::KvEventBatch batch;
    while (!ctx->IsCancelled()) {
      absl::StatusOr<std::optional<KvEventBatchView>> next = (*watcher)->Next(kWatchPoll);
      if (!next.ok()) return next.status();
      if (!next->has_value()) continue;
      const KvEventBatchView& view = **next;
      batch.Clear();
      batch.set_daemon_instance(state_->instance());
      batch.set_snapshot_begin(view.snapshot_begin);
      batch.set_snapshot_end(view.snapshot_end);
      batch.set_sequence_number(view.sequence_number);
      batch.mutable_events()->Reserve(static_cast<int>(view.events.size()));
      for (const KvEvent& e : view.events) {
        v1::KvEvent* out = batch.add_events();
        out->set_kind(e.kind == KvEvent::Kind::kStored ? v1::KvEvent::STORED : v1::KvEvent::REMOVED);
        ToProto(e.hash, out->mutable_hash());
        out->set_position(e.position);
        out->set_sequence_number(e.sequence_number);
        out->set_block_id(e.block);
      }
      if (!writer->Write(batch)) return absl::OkStatus();  // the watcher went away
    }
    return absl::CancelledError("WatchEvents: cancelled by the client");
  });
}

// ---------------------------------------------------------------- pool, stats

grpc::ServerUnaryReactor* CacheDaemonService::AttachPool(grpc::CallbackServerContext* ctx,
                                            const v1::AttachPoolRequest* request,
                                            v1::AttachPoolResponse* response) {
  return ServeUnary(ctx, "AttachPool", [&]() -> absl::Status {
    if (absl::Status s = CheckSameShape(request->expected_model(), state_->model(),
                                        "AttachPool: expected_model");
        !s.ok()) {
      return s;
    }
    const daemon::PoolDescriptor d = state_->pool().Describe();
    response->set_backend(std::string(daemon::PoolBackendName(d.backend)));
    response->set_shm_name(d.shm_name);
    response->set_cuda_ipc_handle(d.cuda_ipc_handle);
    response->set_cuda_device(d.cuda_device);
    ToProto(state_->model(), response->mutable_model());
    response->set_num_blocks(d.layout.num_blocks);
    response->set_layer_stride_bytes(static_cast<uint64_t>(d.layout.layer_stride_bytes()));
    response->set_piece_bytes(static_cast<uint64_t>(d.layout.piece_bytes()));
    response->set_pool_bytes(static_cast<uint64_t>(d.layout.bytes()));
    response->set_daemon_instance(state_->instance());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheDaemonService::GetStats(grpc::CallbackServerContext* ctx, const v1::GetStatsRequest*,
                                          v1::GetStatsResponse* response) {
  return ServeUnary(ctx, "GetStats", [&]() -> absl::Status {
    const DaemonOptions& options = state_->options();
    const KvCache::Stats stats = state_->cache().GetStats();
    response->set_daemon_instance(state_->instance());
    response->set_backend(options.backend);
    response->set_policy(options.policy);
    ToProto(state_->model(), response->mutable_model());
    ToProto(state_->calibration(), response->mutable_calibration());
    response->set_capacity_blocks(stats.pool.capacity);
    response->set_free_blocks(stats.pool.free);
    response->set_writing_blocks(stats.pool.writing);
    response->set_sealed_blocks(stats.pool.sealed_evictable);
    response->set_pinned_blocks(stats.pool.pinned);
    response->set_in_transfer_blocks(stats.pool.in_transfer);
    response->set_indexed_blocks(stats.indexed_blocks);
    response->set_evictions(stats.pool.evictions);
    response->set_active_leases(stats.active_leases);
    response->set_active_exports(state_->transfer().active_exports());
    response->set_agent_pinned_blocks(state_->pins().pinned_blocks());
    response->set_agent_pinned_jobs(static_cast<int64_t>(state_->pins().pinned_jobs()));
    response->set_steps(stats.steps);
    response->set_hit_tokens(stats.hit_tokens);
    response->set_rebuild_tokens(stats.rebuild_tokens);
    response->set_new_tokens(stats.new_tokens);
    response->set_last_event_sequence(state_->events().last_sequence());
    response->set_uptime_s(absl::ToDoubleSeconds(absl::Now() - state_->started()));
    response->set_lease_extensions(stats.lease_extensions);
    response->set_deferred_plans(stats.deferred_plans);
    response->set_writing_pages(stats.writing_pages);
    return absl::OkStatus();
  });
}

}  // namespace asymcache
