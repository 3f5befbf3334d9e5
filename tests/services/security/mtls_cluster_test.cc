// Mutual TLS between real asymcache-coordinator, asymcache-daemon and
// asymcache-worker processes on 127.0.0.1, with certificates made by openssl
// (scripts/make_certs.sh through test_certs.h), and tenant isolation by
// authenticated identity (docs/security.md):
//   - the cluster (daemon and worker registered with the coordinator over
//     TLS, the coordinator following the daemon's events and proxying
//     Generate to the worker over TLS) serves Generate to tenants' client
//     certificates, directly and through the coordinator;
//   - tenant B sending tenant A's prompt, even with A's derived salt string in
//     the request, gets hit_tokens = 0, while A hits on its second request;
//     the coordinator derives the same salt as the worker (A hits through
//     either);
//   - a tenant may not register as a member nor route by block hashes;
//   - a client without a certificate, with one from another CA, on a
//     plaintext channel, or one that does not trust the server's CA is
//     refused (UNAVAILABLE: the handshake fails);
//   - a binary given no transport choice exits 2 naming the flags.
// Every wait is bounded; the tests skip, saying why, when a binary is
// missing.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/services/child_process.h"
#include "tests/services/security/test_certs.h"
#include "tests/services/test_binaries.h"
#include "tests/services/worker/generate_stream.h"

#ifndef ASYMCACHE_BUILT_WORKER
#define ASYMCACHE_BUILT_WORKER nullptr
#endif

namespace asymcache {
namespace {

using ::asymcache::testing::ChildProcess;
using ::asymcache::testing::FileContents;
using ::asymcache::testing::Generate;
using ::asymcache::testing::Generated;
using ::testing::HasSubstr;

// Bound of one RPC or stream of these tests, and of every polling wait.
constexpr absl::Duration kCallBound = absl::Seconds(20);

// The identity every service's certificate carries (make_certs.sh).
constexpr char kComponent[] = "asymcache-component";

std::string WorkerBinary() {
  return testing::FindTestBinary("ASYMCACHE_WORKER_BIN", ASYMCACHE_BUILT_WORKER,
                                 "asymcache-worker");
}

// How a test client connects.
enum class ClientCert { kNone, kComponent, kTenantA, kTenantB, kRogue };

class MtlsClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::TestCerts>> made = testing::TestCerts::Make();
    if (made.ok()) {
      certs_ = made->release();
    } else {
      certs_error_ = new absl::Status(made.status());
    }
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
    delete certs_error_;
    certs_error_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(certs_, nullptr) << *certs_error_;
    daemon_bin_ = testing::DaemonBinary();
    coordinator_bin_ = testing::CoordinatorBinary();
    worker_bin_ = WorkerBinary();
    if (daemon_bin_.empty() || coordinator_bin_.empty() || worker_bin_.empty()) {
      GTEST_SKIP() << "needs asymcache-daemon, asymcache-coordinator and asymcache-worker "
                      "(test_binaries.h; ASYMCACHE_WORKER_BIN)";
    }
    char dir[] = "/tmp/asymcache_mtls_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    log_dir_ = dir;
  }

  void TearDown() override {
    if (HasFailure()) {
      for (const std::string& path : logs_) {
        std::fprintf(stderr, "---- %s ----\n%s\n", path.c_str(), FileContents(path).c_str());
      }
    }
    worker_.reset();
    daemon_.reset();
    coordinator_.reset();
    for (const std::string& path : logs_) ::unlink(path.c_str());
    if (!log_dir_.empty()) ::rmdir(log_dir_.c_str());
  }

  std::string LogPath(const std::string& name) {
    logs_.push_back(absl::StrCat(log_dir_, "/", name, ".log"));
    return logs_.back();
  }

  // `binary` with the component's TLS flags and `flags`.
  absl::StatusOr<std::unique_ptr<ChildProcess>> StartTls(const std::string& name,
                                                         const std::string& binary,
                                                         std::vector<std::string> flags) {
    testing::ChildProcessOptions options;
    options.name = name;
    options.binary = binary;
    options.flags = certs_->ServiceFlags();
    options.flags.insert(options.flags.end(), flags.begin(), flags.end());
    options.stderr_path = LogPath(name);
    return ChildProcess::Start(options);
  }

  // Coordinator, daemon (registered with it) and worker (on the daemon,
  // registered too), all over mutual TLS.
  void StartCluster() {
    absl::StatusOr<std::unique_ptr<ChildProcess>> coordinator =
        StartTls("coordinator", coordinator_bin_,
                 {"--listen=127.0.0.1:0", "--metrics-port=-1", "--heartbeat-interval=200ms",
                  "--member-timeout=3s", "--shutdown-grace=1s",
                  absl::StrCat("--trusted-peers=", kComponent)});
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    const std::string coordinators = absl::StrCat("--coordinators=", coordinator_->address());

    const std::string shm = absl::StrCat("/asymcache-mtls-test-", ::getpid());
    absl::StatusOr<std::unique_ptr<ChildProcess>> daemon = StartTls(
        "daemon", daemon_bin_,
        {"--listen=127.0.0.1:0", "--metrics-port=-1", "--backend=host", "--model=tiny",
         "--pool-bytes=16MiB", absl::StrCat("--shm-name=", shm), "--shutdown-grace=1s",
         coordinators, "--member-id=daemon-a", "--coordinator-retry-max=200ms"});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
    daemon_->set_on_kill([shm] { ::shm_unlink(shm.c_str()); });

    absl::StatusOr<std::unique_ptr<ChildProcess>> worker = StartTls(
        "worker", worker_bin_,
        {absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
         "--metrics-port=-1", "--model=tiny", "--seed=7", "--cpu-threads=1",
         "--shutdown-grace=1s", absl::StrCat("--trusted-peers=", kComponent), coordinators,
         "--member-id=worker-a", "--daemon-member-id=daemon-a", "--coordinator-retry-max=200ms"});
    ASSERT_TRUE(worker.ok()) << worker.status();
    worker_ = *std::move(worker);
  }

  // A channel to `target` as `cert` (kNone: TLS without a client
  // certificate), trusting `roots` ("ca" or "rogue-ca").
  static std::shared_ptr<grpc::Channel> TlsChannel(const std::string& target, ClientCert cert,
                                                   const std::string& roots = "ca") {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = FileContents(certs_->Cert(roots));
    const char* name = nullptr;
    switch (cert) {
      case ClientCert::kNone: break;
      case ClientCert::kComponent: name = "component"; break;
      case ClientCert::kTenantA: name = "tenant-a"; break;
      case ClientCert::kTenantB: name = "tenant-b"; break;
      case ClientCert::kRogue: name = "rogue"; break;
    }
    if (name != nullptr) {
      ssl.pem_cert_chain = FileContents(certs_->Cert(name));
      ssl.pem_private_key = FileContents(certs_->Key(name));
    }
    return grpc::CreateChannel(target, grpc::SslCredentials(ssl));
  }

  // The coordinator's members as the component sees them, once `ids` are
  // all registered (bounded poll).
  void WaitForMembers(const std::vector<std::string>& ids) {
    auto stub = v1::Coordinator::NewStub(
        TlsChannel(coordinator_->address(), ClientCert::kComponent));
    const absl::Time deadline = absl::Now() + kCallBound;
    while (true) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::ListMembersResponse list;
      const grpc::Status status = stub->ListMembers(&context, {}, &list);
      ASSERT_TRUE(status.ok()) << status.error_message();
      int found = 0;
      for (const std::string& id : ids) {
        for (const v1::MemberInfo& m : list.members()) found += m.member_id() == id ? 1 : 0;
      }
      if (found == static_cast<int>(ids.size())) return;
      ASSERT_LT(absl::Now(), deadline) << "never registered: " << list.DebugString();
      absl::SleepFor(absl::Milliseconds(20));  // the registrars' next attempt
    }
  }

  static testing::TestCerts* certs_;
  static absl::Status* certs_error_;
  std::string daemon_bin_;
  std::string coordinator_bin_;
  std::string worker_bin_;
  std::string log_dir_;
  std::vector<std::string> logs_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::unique_ptr<ChildProcess> daemon_;
  std::unique_ptr<ChildProcess> worker_;
};

testing::TestCerts* MtlsClusterTest::certs_ = nullptr;
absl::Status* MtlsClusterTest::certs_error_ = nullptr;

TEST_F(MtlsClusterTest, ServesGenerateOverMutualTlsAndIsolatesTenantsByIdentity) {
  ASSERT_NO_FATAL_FAILURE(StartCluster());
  ASSERT_NO_FATAL_FAILURE(WaitForMembers({"daemon-a", "worker-a"}));

  auto worker_as_a = v1::Worker::NewStub(TlsChannel(worker_->address(), ClientCert::kTenantA));
  auto worker_as_b = v1::Worker::NewStub(TlsChannel(worker_->address(), ClientCert::kTenantB));
  auto proxy_as_a = v1::Worker::NewStub(TlsChannel(coordinator_->address(), ClientCert::kTenantA));
  auto proxy_as_b = v1::Worker::NewStub(TlsChannel(coordinator_->address(), ClientCert::kTenantB));

  // 40 prompt tokens: two full 16-token blocks and a partial one.
  std::mt19937 rng(std::random_device{}());
  v1::GenerateRequest request;
  for (int i = 0; i < 40; ++i) request.add_prompt_tokens(static_cast<int32_t>(rng() % 1024));
  request.set_max_new_tokens(4);
  request.set_salt("shared");

  // Tenant A: a miss, then a hit on its own blocks.
  const Generated a_first = Generate(*worker_as_a, request, kCallBound);
  ASSERT_TRUE(a_first.status.ok()) << a_first.status.error_message();
  EXPECT_EQ(a_first.tokens.size(), 4u);
  EXPECT_EQ(a_first.stats.hit_tokens(), 0);
  const Generated a_second = Generate(*worker_as_a, request, kCallBound);
  ASSERT_TRUE(a_second.status.ok()) << a_second.status.error_message();
  EXPECT_GE(a_second.stats.hit_tokens(), 32);
  EXPECT_EQ(a_second.tokens, a_first.tokens);

  // Tenant B, the same prompt and salt: nothing of A's.
  const Generated b_same = Generate(*worker_as_b, request, kCallBound);
  ASSERT_TRUE(b_same.status.ok()) << b_same.status.error_message();
  EXPECT_EQ(b_same.stats.hit_tokens(), 0);
  EXPECT_EQ(b_same.tokens, a_first.tokens);  // same model, same prompt: exact output
  // Tenant B naming A's derived salt: still nothing of A's (nor of its own
  // "shared" namespace).
  v1::GenerateRequest spoofed = request;
  spoofed.set_salt("tenant:tenant-a/shared");
  const Generated b_spoofed = Generate(*worker_as_b, spoofed, kCallBound);
  ASSERT_TRUE(b_spoofed.status.ok()) << b_spoofed.status.error_message();
  EXPECT_EQ(b_spoofed.stats.hit_tokens(), 0);

  // Through the coordinator: it derives the salt (the worker trusts its
  // component identity), the same one the worker derives for a direct call.
  const Generated a_proxied = Generate(*proxy_as_a, request, kCallBound);
  ASSERT_TRUE(a_proxied.status.ok()) << a_proxied.status.error_message();
  EXPECT_GE(a_proxied.stats.hit_tokens(), 32);
  EXPECT_EQ(a_proxied.tokens, a_first.tokens);
  const Generated b_proxied = Generate(*proxy_as_b, spoofed, kCallBound);
  ASSERT_TRUE(b_proxied.status.ok()) << b_proxied.status.error_message();
  EXPECT_GE(b_proxied.stats.hit_tokens(), 32);  // B's own earlier blocks, not A's
  v1::GenerateRequest fresh_b = request;
  fresh_b.set_salt("another");
  const Generated b_fresh = Generate(*proxy_as_b, fresh_b, kCallBound);
  ASSERT_TRUE(b_fresh.status.ok()) << b_fresh.status.error_message();
  EXPECT_EQ(b_fresh.stats.hit_tokens(), 0);

  // A tenant is not a member: it may not register, nor route by hashes
  // (which carry whatever salt it chose); routing by tokens is allowed.
  auto coordinator_as_a =
      v1::Coordinator::NewStub(TlsChannel(coordinator_->address(), ClientCert::kTenantA));
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kCallBound));
    v1::RegisterRequest fake;
    fake.set_member_id("fake-daemon");
    fake.set_kind(v1::MEMBER_KIND_DAEMON);
    fake.set_address("127.0.0.1:1");
    v1::RegisterResponse response;
    const grpc::Status status = coordinator_as_a->Register(&context, fake, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("peer 'tenant-a' is not a cluster component"));
  }
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kCallBound));
    v1::RouteRequest route;
    route.add_block_hashes()->set_hi(1);
    route.set_num_tokens(16);
    v1::RouteResponse response;
    const grpc::Status status = coordinator_as_a->Route(&context, route, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  }
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kCallBound));
    v1::RouteRequest route;
    route.set_salt("shared");
    route.mutable_token_ids()->CopyFrom(request.prompt_tokens());
    v1::RouteResponse response;
    const grpc::Status status = coordinator_as_a->Route(&context, route, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.prefill().daemon_id(), "daemon-a");
  }
}

TEST_F(MtlsClusterTest, ClientsWithoutACertificateOfTheCaAreRefused) {
  const std::string shm = absl::StrCat("/asymcache-mtls-refuse-", ::getpid());
  absl::StatusOr<std::unique_ptr<ChildProcess>> daemon = StartTls(
      "daemon", daemon_bin_,
      {"--listen=127.0.0.1:0", "--metrics-port=-1", "--backend=host", "--model=tiny",
       "--pool-bytes=16MiB", absl::StrCat("--shm-name=", shm), "--shutdown-grace=1s"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  daemon_ = *std::move(daemon);
  daemon_->set_on_kill([shm] { ::shm_unlink(shm.c_str()); });

  const auto get_stats = [&](const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::CacheDaemon::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetStatsResponse response;
    return stub->GetStats(&context, {}, &response);
  };
  // The component's certificate is served (the control: the refusals below
  // are the certificate's doing, not a broken server).
  const grpc::Status served = get_stats(TlsChannel(daemon_->address(), ClientCert::kComponent));
  EXPECT_TRUE(served.ok()) << served.error_message();

  const std::vector<std::pair<std::string, std::shared_ptr<grpc::Channel>>> refused = {
      {"TLS without a client certificate", TlsChannel(daemon_->address(), ClientCert::kNone)},
      {"a tenant-a certificate from another CA", TlsChannel(daemon_->address(), ClientCert::kRogue)},
      {"a client trusting only another CA",
       TlsChannel(daemon_->address(), ClientCert::kComponent, "rogue-ca")},
      {"plaintext", grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials())},
  };
  for (const auto& [what, channel] : refused) {
    const grpc::Status status = get_stats(channel);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << what << ": " << status.error_message();
  }
}

TEST_F(MtlsClusterTest, BinariesWithoutATransportChoiceExitTwoNamingTheFlags) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> binaries = {
      {daemon_bin_, {"--listen=127.0.0.1:0", "--metrics-port=-1"}},
      {coordinator_bin_, {"--listen=127.0.0.1:0", "--metrics-port=-1"}},
      {worker_bin_, {"--daemon=127.0.0.1:1", "--listen=127.0.0.1:0", "--metrics-port=-1"}},
  };
  int n = 0;
  for (const auto& [binary, flags] : binaries) {
    testing::ChildProcessOptions options;
    options.name = binary.substr(binary.rfind('/') + 1);
    options.binary = binary;
    options.flags = flags;
    options.stderr_path = LogPath(absl::StrCat("unchosen-", ++n));
    const absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(options);
    ASSERT_FALSE(child.ok()) << options.name << " started without a transport choice";
    EXPECT_THAT(child.status().message(), HasSubstr("exit code 2")) << child.status();
    const std::string log = FileContents(options.stderr_path);
    EXPECT_THAT(log, HasSubstr("--tls-cert, --tls-key and --tls-ca")) << options.name;
    EXPECT_THAT(log, HasSubstr("--plaintext")) << options.name;
  }
  // TLS files that do not fit together are refused the same way, by name.
  testing::ChildProcessOptions options;
  options.name = "coordinator";
  options.binary = coordinator_bin_;
  options.flags = {absl::StrCat("--tls-cert=", certs_->Cert("component")),
                   absl::StrCat("--tls-key=", certs_->Key("tenant-a")),
                   absl::StrCat("--tls-ca=", certs_->Cert("ca")),
                   absl::StrCat("--trusted-peers=", kComponent), "--listen=127.0.0.1:0",
                   "--metrics-port=-1"};
  options.stderr_path = LogPath("mismatched-key");
  const absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(options);
  ASSERT_FALSE(child.ok());
  EXPECT_THAT(child.status().message(), HasSubstr("exit code 2"));
  EXPECT_THAT(FileContents(options.stderr_path), HasSubstr("--tls-key: the key in"));
  // The coordinator needs its members' identities with TLS.
  options.flags = certs_->ServiceFlags();
  options.stderr_path = LogPath("no-trusted-peers");
  const absl::StatusOr<std::unique_ptr<ChildProcess>> untrusting = ChildProcess::Start(options);
  ASSERT_FALSE(untrusting.ok());
  EXPECT_THAT(untrusting.status().message(), HasSubstr("exit code 2"));
  EXPECT_THAT(FileContents(options.stderr_path), HasSubstr("--trusted-peers is required with TLS"));
}

}  // namespace
}  // namespace asymcache
