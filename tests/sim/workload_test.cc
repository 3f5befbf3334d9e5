#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cachecore/block_hash.h"
#include "gtest/gtest.h"
#include "sim/generators.h"
#include "sim/workload.h"

namespace asymcache {
namespace {

Workload Generate(const std::string& name, uint64_t seed, int64_t sessions, double rate = 1.0) {
  GeneratorOptions o;
  o.workload = name;
  o.seed = seed;
  o.sessions = sessions;
  o.rate = rate;
  absl::StatusOr<Workload> w = GenerateWorkload(o);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? *std::move(w) : Workload();
}

bool InRange(int64_t x, const LengthRange& r) { return x >= r.lo && x <= r.hi; }

class EveryWorkload : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryWorkload, DeterministicPerSeedAndValid) {
  const Workload a = Generate(GetParam(), 7, 40);
  const Workload b = Generate(GetParam(), 7, 40);
  const Workload c = Generate(GetParam(), 8, 40);
  ASSERT_EQ(a.sessions.size(), 40u);
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  EXPECT_EQ(a.sessions, b.sessions);
  EXPECT_NE(a.sessions, c.sessions);
}

TEST_P(EveryWorkload, RateOnlyStretchesTime) {
  const Workload slow = Generate(GetParam(), 3, 30, 0.5);
  const Workload fast = Generate(GetParam(), 3, 30, 2.0);
  ASSERT_EQ(slow.sessions.size(), fast.sessions.size());
  for (size_t i = 0; i < slow.sessions.size(); ++i) {
    SessionSpec s = slow.sessions[i];
    SessionSpec f = fast.sessions[i];
    EXPECT_NEAR(s.steps[0].arrival_s, 4 * f.steps[0].arrival_s, 1e-9);
    s.steps[0].arrival_s = f.steps[0].arrival_s = 0;
    EXPECT_EQ(s, f);
  }
  // And a prefix of sessions does not depend on how many are generated.
  const Workload more = Generate(GetParam(), 3, 60, 0.5);
  for (size_t i = 0; i < slow.sessions.size(); ++i) EXPECT_EQ(slow.sessions[i], more.sessions[i]);
}

TEST_P(EveryWorkload, FollowUpStepExtendsThePreviousContextTokenForToken) {
  const Workload w = Generate(GetParam(), 11, 8);
  for (const SessionSpec& s : w.sessions) {
    std::vector<TokenId> context;
    std::vector<BlockHash> previous;
    const std::vector<StepLengths> lengths = SessionLengths(s);
    for (size_t k = 0; k < s.steps.size(); ++k) {
      // Step k's prompt rebuilt from scratch (steps 0..k-1 with their outputs,
      // then step k's parts, in a fresh vector) must start with exactly the
      // context step k-1 ended with, its outputs included.
      std::vector<TokenId> prompt;
      for (size_t j = 0; j <= k; ++j) {
        for (size_t p = 0; p < s.steps[j].input.size(); ++p) {
          AppendInputTokens(s, static_cast<int>(j), static_cast<int>(p), &prompt);
        }
        if (j < k) AppendOutputTokens(s, s.steps[j].output_tokens, &prompt);
      }
      ASSERT_EQ(static_cast<int64_t>(prompt.size()), lengths[k].prompt_tokens) << s.id << " step " << k;
      ASSERT_GE(prompt.size(), context.size());
      ASSERT_TRUE(std::equal(context.begin(), context.end(), prompt.begin()))
          << s.id << " step " << k << " does not extend step " << k - 1 << "'s context + output";
      for (size_t p = 0; p < s.steps[k].input.size(); ++p) {
        AppendInputTokens(s, static_cast<int>(k), static_cast<int>(p), &context);
      }
      ASSERT_EQ(context, prompt) << s.id << " step " << k;
      const std::vector<BlockHash> hashes = ChainHashes(s.salt, context, 16);
      // Every complete block hashed at the end of step k-1 is a prefix of this prompt's chain.
      const size_t full = previous.size() - (previous.empty() ? 0 : 1);
      ASSERT_LE(full, hashes.size());
      for (size_t i = 0; i < full; ++i) ASSERT_EQ(previous[i], hashes[i]) << s.id << " step " << k;
      AppendOutputTokens(s, s.steps[k].output_tokens, &context);
      previous = ChainHashes(s.salt, context, 16);
      for (TokenId t : context) {
        ASSERT_GE(t, kFirstPseudoToken);
        ASSERT_LT(t, kFirstPseudoToken + kPseudoVocab);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sim, EveryWorkload,
                         ::testing::Values("chat", "agent", "long-agent", "doc-qa", "long-doc-qa"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Generators, ChatMatchesDocumentedParameters) {
  const ChatParams p = DefaultChatParams();
  const Workload w = Generate("chat", 5, 200);
  double mean_final = 0;
  for (const SessionSpec& s : w.sessions) {
    EXPECT_TRUE(s.salt.rfind("tenant-", 0) == 0);
    EXPECT_LE(static_cast<int64_t>(s.steps.size()), p.turns.hi);
    ASSERT_EQ(s.steps[0].input.size(), 2u);
    EXPECT_EQ(s.steps[0].input[0].kind, InputPart::Kind::kShared);
    EXPECT_TRUE(InRange(s.steps[0].input[0].length, p.system_prompt));
    for (const StepSpec& step : s.steps) {
      EXPECT_TRUE(InRange(step.input.back().length, p.user_tokens));
      EXPECT_TRUE(InRange(step.output_tokens, p.output_tokens));
      EXPECT_TRUE(step.tool.empty());
    }
    const std::vector<StepLengths> lengths = SessionLengths(s);
    EXPECT_LE(lengths.back().context_tokens, p.max_context);
    mean_final += static_cast<double>(lengths.back().context_tokens) / w.sessions.size();
  }
  // "~5k-token contexts" at the end of a conversation.
  EXPECT_GT(mean_final, 3000);
  EXPECT_LT(mean_final, 7000);
  EXPECT_FALSE(w.sessions[0].is_job());
}

TEST(Generators, SharedPromptsAreIdenticalAcrossSessionsOfATenant) {
  const Workload w = Generate("chat", 5, 100);
  std::map<std::string, std::vector<TokenId>> by_tenant;
  for (const SessionSpec& s : w.sessions) {
    std::vector<TokenId> system;
    AppendInputTokens(s, 0, 0, &system);
    auto [it, inserted] = by_tenant.emplace(s.salt, system);
    if (!inserted) {
      EXPECT_EQ(it->second, system) << s.id;
    }
  }
  EXPECT_GT(by_tenant.size(), 1u);
}

void CheckAgent(const Workload& w, const AgentParams& p, int64_t min_max_context) {
  std::set<std::string> tool_names;
  for (const ToolSpec& t : p.tools) tool_names.insert(t.name);
  int64_t largest = 0;
  for (const SessionSpec& s : w.sessions) {
    ASSERT_FALSE(s.steps.empty());
    EXPECT_TRUE(InRange(static_cast<int64_t>(s.steps.size()), {1, p.steps.hi}));
    EXPECT_TRUE(InRange(s.steps[0].input[0].length, p.system_prompt));
    EXPECT_TRUE(InRange(s.steps[0].input[1].length, p.task_tokens));
    for (size_t k = 0; k < s.steps.size(); ++k) {
      const StepSpec& step = s.steps[k];
      EXPECT_TRUE(InRange(step.output_tokens, p.output_tokens));
      if (k > 0) {
        EXPECT_TRUE(InRange(step.input[0].length, p.tool_result_tokens));
      }
      if (k + 1 < s.steps.size()) {
        EXPECT_EQ(tool_names.count(step.tool), 1u) << step.tool;
        EXPECT_GE(step.tool_s, 0);
        EXPECT_EQ(step.delay_after_s(), step.tool_s);
      } else {
        EXPECT_TRUE(step.last_step);
        EXPECT_TRUE(step.tool.empty());
      }
    }
    const int64_t context = SessionLengths(s).back().context_tokens;
    EXPECT_LE(context, p.max_context);
    largest = std::max(largest, context);
  }
  EXPECT_GE(largest, min_max_context);
}

TEST(Generators, AgentMatchesDocumentedParameters) {
  const Workload w = Generate("agent", 9, 100);
  CheckAgent(w, DefaultAgentParams(), 24000);
  EXPECT_TRUE(w.sessions[0].is_job());
}

TEST(Generators, LongAgentReachesNinetyK) {
  CheckAgent(Generate("long-agent", 9, 60), LongAgentParams(), 70000);
}

void CheckDocQa(const Workload& w, const DocQaParams& p) {
  std::map<std::string, int> uses;
  for (const SessionSpec& s : w.sessions) {
    EXPECT_EQ(s.salt, "corpus");
    const InputPart& doc = s.steps[0].input[0];
    EXPECT_EQ(doc.kind, InputPart::Kind::kShared);
    EXPECT_TRUE(InRange(doc.length, p.document_tokens)) << doc.length;
    ++uses[doc.shared_id];
    EXPECT_LE(static_cast<int64_t>(s.steps.size()), p.questions.hi);
    for (const StepSpec& step : s.steps) {
      EXPECT_TRUE(InRange(step.input.back().length, p.question_tokens));
      EXPECT_TRUE(InRange(step.output_tokens, p.output_tokens));
    }
  }
  // Documents are shared by several users.
  int shared = 0;
  for (const auto& [id, n] : uses) shared += n > 1;
  EXPECT_GT(shared, 1);
}

TEST(Generators, DocQaMatchesDocumentedParameters) {
  CheckDocQa(Generate("doc-qa", 4, 100), DefaultDocQaParams());
  CheckDocQa(Generate("long-doc-qa", 4, 60), LongDocQaParams());
}

TEST(Generators, DurationModeAndBadOptions) {
  GeneratorOptions o;
  o.workload = "chat";
  o.rate = 2;
  o.duration_s = 50;
  absl::StatusOr<Workload> w = GenerateWorkload(o);
  ASSERT_TRUE(w.ok());
  EXPECT_GT(w->sessions.size(), 60u);   // Poisson(100): far from both bounds
  EXPECT_LT(w->sessions.size(), 140u);
  for (const SessionSpec& s : w->sessions) EXPECT_LT(s.steps[0].arrival_s, 50);
  o.workload = "nope";
  EXPECT_EQ(GenerateWorkload(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.workload = "chat";
  o.rate = 0;
  EXPECT_EQ(GenerateWorkload(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.rate = std::nan("");
  EXPECT_EQ(GenerateWorkload(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.rate = 2;
  o.duration_s = -1;
  EXPECT_EQ(GenerateWorkload(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.duration_s = 0;
  o.sessions = -3;
  EXPECT_EQ(GenerateWorkload(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Workload, WithSessionRateRescalesStarts) {
  const Workload w = Generate("agent", 2, 20, 1.0);
  const Workload faster = w.WithSessionRate(4 * w.session_rate());
  EXPECT_NEAR(faster.session_rate(), 4 * w.session_rate(), 1e-9);
  EXPECT_EQ(faster.sessions.back().steps.back(), w.sessions.back().steps.back());
}

TEST(Workload, ValidateRejectsBrokenSessions) {
  Workload w = Generate("chat", 1, 3);
  ASSERT_TRUE(w.Validate().ok());
  Workload bad = w;
  bad.sessions[1].steps.back().last_step = false;
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
  bad = w;
  bad.sessions[0].steps[0].output_tokens = 0;
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
  bad = w;
  bad.sessions[2].id = bad.sessions[0].id;
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
  bad = w;
  std::swap(bad.sessions[0], bad.sessions[2]);
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asymcache
