#include "services/loadgen/replay.h"

#include <algorithm>
#include <memory>
#include <queue>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace asymcache::loadgen {
namespace {

// 64 MiB: a 1M-token prompt in one GenerateRequest, the worker's own limit.
constexpr int kMaxMessageBytes = 64 << 20;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// A step waiting to be sent: its session and when it should go.
struct PendingStep {
  double planned_s = 0;
  int32_t session = 0;
  int64_t order = 0;  // push order: ties go first-in first-out
  bool operator>(const PendingStep& other) const {
    return planned_s != other.planned_s ? planned_s > other.planned_s : order > other.order;
  }
};

// What the replay thread and the request threads share.
class InFlight {
 public:
  // Registers a request about to start; returns its context (for cancel).
  std::shared_ptr<grpc::ClientContext> Start(size_t record) ABSL_LOCKS_EXCLUDED(mu_) {
    auto context = std::make_shared<grpc::ClientContext>();
    absl::MutexLock lock(&mu_);
    contexts_[record] = context;
    return context;
  }
  void Finish(size_t record) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    contexts_.erase(record);
    done_.push_back(record);
  }
  // Waits until a request finished or `deadline`; returns the finished ones.
  std::vector<size_t> WaitDone(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(
                              +[](std::vector<size_t>* done) { return !done->empty(); }, &done_),
                          deadline);
    return std::exchange(done_, {});
  }
  void CancelAll() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (auto& [record, context] : contexts_) context->TryCancel();
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<size_t, std::shared_ptr<grpc::ClientContext>> contexts_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> done_ ABSL_GUARDED_BY(mu_);
};

double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// Runs one Generate stream to its end, filling `record` (owned by this
// thread until InFlight::Finish).
void RunRequest(v1::Worker::Stub* stub, const v1::GenerateRequest& request,
                grpc::ClientContext* context, absl::Time start, RequestRecord* record) {
  record->sent_s = SecondsSince(start);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.tokens_size() > 0) {
      const double now = SecondsSince(start);
      if (record->first_token_s < 0) record->first_token_s = now;
      record->finish_s = now;
      record->tokens.insert(record->tokens.end(), response.tokens().begin(),
                            response.tokens().end());
    }
    if (response.has_stats()) {
      const v1::RequestStats& stats = response.stats();
      record->hit_tokens = stats.hit_tokens();
      record->rebuilt_tokens = stats.rebuilt_tokens();
      record->computed_prompt_tokens = stats.computed_prompt_tokens();
      record->preemptions = stats.preemptions();
      record->server_queue_s = stats.queue_seconds();
    }
  }
  record->output_tokens = static_cast<int64_t>(record->tokens.size());
  record->status = FromGrpc(reader->Finish());
  if (record->status.ok() && record->output_tokens != request.max_new_tokens()) {
    record->status = absl::InternalError(
        absl::StrCat("asked for ", request.max_new_tokens(), " tokens, the stream carried ",
                     record->output_tokens));
  }
}

}  // namespace

absl::Status ValidateReplayOptions(const ReplayOptions& o) {
  if (o.target.empty()) return absl::InvalidArgumentError("target: required (HOST:PORT)");
  if (o.vocab_size <= 0) return absl::InvalidArgumentError("vocab_size: must be > 0");
  if (o.max_in_flight < 1) return absl::InvalidArgumentError("max_in_flight: must be >= 1");
  if (!(o.temperature >= 0)) return absl::InvalidArgumentError("temperature: must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1)) return absl::InvalidArgumentError("top_p: must be in (0, 1]");
  if (o.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("request_timeout: must be > 0");
  }
  if (o.run_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("run_timeout: must be > 0");
  }
  if (o.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout: must be > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<ReplayResult> Replay(const Workload& workload, const ReplayOptions& options) {
  if (absl::Status s = ValidateReplayOptions(options); !s.ok()) return s;
  if (absl::Status s = workload.Validate(); !s.ok()) return s;

  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.security);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // One channel per 64 streams: a single HTTP/2 connection caps concurrent
  // streams (100 by default on the server side), which would queue an open
  // loop behind the client.
  const int channel_count = std::max(1, (options.max_in_flight + 63) / 64);
  std::vector<std::unique_ptr<v1::Worker::Stub>> stubs;
  for (int i = 0; i < channel_count; ++i) {
    args.SetInt("asymcache.loadgen.channel", i);  // distinct args: distinct connections
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(options.target, *credentials, args);
    if (!channel->WaitForConnected(
            absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
      return absl::UnavailableError(absl::StrCat("cannot connect to ", options.target, " within ",
                                                 absl::FormatDuration(options.connect_timeout)));
    }
    stubs.push_back(v1::Worker::NewStub(channel));
  }

  ReplayResult result;
  std::vector<size_t> first_record(workload.sessions.size());
  for (size_t s = 0; s < workload.sessions.size(); ++s) {
    first_record[s] = result.requests.size();
    for (size_t k = 0; k < workload.sessions[s].steps.size(); ++k) {
      RequestRecord record;
      record.session = static_cast<int32_t>(s);
      record.step = static_cast<int32_t>(k);
      result.requests.push_back(std::move(record));
    }
    if (workload.sessions[s].is_job()) {
      result.jobs.push_back(JobRecord{static_cast<int32_t>(s),
                                      workload.sessions[s].steps[0].arrival_s, -1});
    }
  }
  absl::flat_hash_map<int32_t, size_t> job_of_session;
  for (size_t j = 0; j < result.jobs.size(); ++j) job_of_session[result.jobs[j].session] = j;

  std::vector<std::vector<TokenId>> contexts(workload.sessions.size());
  std::vector<int32_t> next_step(workload.sessions.size(), 0);
  std::priority_queue<PendingStep, std::vector<PendingStep>, std::greater<>> pending;
  int64_t pushes = 0;
  for (size_t s = 0; s < workload.sessions.size(); ++s) {
    pending.push(PendingStep{workload.sessions[s].steps[0].arrival_s, static_cast<int32_t>(s),
                             pushes++});
  }

  InFlight in_flight;
  absl::flat_hash_map<size_t, std::thread> threads;
  const absl::Time start = absl::Now();
  const absl::Time run_deadline = start + options.run_timeout;
  int64_t done = 0;
  int64_t known = static_cast<int64_t>(workload.sessions.size());  // steps 0, grows as steps arrive
  absl::Time next_progress = start;
  bool cancelled = false;
  const int64_t vocab = options.vocab_size;

  auto send = [&](const PendingStep& step) {
    const SessionSpec& session = workload.sessions[step.session];
    const int32_t k = next_step[step.session]++;
    std::vector<TokenId>& context = contexts[step.session];
    const size_t before = context.size();
    for (size_t part = 0; part < session.steps[k].input.size(); ++part) {
      AppendInputTokens(session, k, static_cast<int>(part), &context);
    }
    for (size_t i = before; i < context.size(); ++i) {
      context[i] = static_cast<TokenId>(static_cast<int64_t>(context[i]) % vocab);
    }
    const size_t record_index = first_record[step.session] + static_cast<size_t>(k);
    RequestRecord& record = result.requests[record_index];
    record.planned_s = step.planned_s;
    record.prompt_tokens = static_cast<int64_t>(context.size());

    v1::GenerateRequest request;
    request.mutable_prompt_tokens()->Assign(context.begin(), context.end());
    request.set_max_new_tokens(static_cast<int32_t>(session.steps[k].output_tokens));
    request.set_session_id(session.id);
    request.set_salt(options.fresh_salt_per_request
                         ? absl::StrCat(options.salt_prefix, session.salt, "#", session.id, "/", k)
                         : absl::StrCat(options.salt_prefix, session.salt));
    if (options.temperature > 0) {
      request.mutable_sampling()->set_temperature(options.temperature);
      request.mutable_sampling()->set_top_p(options.top_p);
      request.mutable_sampling()->set_seed(static_cast<uint64_t>(record_index) + 1);
    }
    if (options.agent_pins && session.is_job()) {
      v1::AgentJob* agent = request.mutable_agent();
      agent->set_job_id(absl::StrCat(options.salt_prefix, session.id));
      agent->set_tool(session.steps[k].tool);
      agent->set_last_step(session.steps[k].last_step);
    }
    std::shared_ptr<grpc::ClientContext> call = in_flight.Start(record_index);
    call->set_deadline(absl::ToChronoTime(absl::Now() + options.request_timeout));
    v1::Worker::Stub* stub = stubs[record_index % stubs.size()].get();
    threads.emplace(record_index, std::thread([stub, request = std::move(request), call, start,
                                               &record, &in_flight, record_index] {
                      RunRequest(stub, request, call.get(), start, &record);
                      in_flight.Finish(record_index);
                    }));
  };

  while (done < known || !pending.empty()) {
    // Send every step that is due, up to the in-flight bound.
    const double now_s = SecondsSince(start);
    while (!cancelled && !pending.empty() && pending.top().planned_s <= now_s &&
           static_cast<int>(threads.size()) < options.max_in_flight) {
      const PendingStep step = pending.top();
      pending.pop();
      send(step);
    }
    absl::Time wake = absl::Now() + absl::Milliseconds(100);
    if (!cancelled && !pending.empty() && static_cast<int>(threads.size()) < options.max_in_flight) {
      wake = std::min(wake, start + absl::Seconds(pending.top().planned_s));
    }
    if (threads.empty() && (cancelled || pending.empty())) break;
    for (size_t record_index : in_flight.WaitDone(wake)) {
      threads[record_index].join();
      threads.erase(record_index);
      ++done;
      RequestRecord& record = result.requests[record_index];
      const SessionSpec& session = workload.sessions[record.session];
      if (!record.finished()) continue;  // its session's later steps never come
      std::vector<TokenId>& context = contexts[record.session];
      context.insert(context.end(), record.tokens.begin(), record.tokens.end());
      const StepSpec& spec = session.steps[record.step];
      if (spec.last_step) {
        if (auto it = job_of_session.find(record.session); it != job_of_session.end()) {
          result.jobs[it->second].finish_s = record.finish_s;
        }
      } else if (!cancelled) {
        ++known;
        pending.push(PendingStep{record.finish_s + spec.delay_after_s(), record.session, pushes++});
      }
    }
    const bool interrupted =
        options.interrupt != nullptr && options.interrupt->load(std::memory_order_relaxed);
    if (!cancelled && (absl::Now() >= run_deadline || interrupted)) {
      cancelled = true;
      in_flight.CancelAll();
    }
    if (options.progress && absl::Now() >= next_progress) {
      options.progress(done, known);
      next_progress = absl::Now() + absl::Milliseconds(100);
    }
  }
  if (options.progress) options.progress(done, known);
  for (RequestRecord& record : result.requests) {
    if (record.sent_s < 0) {
      record.status = cancelled
                          ? absl::DeadlineExceededError("run_timeout passed before it was sent")
                          : absl::AbortedError("not sent: an earlier step of its session failed");
    }
    if (record.sent_s >= 0) {
      result.duration_s = std::max(result.duration_s, record.finish_s);
      result.max_send_lateness_s =
          std::max(result.max_send_lateness_s, record.sent_s - record.planned_s);
    }
  }
  return result;
}

}  // namespace asymcache::loadgen
