#include "services/ctl/ctl_commands.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "health.grpc.pb.h"
#include "services/ctl/ctl_channel.h"
#include "services/ctl/ctl_output.h"

namespace asymcache::ctl {
namespace {

// ---------------------------------------------------------------- calls

// A failed call as asymcachectl reports it: the code kept, the call and the
// target named in front of the server's message.
absl::Status CallError(absl::string_view call, const std::string& target,
                       const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(call, " on ", target, ": ", status.error_message()));
}

void SetDeadline(const CtlOptions& options, grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options.EffectiveTimeout()));
}

// One unary call of `Service` on options.target: `call` is "Service.Method"
// for error messages, `method` the stub's blocking method.
template <typename Service, typename Request, typename Response>
absl::Status CallUnary(const CtlOptions& options, absl::string_view call,
                       grpc::Status (Service::Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                       const Request& request, Response* response) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      MakeChannel(options.target, options.channel);
  if (!channel.ok()) return channel.status();
  std::unique_ptr<typename Service::Stub> stub = Service::NewStub(*channel);
  grpc::ClientContext context;
  SetDeadline(options, &context);
  const grpc::Status status = ((*stub).*method)(&context, request, response);
  if (!status.ok()) return CallError(call, options.target, status);
  return absl::OkStatus();
}

// Prints `message` as indented JSON.
absl::Status PrintJson(const google::protobuf::Message& message, std::ostream& out) {
  absl::StatusOr<std::string> json = ToJson(message, /*multiline=*/true);
  if (!json.ok()) return json.status();
  out << *json << "\n";
  return absl::OkStatus();
}

// ---------------------------------------------------------------- words

// An enum value's name without its prefix, lower case: ROLE_BOTH -> "both".
// A value this build does not know prints as its number.
std::string EnumWord(const std::string& name, absl::string_view prefix, int value) {
  if (name.empty()) return absl::StrCat(value);
  absl::string_view word = name;
  absl::ConsumePrefix(&word, prefix);
  return absl::AsciiStrToLower(word);
}

std::string RoleWord(v1::Role role) {
  return EnumWord(v1::Role_Name(role), "ROLE_", static_cast<int>(role));
}

std::string KindWord(v1::MemberKind kind) {
  return EnumWord(v1::MemberKind_Name(kind), "MEMBER_KIND_", static_cast<int>(kind));
}

std::string Or(const std::string& text, absl::string_view otherwise) {
  return text.empty() ? std::string(otherwise) : text;
}

// "tiny: 2 layers, 8 q / 8 kv heads of dim 64, 2-byte KV, 16-token blocks,
// vocab 1024"; "none" for an empty shape.
std::string DescribeModel(const v1::ModelShape& model) {
  if (model.num_layers() == 0 && model.name().empty()) return "none";
  return absl::StrCat(Or(model.name(), "(unnamed)"), ": ", model.num_layers(), " layers, ",
                      model.num_q_heads(), " q / ", model.num_kv_heads(), " kv heads of dim ",
                      model.head_dim(), ", ", model.dtype_bytes(), "-byte KV, ",
                      model.block_tokens(), "-token blocks, vocab ", model.vocab_size());
}

// "ID (ADDRESS)", or `none` when the id is empty.
std::string Named(const std::string& id, const std::string& address, absl::string_view none) {
  if (id.empty()) return std::string(none);
  return absl::StrCat(id, " (", address, ")");
}

std::string DescribeTarget(const v1::RouteTarget& target) {
  return absl::StrCat("daemon ", Named(target.daemon_id(), target.daemon_address(), "(none)"),
                      ", worker ", Named(target.worker_id(), target.worker_address(), "(none)"));
}

// ---------------------------------------------------------------- status

std::vector<std::string> MemberRow(const v1::MemberInfo& m) {
  const bool daemon = m.kind() == v1::MEMBER_KIND_DAEMON;
  const v1::MemberLoad& load = m.load();
  // Daemons route as their effective role (their workers' union); workers
  // as their own.
  const v1::Role role =
      daemon && m.effective_role() != v1::ROLE_UNSPECIFIED ? m.effective_role() : m.role();
  std::string events = "-";
  if (daemon) {
    events = absl::StrCat(m.events_connected() ? "up " : "down ", m.applied_event_sequence(), "/",
                          load.last_event_sequence());
  }
  return {KindWord(m.kind()),
          m.member_id(),
          m.address(),
          m.gpu() < 0 ? "cpu" : absl::StrCat(m.gpu()),
          RoleWord(role),
          Or(m.daemon_id(), "-"),
          absl::StrCat(FormatSeconds(m.since_heartbeat_s()), " ago"),
          absl::StrCat(load.queued_prefill_tokens()),
          absl::StrCat(load.decode_batch()),
          daemon ? absl::StrCat(load.free_blocks(), "/", load.capacity_blocks()) : "-",
          daemon ? absl::StrCat(load.busy_blocks()) : "-",
          daemon ? absl::StrCat(m.index_entries()) : "-",
          events};
}

absl::Status RunStatus(const CtlOptions& options, std::ostream& out) {
  v1::ListMembersResponse response;
  if (absl::Status s = CallUnary<v1::Coordinator>(options, "Coordinator.ListMembers",
                                                  &v1::Coordinator::Stub::ListMembers,
                                                  v1::ListMembersRequest(), &response);
      !s.ok()) {
    return s;
  }
  if (options.json) return PrintJson(response, out);
  int daemons = 0;
  int workers = 0;
  for (const v1::MemberInfo& m : response.members()) {
    daemons += m.kind() == v1::MEMBER_KIND_DAEMON;
    workers += m.kind() == v1::MEMBER_KIND_WORKER;
  }
  TextTable summary;
  summary.AddRow({"coordinator", Or(response.coordinator_instance(), "-")});
  summary.AddRow({"routing", Or(response.routing_mode(), "-")});
  summary.AddRow({"model", response.has_model() ? DescribeModel(response.model())
                                                : "none (no daemon registered yet)"});
  summary.AddRow({"index", absl::StrCat(response.index_entries(), " entries, ",
                                        response.index_dropped_stored(), " stored events dropped, ",
                                        response.stale_removed(), " stale removals ignored")});
  summary.AddRow({"members", absl::StrCat(response.members_size(), " (daemons ", daemons,
                                          ", workers ", workers, ")")});
  out << summary.Render();
  if (response.members().empty()) return absl::OkStatus();
  std::vector<const v1::MemberInfo*> members;
  for (const v1::MemberInfo& m : response.members()) members.push_back(&m);
  std::sort(members.begin(), members.end(), [](const v1::MemberInfo* a, const v1::MemberInfo* b) {
    return std::make_pair(static_cast<int>(a->kind()), a->member_id()) <
           std::make_pair(static_cast<int>(b->kind()), b->member_id());
  });
  TextTable table({"KIND", "MEMBER", "ADDRESS", "GPU", "ROLE", "DAEMON", "HEARTBEAT",
                   "QUEUED_PREFILL", "DECODING", "FREE/CAPACITY", "BUSY", "INDEXED",
                   "EVENTS(APPLIED/LATEST)"});
  for (const v1::MemberInfo* m : members) table.AddRow(MemberRow(*m));
  out << "\n" << table.Render();
  return absl::OkStatus();
}

// ---------------------------------------------------------------- route

std::vector<std::string> PredictionRow(const v1::TtftPrediction& p) {
  return {p.daemon_id(),
          FormatSeconds(p.predicted_ttft_s()),
          FormatSeconds(p.queue_s()),
          FormatSeconds(p.fetch_s()),
          FormatSeconds(p.compute_s()),
          absl::StrCat(p.hit_tokens()),
          absl::StrCat(p.contiguous_hit_tokens()),
          absl::StrCat(p.rebuild_tokens()),
          absl::StrCat(p.new_tokens()),
          absl::StrCat(p.fetched_blocks()),
          absl::StrCat(p.load_tokens())};
}

absl::Status RunRoute(const CtlOptions& options, std::ostream& out) {
  v1::RouteRequest request;
  request.set_salt(options.salt);
  const std::vector<int32_t> tokens = PromptTokens(options);
  request.mutable_token_ids()->Add(tokens.begin(), tokens.end());
  request.set_explain(options.explain);
  v1::RouteResponse response;
  if (absl::Status s = CallUnary<v1::Coordinator>(
          options, "Coordinator.Route", &v1::Coordinator::Stub::Route, request, &response);
      !s.ok()) {
    return s;
  }
  if (options.json) return PrintJson(response, out);
  const v1::TtftPrediction& p = response.prediction();
  TextTable summary;
  summary.AddRow({"route", absl::StrCat(response.route_id())});
  summary.AddRow({"reason", absl::StrCat(Or(response.reason(), "-"), " (routing ",
                                         Or(response.routing_mode(), "-"), ")")});
  summary.AddRow({"prefill", DescribeTarget(response.prefill())});
  summary.AddRow({"decode", response.split() ? DescribeTarget(response.decode())
                                             : "the same (roles not split)"});
  summary.AddRow({"predicted TTFT",
                  absl::StrCat(FormatSeconds(p.predicted_ttft_s()), " = max(queue ",
                               FormatSeconds(p.queue_s()), ", fetch ", FormatSeconds(p.fetch_s()),
                               ") + compute ", FormatSeconds(p.compute_s()))});
  summary.AddRow({"tokens", absl::StrCat(tokens.size(), ": ", p.hit_tokens(), " hit (",
                                         p.contiguous_hit_tokens(), " before the first miss), ",
                                         p.rebuild_tokens(), " rebuilt, ", p.new_tokens(), " new; ",
                                         p.load_tokens(), " queued ahead")});
  summary.AddRow(
      {"fetch", absl::StrCat(p.fetched_blocks(), " blocks (", FormatBytes(p.fetch_bytes()), ")")});
  for (const v1::RebuildRun& run : response.rebuild()) {
    summary.AddRow({"to compute", absl::StrCat("positions [", run.first_position(), ", ",
                                               run.first_position() + run.tokens(),
                                               "): ", run.tokens(), " tokens")});
  }
  for (const v1::FetchRun& run : response.fetch()) {
    summary.AddRow({"to fetch", absl::StrCat(run.blocks(), " blocks (", FormatBytes(run.bytes()),
                                             ") at position ", run.first_position(), " from ",
                                             Named(run.from_daemon_id(), run.from_daemon_address(),
                                                   "(unknown)"))});
  }
  out << summary.Render();
  if (!response.candidates().empty()) {
    TextTable candidates({"CANDIDATE", "PREDICTED_TTFT", "QUEUE", "FETCH", "COMPUTE", "HIT",
                          "CONTIGUOUS_HIT", "REBUILD", "NEW", "FETCHED_BLOCKS", "LOAD_TOKENS"});
    for (const v1::TtftPrediction& c : response.candidates()) candidates.AddRow(PredictionRow(c));
    out << "\n" << candidates.Render();
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- generate

absl::Status RunGenerate(const CtlOptions& options, std::ostream& out) {
  v1::GenerateRequest request;
  const std::vector<int32_t> tokens = PromptTokens(options);
  request.mutable_prompt_tokens()->Add(tokens.begin(), tokens.end());
  request.set_max_new_tokens(options.max_new_tokens);
  request.set_salt(options.salt);
  request.mutable_sampling()->set_temperature(static_cast<float>(options.temperature));
  request.mutable_sampling()->set_top_p(static_cast<float>(options.top_p));
  request.mutable_sampling()->set_seed(options.seed);

  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      MakeChannel(options.target, options.channel);
  if (!channel.ok()) return channel.status();
  std::unique_ptr<v1::Worker::Stub> stub = v1::Worker::NewStub(*channel);
  grpc::ClientContext context;
  SetDeadline(options, &context);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, request);

  std::vector<int64_t> times_us;  // the server's per-token times
  int64_t generated = 0;
  std::optional<absl::Duration> first_token_here;
  std::string finish_reason;
  v1::RequestStats stats;
  v1::GenerateResponse message;
  if (!options.json) out << "tokens:";
  while (reader->Read(&message)) {
    if (message.tokens_size() > 0 && !first_token_here.has_value()) {
      first_token_here = absl::Now() - start;
    }
    generated += message.tokens_size();
    times_us.insert(times_us.end(), message.token_times_us().begin(),
                    message.token_times_us().end());
    if (!message.finish_reason().empty()) {
      finish_reason = message.finish_reason();
      stats = message.stats();
    }
    if (options.json) {
      absl::StatusOr<std::string> json = ToJson(message, /*multiline=*/false);
      if (!json.ok()) {
        context.TryCancel();
        reader->Finish();
        return json.status();
      }
      out << *json << "\n";
    } else {
      for (int32_t token : message.tokens()) out << " " << token;
    }
    out.flush();
  }
  if (!options.json) out << "\n";
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return CallError("Worker.Generate", options.target, status);
  if (options.json) return absl::OkStatus();

  TextTable summary;
  summary.AddRow({"finish", absl::StrCat(Or(finish_reason, "(none)"), ", ", generated, " tokens")});
  // The server's TTFT: the final message's stats (a coordinator counts from
  // its own arrival), else the first token's time.
  std::string ttft = "-";
  if (!finish_reason.empty()) {
    ttft = absl::StrCat(FormatSeconds(stats.ttft_seconds()), " at the server");
  } else if (!times_us.empty()) {
    ttft = absl::StrCat(FormatSeconds(static_cast<double>(times_us[0]) * 1e-6), " at the server");
  }
  if (first_token_here.has_value()) {
    absl::StrAppend(&ttft, ", ", FormatSeconds(absl::ToDoubleSeconds(*first_token_here)),
                    " here (with the network)");
  }
  summary.AddRow({"ttft", ttft});
  if (times_us.size() >= 2) {
    int64_t longest = 0;
    for (size_t i = 1; i < times_us.size(); ++i) {
      longest = std::max(longest, times_us[i] - times_us[i - 1]);
    }
    const double mean_us =
        static_cast<double>(times_us.back() - times_us.front()) / (times_us.size() - 1);
    summary.AddRow({"tpot", absl::StrCat(FormatSeconds(mean_us * 1e-6), " mean, ",
                                         FormatSeconds(static_cast<double>(longest) * 1e-6),
                                         " max (", times_us.size() - 1, " intervals)")});
  } else {
    summary.AddRow({"tpot", "- (fewer than 2 tokens)"});
  }
  summary.AddRow(
      {"prompt", absl::StrCat(stats.prompt_tokens(), " tokens: ", stats.hit_tokens(), " hit, ",
                              stats.rebuilt_tokens(), " rebuilt, ", stats.computed_prompt_tokens(),
                              " computed, ", stats.copied_tokens(), " copied")});
  summary.AddRow({"import", absl::StrCat(stats.imported_blocks(), " blocks in ",
                                         FormatSeconds(stats.import_seconds()))});
  summary.AddRow({"queue", FormatSeconds(stats.queue_seconds())});
  summary.AddRow(
      {"steps", absl::StrCat(stats.steps(), " (", stats.preemptions(), " preemptions)")});
  out << summary.Render();
  return absl::OkStatus();
}

// ---------------------------------------------------------------- daemon

absl::Status RunPins(const CtlOptions& options, std::ostream& out) {
  v1::ListPinsResponse response;
  if (absl::Status s = CallUnary<v1::CacheDaemon>(options, "CacheDaemon.ListPins",
                                                  &v1::CacheDaemon::Stub::ListPins,
                                                  v1::ListPinsRequest(), &response);
      !s.ok()) {
    return s;
  }
  if (options.json) return PrintJson(response, out);
  TextTable summary;
  summary.AddRow({"pinned blocks", absl::StrCat(response.pinned_blocks(), " (cap ",
                                                response.pinned_capacity_cap(), ")")});
  summary.AddRow({"jobs", absl::StrCat(response.jobs_size())});
  out << summary.Render();
  if (response.jobs().empty()) return absl::OkStatus();
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  TextTable table({"JOB", "TOOL", "BLOCKS", "PINNED_AT(UTC)", "EXPIRES_AT(UTC)", "EXPIRES_IN",
                   "EXPECTED_BENEFIT"});
  for (const v1::ListPinsResponse::Job& job : response.jobs()) {
    table.AddRow({job.job_id(), Or(job.tool(), "-"), absl::StrCat(job.blocks()),
                  FormatUnixMillis(job.pinned_at_unix_ms()),
                  FormatUnixMillis(job.expires_at_unix_ms()),
                  FormatSeconds(static_cast<double>(job.expires_at_unix_ms() - now_ms) * 1e-3),
                  FormatSeconds(job.expected_benefit_s())});
  }
  out << "\n" << table.Render();
  return absl::OkStatus();
}

absl::Status RunDaemonStats(const CtlOptions& options, std::ostream& out) {
  v1::GetStatsResponse r;
  if (absl::Status s =
          CallUnary<v1::CacheDaemon>(options, "CacheDaemon.GetStats",
                                     &v1::CacheDaemon::Stub::GetStats, v1::GetStatsRequest(), &r);
      !s.ok()) {
    return s;
  }
  if (options.json) return PrintJson(r, out);
  const v1::Calibration& c = r.calibration();
  TextTable t;
  t.AddRow({"instance", Or(r.daemon_instance(), "-")});
  t.AddRow({"backend", absl::StrCat(Or(r.backend(), "-"), ", policy ", Or(r.policy(), "-"))});
  t.AddRow({"model", DescribeModel(r.model())});
  t.AddRow({"calibration", absl::StrCat(Or(c.device(), "-"), ", ", Or(c.source(), "-"))});
  t.AddRow(
      {"cost model",
       absl::StrFormat("attention %.3g FLOP/s, KV scan %.3g B/s, step overhead %s, %s",
                       c.attn_flops_per_s(), c.attn_kv_bytes_per_s(),
                       FormatSeconds(c.step_overhead_s()),
                       c.num_sms() > 0 ? absl::StrCat("prefill launch model on ", c.num_sms(),
                                                      " SMs")
                                       : std::string("prefill priced per pair"))});
  t.AddRow({"blocks", absl::StrCat(r.capacity_blocks(), " capacity: ", r.free_blocks(), " free, ",
                                   r.writing_blocks(), " writing, ", r.sealed_blocks(),
                                   " sealed (evictable), ", r.pinned_blocks(), " pinned, ",
                                   r.in_transfer_blocks(), " in transfer")});
  t.AddRow({"index", absl::StrCat(r.indexed_blocks(), " blocks, ", r.evictions(),
                                  " evictions, last event ", r.last_event_sequence())});
  t.AddRow(
      {"leases", absl::StrCat(r.active_leases(), " active, ", r.active_exports(), " exports")});
  t.AddRow({"agent pins",
            absl::StrCat(r.agent_pinned_blocks(), " blocks of ", r.agent_pinned_jobs(), " jobs")});
  t.AddRow({"steps", absl::StrCat(r.steps(), ": ", r.hit_tokens(), " hit, ", r.rebuild_tokens(),
                                  " rebuilt, ", r.new_tokens(), " new tokens")});
  t.AddRow({"uptime", FormatSeconds(r.uptime_s())});
  out << t.Render();
  return absl::OkStatus();
}

// ---------------------------------------------------------------- worker

absl::Status RunWorkerStats(const CtlOptions& options, std::ostream& out) {
  v1::GetWorkerStatsResponse r;
  if (absl::Status s =
          CallUnary<v1::Worker>(options, "Worker.GetWorkerStats", &v1::Worker::Stub::GetWorkerStats,
                                v1::GetWorkerStatsRequest(), &r);
      !s.ok()) {
    return s;
  }
  if (options.json) return PrintJson(r, out);
  TextTable t;
  t.AddRow({"role", Or(r.role(), "-")});
  t.AddRow({"backend", Or(r.backend(), "-")});
  t.AddRow({"model", DescribeModel(r.model())});
  t.AddRow({"batch", absl::StrCat(r.running(), " running, ", r.waiting(), " waiting")});
  t.AddRow({"steps", absl::StrCat(r.steps(), ": ", r.generated_tokens(), " generated tokens, ",
                                  r.prefill_tokens(), " prefill tokens, ", r.copied_tokens(),
                                  " copied, ", r.preemptions(), " preemptions")});
  t.AddRow({"step time", absl::StrCat(FormatSeconds(r.step_seconds()), ": forward ",
                                      FormatSeconds(r.forward_seconds()), ", daemon RPCs ",
                                      FormatSeconds(r.plan_rpc_seconds()))});
  t.AddRow({"off the step", absl::StrCat("async daemon RPCs ", FormatSeconds(r.async_rpc_seconds()),
                                         ", imports ", FormatSeconds(r.import_seconds()))});
  out << t.Render();
  return absl::OkStatus();
}

// ---------------------------------------------------------------- health

absl::Status RunHealth(const CtlOptions& options, std::ostream& out) {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options.service);
  grpc::health::v1::HealthCheckResponse response;
  if (absl::Status s = CallUnary<grpc::health::v1::Health>(
          options, "Health.Check", &grpc::health::v1::Health::Stub::Check, request, &response);
      !s.ok()) {
    return s;
  }
  const std::string status =
      Or(grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()),
         absl::StrCat(static_cast<int>(response.status())));
  out << status << "\n";
  if (response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(
      absl::StrCat(options.target,
                   options.service.empty() ? "" : absl::StrCat(" service '", options.service, "'"),
                   " is ", status));
}

}  // namespace

std::vector<int32_t> PromptTokens(const CtlOptions& options) {
  if (!options.tokens.empty()) return options.tokens;
  std::mt19937_64 random(options.seed);
  const uint64_t vocab = static_cast<uint64_t>(std::max<int64_t>(options.vocab, 1));
  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(std::max<int64_t>(options.random_tokens, 0)));
  for (int64_t i = 0; i < options.random_tokens; ++i) {
    tokens.push_back(static_cast<int32_t>(random() % vocab));
  }
  return tokens;
}

absl::Status RunCtlCommand(const CtlOptions& options, std::ostream& out) {
  switch (options.subcommand) {
    case Subcommand::kStatus:
      return RunStatus(options, out);
    case Subcommand::kRoute:
      return RunRoute(options, out);
    case Subcommand::kGenerate:
      return RunGenerate(options, out);
    case Subcommand::kPins:
      return RunPins(options, out);
    case Subcommand::kDaemonStats:
      return RunDaemonStats(options, out);
    case Subcommand::kWorkerStats:
      return RunWorkerStats(options, out);
    case Subcommand::kHealth:
      return RunHealth(options, out);
  }
  return absl::InvalidArgumentError("unknown subcommand");
}

}  // namespace asymcache::ctl
