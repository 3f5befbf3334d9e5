// A scriptable stand-in for the coordinator's membership RPCs (Register,
// Heartbeat, Deregister; coordinator.proto), served by a real gRPC server on
// 127.0.0.1, so the member side (MemberRegistrar, the daemon's integration)
// is tested against replicas that forget members, refuse, hang or restart —
// things the real coordinator does only by accident. Records every call.
// Route, ReportTtft and ListMembers answer UNIMPLEMENTED.
//
// Thread-safe: the handlers run on gRPC's threads; the test reads and
// scripts it through the methods below, which wait on conditions (bounded)
// instead of sleeping.
#ifndef ASYMCACHE_TESTS_SERVICES_COORDINATOR_E2E_FAKE_COORDINATOR_H_
#define ASYMCACHE_TESTS_SERVICES_COORDINATOR_E2E_FAKE_COORDINATOR_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"
#include "services/common/grpc_status.h"

namespace asymcache::testing {

class FakeCoordinator final : public v1::Coordinator::Service {
 public:
  explicit FakeCoordinator(std::string instance, double heartbeat_interval_s = 0.05)
      : instance_(std::move(instance)), heartbeat_interval_s_(heartbeat_interval_s) {}

  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    absl::MutexLock lock(&mu_);
    if (!HoldWhileHungLocked(ctx)) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    registers_.push_back(*request);
    if (!register_error_.ok()) return ToGrpcStatus(register_error_);
    members_.insert(request->member_id());
    response->set_heartbeat_interval_s(heartbeat_interval_s_);
    response->set_member_timeout_s(heartbeat_interval_s_ * 5);
    response->set_coordinator_instance(instance_);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse*) override {
    absl::MutexLock lock(&mu_);
    if (!HoldWhileHungLocked(ctx)) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (!members_.contains(request->member_id())) {
      ++refused_heartbeats_;
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("member_id: unknown member '", request->member_id(), "'"));
    }
    heartbeats_.push_back(*request);
    return grpc::Status::OK;
  }

  grpc::Status Deregister(grpc::ServerContext* ctx, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse*) override {
    absl::MutexLock lock(&mu_);
    if (!HoldWhileHungLocked(ctx)) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    deregisters_.push_back(request->member_id());
    if (members_.erase(request->member_id()) == 0) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "member_id: unknown member");
    }
    return grpc::Status::OK;
  }

  // Script.
  void Forget(const std::string& member_id) {
    absl::MutexLock lock(&mu_);
    members_.erase(member_id);
  }
  void FailRegister(absl::Status status) {
    absl::MutexLock lock(&mu_);
    register_error_ = std::move(status);
  }
  // While hung, every call blocks (until released or cancelled by the caller).
  void SetHung(bool hung) {
    absl::MutexLock lock(&mu_);
    hung_ = hung;
  }

  // Observations.
  int registers() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(registers_.size());
  }
  int heartbeats() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(heartbeats_.size());
  }
  int refused_heartbeats() const {
    absl::MutexLock lock(&mu_);
    return refused_heartbeats_;
  }
  int deregisters() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(deregisters_.size());
  }
  int held_calls() const {
    absl::MutexLock lock(&mu_);
    return held_;
  }
  v1::RegisterRequest last_register() const {
    absl::MutexLock lock(&mu_);
    return registers_.empty() ? v1::RegisterRequest() : registers_.back();
  }
  v1::HeartbeatRequest last_heartbeat() const {
    absl::MutexLock lock(&mu_);
    return heartbeats_.empty() ? v1::HeartbeatRequest() : heartbeats_.back();
  }
  std::vector<std::string> deregistered() const {
    absl::MutexLock lock(&mu_);
    return deregisters_;
  }
  bool has_member(const std::string& id) const {
    absl::MutexLock lock(&mu_);
    return members_.contains(id);
  }

  // Counters a wait condition sees.
  struct View {
    int registers;
    int heartbeats;
    int refused_heartbeats;
    int deregisters;
    int held;
    v1::MemberLoad last_load;  // of the latest accepted heartbeat
  };
  // Waits (bounded) until `pred` holds; returns whether it did.
  bool WaitUntil(const std::function<bool(const View&)>& pred, absl::Duration timeout) const {
    struct Arg {
      const FakeCoordinator* self;
      const std::function<bool(const View&)>* pred;
    } arg{this, &pred};
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(
        absl::Condition(+[](Arg* a) { return (*a->pred)(a->self->ViewHeld()); }, &arg), timeout);
  }

 private:
  // Only called from a WaitUntil condition, which runs with mu_ held.
  View ViewHeld() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return View{static_cast<int>(registers_.size()), static_cast<int>(heartbeats_.size()),
                refused_heartbeats_, static_cast<int>(deregisters_.size()), held_,
                heartbeats_.empty() ? v1::MemberLoad() : heartbeats_.back().load()};
  }

  // Blocks while hung; false when the caller cancelled meanwhile.
  bool HoldWhileHungLocked(grpc::ServerContext* ctx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!hung_) return true;
    ++held_;
    while (hung_ && !ctx->IsCancelled()) {
      mu_.AwaitWithTimeout(absl::Condition(+[](bool* hung) { return !*hung; }, &hung_),
                           absl::Milliseconds(10));
    }
    --held_;
    return !ctx->IsCancelled();
  }

  const std::string instance_;
  const double heartbeat_interval_s_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<std::string> members_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::RegisterRequest> registers_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::HeartbeatRequest> heartbeats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> deregisters_ ABSL_GUARDED_BY(mu_);
  int refused_heartbeats_ ABSL_GUARDED_BY(mu_) = 0;
  int held_ ABSL_GUARDED_BY(mu_) = 0;
  bool hung_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status register_error_ ABSL_GUARDED_BY(mu_);
};

// A FakeCoordinator served on 127.0.0.1:`port` (0 = any free port).
class FakeCoordinatorServer {
 public:
  static std::unique_ptr<FakeCoordinatorServer> Start(std::string instance, int port = 0,
                                                      double heartbeat_interval_s = 0.05) {
    auto server = std::unique_ptr<FakeCoordinatorServer>(new FakeCoordinatorServer());
    server->service_ = std::make_unique<FakeCoordinator>(std::move(instance), heartbeat_interval_s);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(),
                             &server->port_);
    builder.RegisterService(server->service_.get());
    server->server_ = builder.BuildAndStart();
    if (server->server_ == nullptr || server->port_ == 0) return nullptr;
    return server;
  }
  ~FakeCoordinatorServer() {
    service_->SetHung(false);
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
  }

  FakeCoordinator& fake() { return *service_; }
  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  FakeCoordinatorServer() = default;
  std::unique_ptr<FakeCoordinator> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_COORDINATOR_E2E_FAKE_COORDINATOR_H_
