#include "services/coordinator/generate_proxy.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "services/common/grpc_status.h"
#include "services/common/tenant_salt.h"
#include "services/common/transport_security.h"

namespace asymcache {

namespace {

// A worker as error messages name it.
std::string WorkerName(const std::string& id, const std::string& address) {
  return absl::StrCat("worker '", id, "' (", address, ")");
}

// What one downstream call (a leg) ended with.
struct LegResult {
  std::string finish_reason;
  v1::RequestStats stats;
  std::vector<int32_t> tokens;  // every token it streamed
  int64_t offset_us = 0;        // its start, counted from the proxy's arrival
};

// The stats of the final message through the proxy, from the legs in order
// (one leg, or prefill then decode):
//   prompt_tokens, hit_tokens, rebuilt_tokens  the first leg's: the client's
//       prompt as the worker that computed it found it (the decode leg's
//       context is resident there by import, not by cache hit);
//   computed_prompt_tokens  positions computed on either worker before its
//       first token (the decode leg computes the first generated token's
//       position, plus whatever it rebuilt when an import fell short);
//   copied_tokens, imported_blocks, import_seconds, steps, preemptions
//       summed over the legs (imports happen on the decode leg);
//   queue_seconds  the first leg's, counted from the proxy's arrival;
//   ttft_seconds   measured here: arrival -> first token received from a
//       worker (routing and the network included; what is reported with
//       ReportTtft).
v1::RequestStats MergeStats(const std::vector<LegResult>& legs, double ttft_s) {
  v1::RequestStats out;
  const LegResult& first = legs.front();
  out.set_prompt_tokens(first.stats.prompt_tokens());
  out.set_hit_tokens(first.stats.hit_tokens());
  out.set_rebuilt_tokens(first.stats.rebuilt_tokens());
  out.set_queue_seconds(first.stats.queue_seconds() + static_cast<double>(first.offset_us) * 1e-6);
  out.set_ttft_seconds(ttft_s);
  for (const LegResult& leg : legs) {
    const v1::RequestStats& s = leg.stats;
    out.set_computed_prompt_tokens(out.computed_prompt_tokens() + s.computed_prompt_tokens());
    out.set_copied_tokens(out.copied_tokens() + s.copied_tokens());
    out.set_imported_blocks(out.imported_blocks() + s.imported_blocks());
    out.set_import_seconds(out.import_seconds() + s.import_seconds());
    out.set_steps(out.steps() + s.steps());
    out.set_preemptions(out.preemptions() + s.preemptions());
  }
  return out;
}

}  // namespace

// One downstream Generate call to a worker. Owned by its ProxiedGenerate,
// which it keeps alive (a reference) until its OnDone has returned.
class WorkerLeg final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  // `request` must outlive the call (the server-side request, or `owned`).
  WorkerLeg(ProxiedGenerate* owner, std::string name, std::unique_ptr<grpc::ClientContext> context,
            const v1::GenerateRequest* request, std::optional<v1::GenerateRequest> owned)
      : owner_(owner),
        name_(std::move(name)),
        context_(std::move(context)),
        owned_(std::move(owned)),
        request_(owned_.has_value() ? &*owned_ : request) {}

  void Start(const std::shared_ptr<grpc::Channel>& channel) {
    stub_ = v1::Worker::NewStub(channel);
    stub_->async()->Generate(context_.get(), request_, this);
    StartRead(&incoming_);
    StartCall();
  }
  void Cancel() { context_->TryCancel(); }

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  const std::string& name() const { return name_; }

 private:
  ProxiedGenerate* const owner_;
  const std::string name_;  // "worker 'ID' (ADDRESS)"
  const std::unique_ptr<grpc::ClientContext> context_;
  const std::optional<v1::GenerateRequest> owned_;
  const v1::GenerateRequest* const request_;
  std::unique_ptr<v1::Worker::Stub> stub_;
  v1::GenerateResponse incoming_;
};

// One proxied Generate: the client's stream (this reactor) and its legs.
class ProxiedGenerate final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  ProxiedGenerate(GenerateProxy* proxy, grpc::CallbackServerContext* ctx,
                  const v1::GenerateRequest* request)
      : proxy_(proxy),
        ctx_(ctx),
        salt_(proxy->state_->tenant_salts().SaltFor(PeerIdentity(*ctx), request->salt())),
        tenant_request_(WithSalt(*request, salt_)),
        request_(tenant_request_.has_value() ? &*tenant_request_ : request),
        arrival_(absl::Now()) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      const absl::Status begun =
          salt_.ok() ? BeginLocked(&action)
                     : absl::Status(salt_.status().code(),
                                    absl::StrCat("Generate: ", salt_.status().message()));
      if (!begun.ok()) {
        final_status_ = ToGrpcStatus(begun);
        action = NextLocked();
      }
    }
    Run(std::move(action));
  }

  // Client side.
  void OnWriteDone(bool ok) override {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!queue_.empty()) queue_.pop_front();
      if (!ok) {
        // The client is gone (OnCancel follows): nothing more is written;
        // the running leg is cancelled and its end finishes the call.
        queue_.clear();
        client_gone_ = true;
        action.cancel = active_;
      }
      Action next = NextLocked();
      action.write = next.write;
      action.finish = std::move(next.finish);
    }
    Run(std::move(action));
  }
  void OnCancel() override {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      action.cancel = active_;
    }
    Run(std::move(action));
  }
  void OnDone() override { Unref(); }

  // Leg side (the leg's reactions).
  void LegMessage(v1::GenerateResponse message) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      LegResult& result = results_.back();
      if (!message.finish_reason().empty() || message.has_stats()) {
        result.finish_reason = message.finish_reason();
        result.stats = message.stats();
      }
      if (message.tokens_size() > 0) {
        result.tokens.insert(result.tokens.end(), message.tokens().begin(),
                             message.tokens().end());
        if (!first_token_.has_value()) {
          first_token_ = absl::Now();
          ttft_s_ = absl::ToDoubleSeconds(*first_token_ - arrival_);
          action.report_ttft = std::make_pair(route_id_, ttft_s_);
        }
        if (!client_gone_) {
          v1::GenerateResponse& out = queue_.emplace_back();
          out.mutable_tokens()->Swap(message.mutable_tokens());
          out.mutable_logits()->Swap(message.mutable_logits());
          for (const int64_t t : message.token_times_us()) {
            out.add_token_times_us(t + result.offset_us);
          }
          action = MergeNext(std::move(action));
        }
      }
    }
    Run(std::move(action));
  }

  void LegDone(WorkerLeg* leg, const grpc::Status& status) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      active_ = nullptr;
      EndLegLocked(leg, status, &action);
      action = MergeNext(std::move(action));
    }
    Run(std::move(action));
  }

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

 private:
  // What to do once the lock is released (each gRPC call made outside it).
  struct Action {
    WorkerLeg* start = nullptr;
    std::shared_ptr<grpc::Channel> channel;  // for `start`
    const v1::GenerateResponse* write = nullptr;
    std::optional<grpc::Status> finish;
    WorkerLeg* cancel = nullptr;
    std::optional<std::pair<uint64_t, double>> report_ttft;  // route id, TTFT (s)
  };

  ~ProxiedGenerate() override = default;

  // A copy of `request` under `salt` when that differs from the request's
  // own (a tenant's derived salt: the workers trust what the coordinator
  // forwards); nullopt when the request goes on as it is.
  static std::optional<v1::GenerateRequest> WithSalt(const v1::GenerateRequest& request,
                                                     const absl::StatusOr<std::string>& salt) {
    if (!salt.ok() || *salt == request.salt()) return std::nullopt;
    v1::GenerateRequest copy = request;
    copy.set_salt(*salt);
    return copy;
  }

  // Validates, routes and creates the first leg (started by Run).
  absl::Status BeginLocked(Action* action) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const v1::GenerateRequest& r = *request_;
    if (!proxy_->accepting_.load()) {
      return absl::UnavailableError(
          "Generate: the coordinator is shutting down; use another replica or a worker");
    }
    if (r.prompt_tokens_size() == 0) {
      return absl::InvalidArgumentError("Generate: prompt_tokens is empty");
    }
    if (r.max_new_tokens() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("Generate: max_new_tokens must be >= 1, got ", r.max_new_tokens()));
    }
    RouteInput in;
    in.salt = r.salt();  // the derived salt (request_ carries it)
    in.tokens = absl::MakeConstSpan(r.prompt_tokens().data(),
                                    static_cast<size_t>(r.prompt_tokens_size()));
    in.reserve_tokens = r.max_new_tokens();
    in.job_id = r.agent().job_id();
    in.tool = r.agent().tool();
    in.last_step = r.agent().last_step();
    absl::StatusOr<RouteOutcome> route = proxy_->state_->Route(in);
    if (!route.ok()) {
      return absl::Status(route.status().code(),
                          absl::StrCat("Generate: ", route.status().message()));
    }
    route_id_ = route->route_id;
    const RoutedTarget& prefill = route->prefill;
    if (prefill.worker == nullptr) {
      return absl::UnavailableError(absl::StrCat(
          "Generate: no worker is registered on daemon '", prefill.daemon->member_id, "' (",
          prefill.daemon->address, "), where the request was routed; retry later"));
    }
    split_ = route->split && r.max_new_tokens() > 1;
    if (split_) {
      const RoutedTarget& decode = route->decode;
      if (decode.worker == nullptr) {
        return absl::UnavailableError(absl::StrCat(
            "Generate: no worker is registered on decode daemon '", decode.daemon->member_id,
            "' (", decode.daemon->address,
            "), where the request's decode was routed; retry later"));
      }
      kv_source_ = prefill.daemon->address;
      decode_worker_ = decode.worker;
      // The prefill worker computes the prompt and the first token only.
      v1::GenerateRequest first = r;
      first.set_max_new_tokens(1);
      StartLegLocked(*prefill.worker, std::move(first), action);
    } else {
      StartLegLocked(*prefill.worker, std::nullopt, action);
    }
    return absl::OkStatus();
  }

  // Creates a leg to `worker` (sending `owned`, or the client's request) and
  // has Run start it.
  void StartLegLocked(const MemberIdentity& worker, std::optional<v1::GenerateRequest> owned,
                      Action* action) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto leg = std::make_unique<WorkerLeg>(this, WorkerName(worker.member_id, worker.address),
                                           grpc::ClientContext::FromCallbackServerContext(*ctx_),
                                           request_, std::move(owned));
    refs_.fetch_add(1);  // released at the end of the leg's OnDone
    active_ = leg.get();
    results_.emplace_back();
    // The leg's start, counted from the arrival, rebases its token times.
    results_.back().offset_us = absl::ToInt64Microseconds(absl::Now() - arrival_);
    action->start = leg.get();
    action->channel = proxy_->ChannelTo(worker.address);
    legs_.push_back(std::move(leg));
  }

  // A leg ended: an error ends the call; the prefill leg of a split call is
  // followed by the decode leg unless generation is over; the last leg's end
  // queues the final message.
  void EndLegLocked(WorkerLeg* leg, const grpc::Status& status, Action* action)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!status.ok()) {
      final_status_ = grpc::Status(status.error_code(),
                                   absl::StrCat(leg->name(), ": ", status.error_message()));
      return;
    }
    const LegResult& result = results_.back();
    if (result.finish_reason.empty()) {
      final_status_ = grpc::Status(
          grpc::StatusCode::INTERNAL,
          absl::StrCat(leg->name(), ": the stream ended without a finish_reason"));
      return;
    }
    const bool prefill_of_split = split_ && results_.size() == 1;
    if (prefill_of_split) {
      if (result.tokens.size() != 1) {
        final_status_ = grpc::Status(
            grpc::StatusCode::INTERNAL,
            absl::StrCat(leg->name(), ": answered ", result.tokens.size(),
                         " tokens to a prefill request of max_new_tokens = 1"));
        return;
      }
      const int32_t token = result.tokens[0];
      const auto& stops = request_->stop_tokens();
      const bool stopped = result.finish_reason == "stop" ||
                           std::find(stops.begin(), stops.end(), token) != stops.end();
      if (!stopped) {
        if (cancelled_ || client_gone_) {
          final_status_ = grpc::Status(grpc::StatusCode::CANCELLED,
                                       "Generate: cancelled by the client");
          return;
        }
        v1::GenerateRequest rest = *request_;
        rest.add_prompt_tokens(token);
        rest.set_max_new_tokens(request_->max_new_tokens() - 1);
        rest.set_kv_source(kv_source_);
        rest.set_kv_source_tokens(request_->prompt_tokens_size());
        StartLegLocked(*decode_worker_, std::move(rest), action);
        return;
      }
    }
    if (!client_gone_) {
      v1::GenerateResponse& last = queue_.emplace_back();
      last.set_finish_reason(result.finish_reason);
      *last.mutable_stats() = MergeStats(results_, ttft_s_);
    }
    final_status_ = grpc::Status::OK;
  }

  // `action` plus the next write or the finish.
  Action MergeNext(Action action) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Action next = NextLocked();
    action.write = next.write;
    action.finish = std::move(next.finish);
    return action;
  }

  // The next write, or the finish once every queued message is written.
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Action action;
    if (finished_ || writing_) return action;
    if (!queue_.empty()) {
      writing_ = true;
      action.write = &queue_.front();
      return action;
    }
    if (final_status_.has_value() && active_ == nullptr) {
      finished_ = true;
      action.finish = *final_status_;
    }
    return action;
  }

  void Run(Action action) {
    if (action.start != nullptr) action.start->Start(action.channel);
    if (action.cancel != nullptr) action.cancel->Cancel();
    if (action.report_ttft.has_value()) {
      // NOT_FOUND when the route fell out of the route log: nothing to do.
      (void)proxy_->state_->ReportTtft(action.report_ttft->first, action.report_ttft->second);
    }
    if (action.write != nullptr) StartWrite(action.write);
    if (action.finish.has_value()) {
      if (CoordinatorMetrics* metrics = proxy_->state_->metrics()) {
        metrics->ObserveRpc("Generate", static_cast<absl::StatusCode>(action.finish->error_code()),
                            absl::Now() - arrival_);
      }
      Finish(*action.finish);  // last: OnDone may follow at once
    }
  }

  // Immutable after construction.
  GenerateProxy* const proxy_;
  grpc::CallbackServerContext* const ctx_;
  // The salt the call runs under (TenantSaltPolicy) or the error refusing it.
  const absl::StatusOr<std::string> salt_;
  // The client's request with the derived salt, when it had to be rewritten.
  const std::optional<v1::GenerateRequest> tenant_request_;
  // What is routed and forwarded: tenant_request_, or the library's request
  // (valid until OnDone).
  const v1::GenerateRequest* const request_;
  const absl::Time arrival_;

  // One for the client side (OnDone), one per started leg (its OnDone).
  std::atomic<int> refs_{1};

  absl::Mutex mu_;
  uint64_t route_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool split_ ABSL_GUARDED_BY(mu_) = false;
  std::string kv_source_ ABSL_GUARDED_BY(mu_);  // the prefill daemon's address
  std::shared_ptr<const MemberIdentity> decode_worker_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<WorkerLeg>> legs_ ABSL_GUARDED_BY(mu_);
  std::vector<LegResult> results_ ABSL_GUARDED_BY(mu_);  // one per leg, in order
  WorkerLeg* active_ ABSL_GUARDED_BY(mu_) = nullptr;     // the leg running, if any
  std::optional<absl::Time> first_token_ ABSL_GUARDED_BY(mu_);
  double ttft_s_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);  // front: in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;    // OnCancel
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;  // a write failed
  std::optional<grpc::Status> final_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() called
};

void WorkerLeg::OnReadDone(bool ok) {
  if (!ok) return;  // the stream's end: OnDone has the status
  owner_->LegMessage(std::move(incoming_));
  incoming_.Clear();
  StartRead(&incoming_);
}

void WorkerLeg::OnDone(const grpc::Status& status) {
  ProxiedGenerate* owner = owner_;
  owner->LegDone(this, status);
  owner->Unref();  // may delete the owner and this leg: nothing after it
}

GenerateProxy::GenerateProxy(CoordinatorState* state) : state_(state) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerateProxy::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  return new ProxiedGenerate(this, ctx, request);
}

grpc::ServerUnaryReactor* GenerateProxy::GetWorkerStats(grpc::CallbackServerContext* ctx,
                                                        const v1::GetWorkerStatsRequest*,
                                                        v1::GetWorkerStatsResponse*) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status(
      grpc::StatusCode::UNIMPLEMENTED,
      "GetWorkerStats: the coordinator only proxies Generate; ask a worker (ListMembers on the "
      "Coordinator service lists them with their addresses)"));
  return reactor;
}

size_t GenerateProxy::cached_channels() const {
  absl::MutexLock lock(&channels_mu_);
  return channels_.size();
}

std::shared_ptr<grpc::Channel> GenerateProxy::ChannelTo(const std::string& address) {
  absl::MutexLock lock(&channels_mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  // Bounded: workers are members. Past the bound (addresses of departed
  // workers piling up), drop one; calls using it keep their reference.
  if (static_cast<int64_t>(channels_.size()) >= state_->options().max_members) {
    channels_.erase(channels_.begin());
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(state_->options().max_message_bytes);
  args.SetMaxSendMessageSize(state_->options().max_message_bytes);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(address, state_->channel_credentials(), args);
  channels_.emplace(address, channel);
  return channel;
}

}  // namespace asymcache
