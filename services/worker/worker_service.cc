#include "services/worker/worker_service.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/common/grpc_status.h"
#include "services/common/proto_convert.h"
#include "services/common/transport_security.h"

namespace asymcache::worker {
namespace {

void ToProto(const RequestStats& s, v1::RequestStats* out) {
  out->set_prompt_tokens(s.prompt_tokens);
  out->set_hit_tokens(s.hit_tokens);
  out->set_rebuilt_tokens(s.rebuilt_tokens);
  out->set_computed_prompt_tokens(s.computed_prompt_tokens);
  out->set_copied_tokens(s.copied_tokens);
  out->set_imported_blocks(s.imported_blocks);
  out->set_import_seconds(s.import_seconds);
  out->set_queue_seconds(s.queue_seconds);
  out->set_ttft_seconds(s.ttft_seconds);
  out->set_steps(s.steps);
  out->set_preemptions(s.preemptions);
}

// One Generate stream: the engine's sink and the gRPC write reactor. The
// reactor deletes itself in OnDone; the engine may hold the sink longer, so
// the shared part (Stream) outlives it and is detached at OnDone.
class GenerateReactor;

class Stream final : public GenerationSink {
 public:
  Stream(GenerateReactor* reactor, Engine* engine, int64_t max_buffered_bytes)
      : engine_(engine), max_buffered_bytes_(max_buffered_bytes), reactor_(reactor) {}
  void OnTokens(TokenBatch batch) override;
  void OnFinish(const absl::Status& status, const std::string& finish_reason,
                const RequestStats& stats) override;

  // Reactor side.
  void WriteDone(bool ok);
  void Detach() {
    absl::MutexLock lock(&mu_);
    reactor_ = nullptr;
  }
  // The request could not be submitted: end the call with `status`.
  void FailNow(const absl::Status& status);
  // The engine request this stream carries (after a successful Submit); a
  // stream that overflowed before it was known cancels it now.
  void SetRequest(uint64_t request_id);

 private:
  // Under mu_: the next action for the reactor (a write or the finish), or
  // nothing while a write is in flight. Called after every state change; the
  // action runs outside the lock.
  struct Action {
    const v1::GenerateResponse* write = nullptr;
    std::optional<grpc::Status> finish;
  };
  Action NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run(Action action) ABSL_LOCKS_EXCLUDED(mu_);
  // Queues `message`; past the bound, drops the queue (but a message being
  // written) and ends the stream with RESOURCE_EXHAUSTED. Returns the engine
  // request to cancel (0: none).
  uint64_t EnqueueLocked(v1::GenerateResponse message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops every queued message but one gRPC is writing (its memory is gRPC's
  // until WriteDone).
  void DropUnwrittenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Engine* const engine_;
  const int64_t max_buffered_bytes_;
  absl::Mutex mu_;
  GenerateReactor* reactor_ ABSL_GUARDED_BY(mu_);
  // Front: the message being written while writing_. Each with its
  // serialized size, summed in queued_bytes_.
  std::deque<std::pair<v1::GenerateResponse, int64_t>> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t request_id_ ABSL_GUARDED_BY(mu_) = 0;  // 0 until SetRequest
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish() called
  std::optional<grpc::Status> final_status_ ABSL_GUARDED_BY(mu_);
};

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // `salt`: the salt the request runs under (TenantSaltPolicy), or the error
  // that refuses it.
  GenerateReactor(Engine* engine, const v1::GenerateRequest& request,
                  const absl::StatusOr<std::string>& salt, int64_t max_buffered_bytes)
      : engine_(engine) {
    stream_ = std::make_shared<Stream>(this, engine, max_buffered_bytes);
    if (!salt.ok()) {
      stream_->FailNow(absl::Status(salt.status().code(),
                                    absl::StrCat("Generate: ", salt.status().message())));
      return;
    }
    GenerationRequest converted = FromProto(request);
    converted.salt = *salt;
    absl::StatusOr<uint64_t> id = engine_->Submit(std::move(converted), stream_);
    if (!id.ok()) {
      stream_->FailNow(id.status());
      return;
    }
    request_id_ = *id;
    stream_->SetRequest(*id);
  }
  void OnWriteDone(bool ok) override { stream_->WriteDone(ok); }
  void OnCancel() override {
    if (request_id_ != 0) engine_->Cancel(request_id_);
  }
  void OnDone() override {
    stream_->Detach();
    delete this;
  }

 private:
  Engine* const engine_;
  std::shared_ptr<Stream> stream_;
  uint64_t request_id_ = 0;
};

void Stream::OnTokens(TokenBatch batch) {
  Action action;
  uint64_t cancel = 0;
  {
    absl::MutexLock lock(&mu_);
    if (overflowed_) return;  // the request is being cancelled
    v1::GenerateResponse message;
    message.mutable_tokens()->Add(batch.tokens.begin(), batch.tokens.end());
    message.mutable_token_times_us()->Add(batch.times_us.begin(), batch.times_us.end());
    message.mutable_logits()->Add(batch.logits.begin(), batch.logits.end());
    cancel = EnqueueLocked(std::move(message));
    action = NextLocked();
  }
  // Outside the lock: the engine takes its own (never while calling a sink).
  if (cancel != 0) engine_->Cancel(cancel);
  Run(action);
}

void Stream::DropUnwrittenLocked() {
  const size_t keep = writing_ ? 1 : 0;
  while (queue_.size() > keep) {
    queued_bytes_ -= queue_.back().second;
    queue_.pop_back();
  }
}

uint64_t Stream::EnqueueLocked(v1::GenerateResponse message) {
  const auto bytes = static_cast<int64_t>(message.ByteSizeLong());
  queue_.emplace_back(std::move(message), bytes);
  queued_bytes_ += bytes;
  if (queued_bytes_ <= max_buffered_bytes_) return 0;
  // The client does not keep up: keep only a message gRPC is writing.
  overflowed_ = true;
  DropUnwrittenLocked();
  final_status_ = grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      absl::StrCat("Generate: the client did not read its stream: over ", max_buffered_bytes_,
                   " bytes of responses were waiting (--max-stream-buffered-bytes); the request "
                   "was cancelled"));
  return request_id_;
}

void Stream::SetRequest(uint64_t request_id) {
  bool cancel = false;
  {
    absl::MutexLock lock(&mu_);
    request_id_ = request_id;
    cancel = overflowed_;
  }
  if (cancel) engine_->Cancel(request_id);
}

void Stream::OnFinish(const absl::Status& status, const std::string& finish_reason,
                      const RequestStats& stats) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    // An overflow (or a failed write) already decided how the stream ends.
    if (final_status_.has_value()) return;
    if (status.ok()) {
      v1::GenerateResponse message;
      message.set_finish_reason(finish_reason);
      ToProto(stats, message.mutable_stats());
      (void)EnqueueLocked(std::move(message));  // the request is over: nothing to cancel
      if (!final_status_.has_value()) final_status_ = grpc::Status::OK;
    } else {
      // An error ends the stream without the queued tokens (but one being written).
      DropUnwrittenLocked();
      final_status_ = ToGrpcStatus(status);
    }
    action = NextLocked();
  }
  Run(action);
}

void Stream::FailNow(const absl::Status& status) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    final_status_ = ToGrpcStatus(status);
    action = NextLocked();
  }
  Run(action);
}

void Stream::WriteDone(bool ok) {
  Action action;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!queue_.empty()) {
      queued_bytes_ -= queue_.front().second;
      queue_.pop_front();
    }
    if (!ok) {
      // The client is gone; the engine hears of it through OnCancel.
      queue_.clear();
      queued_bytes_ = 0;
      if (!final_status_.has_value()) {
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    action = NextLocked();
  }
  Run(action);
}

Stream::Action Stream::NextLocked() {
  Action action;
  if (reactor_ == nullptr || writing_ || finished_) return action;
  if (!queue_.empty()) {
    writing_ = true;
    action.write = &queue_.front().first;
    return action;
  }
  if (final_status_.has_value()) {
    finished_ = true;
    action.finish = *final_status_;
  }
  return action;
}

void Stream::Run(Action action) {
  // The reactor cannot go away here: OnDone follows Finish, which only this
  // path calls, and a write in flight keeps it alive.
  GenerateReactor* reactor;
  {
    absl::MutexLock lock(&mu_);
    reactor = reactor_;
  }
  if (reactor == nullptr) return;
  if (action.write != nullptr) reactor->StartWrite(action.write);
  if (action.finish.has_value()) reactor->Finish(*action.finish);
}

}  // namespace

GenerationRequest FromProto(const v1::GenerateRequest& request) {
  GenerationRequest out;
  out.prompt.assign(request.prompt_tokens().begin(), request.prompt_tokens().end());
  out.max_new_tokens = request.max_new_tokens();
  out.sampling.temperature = request.sampling().temperature();
  out.sampling.top_p = request.sampling().top_p() == 0.0f ? 1.0f : request.sampling().top_p();
  out.sampling.seed = request.sampling().seed();
  out.stop_tokens.assign(request.stop_tokens().begin(), request.stop_tokens().end());
  out.salt = request.salt();
  out.session_id = request.session_id();
  if (request.has_agent()) {
    out.agent = AgentJob{request.agent().job_id(), request.agent().tool(),
                         request.agent().last_step()};
  }
  out.kv_source = request.kv_source();
  out.kv_source_tokens = request.kv_source_tokens();
  out.return_logits = request.return_logits();
  return out;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* WorkerService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  // A call refused before it starts (shutdown, a client over its rate).
  class Refused final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
   public:
    explicit Refused(const grpc::Status& status) { Finish(status); }
    void OnDone() override { delete this; }
  };
  if (!accepting_.load()) {
    return new Refused(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                    "Generate: the worker is shutting down; retry elsewhere"));
  }
  if (absl::Status limited = limiter_.Admit(*ctx, "Generate"); !limited.ok()) {
    return new Refused(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                    std::string(limited.message())));
  }
  return new GenerateReactor(engine_, *request,
                             tenant_salts_.SaltFor(PeerIdentity(*ctx), request->salt()),
                             max_stream_buffered_bytes_);
}

grpc::ServerUnaryReactor* WorkerService::GetWorkerStats(grpc::CallbackServerContext* ctx,
                                                        const v1::GetWorkerStatsRequest*,
                                                        v1::GetWorkerStatsResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const EngineStats s = engine_->stats();
  response->set_role(std::string(WorkerRoleName(engine_->options().role)));
  response->set_backend(std::string(engine_->backend_name()));
  ToProto(engine_->model_config().ToCacheModel(), response->mutable_model());
  response->set_running(s.running);
  response->set_waiting(s.waiting);
  response->set_steps(s.steps);
  response->set_generated_tokens(s.generated_tokens);
  response->set_prefill_tokens(s.prefill_tokens);
  response->set_copied_tokens(s.copied_tokens);
  response->set_page_rollovers(s.page_rollovers);
  response->set_deferred_admissions(s.deferred_admissions);
  response->set_preemptions(s.preemptions);
  response->set_step_seconds(s.step_seconds);
  response->set_plan_rpc_seconds(s.rpc_seconds);
  response->set_forward_seconds(s.forward_seconds);
  response->set_async_rpc_seconds(s.async_rpc_seconds);
  response->set_import_seconds(s.import_seconds);
  response->set_daemon_reattaches(s.daemon_reattaches);
  response->set_daemon_instance(engine_->daemon_instance());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace asymcache::worker
