#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sim/comparison.h"
#include "sim/engine.h"
#include "sim/generators.h"
#include "sim/report.h"
#include "sim/system.h"
#include "sim/trace.h"

namespace asymcache {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr int kScale = 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr int kScale = 1;
#else
constexpr int kScale = 2;
#endif
#else
constexpr int kScale = 2;
#endif

const CostModel& Cost() {
  static const CostModel* cost =
      new CostModel(ModelConfig(), CostModel::DefaultH100Llama3_8B());
  return *cost;
}

Workload Generate(const std::string& name, int64_t sessions, double rate, uint64_t seed = 1) {
  GeneratorOptions o;
  o.workload = name;
  o.sessions = sessions;
  o.rate = rate;
  o.seed = seed;
  absl::StatusOr<Workload> w = GenerateWorkload(o);
  EXPECT_TRUE(w.ok()) << w.status();
  return *std::move(w);
}

std::vector<SystemSpec> AllSystems() {
  absl::StatusOr<std::vector<SystemSpec>> s = ParseSystems("all", 2048);
  EXPECT_TRUE(s.ok());
  return *std::move(s);
}

EngineOptions Options(int64_t pool_blocks, bool pins = false) {
  EngineOptions o;
  o.pool_blocks = pool_blocks;
  o.agent_pins = pins;
  return o;
}

void ExpectConservation(const Workload& w, const RunResult& r) {
  SCOPED_TRACE(r.system);
  ASSERT_EQ(static_cast<int64_t>(r.requests.size()), w.total_steps());
  int64_t generated = 0, expected = 0;
  for (const RequestRecord& q : r.requests) {
    const StepSpec& step = w.sessions[q.session].steps[q.step];
    ASSERT_TRUE(q.finished()) << "session " << q.session << " step " << q.step;
    EXPECT_FALSE(q.rejected);
    EXPECT_GE(q.admitted_s, q.arrival_s);
    EXPECT_GE(q.first_token_s, q.admitted_s);
    EXPECT_LE(q.first_token_s, q.finish_s);
    EXPECT_LE(q.ttft_s(), q.finish_s - q.arrival_s);
    EXPECT_EQ(q.output_tokens, step.output_tokens);
    EXPECT_EQ(q.hit_tokens + q.rebuild_tokens + q.new_tokens, q.prompt_tokens);
    EXPECT_LE(q.hit_blocks, q.prompt_blocks);
    // Its prefill ran in at least one step, all inside [admitted, first token].
    EXPECT_GE(q.prefill_steps, 1);
    EXPECT_GT(q.prefill_step_s, 0);
    EXPECT_LE(q.prefill_step_s, q.first_token_s - q.admitted_s + 1e-9);
    generated += q.output_tokens;
    expected += step.output_tokens;
  }
  EXPECT_EQ(generated, expected);
  // Every output token but each request's first comes from a decode step,
  // except the one each preempted request's re-prefill yields.
  EXPECT_EQ(r.decode_tokens,
            expected - static_cast<int64_t>(r.requests.size()) - r.preemptions);
  EXPECT_TRUE(r.consistency.ok()) << r.consistency;
  EXPECT_EQ(r.final_pool.pinned, 0);
  EXPECT_EQ(r.final_pool.writing, 0);
  EXPECT_GT(r.engine_steps, 0);
  // Step mix: mixed and prefill-only steps are part of all steps and their time.
  EXPECT_GE(r.mixed_steps, 0);
  EXPECT_GE(r.prefill_only_steps, 0);
  EXPECT_LE(r.mixed_steps + r.prefill_only_steps, r.engine_steps);
  EXPECT_LE(r.mixed_busy_s + r.prefill_only_busy_s, r.busy_s + 1e-9);
  EXPECT_GE(r.memory_blocked_s, 0);
  EXPECT_LE(r.memory_blocked_s, r.busy_s + 1e-9);
  EXPECT_GE(r.memory_blocked_busy_fraction, 0);
  EXPECT_LE(r.memory_blocked_busy_fraction, 1);
  for (const JobRecord& j : r.jobs) EXPECT_GT(j.finish_s, j.start_s);
}

TEST(Engine, EverySystemConservesRequestsTokensAndBlocksUnderPressure) {
  const Workload w = Generate("chat", 20 * kScale, 3.0);
  for (const bool worker_memory : {false, true}) {
    int64_t preemptions = 0;
    for (const SystemSpec& s : AllSystems()) {
      SCOPED_TRACE(worker_memory ? "grow_output_blocks" : "outputs reserved");
      // Growing outputs holds less memory: a smaller pool keeps admission waiting.
      EngineOptions o = Options(worker_memory ? 1000 : 1500);
      o.commit_at_prefill_end = worker_memory;
      o.grow_output_blocks = worker_memory;
      absl::StatusOr<RunResult> r = RunSystem(w, s, Cost(), o);
      ASSERT_TRUE(r.ok()) << s.name << ": " << r.status();
      ExpectConservation(w, *r);
      EXPECT_GT(r->evictions, 0) << s.name << ": the pool should be under pressure";
      EXPECT_GT(r->memory_blocked_s, 0) << s.name << ": admission should wait for memory";
      EXPECT_GT(r->memory_blocked_busy_fraction, 0) << s.name;
      if (!worker_memory) {
        EXPECT_EQ(r->preemptions, 0);
      }
      preemptions += r->preemptions;
    }
    if (worker_memory) {
      EXPECT_GT(preemptions, 0) << "some system should run out of pages";
    }
  }
}

// EngineOptions::record_steps keeps every step (what --step-trace-dir
// writes): they add up to the run's totals, follow each other in time, and
// recording changes nothing of the run.
TEST(Engine, RecordedStepsAddUpToTheRunTotalsAndChangeNothing) {
  const Workload w = Generate("chat", 10 * kScale, 3.0);
  for (const SystemSpec& s : AllSystems()) {
    SCOPED_TRACE(s.name);
    EngineOptions o = Options(1000);
    o.commit_at_prefill_end = true;
    o.grow_output_blocks = true;
    absl::StatusOr<RunResult> plain = RunSystem(w, s, Cost(), o);
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_TRUE(plain->steps.empty());
    o.record_steps = true;
    absl::StatusOr<RunResult> r = RunSystem(w, s, Cost(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(static_cast<int64_t>(r->steps.size()), r->engine_steps);
    double busy = 0;
    int64_t prefill = 0, decodes = 0;
    double previous_end = 0;
    for (const SimStep& step : r->steps) {
      EXPECT_GE(step.start_s, previous_end - 1e-9);
      EXPECT_GT(step.latency_s, 0);
      EXPECT_GE(step.waiting, 0);
      EXPECT_FALSE(step.decodes.empty() && step.chunks.empty());
      previous_end = step.start_s + step.latency_s;
      busy += step.latency_s;
      for (const Chunk& c : step.chunks) prefill += c.tokens();
      decodes += static_cast<int64_t>(step.decodes.size());
    }
    EXPECT_NEAR(busy, r->busy_s, 1e-6 * r->busy_s);
    EXPECT_EQ(prefill, r->prefill_tokens);
    EXPECT_EQ(decodes, r->decode_tokens);
    EXPECT_EQ(r->engine_steps, plain->engine_steps);
    EXPECT_EQ(r->busy_s, plain->busy_s);
    ASSERT_EQ(r->requests.size(), plain->requests.size());
    for (size_t i = 0; i < r->requests.size(); ++i) {
      EXPECT_EQ(r->requests[i].first_token_s, plain->requests[i].first_token_s);
    }
  }
}

TEST(Engine, AgentJobsWithPinsConserveAndReportJobLatency) {
  const Workload w = Generate("agent", 6 * kScale, 0.5);
  for (const char* name : {"vllm", "asymcache", "pensieve", "vllm+worker-memory"}) {
    EngineOptions o = Options(6000, /*pins=*/true);
    absl::string_view system = name;
    if (absl::ConsumeSuffix(&system, "+worker-memory")) {
      o.commit_at_prefill_end = true;
      o.grow_output_blocks = true;
    }
    SCOPED_TRACE(name);
    const SystemSpec s = (*ParseSystems(system, 2048))[0];
    absl::StatusOr<RunResult> r = RunSystem(w, s, Cost(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectConservation(w, *r);
    EXPECT_EQ(r->jobs.size(), w.sessions.size());
    EXPECT_GT(r->pins_granted, 0);
    const SystemSummary summary = Summarize(*r);
    EXPECT_GT(summary.job_latency_mean_s, 0);
    EXPECT_EQ(summary.jobs_finished, summary.jobs);
  }
}

TEST(Engine, NoneNeverHits) {
  const Workload w = Generate("doc-qa", 8 * kScale, 0.5);
  const SystemSpec none = (*ParseSystems("none", 2048))[0];
  absl::StatusOr<RunResult> r = RunSystem(w, none, Cost(), Options(1 << 20));
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectConservation(w, *r);
  for (const RequestRecord& q : r->requests) {
    EXPECT_EQ(q.hit_tokens, 0);
    EXPECT_EQ(q.new_tokens + q.rebuild_tokens, q.prompt_tokens);
  }
}

// One single-step session "reader-<i>" per entry of `arrivals_s`, each with
// `input` and `output_tokens`, salted with `salt`.
Workload OneStepReaders(const std::string& name, const std::vector<double>& arrivals_s,
                        const std::vector<InputPart>& input, int32_t output_tokens,
                        const std::string& salt = "") {
  Workload w;
  w.name = name;
  for (size_t i = 0; i < arrivals_s.size(); ++i) {
    SessionSpec s;
    s.id = absl::StrFormat("reader-%d", i);
    s.salt = salt;
    StepSpec step;
    step.arrival_s = arrivals_s[i];
    step.input = input;
    step.output_tokens = output_tokens;
    step.last_step = true;
    s.steps = {step};
    w.sessions.push_back(s);
  }
  return w;
}

// Two sessions read the same new document; the second arrives while the
// first decodes. Committed at finish, the second computes the document again;
// committed at the end of the prefill, it hits every full block of it.
TEST(Engine, CommitAtPrefillEndSharesADocumentWhileItsFirstReaderDecodes) {
  // The 8k prefill takes well under 1 s; ~400 decode steps: still decoding at 1 s.
  const Workload w =
      OneStepReaders("two-readers", {0.0, 1.0},
                     {InputPart::Shared("doc", 8192), InputPart::Unique(32)}, 400, "corpus");
  const SystemSpec asym = (*ParseSystems("asymcache", 2048))[0];
  for (bool at_prefill : {false, true}) {
    SCOPED_TRACE(at_prefill ? "commit at prefill end" : "commit at finish");
    EngineOptions o = Options(1 << 20);
    o.commit_at_prefill_end = at_prefill;
    absl::StatusOr<RunResult> r = RunSystem(w, asym, Cost(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectConservation(w, *r);
    const RequestRecord& second = r->requests[1];
    ASSERT_EQ(second.session, 1);
    ASSERT_LT(second.admitted_s, r->requests[0].finish_s) << "the readers should overlap";
    ASSERT_GT(second.admitted_s, r->requests[0].first_token_s);
    EXPECT_EQ(second.hit_tokens, at_prefill ? 8192 : 0);
  }
}

// The worker's memory behaviour (EngineOptions::grow_output_blocks).
EngineOptions WorkerMemory(int64_t pool_blocks) {
  EngineOptions o = Options(pool_blocks);
  o.commit_at_prefill_end = true;
  o.grow_output_blocks = true;
  return o;
}

// Two sessions read the same new 32k document; the second arrives while the
// first still prefills it. Without deferral it computes its own copy at the
// same time; with it, it waits for the first's commit and hits the document.
// A deferral bound shorter than that prefill makes it compute its copy again.
TEST(Engine, DeferralWaitsForADocumentBeingComputedInsteadOfComputingItTwice) {
  const Workload w =
      OneStepReaders("two-readers", {0.0, 0.05},
                     {InputPart::Shared("doc", 32768), InputPart::Unique(32)}, 8, "corpus");
  const SystemSpec vllm = (*ParseSystems("vllm", 2048))[0];
  for (const int64_t defer : {int64_t{0}, int64_t{2048}}) {
    SCOPED_TRACE(absl::StrCat("defer_pending_tokens ", defer));
    EngineOptions o = WorkerMemory(1 << 20);
    o.defer_pending_tokens = defer;
    absl::StatusOr<RunResult> r = RunSystem(w, vllm, Cost(), o);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectConservation(w, *r);
    const RequestRecord& first = r->requests[0];
    const RequestRecord& second = r->requests[1];
    ASSERT_EQ(second.session, 1);
    ASSERT_LT(second.arrival_s, first.first_token_s) << "the second should arrive mid-prefill";
    EXPECT_TRUE(r->consistency.ok()) << r->consistency;
    if (defer > 0) {
      EXPECT_GT(r->deferred_plans, 0);
      EXPECT_GE(second.admitted_s, first.first_token_s);
      EXPECT_EQ(second.hit_tokens, 32768);
      EXPECT_EQ(r->prefill_tokens, 32768 + 2 * 32);
    } else {
      EXPECT_EQ(r->deferred_plans, 0);
      EXPECT_EQ(second.hit_tokens, 0);
      EXPECT_EQ(r->prefill_tokens, 2 * (32768 + 32));
    }
  }
  EngineOptions bounded = WorkerMemory(1 << 20);
  bounded.defer_pending_tokens = 2048;
  bounded.defer_pending_max_wait = absl::Milliseconds(1);  // far shorter than the prefill
  absl::StatusOr<RunResult> r = RunSystem(w, vllm, Cost(), bounded);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->deferred_plans, 0);
  EXPECT_EQ(r->requests[1].hit_tokens, 0);
  EXPECT_EQ(r->prefill_tokens, 2 * (32768 + 32));

  EngineOptions bad = WorkerMemory(1 << 20);
  bad.defer_pending_tokens = -1;
  EXPECT_THAT(bad.Validate().message(), ::testing::HasSubstr("defer_pending_tokens"));
  bad.defer_pending_tokens = 2048;
  bad.commit_at_prefill_end = false;
  bad.grow_output_blocks = false;
  EXPECT_THAT(bad.Validate().message(), ::testing::HasSubstr("requires commit_at_prefill_end"));
  bad = WorkerMemory(1 << 20);
  bad.defer_pending_max_wait = absl::ZeroDuration();
  EXPECT_THAT(bad.Validate().message(), ::testing::HasSubstr("defer_pending_max_wait"));
}

// One request alone: a 160-token prompt (10 full pages) and 40 outputs, so
// its last position is 160 + 39 - 1 = 198 (13 pages; the last token is
// never fed). Decode tokens go into a private page; rolling a full page over
// plans the full page again (its rows are copied) and the next one: at
// position 192 the request holds 11 sealed pages + its private full page and
// needs 2 more, 14 blocks for a moment. A pool of 13 (what reserving the
// whole context needs) refuses that page once; nothing else can run, so the
// request is preempted (as the worker preempts even a lone sequence), planned
// again (its 11 sealed pages resident, 2 allocated) and its last 17 positions
// prefilled, which yields the next token. A pool of 14 never refuses.
TEST(Engine, GrowOutputBlocksPreemptsALoneRequestWhosePageRollOverDoesNotFit) {
  const Workload w = OneStepReaders("alone", {0.0}, {InputPart::Unique(160)}, 40);
  const SystemSpec vllm = (*ParseSystems("vllm", 2048))[0];
  for (const int64_t pool : {13, 14}) {
    SCOPED_TRACE(absl::StrFormat("pool %d blocks", pool));
    absl::StatusOr<RunResult> reserved = RunSystem(w, vllm, Cost(), Options(pool));
    ASSERT_TRUE(reserved.ok()) << reserved.status();
    ExpectConservation(w, *reserved);
    EXPECT_EQ(reserved->preemptions, 0);
    EXPECT_EQ(reserved->blocked_decode_steps, 0);
    EXPECT_EQ(reserved->engine_steps, 40);  // one prefill step, 39 decodes

    absl::StatusOr<RunResult> grown = RunSystem(w, vllm, Cost(), WorkerMemory(pool));
    ASSERT_TRUE(grown.ok()) << grown.status();
    ExpectConservation(w, *grown);
    const int64_t preempted = pool == 13 ? 1 : 0;
    EXPECT_EQ(grown->preemptions, preempted);
    EXPECT_EQ(grown->blocked_decode_steps, preempted);
    const RequestRecord& q = grown->requests[0];
    EXPECT_EQ(q.preemptions, preempted);
    EXPECT_EQ(q.blocked_decode_steps, preempted);
    // The re-prefill replaces one decode step; the first plan's counts stay.
    EXPECT_EQ(grown->engine_steps, 40);
    EXPECT_EQ(grown->decode_tokens, 39 - preempted);
    EXPECT_EQ(grown->prefill_tokens, 160 + 17 * preempted);
    EXPECT_EQ(q.new_tokens, 160);
    EXPECT_EQ(q.prefill_steps, 1);
    EXPECT_EQ(q.first_token_s, reserved->requests[0].first_token_s);
  }
}

// Two 160-token prompts with 160 outputs each arrive together; the pool has
// 30 blocks. Reserving the outputs, each needs 20 blocks, so the second waits
// for the first to finish. Growing them, both prompts (10 blocks each) are
// admitted at once; their outputs do not both fit, so pages are refused and
// a request is preempted, and every request still finishes.
TEST(Engine, GrowOutputBlocksAdmitsWhatReservingOutputsMakesWait) {
  const Workload w =
      OneStepReaders("pair", {0.0, 0.0}, {InputPart::Unique(160)}, 160);
  const SystemSpec vllm = (*ParseSystems("vllm", 2048))[0];
  EngineOptions reserve = Options(30);
  reserve.commit_at_prefill_end = true;
  absl::StatusOr<RunResult> reserved = RunSystem(w, vllm, Cost(), reserve);
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  ExpectConservation(w, *reserved);
  EXPECT_EQ(reserved->requests[1].admitted_s, reserved->requests[0].finish_s);
  EXPECT_EQ(reserved->preemptions, 0);

  absl::StatusOr<RunResult> grown = RunSystem(w, vllm, Cost(), WorkerMemory(30));
  ASSERT_TRUE(grown.ok()) << grown.status();
  ExpectConservation(w, *grown);
  EXPECT_EQ(grown->requests[1].admitted_s, 0);
  EXPECT_LT(grown->requests[1].ttft_s(), reserved->requests[1].ttft_s());
  EXPECT_GT(grown->blocked_decode_steps, 0);
  EXPECT_GT(grown->preemptions, 0);
}

// What a session's next step finds. Step 0: a 100-token prompt, 60 outputs.
// Committed at finish with its outputs reserved, the context's 160 tokens
// are 10 sealed pages. As the worker holds it, only positions 0..158 were
// ever written (the last token is sampled, not fed) and the partial page of
// 144..158 stays private and is freed at finish: 9 sealed pages.
TEST(Engine, GrowOutputBlocksSealsOnlyTheComputedFullPages) {
  Workload w;
  w.name = "two-turns";
  SessionSpec session;
  session.id = "chat-0";
  StepSpec first;
  first.input = {InputPart::Unique(100)};
  first.output_tokens = 60;
  first.think_s = 1;
  StepSpec second;
  second.input = {InputPart::Unique(50)};
  second.output_tokens = 10;
  second.last_step = true;
  session.steps = {first, second};
  w.sessions = {session};
  const SystemSpec vllm = (*ParseSystems("vllm", 2048))[0];
  absl::StatusOr<RunResult> reserved = RunSystem(w, vllm, Cost(), Options(1 << 10));
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  ExpectConservation(w, *reserved);
  EXPECT_EQ(reserved->requests[1].hit_tokens, 160);
  absl::StatusOr<RunResult> grown = RunSystem(w, vllm, Cost(), WorkerMemory(1 << 10));
  ASSERT_TRUE(grown.ok()) << grown.status();
  ExpectConservation(w, *grown);
  EXPECT_EQ(grown->requests[1].hit_tokens, 144);
  EXPECT_EQ(grown->requests[1].new_tokens, 210 - 144);
}

// Under memory pressure the same workload waits less for admission when
// outputs are not reserved. Six 6000-token prompts (375 blocks) with 400
// outputs (a 400-block context) arrive every 0.5 s, each decoding for
// seconds; 1150 blocks hold two whole contexts but three prompts.
TEST(Engine, GrowOutputBlocksShortensQueueingForMemory) {
  const Workload w = OneStepReaders("long-readers", {0.0, 0.5, 1.0, 1.5, 2.0, 2.5},
                                    {InputPart::Unique(6000)}, 400);
  for (const char* name : {"vllm", "asymcache"}) {
    SCOPED_TRACE(name);
    const SystemSpec s = (*ParseSystems(name, 2048))[0];
    EngineOptions reserve = Options(1150);
    reserve.commit_at_prefill_end = true;
    absl::StatusOr<RunResult> reserved = RunSystem(w, s, Cost(), reserve);
    absl::StatusOr<RunResult> grown = RunSystem(w, s, Cost(), WorkerMemory(1150));
    ASSERT_TRUE(reserved.ok()) << reserved.status();
    ASSERT_TRUE(grown.ok()) << grown.status();
    ExpectConservation(w, *reserved);
    ExpectConservation(w, *grown);
    EXPECT_LT(Summarize(*grown).ttft_s.mean, Summarize(*reserved).ttft_s.mean);
  }
}

// The overload rule reaches the scheduler through the waiting queue: long
// prompts that queue behind a full running set (max 4) prefill beside
// long-context decodes in chunks of at least 2048 tokens, so fewer steps
// prefill; with room for everyone (max 64) nothing waits and the rule
// changes nothing.
TEST(Engine, OverloadBudgetAppliesOnlyWhileRequestsWait) {
  const Workload w =
      OneStepReaders("backlog", std::vector<double>(10, 0.0), {InputPart::Unique(30000)}, 300);
  const SystemSpec asym = (*ParseSystems("asymcache", 2048))[0];
  auto run = [&](int max_running, int64_t overload) {
    EngineOptions o = Options(1 << 16);
    o.max_running_requests = max_running;
    o.overload_budget_tokens = overload;
    absl::StatusOr<RunResult> r = RunSystem(w, asym, Cost(), o);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) ExpectConservation(w, *r);
    return r.ok() ? *std::move(r) : RunResult{};
  };
  auto prefill_steps = [](const RunResult& r) {
    int64_t steps = 0;
    for (const RequestRecord& q : r.requests) steps += q.prefill_steps;
    return steps;
  };
  const RunResult queued_on = run(4, 2048);
  const RunResult queued_off = run(4, 0);
  EXPECT_LT(prefill_steps(queued_on), prefill_steps(queued_off));
  EXPECT_LT(queued_on.mixed_steps, queued_off.mixed_steps);
  // While others waited, every step took at least 2048 prefill tokens, in
  // service order: a 30000-token prompt needs at most ceil(30000 / 2048) = 15
  // such steps, plus one for the leftover of a step whose earlier sequence
  // finished its prompt.
  for (size_t i = 0; i + 4 < queued_on.requests.size(); ++i) {
    EXPECT_LE(queued_on.requests[i].prefill_steps, 16) << "request " << i;
  }
  const RunResult roomy_on = run(64, 2048);
  const RunResult roomy_off = run(64, 0);
  EXPECT_EQ(prefill_steps(roomy_on), prefill_steps(roomy_off));
  EXPECT_EQ(roomy_on.mixed_steps, roomy_off.mixed_steps);
  EXPECT_EQ(roomy_on.engine_steps, roomy_off.engine_steps);
}

// The request-mean TPOT rule reaches the scheduler with each decode's history:
// a reader decoding a long answer banks slack (decode-only steps run far under
// 50 ms), which a second reader's deep document spends in fewer, larger
// chunks; the first reader's mean TPOT stays within the target either way.
TEST(Engine, RequestMeanTpotSpendsBankedSlackOnADeepPrefill) {
  Workload w = OneStepReaders("slack", {0.0, 3.0}, {InputPart::Unique(1000)}, 2000);
  w.sessions[1].steps[0].input = {InputPart::Unique(40000)};
  w.sessions[1].steps[0].output_tokens = 4;
  const SystemSpec asym = (*ParseSystems("asymcache", 2048))[0];
  auto run = [&](ChunkSchedulerOptions::TpotSlo slo) {
    EngineOptions o = Options(1 << 16);
    o.tpot_slo = slo;
    absl::StatusOr<RunResult> r = RunSystem(w, asym, Cost(), o);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) ExpectConservation(w, *r);
    return r.ok() ? *std::move(r) : RunResult{};
  };
  const RunResult per_step = run(ChunkSchedulerOptions::TpotSlo::kPerStep);
  const RunResult mean = run(ChunkSchedulerOptions::TpotSlo::kRequestMean);
  ASSERT_EQ(per_step.requests.size(), 2u);
  ASSERT_EQ(mean.requests.size(), 2u);
  const RequestRecord& deep_per_step = per_step.requests[1];
  const RequestRecord& deep_mean = mean.requests[1];
  ASSERT_LT(deep_per_step.first_token_s, per_step.requests[0].finish_s)
      << "the deep prefill should run beside the long decode";
  EXPECT_LT(deep_mean.prefill_steps, deep_per_step.prefill_steps);
  EXPECT_LT(deep_mean.first_token_s - deep_mean.arrival_s,
            deep_per_step.first_token_s - deep_per_step.arrival_s);
  for (const RunResult* r : {&per_step, &mean}) {
    const RequestRecord& reader = r->requests[0];
    const double tpot = (reader.finish_s - reader.first_token_s) / (reader.output_tokens - 1);
    EXPECT_LE(tpot, 0.05) << "the decoding reader's mean TPOT";
  }
  // Decode histories are bounded by max_step_latency: with the cap at the
  // target, request-mean schedules exactly as per-step.
  EngineOptions capped = Options(1 << 16);
  capped.max_step_latency = capped.tpot_target;
  absl::StatusOr<RunResult> same = RunSystem(w, asym, Cost(), capped);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->requests[1].prefill_steps, deep_per_step.prefill_steps);
  EXPECT_EQ(same->engine_steps, per_step.engine_steps);
}

TEST(Engine, FollowUpTurnsHitTheirOwnContext) {
  const Workload w = Generate("chat", 3, 0.001);  // sessions never overlap
  const SystemSpec vllm = (*ParseSystems("vllm", 2048))[0];
  absl::StatusOr<RunResult> r = RunSystem(w, vllm, Cost(), Options(1 << 20));
  ASSERT_TRUE(r.ok()) << r.status();
  for (const RequestRecord& q : r->requests) {
    if (q.step == 0) continue;
    // Everything of the previous context but its partial last block is resident.
    const auto lengths = SessionLengths(w.sessions[q.session]);
    const int64_t previous = lengths[q.step - 1].context_tokens;
    EXPECT_EQ(q.hit_tokens, previous / 16 * 16) << q.session << "/" << q.step;
    EXPECT_EQ(q.rebuild_tokens, 0);
  }
}

TEST(Engine, UnlimitedPoolGivesEveryReuseSystemTheSameHits) {
  // Sessions far apart (no two run at once), pool never full: every system
  // that reuses the cache must hit exactly the same blocks.
  const Workload w = Generate("chat", 12 * kScale, 0.002);
  std::vector<int64_t> hits;
  for (const SystemSpec& s : AllSystems()) {
    absl::StatusOr<RunResult> r = RunSystem(w, s, Cost(), Options(1 << 20));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->evictions, 0);
    if (!s.reuse) continue;
    const SystemSummary summary = Summarize(*r);
    hits.push_back(summary.hit_tokens);
    EXPECT_GT(summary.block_hit_rate, 0.3) << s.name;
  }
  ASSERT_EQ(hits.size(), 7u);  // every system but none
  for (int64_t h : hits) EXPECT_EQ(h, hits[0]);
}

TEST(Engine, SameSeedSameReportAndThreadCountDoesNotMatter) {
  const Workload a = Generate("agent", 3 * kScale, 1.0, 77);
  const Workload b = Generate("agent", 3 * kScale, 1.0, 77);
  ComparisonOptions one;
  one.engine = Options(3000, true);
  one.threads = 1;
  ComparisonOptions two = one;
  two.threads = 2;
  const std::vector<SystemSpec> systems = *ParseSystems("vllm,asymcache,pensieve", 1024);
  absl::StatusOr<std::vector<RunResult>> ra = RunSystems(a, systems, Cost(), one);
  absl::StatusOr<std::vector<RunResult>> rb = RunSystems(b, systems, Cost(), two);
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  std::vector<SystemSummary> sa, sb;
  for (const RunResult& r : *ra) sa.push_back(Summarize(r));
  for (const RunResult& r : *rb) sb.push_back(Summarize(r));
  RunHeader header;
  EXPECT_EQ(ToJson(header, sa), ToJson(header, sb));
  EXPECT_EQ(FormatTable(sa), FormatTable(sb));
  for (size_t i = 0; i < ra->size(); ++i) {
    ASSERT_EQ((*ra)[i].requests.size(), (*rb)[i].requests.size());
    for (size_t k = 0; k < (*ra)[i].requests.size(); ++k) {
      EXPECT_EQ((*ra)[i].requests[k].finish_s, (*rb)[i].requests[k].finish_s);
    }
  }
}

TEST(Engine, ContextLargerThanThePoolIsRejectedWithItsSession) {
  const Workload w = Generate("doc-qa", 4, 0.5);
  const SystemSpec s = (*ParseSystems("asymcache", 2048))[0];
  absl::StatusOr<RunResult> r = RunSystem(w, s, Cost(), Options(100));  // 1600 tokens
  ASSERT_TRUE(r.ok()) << r.status();
  const SystemSummary summary = Summarize(*r);
  EXPECT_EQ(summary.rejected, static_cast<int64_t>(w.sessions.size()));
  EXPECT_EQ(summary.finished, 0);
  EXPECT_EQ(r->final_pool.pinned, 0);
  EXPECT_FALSE(MeetsSlo(summary, SloTargets{100, 100}));
}

TEST(Engine, RejectsBadOptions) {
  const Workload w = Generate("chat", 2, 1.0);
  const SystemSpec s = (*ParseSystems("vllm", 2048))[0];
  EXPECT_EQ(RunSystem(w, s, Cost(), Options(0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EngineOptions o = Options(100);
  o.tpot_target = absl::ZeroDuration();
  EXPECT_EQ(RunSystem(w, s, Cost(), o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Engine, OptionsValidateEveryField) {
  EXPECT_TRUE(Options(100).Validate().ok());
  EngineOptions o = Options(100);
  o.max_running_requests = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = Options(100);
  o.tile_tokens = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = Options(100);
  o.max_budget_tokens = o.tile_tokens * 4 + 1;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = Options(100);
  o.tpot_target = absl::InfiniteDuration();
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = Options(100);
  o.overload_budget_tokens = o.tile_tokens + 1;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.overload_budget_tokens = -o.tile_tokens;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.overload_budget_tokens = 0;  // off
  EXPECT_TRUE(o.Validate().ok());
  o = Options(100);
  o.max_step_latency = absl::InfiniteDuration();
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.max_step_latency = absl::Milliseconds(-1);
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.max_step_latency = absl::Milliseconds(10);  // below the target: acts as the target
  EXPECT_TRUE(o.Validate().ok());
  // Growing output blocks needs the commit when the positions are computed.
  o = Options(100);
  o.grow_output_blocks = true;
  const absl::Status grow_alone = o.Validate();
  EXPECT_EQ(grow_alone.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(grow_alone.message()), ::testing::HasSubstr("grow_output_blocks"));
  o.commit_at_prefill_end = true;
  EXPECT_TRUE(o.Validate().ok());
}

TEST(Sweep, FindsACapacityBetweenLightAndHeavyLoad) {
  // Light load: one 8-16k document at a time. Heavy load: every session
  // arrives within a fraction of a second, so document prefills queue up.
  // The TTFT SLO is put between the two, so the capacity is the light rate.
  const int64_t sessions = 10 * kScale;
  WorkloadAtRate make = [&](double rate) {
    return GenerateWorkload({"doc-qa", rate, sessions, 0, 5});
  };
  ComparisonOptions options;
  options.engine = Options(1 << 16);
  options.threads = 2;
  const std::vector<SystemSpec> systems = *ParseSystems("vllm,asymcache", 2048);
  absl::StatusOr<std::vector<SweepPoint>> sweep =
      RunSweep(make, {0.01, 100.0}, systems, Cost(), options);
  ASSERT_TRUE(sweep.ok()) << sweep.status();
  double light = 0, heavy = 1e9;
  for (const SystemSummary& s : (*sweep)[0].systems) light = std::max(light, s.ttft_s.mean);
  for (const SystemSummary& s : (*sweep)[1].systems) heavy = std::min(heavy, s.ttft_s.mean);
  ASSERT_GT(heavy, 2 * light) << "heavy load should queue prefills";
  const SloTargets slo{(light + heavy) / 2, 0.2};
  for (const Capacity& c : CapacityAtSlo(*sweep, slo)) {
    EXPECT_EQ(c.rate, 0.01) << c.system;
    EXPECT_TRUE(c.saturated) << c.system;
  }
  absl::StatusOr<std::vector<SweepPoint>> autosweep =
      RunAutoSweep(make, 0.1, 10.0, 6, slo, systems, Cost(), options);
  ASSERT_TRUE(autosweep.ok()) << autosweep.status();
  ASSERT_GE(autosweep->size(), 2u);
  for (const Capacity& c : CapacityAtSlo(*autosweep, slo)) {
    EXPECT_GT(c.rate, 0) << c.system;
    EXPECT_LT(c.rate, 100) << c.system;
    EXPECT_TRUE(c.saturated) << c.system;
  }
  const std::string text = FormatSweep(*autosweep, slo);
  const size_t section = text.find("Capacity at SLO");
  ASSERT_NE(section, std::string::npos) << text;
  // Each system's capacity row shows the rate CapacityAtSlo found and that the sweep bounded it.
  for (const Capacity& c : CapacityAtSlo(*autosweep, slo)) {
    bool found = false;
    for (absl::string_view line : absl::StrSplit(absl::string_view(text).substr(section), '\n')) {
      std::vector<std::string> cells;
      for (absl::string_view cell : absl::StrSplit(line, "  ", absl::SkipWhitespace())) {
        cells.emplace_back(absl::StripAsciiWhitespace(cell));
      }
      if (cells.empty() || cells[0] != c.system) continue;
      found = true;
      ASSERT_GE(cells.size(), 3u) << line;
      EXPECT_EQ(cells[1], absl::StrFormat("%.3g", c.rate)) << line;
      EXPECT_EQ(cells[2], "yes") << line;
      break;
    }
    EXPECT_TRUE(found) << c.system << " has no capacity row in\n" << text;
  }
}

}  // namespace
}  // namespace asymcache
