// The asymcachectl binary as an operator runs it, end to end on 127.0.0.1:
//   - against a real cluster: an asymcache-coordinator process, an
//     asymcache-daemon process (host pool, tiny model) registered with it, and
//     an asymcache-worker process (tiny model, CPU backend) on that daemon,
//     also registered. Each subcommand's output holds the facts the cluster
//     knows (member ids and addresses, the routed daemon and worker, the
//     generated tokens, pins, pool and worker counters), in text and in JSON
//     that parses back into the response message;
//   - health: SERVING is exit 0; a server marked NOT_SERVING (an in-process
//     gRPC server with the default health service), an unknown service, a
//     port nobody listens on and a peer that never answers are exit 1 with the
//     reason on stderr (the last within --timeout);
//   - bad usage is exit 2 with the mistake named on stderr and nothing on
//     stdout; --help is exit 0.
// The cluster tests skip, saying why, when a service binary is not built
// (test_binaries.h; ASYMCACHE_BUILT_WORKER from tests/services/ctl/CMakeLists.txt).
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "services/ctl/ctl_command_line.h"
#include "services/common/transport_security.h"
#include "services/ctl/ctl_commands.h"
#include "tests/services/child_process.h"
#include "tests/services/client/silent_listener.h"
#include "tests/services/ctl/ctl_run.h"
#include "tests/services/free_port.h"
#include "tests/services/security/test_certs.h"
#include "tests/services/test_binaries.h"

#ifndef ASYMCACHE_BUILT_CTL
#define ASYMCACHE_BUILT_CTL nullptr
#endif
#ifndef ASYMCACHE_BUILT_WORKER
#define ASYMCACHE_BUILT_WORKER nullptr
#endif

namespace asymcache {
namespace {

using ::asymcache::testing::CommandResult;
using ::asymcache::testing::FileContents;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kDaemonId[] = "ctl-daemon";
constexpr char kWorkerId[] = "ctl-worker";
constexpr int kTinyVocab = 1024;
// The daemon's 16 MiB pool in 32 KiB blocks of the tiny shape (2 layers x K,V
// x 2 KV heads x head dim 64 x 16 tokens x 4-byte floats).
constexpr int kPoolBlocks = 512;
// Bound of every wait on a process or on the cluster: only a broken run waits it out.
constexpr absl::Duration kBound = absl::Seconds(20);

std::string CtlBinary() {
  return testing::FindTestBinary("ASYMCACHE_CTL_BIN", ASYMCACHE_BUILT_CTL, "asymcachectl");
}

std::string WorkerBinary() {
  return testing::FindTestBinary("ASYMCACHE_WORKER_BIN", ASYMCACHE_BUILT_WORKER,
                                 "asymcache-worker");
}

CommandResult Ctl(const std::vector<std::string>& args) {
  return testing::RunCommand(CtlBinary(), args, kBound);
}

// The security flag a service binary needs: "--plaintext" where the binaries
// refuse to serve plaintext without an explicit choice (issue #9), none where
// they do not know the flag.
std::vector<std::string> PlaintextFlag(const std::string& binary) {
  const CommandResult help = testing::RunCommand(binary, {"--help"}, kBound);
  if (absl::StrContains(help.out, "--plaintext") || absl::StrContains(help.err, "--plaintext")) {
    return {"--plaintext"};
  }
  return {};
}

// Parses `json` (asymcachectl --json output) into a `Message`; a test failure
// when it does not parse.
template <typename Message>
Message FromJson(const std::string& json) {
  Message message;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

// The token ids of generate's "tokens:" line.
std::vector<int32_t> TokensLine(const std::string& out) {
  std::vector<int32_t> tokens;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (!absl::ConsumePrefix(&line, "tokens:")) continue;
    for (absl::string_view word : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      int32_t token = -1;
      EXPECT_TRUE(absl::SimpleAtoi(word, &token)) << word;
      tokens.push_back(token);
    }
  }
  return tokens;
}

// ---------------------------------------------------------------- no cluster

TEST(CtlUsageTest, BadUsageExitsTwoNamingTheMistake) {
  if (CtlBinary().empty()) GTEST_SKIP() << "no asymcachectl binary";
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "no subcommand"},
      {{"stats"}, "unknown subcommand 'stats'"},
      {{"status"}, "status: --coordinator=HOST:PORT is required"},
      {{"route", "--coordinator=127.0.0.1:1", "--tokens=1,2", "--random-tokens=3"},
       "route: give --tokens or --random-tokens, not both"},
      {{"route", "--coordinator=127.0.0.1:1", "--tokens=7,x"},
       "route: --tokens: entry 2 'x' is not a token id (an integer >= 0)"},
      {{"generate", "--target=127.0.0.1:1", "--random-tokens=4"},
       "generate: --max-new-tokens=K is required"},
      {{"pins", "--daemon=127.0.0.1:1", "--max-new-tokens=3"},
       "--max-new-tokens is not a flag of pins"},
      {{"health", "--target=127.0.0.1:1", "--timeout=soon"},
       "health: --timeout: 'soon' is not a duration (e.g. 2s, 500ms)"},
      {{"daemon-stats", "--daemon=127.0.0.1:1", "extra"},
       "daemon-stats: unexpected argument 'extra'"},
  };
  for (const auto& [args, message] : cases) {
    const CommandResult run = Ctl(args);
    EXPECT_EQ(run.exit_code, 2) << message << "\n" << run.Describe();
    EXPECT_EQ(run.out, "") << message;
    EXPECT_THAT(run.err, StartsWith("asymcachectl: ")) << message;
    EXPECT_THAT(run.err, HasSubstr(message));
  }
}

TEST(CtlUsageTest, HelpExitsZeroListingSubcommandsAndFlags) {
  if (CtlBinary().empty()) GTEST_SKIP() << "no asymcachectl binary";
  CommandResult run = Ctl({"--help"});
  EXPECT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_THAT(run.out, HasSubstr("Usage: asymcachectl SUBCOMMAND"));
  EXPECT_THAT(run.out, HasSubstr("daemon-stats"));
  EXPECT_THAT(run.out, HasSubstr("Exit status"));
  run = Ctl({"generate", "--max-new-tokens=oops", "--help"});
  EXPECT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_THAT(run.out, HasSubstr("Usage: asymcachectl generate --target=HOST:PORT"));
  EXPECT_THAT(run.out, HasSubstr("--temperature"));
  EXPECT_THAT(run.out, HasSubstr("(default: 1m)"));  // generate's stream deadline
  EXPECT_EQ(run.err, "");
}

TEST(CtlUsageTest, UnreachableTargetExitsOneWithTheCode) {
  if (CtlBinary().empty()) GTEST_SKIP() << "no asymcachectl binary";
  const int port = testing::FreeLocalPort();
  ASSERT_NE(port, 0);
  const std::string target = absl::StrCat("127.0.0.1:", port);
  // Nobody listens: the connection is refused at once.
  CommandResult run = Ctl({"health", absl::StrCat("--target=", target)});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_THAT(run.err,
              HasSubstr(absl::StrCat("asymcachectl: UNAVAILABLE: Health.Check on ", target)));
  run = Ctl({"status", absl::StrCat("--coordinator=", target), "--json"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_EQ(run.out, "");
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat("UNAVAILABLE: Coordinator.ListMembers on ", target)));

  // A peer that takes the connection and never answers: DEADLINE_EXCEEDED
  // after --timeout.
  std::string skip;
  std::unique_ptr<testing::SilentListener> silent =
      testing::SilentListener::Start(testing::SilentListener::Mode::kNeverAccepts, &skip);
  ASSERT_NE(silent, nullptr) << skip;
  const std::string silent_target = absl::StrCat("127.0.0.1:", silent->port());
  run = Ctl({"daemon-stats", absl::StrCat("--daemon=", silent_target), "--timeout=300ms"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat("DEADLINE_EXCEEDED: CacheDaemon.GetStats on ",
                                              silent_target)));
}

// A gRPC server with the default health service, whose statuses the test
// sets, beside a Worker service that answers UNIMPLEMENTED (gRPC needs one
// service of its own to poll the server's completion queue).
class HealthOnlyServer {
 public:
  explicit HealthOnlyServer(std::shared_ptr<grpc::ServerCredentials> credentials =
                                grpc::InsecureServerCredentials()) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(&unimplemented_);
    server_ = builder.BuildAndStart();
  }
  ~HealthOnlyServer() {
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now());
      server_->Wait();
    }
  }
  grpc::Server* server() { return server_.get(); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int port_ = 0;
  v1::Worker::Service unimplemented_;
  std::unique_ptr<grpc::Server> server_;
};

TEST(CtlUsageTest, HealthExitsOneUnlessServing) {
  if (CtlBinary().empty()) GTEST_SKIP() << "no asymcachectl binary";
  HealthOnlyServer health;
  ASSERT_NE(health.server(), nullptr);
  grpc::HealthCheckServiceInterface* service = health.server()->GetHealthCheckService();
  ASSERT_NE(service, nullptr);
  const std::string target = absl::StrCat("--target=", health.address());

  service->SetServingStatus("asymcache.v1.Worker", true);
  CommandResult run = Ctl({"health", target});
  EXPECT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_EQ(run.out, "SERVING\n");
  run = Ctl({"health", target, "--service=asymcache.v1.Worker"});
  EXPECT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_EQ(run.out, "SERVING\n");

  service->SetServingStatus("asymcache.v1.Worker", false);
  run = Ctl({"health", target, "--service=asymcache.v1.Worker"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_EQ(run.out, "NOT_SERVING\n");
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat("UNAVAILABLE: ", health.address(),
                                              " service 'asymcache.v1.Worker' is NOT_SERVING")));

  service->SetServingStatus(false);  // every service, the server's "" included
  run = Ctl({"health", target});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_EQ(run.out, "NOT_SERVING\n");

  run = Ctl({"health", target, "--service=no.such.Service"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_EQ(run.out, "");
  EXPECT_THAT(run.err, HasSubstr(absl::StrCat("NOT_FOUND: Health.Check on ", health.address())));
}

TEST(CtlUsageTest, MutualTlsServerAnswersOnlyWithTheClustersCertificates) {
  if (CtlBinary().empty()) GTEST_SKIP() << "no asymcachectl binary";
  absl::StatusOr<std::unique_ptr<testing::TestCerts>> certs = testing::TestCerts::Make();
  ASSERT_TRUE(certs.ok()) << certs.status();
  const testing::TestCerts& c = **certs;
  TransportSecurityOptions server_tls;
  server_tls.plaintext = false;
  server_tls.cert_file = c.Cert("component");  // SAN IP:127.0.0.1
  server_tls.key_file = c.Key("component");
  server_tls.ca_file = c.Cert("ca");
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(server_tls);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  HealthOnlyServer health(*credentials);
  ASSERT_NE(health.server(), nullptr);
  health.server()->GetHealthCheckService()->SetServingStatus(true);
  const std::string target = absl::StrCat("--target=", health.address());
  auto tls = [&](const std::string& name, const std::string& ca) {
    return std::vector<std::string>{"health", target, absl::StrCat("--tls-cert=", c.Cert(name)),
                                    absl::StrCat("--tls-key=", c.Key(name)),
                                    absl::StrCat("--tls-ca=", c.Cert(ca)), "--timeout=3s"};
  };

  CommandResult run = Ctl(tls("tenant-a", "ca"));
  EXPECT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_EQ(run.out, "SERVING\n");

  // Plaintext to a TLS server, a client certificate of a CA the server does
  // not trust, a CA that did not sign the server: no answer, exit 1.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"health", target, "--timeout=3s"}, tls("rogue", "ca"),
        tls("tenant-a", "rogue-ca")}) {
    run = Ctl(args);
    EXPECT_EQ(run.exit_code, 1) << run.Describe();
    EXPECT_EQ(run.out, "");
    EXPECT_THAT(run.err, HasSubstr(absl::StrCat("Health.Check on ", health.address())));
  }
}

// ---------------------------------------------------------------- cluster

// One coordinator, one daemon and one worker for the whole suite (each test
// reads it; none changes what another checks).
class CtlClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string coordinator_bin = testing::CoordinatorBinary();
    const std::string daemon_bin = testing::DaemonBinary();
    const std::string worker_bin = WorkerBinary();
    if (CtlBinary().empty() || coordinator_bin.empty() || daemon_bin.empty() ||
        worker_bin.empty()) {
      skip_reason_ = new std::string(
          "needs asymcachectl, asymcache-coordinator, asymcache-daemon and asymcache-worker "
          "(test_binaries.h; ASYMCACHE_CTL_BIN, ASYMCACHE_WORKER_BIN)");
      return;
    }
    char dir[] = "/tmp/asymcache_ctl_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = new std::string(dir);

    testing::ChildProcessOptions coordinator;
    coordinator.name = "coordinator";
    coordinator.binary = coordinator_bin;
    coordinator.flags = {"--listen=127.0.0.1:0", "--metrics-port=-1", "--heartbeat-interval=200ms",
                         "--member-timeout=5s", "--shutdown-grace=1s"};
    ASSERT_NO_FATAL_FAILURE(Start(coordinator, &coordinator_));
    const std::string coordinators = absl::StrCat("--coordinators=", coordinator_->address());

    testing::ChildProcessOptions daemon;
    daemon.name = "daemon";
    daemon.binary = daemon_bin;
    const std::string shm = absl::StrCat("/asymcache-ctl-test-", ::getpid());
    // A 30 s agent TTL (the longest allowed): a pin made by a test outlives the test.
    daemon.flags = {"--listen=127.0.0.1:0",
                    "--metrics-port=-1",
                    "--backend=host",
                    "--model=tiny",
                    "--pool-bytes=16MiB",
                    absl::StrCat("--shm-name=", shm),
                    "--shutdown-grace=1s",
                    coordinators,
                    absl::StrCat("--member-id=", kDaemonId),
                    "--coordinator-retry-max=200ms",
                    "--agent-default-ttl=30s"};
    ASSERT_NO_FATAL_FAILURE(Start(daemon, &daemon_));
    daemon_->set_on_kill([shm] { ::shm_unlink(shm.c_str()); });

    testing::ChildProcessOptions worker;
    worker.name = "worker";
    worker.binary = worker_bin;
    worker.flags = {absl::StrCat("--daemon=", daemon_->address()),
                    "--listen=127.0.0.1:0",
                    "--metrics-port=-1",
                    "--model=tiny",
                    "--seed=7",
                    "--cpu-threads=1",
                    coordinators,
                    absl::StrCat("--member-id=", kWorkerId),
                    absl::StrCat("--daemon-member-id=", kDaemonId),
                    "--coordinator-retry-max=200ms",
                    "--shutdown-grace=1s"};
    ASSERT_NO_FATAL_FAILURE(Start(worker, &worker_));

    // Registration and the coordinator's event stream from the daemon run in
    // the background: wait (bounded) until routing can name both.
    auto stub = v1::Coordinator::NewStub(
        grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials()));
    const absl::Time deadline = absl::Now() + kBound;
    while (true) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::ListMembersResponse list;
      const grpc::Status status = stub->ListMembers(&context, {}, &list);
      ASSERT_TRUE(status.ok()) << status.error_message();
      bool daemon_ready = false;
      bool worker_ready = false;
      for (const v1::MemberInfo& m : list.members()) {
        // Capacity arrives with the daemon's load report (a heartbeat after
        // registering): wait for it too, so the status checks below see it.
        daemon_ready |= m.member_id() == kDaemonId && m.events_connected() &&
                        m.load().capacity_blocks() > 0;
        worker_ready |= m.member_id() == kWorkerId;
      }
      if (daemon_ready && worker_ready) break;
      ASSERT_LT(absl::Now(), deadline) << "the cluster never formed: " << list.DebugString();
      absl::SleepFor(absl::Milliseconds(20));  // the registrars' next attempt
    }
  }

  static void TearDownTestSuite() {
    worker_.reset();
    daemon_.reset();
    coordinator_.reset();
    if (log_dir_ != nullptr) {
      for (const char* name : {"coordinator", "daemon", "worker"}) {
        ::unlink(LogPath(name).c_str());
      }
      ::rmdir(log_dir_->c_str());
    }
  }

  void SetUp() override {
    if (skip_reason_ != nullptr) GTEST_SKIP() << *skip_reason_;
    ASSERT_NE(worker_, nullptr) << "the cluster did not start (see the suite's setup failure)";
  }

  void TearDown() override {
    if (!HasFailure() || log_dir_ == nullptr) return;
    for (const char* name : {"coordinator", "daemon", "worker"}) {
      std::fprintf(stderr, "---- %s ----\n%s\n", name, FileContents(LogPath(name)).c_str());
    }
  }

  static std::string LogPath(const std::string& name) {
    return absl::StrCat(*log_dir_, "/", name, ".log");
  }

  static void Start(testing::ChildProcessOptions options,
                    std::unique_ptr<testing::ChildProcess>* child) {
    for (std::string& flag : PlaintextFlag(options.binary)) options.flags.push_back(flag);
    options.stderr_path = LogPath(options.name);
    options.ready_timeout = kBound;
    absl::StatusOr<std::unique_ptr<testing::ChildProcess>> started =
        testing::ChildProcess::Start(options);
    ASSERT_TRUE(started.ok()) << started.status() << "\n" << FileContents(options.stderr_path);
    *child = *std::move(started);
  }

  static std::string* skip_reason_;
  static std::string* log_dir_;
  static std::unique_ptr<testing::ChildProcess> coordinator_;
  static std::unique_ptr<testing::ChildProcess> daemon_;
  static std::unique_ptr<testing::ChildProcess> worker_;
};

std::string* CtlClusterTest::skip_reason_ = nullptr;
std::string* CtlClusterTest::log_dir_ = nullptr;
std::unique_ptr<testing::ChildProcess> CtlClusterTest::coordinator_;
std::unique_ptr<testing::ChildProcess> CtlClusterTest::daemon_;
std::unique_ptr<testing::ChildProcess> CtlClusterTest::worker_;

TEST_F(CtlClusterTest, StatusListsEveryMemberAndTheCoordinatorsCounters) {
  const std::string coordinator = absl::StrCat("--coordinator=", coordinator_->address());
  CommandResult run = Ctl({"status", coordinator});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_EQ(run.err, "");
  EXPECT_THAT(run.out, HasSubstr("members      2 (daemons 1, workers 1)"));
  EXPECT_THAT(run.out, HasSubstr("model        tiny: 2 layers"));
  // One row per member: kind, id, address (the worker's names its daemon).
  bool daemon_row = false;
  bool worker_row = false;
  for (absl::string_view line : absl::StrSplit(run.out, '\n')) {
    const std::vector<absl::string_view> cells = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (cells.size() < 6) continue;
    if (cells[0] == "daemon" && cells[1] == kDaemonId) {
      daemon_row = true;
      EXPECT_THAT(std::string(cells[2]), ::testing::EndsWith(absl::StrCat(":", daemon_->port())))
          << line;
      EXPECT_THAT(std::string(line), HasSubstr(" up ")) << line;  // the event stream
    }
    if (cells[0] == "worker" && cells[1] == kWorkerId) {
      worker_row = true;
      EXPECT_THAT(std::string(cells[2]), ::testing::EndsWith(absl::StrCat(":", worker_->port())))
          << line;
      EXPECT_EQ(cells[5], kDaemonId) << line;
    }
  }
  EXPECT_TRUE(daemon_row) << run.out;
  EXPECT_TRUE(worker_row) << run.out;

  run = Ctl({"status", coordinator, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const auto list = FromJson<v1::ListMembersResponse>(run.out);
  ASSERT_EQ(list.members_size(), 2) << run.out;
  EXPECT_EQ(list.model().name(), "tiny");
  EXPECT_FALSE(list.coordinator_instance().empty());
  for (const v1::MemberInfo& m : list.members()) {
    if (m.member_id() == kDaemonId) {
      EXPECT_EQ(m.kind(), v1::MEMBER_KIND_DAEMON);
      EXPECT_EQ(m.load().capacity_blocks(), kPoolBlocks);
    } else {
      EXPECT_EQ(m.member_id(), kWorkerId);
      EXPECT_EQ(m.kind(), v1::MEMBER_KIND_WORKER);
      EXPECT_EQ(m.daemon_id(), kDaemonId);
    }
  }
  EXPECT_THAT(run.out, HasSubstr("\"member_id\": \"ctl-daemon\""));  // proto field names
}

TEST_F(CtlClusterTest, RouteNamesTheDaemonItsWorkerAndThePrediction) {
  const std::string coordinator = absl::StrCat("--coordinator=", coordinator_->address());
  CommandResult run = Ctl(
      {"route", coordinator, "--random-tokens=48", "--seed=5", "--salt=ctl-route", "--explain"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat("prefill         daemon ", kDaemonId, " (",
                                              daemon_->address())));
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat("worker ", kWorkerId)));
  EXPECT_THAT(run.out, HasSubstr("predicted TTFT  "));
  EXPECT_THAT(run.out, HasSubstr("tokens          48: 0 hit"));  // a salt nobody used
  EXPECT_THAT(run.out, HasSubstr("CANDIDATE"));                  // --explain
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat("\n", kDaemonId, "  ")));

  run = Ctl({"route", coordinator, "--tokens=1,2,3,4,5", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const auto route = FromJson<v1::RouteResponse>(run.out);
  EXPECT_NE(route.route_id(), 0u);
  EXPECT_EQ(route.prefill().daemon_id(), kDaemonId);
  EXPECT_EQ(route.prefill().worker_id(), kWorkerId);
  EXPECT_EQ(route.prefill().worker_address(), worker_->address());
  const v1::TtftPrediction& p = route.prediction();
  EXPECT_EQ(p.hit_tokens() + p.rebuild_tokens() + p.new_tokens(), 5);
  EXPECT_GT(p.predicted_ttft_s(), 0);
}

TEST_F(CtlClusterTest, GenerateStreamsMaxNewTokensFromTheWorkerAndThroughTheCoordinator) {
  const std::vector<std::string> prompt = {"--random-tokens=40", "--seed=11", "--salt=ctl-gen",
                                           "--max-new-tokens=6"};
  std::vector<std::string> args = {"generate", absl::StrCat("--target=", worker_->address())};
  args.insert(args.end(), prompt.begin(), prompt.end());
  CommandResult run = Ctl(args);
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const std::vector<int32_t> direct = TokensLine(run.out);
  ASSERT_EQ(direct.size(), 6u) << run.out;
  for (int32_t token : direct) {
    EXPECT_GE(token, 0);
    EXPECT_LT(token, kTinyVocab);
  }
  EXPECT_THAT(run.out, HasSubstr("finish  length, 6 tokens"));
  EXPECT_THAT(run.out, HasSubstr("prompt  40 tokens: 0 hit"));
  EXPECT_THAT(run.out, HasSubstr("tpot    "));
  EXPECT_THAT(run.out, HasSubstr("(5 intervals)"));

  // The coordinator proxies Generate: the same (greedy) tokens, and the
  // prompt's full blocks hit what the first request sealed.
  args[1] = absl::StrCat("--target=", coordinator_->address());
  run = Ctl(args);
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_EQ(TokensLine(run.out), direct) << run.out;
  EXPECT_THAT(run.out, HasSubstr("prompt  40 tokens: 32 hit"));

  // --json: one GenerateResponse per line.
  args.push_back("--json");
  run = Ctl(args);
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  std::vector<int32_t> streamed;
  std::string finish_reason;
  for (absl::string_view line : absl::StrSplit(run.out, '\n', absl::SkipEmpty())) {
    const auto message = FromJson<v1::GenerateResponse>(std::string(line));
    streamed.insert(streamed.end(), message.tokens().begin(), message.tokens().end());
    if (!message.finish_reason().empty()) finish_reason = message.finish_reason();
  }
  EXPECT_EQ(streamed, direct);
  EXPECT_EQ(finish_reason, "length");

  // The worker refuses a token outside its vocabulary: exit 1 with its code.
  run = Ctl({"generate", absl::StrCat("--target=", worker_->address()), "--tokens=1,2,1024",
             "--max-new-tokens=2"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_THAT(run.err,
              HasSubstr(absl::StrCat("INVALID_ARGUMENT: Worker.Generate on ", worker_->address())));
}

TEST_F(CtlClusterTest, PinsDaemonStatsAndWorkerStats) {
  // A prompt generated once (its blocks resident), then pinned for an agent
  // job the way an agent framework would.
  const std::string worker = absl::StrCat("--target=", worker_->address());
  CommandResult run = Ctl({"generate", worker, "--random-tokens=40", "--seed=21", "--salt=ctl-pins",
                           "--max-new-tokens=2"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  ctl::CtlOptions prompt;
  prompt.random_tokens = 40;
  prompt.seed = 21;
  auto daemon_stub = v1::CacheDaemon::NewStub(
      grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials()));
  v1::PinJobRequest pin;
  pin.mutable_agent()->set_job_id("ctl-job");
  pin.mutable_agent()->set_tool("web-search");
  pin.set_salt("ctl-pins");
  for (int32_t token : ctl::PromptTokens(prompt)) pin.add_tokens(token);
  v1::PinJobResponse pinned;
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    const grpc::Status status = daemon_stub->PinJob(&context, pin, &pinned);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_TRUE(pinned.decision().pinned()) << pinned.DebugString();

  const std::string daemon = absl::StrCat("--daemon=", daemon_->address());
  run = Ctl({"pins", daemon});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_THAT(run.out, HasSubstr("jobs           1"));
  EXPECT_THAT(run.out,
              HasSubstr(absl::StrCat("ctl-job  web-search  ", pinned.decision().blocks())));
  run = Ctl({"pins", daemon, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const auto pins = FromJson<v1::ListPinsResponse>(run.out);
  ASSERT_EQ(pins.jobs_size(), 1) << run.out;
  EXPECT_EQ(pins.jobs(0).job_id(), "ctl-job");
  EXPECT_EQ(pins.jobs(0).blocks(), pinned.decision().blocks());
  EXPECT_EQ(pins.pinned_blocks(), pinned.decision().blocks());

  run = Ctl({"daemon-stats", daemon});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_THAT(run.out, HasSubstr("backend      host, policy "));
  EXPECT_THAT(run.out, HasSubstr("model        tiny: 2 layers"));
  EXPECT_THAT(run.out, HasSubstr("blocks       512 capacity: "));
  // The host backend's built-in calibration has no launch model.
  EXPECT_THAT(run.out, HasSubstr(", prefill priced per pair"));
  EXPECT_THAT(run.out, HasSubstr(absl::StrCat("agent pins   ", pinned.decision().blocks(),
                                              " blocks of 1 jobs")));
  run = Ctl({"daemon-stats", daemon, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const auto stats = FromJson<v1::GetStatsResponse>(run.out);
  EXPECT_EQ(stats.capacity_blocks(), kPoolBlocks);
  EXPECT_EQ(stats.backend(), "host");
  EXPECT_EQ(stats.agent_pinned_jobs(), 1);
  EXPECT_GT(stats.indexed_blocks(), 0);
  EXPECT_GT(stats.steps(), 0);

  const std::string worker_flag = absl::StrCat("--worker=", worker_->address());
  run = Ctl({"worker-stats", worker_flag});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  EXPECT_THAT(run.out, HasSubstr("role          both"));
  EXPECT_THAT(run.out, HasSubstr("backend       cpu"));
  run = Ctl({"worker-stats", worker_flag, "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const auto worker_stats = FromJson<v1::GetWorkerStatsResponse>(run.out);
  EXPECT_EQ(worker_stats.role(), "both");
  EXPECT_EQ(worker_stats.model().name(), "tiny");
  EXPECT_GE(worker_stats.generated_tokens(), 2);
}

TEST_F(CtlClusterTest, HealthOfEveryServerIsServing) {
  for (const testing::ChildProcess* server : {coordinator_.get(), daemon_.get(), worker_.get()}) {
    const CommandResult run = Ctl({"health", absl::StrCat("--target=", server->address())});
    EXPECT_EQ(run.exit_code, 0) << server->name() << "\n" << run.Describe();
    EXPECT_EQ(run.out, "SERVING\n") << server->name();
  }
}

}  // namespace
}  // namespace asymcache
