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
//   attempts       routes tried (retries after UNAVAILABLE + 1); the other
//       fields are the last (successful) attempt's legs'.
v1::RequestStats MergeStats(const std::vector<LegResult>& legs, double ttft_s, int attempts) {
  v1::RequestStats out;
  out.set_attempts(attempts);
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
  WorkerLeg(ProxiedGenerate* owner, std::string name, std::string daemon_id,
            std::unique_ptr<grpc::ClientContext> context, const v1::GenerateRequest* request,
            std::optional<v1::GenerateRequest> owned)
      : owner_(owner),
        name_(std::move(name)),
        daemon_id_(std::move(daemon_id)),
        context_(std::move(context)),
        owned_(std::move(owned)),
        request_(owned_.has_value() ? &*owned_ : request) {}

  // Reads are started from OnReadDone, except the one that ends a pause
  // (ResumeReading, from the client's side): a hold, taken before StartCall
  // as gRPC requires, keeps the call (and OnDone) from ending while no read
  // is outstanding; the read that reports the stream's end releases it.
  void Start(const std::shared_ptr<grpc::Channel>& channel) {
    stub_ = v1::Worker::NewStub(channel);
    stub_->async()->Generate(context_.get(), request_, this);
    AddHold();
    StartRead(&incoming_);
    StartCall();
  }
  void Cancel() { context_->TryCancel(); }
  // Precondition: the owner paused this leg (LegMessage answered false) and
  // has not resumed it since: no read is outstanding. Called once per pause.
  void ResumeReading() { StartRead(&incoming_); }

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  const std::string& name() const { return name_; }
  const std::string& daemon_id() const { return daemon_id_; }

 private:
  ProxiedGenerate* const owner_;
  const std::string name_;       // "worker 'ID' (ADDRESS)"
  const std::string daemon_id_;  // the daemon the worker runs on (excluded from a retry)
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
      if (!queue_.empty()) {
        queued_bytes_ -= queue_.front().bytes;
        queue_.pop_front();
      }
      if (!ok) {
        // The client is gone (OnCancel follows): nothing more is written;
        // the running leg is cancelled and its end finishes the call.
        queue_.clear();
        queued_bytes_ = 0;
        client_gone_ = true;
        action.cancel = active_;
      }
      action.resume = ResumeLocked();
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
      action.resume = ResumeLocked();  // its read ends the cancelled leg
    }
    Run(std::move(action));
  }
  void OnDone() override { Unref(); }

  // Leg side (the leg's reactions).
  // True: the leg reads its next message now. False: the leg is paused (the
  // client's queue is past proxy_max_buffered_bytes); it must start no read
  // until ResumeReading, which the client side calls exactly once when the
  // queue has drained to the low-water mark, or the client cancelled or went
  // away.
  bool LegMessage(WorkerLeg* leg, v1::GenerateResponse message) {
    Action action;
    bool read_on = true;
    {
      absl::MutexLock lock(&mu_);
      if (leg != active_ || final_status_.has_value()) return true;  // a leg being ended: drain
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
        v1::GenerateResponse out;
        if (!ForwardNewTokensLocked(*leg, message, result.offset_us, &out)) {
          action.cancel = active_;  // ABORTED is final; the leg's end finishes
        } else if (!client_gone_ && out.tokens_size() > 0) {
          EnqueueLocked(std::move(out));
          // Backpressure: past the bound, this leg stops reading (HTTP/2
          // flow control holds back this stream only). Never once the
          // client is gone or cancelled: nothing would resume it.
          if (queued_bytes_ > proxy_->state_->options().proxy_max_buffered_bytes &&
              !cancelled_ && !client_gone_) {
            paused_ = leg;
            read_on = false;
            action.count_pause = true;
          }
        }
        action = MergeNext(std::move(action));
      }
    }
    Run(std::move(action));
    return read_on;
  }

  void LegDone(WorkerLeg* leg, const grpc::Status& status) {
    Action action;
    {
      absl::MutexLock lock(&mu_);
      // A paused leg holds its call open (WorkerLeg::Start): it cannot end.
      if (paused_ == leg) paused_ = nullptr;  // defensive: never read after its end
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
    WorkerLeg* resume = nullptr;  // a paused leg to read again
    bool count_pause = false;     // a leg was paused (the metric)
    std::optional<std::pair<uint64_t, double>> report_ttft;  // route id, TTFT (s)
  };

  // A message for the client and its serialized size (counted in
  // queued_bytes_ until its write is done).
  struct Queued {
    v1::GenerateResponse message;
    int64_t bytes = 0;
  };

  void EnqueueLocked(v1::GenerateResponse message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const auto bytes = static_cast<int64_t>(message.ByteSizeLong());
    queue_.push_back(Queued{std::move(message), bytes});
    queued_bytes_ += bytes;
  }

  // The paused leg, to be read again by the caller (once: it is no longer
  // paused), when the queue has drained to the low-water mark (half the
  // bound) or the client cancelled or is gone; else nullptr.
  WorkerLeg* ResumeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (paused_ == nullptr) return nullptr;
    const int64_t low_water = proxy_->state_->options().proxy_max_buffered_bytes / 2;
    if (queued_bytes_ > low_water && !cancelled_ && !client_gone_) return nullptr;
    WorkerLeg* leg = paused_;
    paused_ = nullptr;
    return leg;
  }

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

  // The tokens of `message` (from `leg`, of the running attempt) the client
  // has not been sent yet go into `out` (with their times and logits); the
  // ones it was sent by an earlier attempt must be equal — sampling is a
  // pure function of (seed, position), so a regeneration repeats them. False
  // (final_status_ ABORTED) on a mismatch: never a wrong answer.
  bool ForwardNewTokensLocked(const WorkerLeg& leg, const v1::GenerateResponse& message,
                              int64_t offset_us, v1::GenerateResponse* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int n = message.tokens_size();
    const int per_token = n > 0 && message.logits_size() % n == 0 ? message.logits_size() / n : 0;
    const bool timed = message.token_times_us_size() == n;
    for (int i = 0; i < n; ++i) {
      const int32_t token = message.tokens(i);
      const size_t position = attempt_tokens_++;
      if (position < sent_.size()) {
        if (sent_[position] != token) {
          final_status_ = grpc::Status(
              grpc::StatusCode::ABORTED,
              absl::StrCat("Generate: attempt ", attempt_, " on ", leg.name(), " generated token ",
                           token, " at output position ", position, ", where attempt ",
                           attempt_ - 1, " had streamed ", sent_[position],
                           "; the call ends rather than give a wrong answer"));
          return false;
        }
        continue;  // already streamed
      }
      sent_.push_back(token);
      out->add_tokens(token);
      if (timed) out->add_token_times_us(message.token_times_us(i) + offset_us);
      for (int v = 0; v < per_token; ++v) out->add_logits(message.logits(i * per_token + v));
    }
    return true;
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
    return RouteAndStartLocked(action);
  }

  // One attempt: routes (the daemons of failed attempts excluded) and creates
  // the attempt's first leg (started by Run).
  absl::Status RouteAndStartLocked(Action* action) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const v1::GenerateRequest& r = *request_;
    ++attempt_;
    attempt_tokens_ = 0;
    results_.clear();
    RouteInput in;
    in.exclude_daemons = excluded_;
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
      decode_daemon_ = decode.daemon->member_id;
      // The prefill worker computes the prompt and the first token only.
      v1::GenerateRequest first = r;
      first.set_max_new_tokens(1);
      StartLegLocked(*prefill.worker, prefill.daemon->member_id, std::move(first), action);
    } else {
      StartLegLocked(*prefill.worker, prefill.daemon->member_id, std::nullopt, action);
    }
    return absl::OkStatus();
  }

  // Creates a leg to `worker` (sending `owned`, or the client's request) and
  // has Run start it.
  void StartLegLocked(const MemberIdentity& worker, const std::string& daemon_id,
                      std::optional<v1::GenerateRequest> owned, Action* action)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto leg = std::make_unique<WorkerLeg>(this, WorkerName(worker.member_id, worker.address),
                                           daemon_id,
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
    if (final_status_.has_value()) return;  // ended already (a mismatch: ABORTED)
    if (!status.ok()) {
      const std::string failed = absl::StrCat(leg->name(), ": ", status.error_message());
      // UNAVAILABLE from a worker (its daemon died or restarted, it is going
      // away, it cannot be reached) is not an answer: regenerate from the
      // prompt on another route, bounded.
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE && !cancelled_ && !client_gone_ &&
          proxy_->accepting_.load() && attempt_ < proxy_->state_->options().generate_attempts) {
        excluded_.push_back(leg->daemon_id());
        const absl::Status retried = RouteAndStartLocked(action);
        if (retried.ok()) return;
        final_status_ = grpc::Status(
            grpc::StatusCode::UNAVAILABLE,
            absl::StrCat(failed, "; no retry possible: ", retried.message()));
        return;
      }
      final_status_ = grpc::Status(
          status.error_code(),
          attempt_ > 1 ? absl::StrCat(failed, " (attempt ", attempt_, ")") : failed);
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
        StartLegLocked(*decode_worker_, decode_daemon_, std::move(rest), action);
        return;
      }
    }
    if (attempt_tokens_ < sent_.size()) {
      final_status_ = grpc::Status(
          grpc::StatusCode::ABORTED,
          absl::StrCat("Generate: attempt ", attempt_, " on ", leg->name(), " finished after ",
                       attempt_tokens_, " tokens, but ", sent_.size(),
                       " were streamed already; the call ends rather than give a wrong answer"));
      return;
    }
    if (!client_gone_) {
      v1::GenerateResponse last;
      last.set_finish_reason(result.finish_reason);
      *last.mutable_stats() = MergeStats(results_, ttft_s_, attempt_);
      EnqueueLocked(std::move(last));
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
      action.write = &queue_.front().message;
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
    if (action.resume != nullptr) action.resume->ResumeReading();
    if (action.count_pause) {
      if (CoordinatorMetrics* metrics = proxy_->state_->metrics()) metrics->AddProxyPause();
    }
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
  std::string decode_daemon_ ABSL_GUARDED_BY(mu_);  // its daemon's member id
  // Retries (options().generate_attempts): the attempt running (1 = the
  // first route), the daemons of failed attempts, every token streamed to
  // the client, and how many tokens the running attempt has produced.
  int attempt_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> excluded_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> sent_ ABSL_GUARDED_BY(mu_);
  size_t attempt_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::unique_ptr<WorkerLeg>> legs_ ABSL_GUARDED_BY(mu_);
  std::vector<LegResult> results_ ABSL_GUARDED_BY(mu_);  // the attempt's, one per leg, in order
  WorkerLeg* active_ ABSL_GUARDED_BY(mu_) = nullptr;     // the leg running, if any
  std::optional<absl::Time> first_token_ ABSL_GUARDED_BY(mu_);
  double ttft_s_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);  // front: in flight
  int64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;   // the sum of queue_'s bytes
  // The leg that stopped reading for backpressure (LegMessage answered
  // false), until ResumeLocked hands it out; nullptr when none is paused.
  WorkerLeg* paused_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;    // OnCancel
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;  // a write failed
  std::optional<grpc::Status> final_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() called
};

void WorkerLeg::OnReadDone(bool ok) {
  if (!ok) {
    // The stream's end: no read follows; OnDone (with the status) may come.
    RemoveHold();
    return;
  }
  // Taken out of incoming_ before the owner sees it: once the owner has
  // paused this leg, the client side may resume it (StartRead into
  // incoming_) at any moment, so nothing here touches incoming_ afterwards.
  v1::GenerateResponse message = std::move(incoming_);
  incoming_.Clear();
  if (owner_->LegMessage(this, std::move(message))) StartRead(&incoming_);
}

void WorkerLeg::OnDone(const grpc::Status& status) {
  ProxiedGenerate* owner = owner_;
  owner->LegDone(this, status);
  owner->Unref();  // may delete the owner and this leg: nothing after it
}

GenerateProxy::GenerateProxy(CoordinatorState* state) : state_(state) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerateProxy::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  if (absl::Status limited = state_->client_limiter().Admit(*ctx, "Generate"); !limited.ok()) {
    class Refused final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
     public:
      explicit Refused(const absl::Status& status) {
        Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(status.message())));
      }
      void OnDone() override { delete this; }
    };
    return new Refused(limited);
  }
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
