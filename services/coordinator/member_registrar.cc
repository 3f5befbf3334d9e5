#include "services/coordinator/member_registrar.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/base/internal/raw_logging.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"

namespace asymcache {

namespace {

// Shortest heartbeat interval honoured, whatever a coordinator answers: keeps
// a misconfigured replica from turning the loop into a spin.
constexpr absl::Duration kMinHeartbeatInterval = absl::Milliseconds(10);

bool ValidMemberId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

int64_t Millis(absl::Duration d) { return absl::ToInt64Milliseconds(d); }

// gRPC 1.51 (Debian 12) runs client callbacks on a shared "callback
// alternative" completion queue when its poller does not run in the
// background: the first channel that makes a callback call creates it, the
// last such channel to go destroys it. Destroying it and creating the next
// one while its threads wind down double-frees inside gRPC
// (grpc_cq_internal_unref; reproduced under ASan within a few seconds by
// registrars that come and go in one process). One channel that made a
// callback call and lives as long as the process holds the queue, so it is
// created once and never torn down. Called before any registrar exists.
void HoldCallbackQueueForProcessLifetime() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    struct Anchor {
      std::shared_ptr<grpc::Channel> channel;
      std::unique_ptr<v1::Coordinator::Stub> stub;
      grpc::ClientContext context;
      v1::DeregisterRequest request;
      v1::DeregisterResponse response;
    };
    // Never deleted: reachable from this static for the life of the process.
    static Anchor* anchor = new Anchor;
    // Port 1 on loopback: nothing listens; the call fails at once (or at its
    // 100 ms deadline) — only taking the queue matters.
    anchor->channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
    anchor->stub = v1::Coordinator::NewStub(anchor->channel);
    anchor->context.set_deadline(std::chrono::system_clock::now() +
                                 std::chrono::milliseconds(100));
    anchor->stub->async()->Deregister(&anchor->context, &anchor->request, &anchor->response,
                                      [](grpc::Status) {});
  });
}

}  // namespace

absl::Status MemberRegistrarOptions::Validate() const {
  if (coordinators.empty()) {
    return absl::InvalidArgumentError("coordinators: at least one address is required");
  }
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < coordinators.size(); ++i) {
    if (coordinators[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("coordinators[", i, "]: empty address"));
    }
    if (!seen.insert(coordinators[i]).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("coordinators[", i, "]: '", coordinators[i], "' is listed twice"));
    }
  }
  auto positive = [](absl::string_view field, absl::Duration d) -> absl::Status {
    if (d <= absl::ZeroDuration() || d > absl::Hours(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must be in (0, 1h], got ", absl::FormatDuration(d)));
    }
    return absl::OkStatus();
  };
  if (absl::Status s = positive("rpc_timeout", rpc_timeout); !s.ok()) return s;
  if (absl::Status s = positive("initial_backoff", initial_backoff); !s.ok()) return s;
  if (absl::Status s = positive("max_backoff", max_backoff); !s.ok()) return s;
  if (max_backoff < initial_backoff) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_backoff: must be >= initial_backoff (", absl::FormatDuration(initial_backoff),
        "), got ", absl::FormatDuration(max_backoff)));
  }
  if (absl::Status s = positive("fallback_heartbeat_interval", fallback_heartbeat_interval);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = positive("deregister_timeout", deregister_timeout); !s.ok()) return s;
  return absl::OkStatus();
}

absl::Status MemberRegistrar::Identity::Validate() const {
  if (!ValidMemberId(member_id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "member_id: '", member_id, "' must match [A-Za-z0-9._:-]{1,128}"));
  }
  if (kind != v1::MEMBER_KIND_DAEMON && kind != v1::MEMBER_KIND_WORKER) {
    return absl::InvalidArgumentError(
        absl::StrCat("kind: must be DAEMON or WORKER, got ", v1::MemberKind_Name(kind)));
  }
  if (address.empty()) return absl::InvalidArgumentError("address: must be host:port, got \"\"");
  if (gpu < -1) return absl::InvalidArgumentError(absl::StrCat("gpu: must be >= -1, got ", gpu));
  if (!v1::Role_IsValid(role)) {
    return absl::InvalidArgumentError(absl::StrCat("role: unknown value ", static_cast<int>(role)));
  }
  if (kind == v1::MEMBER_KIND_DAEMON && !model.has_value()) {
    return absl::InvalidArgumentError("model: required for a daemon member");
  }
  if (model.has_value()) {
    if (absl::Status s = model->Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model: ", s.message()));
    }
  }
  if (!daemon_id.empty() && !ValidMemberId(daemon_id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "daemon_id: '", daemon_id, "' must match [A-Za-z0-9._:-]{1,128}"));
  }
  return absl::OkStatus();
}

struct MemberRegistrar::Peer {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Coordinator::Stub> stub;
};

struct MemberRegistrar::PeerState {
  PeerStatus status;
  // The replica may hold our registration: a Register was sent and not
  // answered with a refusal since (Stop deregisters only these).
  bool maybe_registered = false;
  bool failing = false;                // in a streak of failures (logged once)
  absl::Time next_due = absl::InfinitePast();
  absl::Duration backoff;              // the next retry delay (before jitter)
  std::shared_ptr<Call> in_flight;     // the call outstanding, if any
};

struct MemberRegistrar::Call {
  enum class Kind { kRegister, kHeartbeat, kDeregister };
  Kind kind = Kind::kRegister;
  size_t peer = 0;
  grpc::ClientContext context;
  v1::RegisterResponse register_response;
  v1::HeartbeatRequest heartbeat_request;
  v1::HeartbeatResponse heartbeat_response;
  v1::DeregisterRequest deregister_request;
  v1::DeregisterResponse deregister_response;
};

absl::StatusOr<std::unique_ptr<MemberRegistrar>> MemberRegistrar::Start(
    MemberRegistrarOptions options, Identity identity, LoadFn load) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (absl::Status s = identity.Validate(); !s.ok()) return s;
  if (!load) return absl::InvalidArgumentError("load: a load callback is required");
  HoldCallbackQueueForProcessLifetime();
  std::unique_ptr<MemberRegistrar> registrar(
      new MemberRegistrar(std::move(options), std::move(identity), std::move(load)));
  MemberRegistrar* raw = registrar.get();
  registrar->thread_ = std::thread([raw]() { raw->Run(); });
  return registrar;
}

MemberRegistrar::MemberRegistrar(MemberRegistrarOptions options, Identity identity, LoadFn load)
    : options_(std::move(options)), identity_(std::move(identity)), load_(std::move(load)) {
  register_request_.set_member_id(identity_.member_id);
  register_request_.set_kind(identity_.kind);
  register_request_.set_address(identity_.address);
  register_request_.set_gpu(identity_.gpu);
  register_request_.set_role(identity_.role);
  if (identity_.model.has_value()) ToProto(*identity_.model, register_request_.mutable_model());
  if (identity_.calibration.has_value()) {
    ToProto(*identity_.calibration, register_request_.mutable_calibration());
  }
  register_request_.set_daemon_id(identity_.daemon_id);
  register_request_.set_instance(identity_.instance);

  // The channel's reconnect backoff follows ours, so a replica that comes
  // back on its address is connected to within max_backoff (gRPC's default
  // grows to 120 s).
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(Millis(options_.initial_backoff)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(Millis(options_.max_backoff)));
  const std::shared_ptr<grpc::ChannelCredentials> credentials =
      options_.credentials != nullptr ? options_.credentials : grpc::InsecureChannelCredentials();
  absl::MutexLock lock(&mu_);
  jitter_.seed(static_cast<std::minstd_rand::result_type>(
      absl::HashOf(identity_.member_id, identity_.instance) | 1));
  for (const std::string& address : options_.coordinators) {
    auto peer = std::make_unique<Peer>();
    peer->address = address;
    peer->channel = grpc::CreateCustomChannel(address, credentials, args);
    peer->stub = v1::Coordinator::NewStub(peer->channel);
    peers_.push_back(std::move(peer));
    PeerState state;
    state.status.address = address;
    state.status.heartbeat_interval = options_.fallback_heartbeat_interval;
    state.backoff = options_.initial_backoff;
    states_.push_back(std::move(state));
  }
}

MemberRegistrar::~MemberRegistrar() { Stop(); }

bool MemberRegistrar::AnyDueLocked(absl::Time now, bool registered_only) const {
  for (const PeerState& s : states_) {
    if (s.in_flight == nullptr && s.next_due <= now && (!registered_only || s.status.registered)) {
      return true;
    }
  }
  return false;
}

absl::Time MemberRegistrar::NextDueLocked() const {
  absl::Time next = absl::InfiniteFuture();
  for (const PeerState& s : states_) {
    if (s.in_flight == nullptr) next = std::min(next, s.next_due);
  }
  return next;
}

std::vector<std::shared_ptr<MemberRegistrar::Call>> MemberRegistrar::TakeDueCallsLocked(
    absl::Time now, const std::optional<Load>& load) {
  std::vector<std::shared_ptr<Call>> calls;
  for (size_t i = 0; i < states_.size(); ++i) {
    PeerState& s = states_[i];
    if (s.in_flight != nullptr || s.next_due > now) continue;
    if (s.status.registered && !load.has_value()) continue;  // next round, with a load
    auto call = std::make_shared<Call>();
    call->peer = i;
    if (s.status.registered) {
      call->kind = Call::Kind::kHeartbeat;
      call->heartbeat_request.set_member_id(identity_.member_id);
      v1::MemberLoad* l = call->heartbeat_request.mutable_load();
      l->set_queued_prefill_tokens(load->queued_prefill_tokens);
      l->set_decode_batch(load->decode_batch);
      l->set_free_blocks(load->free_blocks);
      l->set_capacity_blocks(load->capacity_blocks);
      l->set_busy_blocks(load->busy_blocks);
      l->set_last_event_sequence(load->last_event_sequence);
      // A heartbeat later than the interval is worth less than the next one.
      call->context.set_deadline(
          absl::ToChronoTime(now + std::min(options_.rpc_timeout,
                                            std::max(s.status.heartbeat_interval,
                                                     absl::Milliseconds(100)))));
    } else {
      call->kind = Call::Kind::kRegister;
      s.maybe_registered = true;
      call->context.set_deadline(absl::ToChronoTime(now + options_.rpc_timeout));
    }
    s.in_flight = call;
    calls.push_back(std::move(call));
  }
  return calls;
}

void MemberRegistrar::Issue(const std::shared_ptr<Call>& call) {
  v1::Coordinator::Stub::async_interface* async = peers_[call->peer]->stub->async();
  auto done = [this, call](grpc::Status status) { OnDone(call, FromGrpcStatus(status)); };
  switch (call->kind) {
    case Call::Kind::kRegister:
      async->Register(&call->context, &register_request_, &call->register_response, done);
      break;
    case Call::Kind::kHeartbeat:
      async->Heartbeat(&call->context, &call->heartbeat_request, &call->heartbeat_response, done);
      break;
    case Call::Kind::kDeregister:
      async->Deregister(&call->context, &call->deregister_request, &call->deregister_response,
                        done);
      break;
  }
}

absl::Duration MemberRegistrar::JitteredLocked(absl::Duration d) {
  std::uniform_real_distribution<double> factor(0.8, 1.2);
  return d * factor(jitter_);
}

void MemberRegistrar::OnFailureLocked(PeerState& state, const std::string& address,
                                      const char* what, const absl::Status& status,
                                      absl::Time now) {
  ++state.status.failures;
  state.status.last_error = status;
  if (!state.failing && !stopping_) {
    ABSL_RAW_LOG(WARNING, "[registrar %s] %s with coordinator %s failed (%s); retrying with "
                 "backoff up to %s",
                 identity_.member_id.c_str(), what, address.c_str(), status.ToString().c_str(),
                 absl::FormatDuration(options_.max_backoff).c_str());
  }
  state.failing = true;
  state.next_due = now + JitteredLocked(state.backoff);
  state.backoff = std::min(state.backoff * 2, options_.max_backoff);
}

void MemberRegistrar::OnDone(const std::shared_ptr<Call>& call, const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  PeerState& s = states_[call->peer];
  const std::string& address = peers_[call->peer]->address;
  if (call->kind == Call::Kind::kDeregister) {
    --deregisters_pending_;
    if (status.ok() || absl::IsNotFound(status)) s.status.registered = false;
    if (!status.ok() && !absl::IsNotFound(status)) {
      ABSL_RAW_LOG(WARNING, "[registrar %s] Deregister with coordinator %s failed: %s",
                   identity_.member_id.c_str(), address.c_str(), status.ToString().c_str());
    }
    return;
  }
  s.in_flight.reset();
  wake_ = true;
  const absl::Time now = absl::Now();
  if (call->kind == Call::Kind::kRegister) {
    if (!status.ok()) {
      // Refused or never delivered: nothing to deregister there. A deadline
      // or cancellation leaves it unknown.
      if (absl::IsUnavailable(status) || absl::IsInvalidArgument(status) ||
          absl::IsFailedPrecondition(status) || absl::IsResourceExhausted(status)) {
        s.maybe_registered = false;
      }
      OnFailureLocked(s, address, "Register", status, now);
      return;
    }
    const double interval_s = call->register_response.heartbeat_interval_s();
    s.status.heartbeat_interval =
        interval_s > 0 ? std::max(absl::Seconds(interval_s), kMinHeartbeatInterval)
                       : options_.fallback_heartbeat_interval;
    s.status.coordinator_instance = call->register_response.coordinator_instance();
    s.status.registered = true;
    ++s.status.registrations;
    ABSL_RAW_LOG(INFO, "[registrar %s] registered with coordinator %s (instance %s), "
                 "heartbeat every %s",
                 identity_.member_id.c_str(), address.c_str(),
                 s.status.coordinator_instance.c_str(),
                 absl::FormatDuration(s.status.heartbeat_interval).c_str());
    s.failing = false;
    s.backoff = options_.initial_backoff;
    s.next_due = now + s.status.heartbeat_interval;
    return;
  }
  // Heartbeat.
  if (status.ok()) {
    ++s.status.heartbeats;
    if (s.failing) {
      ABSL_RAW_LOG(INFO, "[registrar %s] heartbeats to coordinator %s succeed again",
                   identity_.member_id.c_str(), address.c_str());
    }
    s.failing = false;
    s.backoff = options_.initial_backoff;
    s.next_due = now + s.status.heartbeat_interval;
    return;
  }
  if (absl::IsNotFound(status)) {
    // Expired there, or the replica restarted with an empty table: rejoin now.
    ABSL_RAW_LOG(INFO, "[registrar %s] coordinator %s does not know this member (%s): "
                 "registering again",
                 identity_.member_id.c_str(), address.c_str(),
                 std::string(status.message()).c_str());
    s.status.registered = false;
    s.maybe_registered = false;
    s.status.last_error = status;
    s.next_due = now;
    return;
  }
  OnFailureLocked(s, address, "Heartbeat", status, now);
}

void MemberRegistrar::Run() {
  mu_.Lock();
  while (!stopping_) {
    if (AnyDueLocked(absl::Now(), /*registered_only=*/false)) {
      std::optional<Load> load;
      if (AnyDueLocked(absl::Now(), /*registered_only=*/true)) {
        // The callback may take locks of its own: never call it under mu_.
        mu_.Unlock();
        load = load_();
        mu_.Lock();
        if (stopping_) break;
      }
      std::vector<std::shared_ptr<Call>> calls = TakeDueCallsLocked(absl::Now(), load);
      mu_.Unlock();
      for (const std::shared_ptr<Call>& call : calls) Issue(call);
      mu_.Lock();
      continue;
    }
    wake_ = false;
    mu_.AwaitWithDeadline(absl::Condition(this, &MemberRegistrar::WakeLocked), NextDueLocked());
  }
  mu_.Unlock();
}

bool MemberRegistrar::NoneInFlightLocked() const {
  for (const PeerState& s : states_) {
    if (s.in_flight != nullptr) return false;
  }
  return true;
}

bool MemberRegistrar::AllRegisteredOrStoppingLocked() const {
  if (stopping_) return true;
  for (const PeerState& s : states_) {
    if (!s.status.registered) return false;
  }
  return true;
}

void MemberRegistrar::Stop() {
  bool first = false;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    first = !stop_started_;
    stop_started_ = true;
  }
  if (!first) {
    stopped_.WaitForNotification();
    return;
  }
  if (thread_.joinable()) thread_.join();

  // Calls in flight end now (CANCELLED); their completions are awaited so
  // nothing touches this object after Stop.
  std::vector<std::shared_ptr<Call>> flying;
  {
    absl::MutexLock lock(&mu_);
    for (const PeerState& s : states_) {
      if (s.in_flight != nullptr) flying.push_back(s.in_flight);
    }
  }
  for (const std::shared_ptr<Call>& call : flying) call->context.TryCancel();
  flying.clear();
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &MemberRegistrar::NoneInFlightLocked));
  }

  // Deregister wherever a registration may stand (a cancelled Register may
  // have landed), in parallel, each bounded by deregister_timeout.
  std::vector<std::shared_ptr<Call>> deregisters;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + options_.deregister_timeout;
    for (size_t i = 0; i < states_.size(); ++i) {
      if (!states_[i].maybe_registered) continue;
      auto call = std::make_shared<Call>();
      call->kind = Call::Kind::kDeregister;
      call->peer = i;
      call->deregister_request.set_member_id(identity_.member_id);
      call->context.set_deadline(absl::ToChronoTime(deadline));
      ++deregisters_pending_;
      deregisters.push_back(std::move(call));
    }
  }
  for (const std::shared_ptr<Call>& call : deregisters) Issue(call);
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &MemberRegistrar::DeregistersDoneLocked));
  }
  stopped_.Notify();
}

std::vector<MemberRegistrar::PeerStatus> MemberRegistrar::Peers() const {
  absl::MutexLock lock(&mu_);
  std::vector<PeerStatus> out;
  out.reserve(states_.size());
  for (const PeerState& s : states_) out.push_back(s.status);
  return out;
}

bool MemberRegistrar::WaitRegisteredWithAll(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &MemberRegistrar::AllRegisteredOrStoppingLocked),
                       timeout);
  if (stopping_) return false;
  for (const PeerState& s : states_) {
    if (!s.status.registered) return false;
  }
  return true;
}

}  // namespace asymcache
