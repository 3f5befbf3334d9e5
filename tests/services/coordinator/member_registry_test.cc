// MemberRegistry with a FakeClock: registration checks and their codes,
// expiry and rejoin (no sleeping), slot draining, re-registration of a
// restarted daemon, worker attachment and effective roles, load and pending
// work, agent affinity.
#include "services/coordinator/member_registry.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

ModelConfig Tiny() { return ModelConfig::Named("tiny").value(); }

MemberRegistration Daemon(const std::string& id, const std::string& instance = "run-1",
                          int port = 7001) {
  MemberRegistration r;
  r.member_id = id;
  r.kind = MemberKind::kDaemon;
  r.address = "10.0.0.1:" + std::to_string(port);
  r.gpu = 0;
  r.role = MemberRole::kBoth;
  r.model = Tiny();
  r.calibration = CostModel::DefaultCpu(Tiny());
  r.instance = instance;
  return r;
}

MemberRegistration Worker(const std::string& id, const std::string& daemon, MemberRole role) {
  MemberRegistration r;
  r.member_id = id;
  r.kind = MemberKind::kWorker;
  r.address = "10.0.0.2:8000";
  r.role = role;
  r.daemon_id = daemon;
  return r;
}

class MemberRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(MemberRegistryOptions{}); }
  void Make(MemberRegistryOptions options) {
    options.member_timeout = absl::Seconds(5);
    absl::StatusOr<std::unique_ptr<MemberRegistry>> r = MemberRegistry::Create(options, &clock_);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = *std::move(r);
  }
  RegisterResult MustRegister(const MemberRegistration& r) {
    absl::StatusOr<RegisterResult> result = registry_->Register(r);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : RegisterResult{};
  }
  absl::StatusCode RegisterCode(const MemberRegistration& r) {
    return registry_->Register(r).status().code();
  }

  FakeClock clock_{absl::FromUnixSeconds(1000)};
  std::unique_ptr<MemberRegistry> registry_;
};

TEST_F(MemberRegistryTest, OptionsAreValidated) {
  MemberRegistryOptions bad;
  bad.slots = 2;
  bad.max_members = 3;
  EXPECT_EQ(MemberRegistry::Create(bad, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MemberRegistry::Create(MemberRegistryOptions{}, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  MemberRegistryOptions zero_ttl;
  zero_ttl.agent_affinity_ttl = absl::ZeroDuration();
  EXPECT_EQ(MemberRegistry::Create(zero_ttl, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MemberRegistryTest, DaemonGetsASlotAndAWatchTarget) {
  const RegisterResult a = MustRegister(Daemon("a"));
  EXPECT_FALSE(a.replaced);
  ASSERT_TRUE(a.watch.has_value());
  EXPECT_EQ(a.watch->slot, 0u);
  EXPECT_EQ(a.watch->member_id, "a");
  EXPECT_EQ(a.watch->address, "10.0.0.1:7001");
  EXPECT_FALSE(a.reset_slot.has_value());
  const RegisterResult b = MustRegister(Daemon("b", "run-1", 7002));
  ASSERT_TRUE(b.watch.has_value());
  EXPECT_EQ(b.watch->slot, 1u);
  const RoutingView view = registry_->View();
  ASSERT_EQ(view.prefill.size(), 2u);
  EXPECT_EQ(view.prefill[0].daemon->member_id, "a");
  EXPECT_EQ(view.prefill[1].daemon->member_id, "b");
  ASSERT_NE(view.prefill[0].cost, nullptr);
  EXPECT_EQ(view.prefill[0].cost->model().block_tokens, Tiny().block_tokens);
  ASSERT_TRUE(view.model.has_value());
  EXPECT_EQ(view.model->name, "tiny");
  EXPECT_TRUE(view.decode.empty());
}

TEST_F(MemberRegistryTest, MissedHeartbeatsExpireTheMemberAndItRejoins) {
  const MemberSlot slot = MustRegister(Daemon("a")).watch->slot;
  clock_.Advance(absl::Seconds(4));
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{}).ok());
  clock_.Advance(absl::Seconds(5));  // exactly the timeout after the heartbeat: still live
  EXPECT_TRUE(registry_->ExpireMembers().empty());
  EXPECT_EQ(registry_->View().prefill.size(), 1u);

  clock_.Advance(absl::Milliseconds(1));
  // Out of routing at once, even before the expiry pass runs.
  EXPECT_TRUE(registry_->View().prefill.empty());
  const absl::Status late = registry_->Heartbeat("a", MemberLoad{});
  EXPECT_EQ(late.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(late.message(), HasSubstr("register again"));

  const std::vector<RemovedMember> removed = registry_->ExpireMembers();
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0].member_id, "a");
  ASSERT_TRUE(removed[0].slot.has_value());
  EXPECT_EQ(*removed[0].slot, slot);
  EXPECT_EQ(registry_->members(), 0);
  EXPECT_EQ(registry_->Heartbeat("a", MemberLoad{}).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(registry_->cluster_model().has_value());  // the last daemon left

  // Rejoin cleanly: a fresh record (the old slot is still draining).
  const RegisterResult again = MustRegister(Daemon("a"));
  EXPECT_FALSE(again.replaced);
  ASSERT_TRUE(again.watch.has_value());
  EXPECT_NE(again.watch->slot, slot);
  EXPECT_TRUE(registry_->Heartbeat("a", MemberLoad{}).ok());
  EXPECT_EQ(registry_->View().prefill.size(), 1u);
}

TEST_F(MemberRegistryTest, DrainingSlotIsReusedOnlyAfterRelease) {
  MemberRegistryOptions options;
  options.max_members = 2;
  options.slots = 2;
  Make(options);
  MustRegister(Daemon("a"));
  MustRegister(Daemon("b"));
  absl::StatusOr<RemovedMember> removed = registry_->Deregister("a");
  ASSERT_TRUE(removed.ok());
  ASSERT_TRUE(removed->slot.has_value());
  EXPECT_EQ(*removed->slot, 0u);
  // Both slots are taken (b, and a's draining one).
  const absl::StatusOr<RegisterResult> full = registry_->Register(Daemon("c"));
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(), HasSubstr("draining"));
  registry_->ReleaseSlot(0);
  const RegisterResult c = MustRegister(Daemon("c"));
  EXPECT_EQ(c.watch->slot, 0u);
}

TEST_F(MemberRegistryTest, FullTableIsResourceExhausted) {
  MemberRegistryOptions options;
  options.max_members = 2;
  Make(options);
  MustRegister(Daemon("a"));
  MustRegister(Worker("w", "a", MemberRole::kBoth));
  const absl::StatusOr<RegisterResult> r = registry_->Register(Daemon("b"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("member table is full"));
  // Replacing an existing member is not a new member.
  EXPECT_TRUE(registry_->Register(Daemon("a")).ok());
}

TEST_F(MemberRegistryTest, ReRegistrationOfTheSameRunKeepsTheWatcher) {
  const MemberSlot slot = MustRegister(Daemon("a")).watch->slot;
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{10, 2, 30, 40, 7}).ok());
  const RegisterResult same = MustRegister(Daemon("a"));
  EXPECT_TRUE(same.replaced);
  EXPECT_FALSE(same.reset_slot.has_value());
  EXPECT_FALSE(same.watch.has_value());
  const std::vector<MemberSnapshot> list = registry_->List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].slot, slot);
  EXPECT_EQ(list[0].load.free_blocks, 30);  // same run: load kept
}

// A daemon that rejoins (a new run under its id, or its id back after it
// left) is ramped in: its weight grows linearly over rejoin_ramp and it is
// open to a route only while its share of the routes it was offered stays
// within the weight. A daemon joining for the first time is not ramped.
TEST_F(MemberRegistryTest, RejoinedDaemonIsRampedIn) {
  MemberRegistryOptions options;
  options.rejoin_ramp = absl::Seconds(10);
  Make(options);
  MustRegister(Daemon("a"));
  MustRegister(Daemon("b", "run-1", 7002));
  auto member = [&](const std::string& id) {
    for (const RoutingMember& m : registry_->View().prefill) {
      if (m.daemon->member_id == id) return m;
    }
    ADD_FAILURE() << id << " not in the view";
    return RoutingMember{};
  };
  EXPECT_EQ(member("a").ramp_weight, 1.0);
  EXPECT_EQ(member("b").ramp_weight, 1.0);

  MustRegister(Daemon("a", "run-2"));  // a restart
  EXPECT_EQ(member("a").ramp_weight, 0.0);
  EXPECT_FALSE(member("a").ramp_open);
  EXPECT_TRUE(member("b").ramp_open);
  clock_.Advance(absl::Seconds(5));
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{}).ok());
  ASSERT_TRUE(registry_->Heartbeat("b", MemberLoad{}).ok());
  EXPECT_DOUBLE_EQ(member("a").ramp_weight, 0.5);
  // At weight 0.5 it may take every second route it is offered: a route
  // taken is allowed while taken + 1 <= 0.5 × (offered + 1).
  const std::vector<std::string> both = {"a", "b"};
  EXPECT_FALSE(member("a").ramp_open);  // 1 > 0.5 × 1
  registry_->CountRampRoute(both, "b");
  EXPECT_TRUE(member("a").ramp_open);   // 1 <= 0.5 × 2
  registry_->CountRampRoute(both, "a");
  EXPECT_FALSE(member("a").ramp_open);  // 2 > 0.5 × 3
  registry_->CountRampRoute(both, "b");
  EXPECT_TRUE(member("a").ramp_open);   // 2 <= 0.5 × 4
  for (const MemberSnapshot& s : registry_->List()) {
    if (s.member_id == "a") EXPECT_DOUBLE_EQ(s.ramp_weight, 0.5);
  }
  clock_.Advance(absl::Seconds(5));
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{}).ok());
  ASSERT_TRUE(registry_->Heartbeat("b", MemberLoad{}).ok());
  EXPECT_EQ(member("a").ramp_weight, 1.0);
  EXPECT_TRUE(member("a").ramp_open);

  // Deregistered and back as the same run (its cache intact): not ramped; as
  // another run (restarted while away): ramped. A new id is not.
  ASSERT_TRUE(registry_->Deregister("b").ok());
  MustRegister(Daemon("b", "run-1", 7002));
  EXPECT_EQ(member("b").ramp_weight, 1.0);
  ASSERT_TRUE(registry_->Deregister("b").ok());
  MustRegister(Daemon("b", "run-2", 7002));
  EXPECT_EQ(member("b").ramp_weight, 0.0);
  MustRegister(Daemon("c", "run-1", 7003));
  EXPECT_EQ(member("c").ramp_weight, 1.0);
}

TEST_F(MemberRegistryTest, RestartedDaemonResetsItsSlot) {
  const MemberSlot slot = MustRegister(Daemon("a", "run-1")).watch->slot;
  registry_->RecordAgentRoute("job", "a", /*last_step=*/false);
  ASSERT_TRUE(registry_->AgentAffinity("job").has_value());

  const RegisterResult restarted = MustRegister(Daemon("a", "run-2"));
  EXPECT_TRUE(restarted.replaced);
  ASSERT_TRUE(restarted.reset_slot.has_value());
  EXPECT_EQ(*restarted.reset_slot, slot);
  EXPECT_FALSE(restarted.release_reset_slot);
  ASSERT_TRUE(restarted.watch.has_value());
  EXPECT_EQ(restarted.watch->slot, slot);
  // Its pins died with the old run.
  EXPECT_FALSE(registry_->AgentAffinity("job").has_value());

  // A moved daemon (new address, same instance) is reset too.
  const RegisterResult moved = MustRegister(Daemon("a", "run-2", 7999));
  ASSERT_TRUE(moved.reset_slot.has_value());
  EXPECT_EQ(moved.watch->address, "10.0.0.1:7999");
}

TEST_F(MemberRegistryTest, DaemonIdReusedByAWorkerReleasesTheSlot) {
  const MemberSlot slot = MustRegister(Daemon("a")).watch->slot;
  MustRegister(Daemon("b", "run-1", 7002));
  const RegisterResult worker = MustRegister(Worker("a", "b", MemberRole::kBoth));
  ASSERT_TRUE(worker.reset_slot.has_value());
  EXPECT_EQ(*worker.reset_slot, slot);
  EXPECT_TRUE(worker.release_reset_slot);
  EXPECT_FALSE(worker.watch.has_value());
  const RoutingView view = registry_->View();
  ASSERT_EQ(view.prefill.size(), 1u);
  EXPECT_EQ(view.prefill[0].daemon->member_id, "b");
  ASSERT_NE(view.prefill[0].prefill_worker, nullptr);
  EXPECT_EQ(view.prefill[0].prefill_worker->member_id, "a");
}

TEST_F(MemberRegistryTest, MalformedRegistrationsAreInvalidArgument) {
  auto expect_invalid = [&](MemberRegistration r, absl::string_view what) {
    const absl::Status s = registry_->Register(r).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << what << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(std::string(what)));
  };
  MemberRegistration r = Daemon("");
  expect_invalid(r, "member_id is empty");
  r = Daemon("bad id");
  expect_invalid(r, "member_id 'bad id' has the character ' '");
  r = Daemon(std::string(129, 'x'));
  expect_invalid(r, "more than 128");
  r = Daemon("a");
  r.address = "";
  expect_invalid(r, "address is empty");
  r.address = "10.0.0.1";
  expect_invalid(r, "is not HOST:PORT");
  r.address = "10.0.0.1:0";
  expect_invalid(r, "is not HOST:PORT");
  r.address = "10.0.0.1:70000";
  expect_invalid(r, "is not HOST:PORT");
  r.address = "host name:80";
  expect_invalid(r, "whitespace");
  r = Daemon("a");
  r.gpu = -2;
  expect_invalid(r, "gpu");
  r = Daemon("a");
  r.model.reset();
  expect_invalid(r, "model is required for daemons");
  r = Daemon("a");
  r.model->num_kv_heads = 3;  // does not divide num_q_heads
  expect_invalid(r, "model:");
  r = Daemon("a");
  r.calibration.reset();
  expect_invalid(r, "calibration is required");
  r = Daemon("a");
  r.calibration->linear_step_s.clear();
  expect_invalid(r, "calibration:");
  r = Daemon("a");
  r.calibration->attn_flops_per_s = -1;
  expect_invalid(r, "calibration:");
  r = Daemon("a");
  r.daemon_id = "x";
  expect_invalid(r, "daemon_id is for workers");
  MemberRegistration w = Worker("w", "", MemberRole::kDecode);
  expect_invalid(w, "daemon_id is empty");
  w = Worker("w", "w", MemberRole::kDecode);
  expect_invalid(w, "own member_id");
  // Nothing was registered by any of them.
  EXPECT_EQ(registry_->members(), 0);
  EXPECT_FALSE(registry_->cluster_model().has_value());
}

TEST_F(MemberRegistryTest, FirstDaemonFixesTheClusterShape) {
  MustRegister(Daemon("a"));
  MemberRegistration other = Daemon("b");
  other.model->block_tokens = 32;
  const absl::Status s = registry_->Register(other).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("model.block_tokens is 32"));
  EXPECT_THAT(s.message(), HasSubstr("first daemon"));
  // A worker naming another shape is refused the same way.
  MemberRegistration worker = Worker("w", "a", MemberRole::kBoth);
  worker.model = Tiny();
  worker.model->num_layers = 3;
  EXPECT_EQ(RegisterCode(worker), absl::StatusCode::kFailedPrecondition);
  // The only daemon may come back with a new shape (it is the cluster).
  MemberRegistration reshaped = Daemon("a", "run-2");
  reshaped.model->block_tokens = 32;
  EXPECT_TRUE(registry_->Register(reshaped).ok());
  EXPECT_EQ(registry_->cluster_model()->block_tokens, 32);
  // After every daemon left, the next one fixes it again.
  ASSERT_TRUE(registry_->Deregister("a").ok());
  EXPECT_TRUE(registry_->Register(Daemon("c")).ok());
  EXPECT_EQ(registry_->cluster_model()->block_tokens, Tiny().block_tokens);
}

TEST_F(MemberRegistryTest, ConfiguredShapeIsEnforced) {
  MemberRegistryOptions options;
  options.expected_model = ModelConfig::Named("llama-3-8b").value();
  Make(options);
  ASSERT_TRUE(registry_->cluster_model().has_value());
  const absl::Status s = registry_->Register(Daemon("a")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("configured"));
}

TEST_F(MemberRegistryTest, WorkersSetTheEffectiveRoleAndTheTarget) {
  MustRegister(Daemon("p"));
  MustRegister(Daemon("d", "run-1", 7002));
  MustRegister(Worker("d-worker", "d", MemberRole::kDecode));
  RoutingView view = registry_->View();
  ASSERT_EQ(view.prefill.size(), 1u);
  EXPECT_EQ(view.prefill[0].daemon->member_id, "p");
  EXPECT_EQ(view.prefill[0].prefill_worker, nullptr);
  ASSERT_EQ(view.decode.size(), 1u);
  EXPECT_EQ(view.decode[0].daemon->member_id, "d");
  ASSERT_NE(view.decode[0].decode_worker, nullptr);
  EXPECT_EQ(view.decode[0].decode_worker->member_id, "d-worker");
  for (const MemberSnapshot& m : registry_->List()) {
    if (m.member_id == "d") {
      EXPECT_EQ(m.effective_role, MemberRole::kDecode);
    }
  }
  // The worker stops heartbeating: the daemon falls back to its own role.
  clock_.Advance(absl::Seconds(4));
  ASSERT_TRUE(registry_->Heartbeat("p", MemberLoad{}).ok());
  ASSERT_TRUE(registry_->Heartbeat("d", MemberLoad{}).ok());
  clock_.Advance(absl::Seconds(2));
  view = registry_->View();
  EXPECT_EQ(view.prefill.size(), 2u);
  EXPECT_TRUE(view.decode.empty());
}

TEST_F(MemberRegistryTest, WorkerRegisteredBeforeItsDaemonAttachesLater) {
  MustRegister(Worker("w", "a", MemberRole::kPrefill));
  EXPECT_TRUE(registry_->View().prefill.empty());
  MustRegister(Daemon("a"));
  const RoutingView view = registry_->View();
  ASSERT_EQ(view.prefill.size(), 1u);
  EXPECT_EQ(view.prefill[0].effective_role, MemberRole::kPrefill);
  ASSERT_NE(view.prefill[0].prefill_worker, nullptr);
  EXPECT_EQ(view.prefill[0].prefill_worker->member_id, "w");
  EXPECT_EQ(view.prefill[0].decode_worker, nullptr);
}

TEST_F(MemberRegistryTest, LoadCountsWorkersAndPendingUntilTheNextHeartbeat) {
  MustRegister(Daemon("a"));
  MustRegister(Worker("w1", "a", MemberRole::kBoth));
  MustRegister(Worker("w2", "a", MemberRole::kBoth));
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{0, 3, 100, 256, 9}).ok());
  ASSERT_TRUE(registry_->Heartbeat("w1", MemberLoad{500, 4, 0, 0, 0}).ok());
  ASSERT_TRUE(registry_->Heartbeat("w2", MemberLoad{200, 1, 0, 0, 0}).ok());
  RoutingView view = registry_->View();
  ASSERT_EQ(view.prefill.size(), 1u);
  EXPECT_EQ(view.prefill[0].queued_prefill_tokens, 700);
  EXPECT_EQ(view.prefill[0].decode_batch, 5);  // the workers' (they run the sequences)
  EXPECT_EQ(view.prefill[0].free_blocks, 100);
  EXPECT_EQ(view.prefill[0].prefill_worker->member_id, "w2");  // the less loaded
  EXPECT_EQ(view.prefill[0].decode_worker->member_id, "w2");

  registry_->AddPending("w2", 400, 1);
  view = registry_->View();
  EXPECT_EQ(view.prefill[0].queued_prefill_tokens, 1100);
  EXPECT_EQ(view.prefill[0].prefill_worker->member_id, "w1");  // 500 < 600 now
  EXPECT_EQ(view.prefill[0].decode_batch, 6);
  registry_->AddPending("nobody", 1, 1);  // ignored

  ASSERT_TRUE(registry_->Heartbeat("w2", MemberLoad{250, 1, 0, 0, 0}).ok());
  view = registry_->View();
  EXPECT_EQ(view.prefill[0].queued_prefill_tokens, 750);  // pending cleared by w2's heartbeat
}

TEST_F(MemberRegistryTest, AgentAffinityLivesForItsTtl) {
  MemberRegistryOptions options;
  options.agent_affinity_ttl = absl::Seconds(3);
  Make(options);
  const MemberSlot slot = MustRegister(Daemon("a")).watch->slot;
  EXPECT_FALSE(registry_->AgentAffinity("job").has_value());
  registry_->RecordAgentRoute("job", "a", false);
  ASSERT_TRUE(registry_->AgentAffinity("job").has_value());
  EXPECT_EQ(*registry_->AgentAffinity("job"), slot);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{}).ok());
  registry_->RecordAgentRoute("job", "a", false);  // refreshed by the next step
  clock_.Advance(absl::Seconds(2));
  EXPECT_TRUE(registry_->AgentAffinity("job").has_value());
  EXPECT_EQ(registry_->ExpireAgentJobs(), 0);
  clock_.Advance(absl::Seconds(1));
  EXPECT_FALSE(registry_->AgentAffinity("job").has_value());
  EXPECT_EQ(registry_->ExpireAgentJobs(), 1);
  EXPECT_EQ(registry_->agent_jobs(), 0);
}

TEST_F(MemberRegistryTest, AgentAffinityEndsWithLastStepOrTheDaemon) {
  MustRegister(Daemon("a"));
  MustRegister(Daemon("b", "run-1", 7002));
  registry_->RecordAgentRoute("j1", "a", false);
  registry_->RecordAgentRoute("j2", "a", false);
  registry_->RecordAgentRoute("j3", "b", false);
  registry_->RecordAgentRoute("j1", "a", /*last_step=*/true);
  EXPECT_FALSE(registry_->AgentAffinity("j1").has_value());
  EXPECT_TRUE(registry_->AgentAffinity("j2").has_value());
  ASSERT_TRUE(registry_->Deregister("a").ok());
  EXPECT_FALSE(registry_->AgentAffinity("j2").has_value());
  EXPECT_TRUE(registry_->AgentAffinity("j3").has_value());
  EXPECT_EQ(registry_->agent_jobs(), 1);
}

TEST_F(MemberRegistryTest, AgentJobsCommitTheirDaemonsBlocks) {
  MemberRegistryOptions options;
  options.agent_affinity_ttl = absl::Seconds(3);
  Make(options);
  MustRegister(Daemon("a"));
  MustRegister(Daemon("b", "run-1", 7002));
  registry_->RecordAgentRoute("j1", "a", false, 40);
  registry_->RecordAgentRoute("j2", "a", false, 60);
  registry_->RecordAgentRoute("j3", "b", false, 7);
  auto committed = [&](const std::string& id) {
    for (const RoutingMember& m : registry_->View().prefill) {
      if (m.daemon->member_id == id) return m.committed_blocks;
    }
    return int64_t{-1};
  };
  EXPECT_EQ(committed("a"), 100);
  EXPECT_EQ(committed("b"), 7);
  registry_->RecordAgentRoute("j1", "a", false, 50);  // the job's context grew
  EXPECT_EQ(committed("a"), 110);
  registry_->RecordAgentRoute("j2", "b", false, 60);  // moved
  EXPECT_EQ(committed("a"), 50);
  EXPECT_EQ(committed("b"), 67);
  registry_->RecordAgentRoute("j1", "a", /*last_step=*/true, 50);
  EXPECT_EQ(committed("a"), 0);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(registry_->Heartbeat("b", MemberLoad{}).ok());
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(registry_->ExpireAgentJobs(), 2);
  EXPECT_EQ(committed("b"), 0);
}

TEST_F(MemberRegistryTest, AgentTableIsBounded) {
  MemberRegistryOptions options;
  options.max_agent_jobs = 2;
  Make(options);
  MustRegister(Daemon("a"));
  registry_->RecordAgentRoute("old", "a", false);
  clock_.Advance(absl::Milliseconds(1));
  registry_->RecordAgentRoute("mid", "a", false);
  clock_.Advance(absl::Milliseconds(1));
  registry_->RecordAgentRoute("new", "a", false);
  EXPECT_EQ(registry_->agent_jobs(), 2);
  EXPECT_FALSE(registry_->AgentAffinity("old").has_value());  // soonest expiry dropped
  EXPECT_TRUE(registry_->AgentAffinity("mid").has_value());
  EXPECT_TRUE(registry_->AgentAffinity("new").has_value());
}

TEST_F(MemberRegistryTest, ListReportsEverything) {
  MustRegister(Daemon("a"));
  MustRegister(Worker("w", "a", MemberRole::kPrefill));
  ASSERT_TRUE(registry_->Heartbeat("a", MemberLoad{1, 2, 3, 4, 5}).ok());
  clock_.Advance(absl::Milliseconds(1500));
  const std::vector<MemberSnapshot> list = registry_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].member_id, "a");
  EXPECT_EQ(list[0].kind, MemberKind::kDaemon);
  EXPECT_EQ(list[0].address, "10.0.0.1:7001");
  EXPECT_EQ(list[0].instance, "run-1");
  EXPECT_EQ(list[0].load.capacity_blocks, 4);
  EXPECT_EQ(list[0].load.last_event_sequence, 5u);
  EXPECT_EQ(list[0].since_heartbeat, absl::Milliseconds(1500));
  EXPECT_EQ(list[0].effective_role, MemberRole::kPrefill);
  ASSERT_TRUE(list[0].slot.has_value());
  EXPECT_EQ(list[1].member_id, "w");
  EXPECT_EQ(list[1].kind, MemberKind::kWorker);
  EXPECT_EQ(list[1].daemon_id, "a");
  EXPECT_FALSE(list[1].slot.has_value());
}

}  // namespace
}  // namespace asymcache
