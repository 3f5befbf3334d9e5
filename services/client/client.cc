#include "services/client/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/cache_daemon.pb.h"
#include "cachecore/block_hash.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"
#include "services/daemon/pool_memory.h"

namespace asymcache {
namespace {

using Stub = v1::CacheDaemon::Stub;

// How often EventStream::Open looks for a Cancel() while it waits for the
// channel to connect.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(100);

// A reply the client cannot use.
absl::Status BadReply(absl::string_view what, const absl::Status& cause) {
  return absl::InternalError(absl::StrCat("daemon reply: ", what, ": ", cause.message()));
}

absl::Status BadReply(absl::string_view what) {
  return absl::InternalError(absl::StrCat("daemon reply: ", what));
}

void SetDeadline(grpc::ClientContext* context, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return;
  context->set_deadline(absl::ToChronoTime(deadline));
}

void ToProto(const AgentJob& agent, v1::AgentJob* out) {
  out->set_job_id(agent.job_id);
  out->set_tool(agent.tool);
  out->set_last_step(agent.last_step);
}

absl::StatusOr<KvEvent> KvEventFromProto(const v1::KvEvent& event) {
  KvEvent out;
  switch (event.kind()) {
    case v1::KvEvent::STORED:
      out.kind = KvEvent::Kind::kStored;
      break;
    case v1::KvEvent::REMOVED:
      out.kind = KvEvent::Kind::kRemoved;
      break;
    default:
      return BadReply(absl::StrCat("event kind ", static_cast<int>(event.kind()), " unknown"));
  }
  out.hash = FromProto(event.hash());
  out.position = event.position();
  out.sequence_number = event.sequence_number();
  out.block = event.block_id();
  return out;
}

absl::StatusOr<JobPinDecision> PinDecisionFromProto(const v1::PinDecision& decision) {
  JobPinDecision out;
  bool known = false;
  for (PinOutcome outcome : {PinOutcome::kPinned, PinOutcome::kLastStep, PinOutcome::kNoBlocks,
                             PinOutcome::kWaitTooLong, PinOutcome::kNotWorthIt,
                             PinOutcome::kCapacityCap}) {
    if (PinOutcomeName(outcome) == decision.outcome()) {
      out.decision.outcome = outcome;
      known = true;
      break;
    }
  }
  if (!known) return BadReply(absl::StrCat("pin outcome '", decision.outcome(), "' unknown"));
  out.decision.pinned = decision.pinned();
  out.decision.ttl = absl::Milliseconds(decision.ttl_ms());
  out.decision.reason = decision.reason();
  out.blocks = decision.blocks();
  return out;
}

JobPinInfo JobPinInfoFromProto(const v1::ListPinsResponse::Job& job) {
  JobPinInfo out;
  out.job_id = job.job_id();
  out.tool = job.tool();
  out.blocks = job.blocks();
  out.pinned_at = absl::FromUnixMillis(job.pinned_at_unix_ms());
  out.expires_at = absl::FromUnixMillis(job.expires_at_unix_ms());
  out.expected_benefit_s = job.expected_benefit_s();
  return out;
}

}  // namespace

// ---------------------------------------------------------------- options

absl::Status ClientOptions::Validate() const {
  if (target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (default_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("ClientOptions.default_timeout must be > 0, got ",
                                                   absl::FormatDuration(default_timeout)));
  }
  if (max_message_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.max_message_bytes must be > 0, got ", max_message_bytes));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- client

struct Client::Rpc {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<Stub> stub;

  // One unary call with the given deadline; the gRPC status mapped one to one.
  template <typename Request, typename Response>
  absl::Status Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                    const Request& request, Response* response, absl::Time deadline) {
    grpc::ClientContext context;
    SetDeadline(&context, deadline);
    return FromGrpcStatus((stub.get()->*method)(&context, request, response));
  }
};

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (absl::Status valid = options.Validate(); !valid.ok()) return valid;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials != nullptr ? options.credentials : grpc::InsecureChannelCredentials();
  auto rpc = std::make_unique<Rpc>();
  rpc->channel = grpc::CreateCustomChannel(options.target, credentials, args);
  if (rpc->channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions.target: cannot create a channel to '", options.target, "'"));
  }
  rpc->stub = v1::CacheDaemon::NewStub(rpc->channel);
  return std::unique_ptr<Client>(new Client(std::move(options), std::move(rpc)));
}

Client::Client(ClientOptions options, std::unique_ptr<Rpc> rpc)
    : options_(std::move(options)), rpc_(std::move(rpc)) {}

Client::~Client() = default;

absl::Time Client::DeadlineFor(absl::Duration timeout) const {
  if (timeout <= absl::ZeroDuration()) timeout = options_.default_timeout;
  if (timeout == absl::InfiniteDuration()) return absl::InfiniteFuture();
  return absl::Now() + timeout;
}

absl::Status Client::WaitForReady(absl::Duration timeout) {
  const absl::Time deadline = DeadlineFor(timeout);
  grpc_connectivity_state state = rpc_->channel->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_SHUTDOWN) {
      return absl::UnavailableError(absl::StrCat("channel to ", options_.target, " is shut down"));
    }
    if (!rpc_->channel->WaitForStateChange(state, absl::ToChronoTime(deadline))) {
      return absl::DeadlineExceededError(
          absl::StrCat("not connected to ", options_.target, " within ",
                       absl::FormatDuration(timeout <= absl::ZeroDuration()
                                                ? options_.default_timeout
                                                : timeout),
                       " (channel state ", static_cast<int>(state), ")"));
    }
    state = rpc_->channel->GetState(/*try_to_connect=*/true);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- steps

absl::StatusOr<LeasedStep> Client::PlanStep(absl::string_view salt, SequenceId sequence,
                                             absl::Span<const TokenId> tokens,
                                             const PlanStepOptions& options,
                                             absl::Duration timeout) {
  v1::PlanStepRequest request;
  request.set_salt(std::string(salt));
  request.set_sequence_id(sequence);
  request.mutable_tokens()->Add(tokens.begin(), tokens.end());
  for (const BlockHash& hash : options.block_hashes) ToProto(hash, request.add_block_hashes());
  if (options.agent.has_value()) ToProto(*options.agent, request.mutable_agent());
  request.set_defer_if_pending_tokens(options.defer_if_pending_tokens);
  if (options.expected_model.has_value()) {
    ToProto(*options.expected_model, request.mutable_expected_model());
  }
  v1::PlanStepResponse response;
  if (absl::Status s = rpc_->Call(&Stub::PlanStep, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<StepPlan> plan = FromProto(response.plan());
  if (!plan.ok()) return BadReply("plan", plan.status());
  if (!options.block_hashes.empty()) {
    plan->hashes = options.block_hashes;
  } else if (options.compute_plan_hashes) {
    if (plan->block_tokens <= 0) {
      return BadReply(absl::StrCat("plan.block_tokens ", plan->block_tokens, " is not positive"));
    }
    plan->hashes = ChainHashes(salt, tokens, plan->block_tokens);
  }
  if (!plan->hashes.empty()) {
    if (plan->hashes.size() != plan->page_ids.size()) {
      return BadReply(absl::StrCat("plan has ", plan->page_ids.size(), " pages for ",
                                   plan->hashes.size(), " block hashes of ", tokens.size(),
                                   " tokens"));
    }
    if (absl::Status valid = ValidateStepPlan(*plan); !valid.ok()) return BadReply("plan", valid);
  }
  LeasedStep step;
  step.lease_id = response.lease_id();
  step.plan = *std::move(plan);
  step.contiguous_hit_tokens = response.plan().contiguous_hit_tokens();
  step.lease_timeout = absl::Milliseconds(response.lease_timeout_ms());
  step.daemon_instance = response.daemon_instance();
  return step;
}

absl::StatusOr<ScopedLease> Client::BeginStep(absl::string_view salt, SequenceId sequence,
                                              absl::Span<const TokenId> tokens,
                                              const PlanStepOptions& options,
                                              absl::Duration timeout) {
  absl::StatusOr<LeasedStep> step = PlanStep(salt, sequence, tokens, options, timeout);
  if (!step.ok()) return step.status();
  return ScopedLease(this, *std::move(step));
}

absl::StatusOr<CommitResult> Client::CommitStep(uint64_t lease_id, absl::Duration timeout) {
  return CommitStep(lease_id, CommitOptions{}, timeout);
}

absl::StatusOr<CommitResult> Client::CommitStep(uint64_t lease_id, const CommitOptions& options,
                                                absl::Duration timeout) {
  v1::CommitStepRequest request;
  request.set_lease_id(lease_id);
  request.set_keep_partial_last_page(options.keep_partial_last_page);
  v1::CommitStepResponse response;
  if (absl::Status s = rpc_->Call(&Stub::CommitStep, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return CommitResult{.sealed_blocks = response.sealed_blocks(),
                      .duplicate_blocks = response.duplicate_blocks(),
                      .private_blocks = response.private_blocks()};
}

absl::StatusOr<std::optional<JobPinDecision>> Client::ReleaseStep(
    uint64_t lease_id, const std::optional<AgentJob>& agent, absl::Duration timeout) {
  v1::ReleaseStepRequest request;
  request.set_lease_id(lease_id);
  if (agent.has_value()) ToProto(*agent, request.mutable_agent());
  v1::ReleaseStepResponse response;
  if (absl::Status s = rpc_->Call(&Stub::ReleaseStep, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  if (!agent.has_value() || agent->job_id.empty() || !response.has_pin()) {
    return std::optional<JobPinDecision>();
  }
  absl::StatusOr<JobPinDecision> decision = PinDecisionFromProto(response.pin());
  if (!decision.ok()) return decision.status();
  return std::optional<JobPinDecision>(*std::move(decision));
}

absl::StatusOr<absl::Duration> Client::RenewLease(uint64_t lease_id, absl::Duration timeout) {
  v1::RenewLeaseRequest request;
  request.set_lease_id(lease_id);
  v1::RenewLeaseResponse response;
  if (absl::Status s = rpc_->Call(&Stub::RenewLease, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return absl::Milliseconds(response.lease_timeout_ms());
}

absl::StatusOr<LeaseExtension> Client::ExtendLease(uint64_t lease_id, int64_t position,
                                                   absl::Span<const TokenId> page_tokens,
                                                   bool reserve_spare, absl::Duration timeout) {
  v1::ExtendLeaseRequest request;
  request.set_lease_id(lease_id);
  request.set_position(position);
  request.set_reserve_spare(reserve_spare);
  request.mutable_page_tokens()->Add(page_tokens.begin(), page_tokens.end());
  v1::ExtendLeaseResponse response;
  if (absl::Status s = rpc_->Call(&Stub::ExtendLease, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return LeaseExtension{.block = response.block_id(),
                        .position = response.position(),
                        .sealed = response.sealed(),
                        .lease_timeout = absl::Milliseconds(response.lease_timeout_ms()),
                        .spare = response.has_spare_block_id() ? response.spare_block_id()
                                                               : kNoBlock};
}

// ---------------------------------------------------------------- lookup

absl::StatusOr<std::vector<std::optional<int64_t>>> Client::Lookup(
    absl::Span<const BlockHash> hashes, absl::Duration timeout) {
  v1::LookupRequest request;
  request.mutable_hashes()->Reserve(static_cast<int>(hashes.size()));
  for (const BlockHash& hash : hashes) ToProto(hash, request.add_hashes());
  v1::LookupResponse response;
  if (absl::Status s = rpc_->Call(&Stub::Lookup, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  if (response.resident_size() != static_cast<int>(hashes.size()) ||
      response.positions_size() != static_cast<int>(hashes.size())) {
    return BadReply(absl::StrCat("lookup of ", hashes.size(), " hashes answered ",
                                 response.resident_size(), " residencies and ",
                                 response.positions_size(), " positions"));
  }
  std::vector<std::optional<int64_t>> positions(hashes.size());
  for (int i = 0; i < response.resident_size(); ++i) {
    if (response.resident(i)) positions[i] = response.positions(i);
  }
  return positions;
}

absl::StatusOr<int64_t> Client::InvalidateBlocks(absl::Span<const BlockId> block_ids,
                                                 absl::Duration timeout) {
  v1::InvalidateBlocksRequest request;
  request.mutable_block_ids()->Add(block_ids.begin(), block_ids.end());
  v1::InvalidateBlocksResponse response;
  if (absl::Status s =
          rpc_->Call(&Stub::InvalidateBlocks, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return response.invalidated();
}

// ---------------------------------------------------------------- agent pins

absl::StatusOr<JobPinDecision> Client::PinJob(const AgentJob& agent, absl::string_view salt,
                                              absl::Span<const TokenId> tokens,
                                              absl::Duration timeout) {
  v1::PinJobRequest request;
  ToProto(agent, request.mutable_agent());
  request.set_salt(std::string(salt));
  request.mutable_tokens()->Add(tokens.begin(), tokens.end());
  v1::PinJobResponse response;
  if (absl::Status s = rpc_->Call(&Stub::PinJob, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return PinDecisionFromProto(response.decision());
}

absl::Status Client::RefreshPin(absl::string_view job_id, absl::Duration ttl,
                                absl::Duration timeout) {
  v1::RefreshPinRequest request;
  request.set_job_id(std::string(job_id));
  request.set_ttl_ms(absl::ToInt64Milliseconds(ttl));
  v1::RefreshPinResponse response;
  return rpc_->Call(&Stub::RefreshPin, request, &response, DeadlineFor(timeout));
}

absl::StatusOr<bool> Client::Unpin(absl::string_view job_id, absl::Duration timeout) {
  v1::UnpinRequest request;
  request.set_job_id(std::string(job_id));
  v1::UnpinResponse response;
  if (absl::Status s = rpc_->Call(&Stub::Unpin, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return response.unpinned();
}

absl::StatusOr<PinList> Client::ListPins(absl::Duration timeout) {
  v1::ListPinsRequest request;
  v1::ListPinsResponse response;
  if (absl::Status s = rpc_->Call(&Stub::ListPins, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  PinList pins;
  pins.jobs.reserve(response.jobs_size());
  for (const v1::ListPinsResponse::Job& job : response.jobs()) {
    pins.jobs.push_back(JobPinInfoFromProto(job));
  }
  pins.pinned_blocks = response.pinned_blocks();
  pins.pinned_capacity_cap = response.pinned_capacity_cap();
  return pins;
}

// ---------------------------------------------------------------- transfer

absl::StatusOr<ImportSummary> Client::ImportBlocks(absl::string_view peer,
                                                  absl::Span<const BlockHash> hashes,
                                                  absl::Duration timeout) {
  v1::ImportBlocksRequest request;
  request.set_peer(std::string(peer));
  request.mutable_hashes()->Reserve(static_cast<int>(hashes.size()));
  for (const BlockHash& hash : hashes) ToProto(hash, request.add_hashes());
  v1::ImportBlocksResponse response;
  if (absl::Status s = rpc_->Call(&Stub::ImportBlocks, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  return ImportSummary{.imported = response.imported(),
                      .already_resident = response.already_resident(),
                      .not_on_peer = response.not_on_peer(),
                      .bytes = response.bytes(),
                      .transfer_seconds = response.transfer_seconds()};
}

// ---------------------------------------------------------------- stats

absl::StatusOr<DaemonStats> Client::GetStats(absl::Duration timeout) {
  v1::GetStatsRequest request;
  v1::GetStatsResponse response;
  if (absl::Status s = rpc_->Call(&Stub::GetStats, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  DaemonStats stats;
  stats.daemon_instance = response.daemon_instance();
  stats.backend = response.backend();
  stats.policy = response.policy();
  absl::StatusOr<ModelConfig> model = FromProto(response.model(), "model");
  if (!model.ok()) return BadReply("stats", model.status());
  stats.model = *std::move(model);
  stats.calibration = FromProto(response.calibration());
  stats.capacity_blocks = response.capacity_blocks();
  stats.free_blocks = response.free_blocks();
  stats.writing_blocks = response.writing_blocks();
  stats.sealed_blocks = response.sealed_blocks();
  stats.pinned_blocks = response.pinned_blocks();
  stats.in_transfer_blocks = response.in_transfer_blocks();
  stats.indexed_blocks = response.indexed_blocks();
  stats.evictions = response.evictions();
  stats.active_leases = response.active_leases();
  stats.active_exports = response.active_exports();
  stats.agent_pinned_blocks = response.agent_pinned_blocks();
  stats.agent_pinned_jobs = response.agent_pinned_jobs();
  stats.steps = response.steps();
  stats.hit_tokens = response.hit_tokens();
  stats.rebuild_tokens = response.rebuild_tokens();
  stats.new_tokens = response.new_tokens();
  stats.last_event_sequence = response.last_event_sequence();
  stats.uptime_s = response.uptime_s();
  stats.lease_extensions = response.lease_extensions();
  stats.deferred_plans = response.deferred_plans();
  stats.writing_pages = response.writing_pages();
  return stats;
}

// ---------------------------------------------------------------- pool

AttachedPool::AttachedPool(std::string backend, ModelConfig model, std::string daemon_instance,
                           std::unique_ptr<daemon::MappedPool> mapping)
    : backend_(std::move(backend)),
      model_(std::move(model)),
      daemon_instance_(std::move(daemon_instance)),
      mapping_(std::move(mapping)) {}
AttachedPool::AttachedPool(AttachedPool&&) noexcept = default;
AttachedPool& AttachedPool::operator=(AttachedPool&&) noexcept = default;
AttachedPool::~AttachedPool() = default;

const daemon::PoolLayout& AttachedPool::layout() const { return mapping_->layout(); }
void* AttachedPool::base() const { return mapping_->base(); }

absl::StatusOr<AttachedPool> Client::AttachPool(const std::optional<ModelConfig>& expected_model,
                                                absl::Duration timeout) {
  v1::AttachPoolRequest request;
  if (expected_model.has_value()) ToProto(*expected_model, request.mutable_expected_model());
  v1::AttachPoolResponse response;
  if (absl::Status s = rpc_->Call(&Stub::AttachPool, request, &response, DeadlineFor(timeout));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<daemon::PoolBackend> backend = daemon::ParsePoolBackend(response.backend());
  if (!backend.ok()) return BadReply("pool backend", backend.status());
  absl::StatusOr<ModelConfig> model = FromProto(response.model(), "pool model");
  if (!model.ok()) return BadReply("pool", model.status());
  absl::StatusOr<daemon::PoolLayout> layout =
      daemon::PoolLayout::FromModel(*model, response.num_blocks());
  if (!layout.ok()) return BadReply("pool layout", layout.status());
  if (static_cast<uint64_t>(layout->piece_bytes()) != response.piece_bytes() ||
      static_cast<uint64_t>(layout->layer_stride_bytes()) != response.layer_stride_bytes() ||
      static_cast<uint64_t>(layout->bytes()) != response.pool_bytes()) {
    return BadReply(absl::StrCat(
        "pool layout (piece ", response.piece_bytes(), ", layer stride ",
        response.layer_stride_bytes(), ", pool ", response.pool_bytes(),
        " bytes) differs from its model's (piece ", layout->piece_bytes(), ", layer stride ",
        layout->layer_stride_bytes(), ", pool ", layout->bytes(), " bytes)"));
  }
  daemon::PoolDescriptor descriptor;
  descriptor.backend = *backend;
  descriptor.layout = *layout;
  descriptor.shm_name = response.shm_name();
  descriptor.cuda_ipc_handle = response.cuda_ipc_handle();
  descriptor.cuda_device = response.cuda_device();
  absl::StatusOr<std::unique_ptr<daemon::MappedPool>> mapping = daemon::MapPool(descriptor);
  if (!mapping.ok()) return mapping.status();
  return AttachedPool(response.backend(), *std::move(model), response.daemon_instance(),
                      *std::move(mapping));
}

// ---------------------------------------------------------------- events

struct EventStream::Call {
  // Set by the Client that made it (which the stream must not outlive).
  std::shared_ptr<grpc::Channel> channel;
  Stub* stub = nullptr;
  std::string target;
  v1::WatchEventsRequest request;

  grpc::ClientContext context;       // TryCancel works before the call starts
  std::atomic<bool> cancelled{false};  // Cancel() ran (any thread)
  // Owner thread only:
  bool opened = false;  // WatchEvents, or Open() was called
  std::unique_ptr<grpc::ClientReader<v1::KvEventBatch>> reader;
  bool finished = false;
  absl::Status final_status;  // valid once finished; OK = ended cleanly

  // Starts the call. The reader's constructor blocks until the request is
  // sent (or the call failed, or the context was cancelled).
  void Start() {
    opened = true;
    reader = stub->WatchEvents(&context, request);
  }

  // Ends the stream with `status` before a call was started.
  absl::Status EndUnstarted(absl::Status status) {
    finished = true;
    final_status = status;
    return status;
  }

  // Cancels (unless already finished), drains and collects the final status.
  void Finish(bool cancel) {
    if (finished || reader == nullptr) return;
    if (cancel) context.TryCancel();
    v1::KvEventBatch ignored;
    while (reader->Read(&ignored)) {
    }
    final_status = FromGrpcStatus(reader->Finish());
    finished = true;
  }
};

EventStream::EventStream(std::unique_ptr<Call> call) : call_(std::move(call)) {}

EventStream::~EventStream() { call_->Finish(/*cancel=*/true); }

void EventStream::Cancel() {
  call_->cancelled.store(true);
  call_->context.TryCancel();
}

absl::Status EventStream::Open(absl::Duration connect_timeout) {
  Call& call = *call_;
  if (call.opened) return absl::FailedPreconditionError("EventStream::Open: opened before");
  if (connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EventStream::Open: connect_timeout must be > 0, got ",
                     absl::FormatDuration(connect_timeout)));
  }
  call.opened = true;
  const absl::Time deadline = connect_timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : absl::Now() + connect_timeout;
  grpc_connectivity_state state = call.channel->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (call.cancelled.load()) {
      return call.EndUnstarted(absl::CancelledError(
          absl::StrCat("WatchEvents: cancelled while connecting to ", call.target)));
    }
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
      return call.EndUnstarted(absl::UnavailableError(absl::StrCat(
          "WatchEvents: cannot connect to ", call.target,
          state == GRPC_CHANNEL_SHUTDOWN ? " (channel shut down)" : " (connection failing)")));
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return call.EndUnstarted(absl::DeadlineExceededError(
          absl::StrCat("WatchEvents: not connected to ", call.target, " within ",
                       absl::FormatDuration(connect_timeout))));
    }
    if (call.channel->WaitForStateChange(state,
                                         absl::ToChronoTime(std::min(deadline, now + kCancelPoll)))) {
      state = call.channel->GetState(/*try_to_connect=*/true);
    }
  }
  // Connected: the request goes out at once. Should the connection drop
  // right now, the call waits for the next attempt, and Cancel() still ends
  // it (the context is cancellable from before the call starts).
  call.Start();
  if (call.reader == nullptr) {
    return call.EndUnstarted(absl::InternalError("WatchEvents: no stream reader"));
  }
  if (call.cancelled.load()) {
    call.Finish(/*cancel=*/true);
    if (call.final_status.ok()) {
      call.final_status = absl::CancelledError("WatchEvents: cancelled while opening");
    }
    return call.final_status;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<KvEventBatch>> EventStream::Next() {
  if (!call_->opened) {
    return absl::FailedPreconditionError(
        "EventStream::Next: the stream is not open (Client::PrepareWatch: Open() it first)");
  }
  if (!call_->finished) {
    v1::KvEventBatch wire;
    if (call_->reader->Read(&wire)) {
      KvEventBatch batch;
      batch.daemon_instance = wire.daemon_instance();
      batch.snapshot_begin = wire.snapshot_begin();
      batch.snapshot_end = wire.snapshot_end();
      batch.sequence_number = wire.sequence_number();
      batch.events.reserve(wire.events_size());
      for (const v1::KvEvent& event : wire.events()) {
        absl::StatusOr<KvEvent> converted = KvEventFromProto(event);
        if (!converted.ok()) {
          call_->Finish(/*cancel=*/true);
          call_->final_status = converted.status();
          return converted.status();
        }
        batch.events.push_back(*converted);
      }
      last_sequence_ = batch.sequence_number;
      return std::optional<KvEventBatch>(std::move(batch));
    }
    call_->Finish(/*cancel=*/false);
  }
  if (call_->final_status.ok()) return std::optional<KvEventBatch>();
  return call_->final_status;
}

std::unique_ptr<EventStream> Client::PrepareWatch(const WatchOptions& options) {
  auto call = std::make_unique<EventStream::Call>();
  call->channel = rpc_->channel;
  call->stub = rpc_->stub.get();
  call->target = options_.target;
  call->request.set_after_sequence(options.after_sequence);
  call->request.set_snapshot(options.snapshot);
  if (options.stream_timeout > absl::ZeroDuration() &&
      options.stream_timeout != absl::InfiniteDuration()) {
    SetDeadline(&call->context, absl::Now() + options.stream_timeout);
  }
  return std::unique_ptr<EventStream>(new EventStream(std::move(call)));
}

absl::StatusOr<std::unique_ptr<EventStream>> Client::WatchEvents(const WatchOptions& options) {
  std::unique_ptr<EventStream> stream = PrepareWatch(options);
  stream->call_->Start();
  if (stream->call_->reader == nullptr) {
    return absl::InternalError("WatchEvents: no stream reader");
  }
  return stream;
}

// ---------------------------------------------------------------- scoped lease

ScopedLease::ScopedLease(Client* client, LeasedStep step)
    : client_(client), step_(std::move(step)) {}

ScopedLease::~ScopedLease() {
  if (!active()) return;
  absl::StatusOr<std::optional<JobPinDecision>> released = Release();
  if (!released.ok() && released.status().code() != absl::StatusCode::kNotFound) {
    ABSL_RAW_LOG(WARNING, "ScopedLease: releasing lease %llu failed (%s); the daemon's lease "
                          "timeout releases it",
                 static_cast<unsigned long long>(step_.lease_id),
                 released.status().ToString().c_str());
  }
}

ScopedLease::ScopedLease(ScopedLease&& other) noexcept
    : client_(std::exchange(other.client_, nullptr)), step_(std::move(other.step_)) {}

ScopedLease& ScopedLease::operator=(ScopedLease&& other) noexcept {
  if (this != &other) {
    ScopedLease old(std::move(*this));  // released when `old` goes away
    client_ = std::exchange(other.client_, nullptr);
    step_ = std::move(other.step_);
  }
  return *this;
}

absl::StatusOr<CommitResult> ScopedLease::Commit(absl::Duration timeout) {
  return Commit(CommitOptions{}, timeout);
}

absl::StatusOr<CommitResult> ScopedLease::Commit(const CommitOptions& options,
                                                 absl::Duration timeout) {
  if (!active()) return absl::FailedPreconditionError("ScopedLease: no active lease to commit");
  return client_->CommitStep(step_.lease_id, options, timeout);
}

absl::StatusOr<absl::Duration> ScopedLease::Renew(absl::Duration timeout) {
  if (!active()) return absl::FailedPreconditionError("ScopedLease: no active lease to renew");
  return client_->RenewLease(step_.lease_id, timeout);
}

absl::StatusOr<std::optional<JobPinDecision>> ScopedLease::Release(
    const std::optional<AgentJob>& agent, absl::Duration timeout) {
  if (!active()) return absl::FailedPreconditionError("ScopedLease: no active lease to release");
  Client* client = std::exchange(client_, nullptr);
  return client->ReleaseStep(step_.lease_id, agent, timeout);
}

absl::StatusOr<LeaseExtension> ScopedLease::Extend(int64_t position,
                                                   absl::Span<const TokenId> page_tokens,
                                                   bool reserve_spare, absl::Duration timeout) {
  if (!active()) return absl::FailedPreconditionError("ScopedLease: no active lease to extend");
  return client_->ExtendLease(step_.lease_id, position, page_tokens, reserve_spare, timeout);
}

uint64_t ScopedLease::Detach() {
  if (!active()) return 0;
  client_ = nullptr;
  return step_.lease_id;
}

}  // namespace asymcache
