#include "services/common/metrics_exposer.h"

#include <CivetServer.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace asymcache {
namespace {

// civetweb reports why mg_start failed ("cannot bind to 127.0.0.1:8080: 98
// (Address already in use)") only through its log callback, and the failure
// surfaces as an exception whose text says nothing. mg_start binds in the
// calling thread, so a thread-local sink set around the constructor collects
// exactly the messages of this Start() call.
thread_local std::vector<std::string>* start_messages = nullptr;

int CaptureCivetwebMessage(const mg_connection* /*conn*/, const char* message) {
  if (start_messages == nullptr || message == nullptr) return 0;  // civetweb's default handling
  start_messages->emplace_back(absl::StripTrailingAsciiWhitespace(message));
  return 1;
}

}  // namespace

absl::Status MetricsExposerOptions::Validate() const {
  if (host.empty()) return absl::InvalidArgumentError("MetricsExposerOptions.host is empty");
  for (char c : host) {
    if (c == ':' || c == ',' || absl::ascii_isspace(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat("MetricsExposerOptions.host '", host,
                       "' must be an IPv4 address or host name (no ':', ',' or spaces)"));
    }
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("MetricsExposerOptions.port must be in 0..65535 (0 = ephemeral), got ", port));
  }
  if (num_threads < 1 || num_threads > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("MetricsExposerOptions.num_threads must be in 1..64, got ", num_threads));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsExposer>> MetricsExposer::Start(
    const MetricsExposerOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const std::string bind_address = absl::StrCat(options.host, ":", options.port);

  CivetCallbacks callbacks;  // copied by civetweb; only needs to live through the constructor
  callbacks.log_message = &CaptureCivetwebMessage;
  std::vector<std::string> messages;
  start_messages = &messages;
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string exception_text;
  try {
    exposer = std::make_unique<prometheus::Exposer>(
        bind_address, static_cast<std::size_t>(options.num_threads), &callbacks);
  } catch (const std::exception& e) {
    exception_text = e.what();
  } catch (...) {
    exception_text = "unknown exception";
  }
  start_messages = nullptr;
  if (exposer == nullptr) {
    std::string reason = messages.empty() ? exception_text : absl::StrJoin(messages, "; ");
    return absl::UnavailableError(
        absl::StrCat("metrics exposer cannot listen on ", bind_address, ": ", reason));
  }

  std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.size() != 1 || ports[0] <= 0) {
    return absl::InternalError(absl::StrCat("metrics exposer on ", bind_address, " reports ",
                                            ports.size(), " listening ports"));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  exposer->RegisterCollectable(registry);
  return std::unique_ptr<MetricsExposer>(
      new MetricsExposer(options.host, ports[0], std::move(registry), std::move(exposer)));
}

MetricsExposer::MetricsExposer(std::string host, int port,
                               std::shared_ptr<prometheus::Registry> registry,
                               std::unique_ptr<prometheus::Exposer> exposer)
    : host_(std::move(host)),
      port_(port),
      registry_(std::move(registry)),
      exposer_(std::move(exposer)) {}

MetricsExposer::~MetricsExposer() {
  // civetweb's listener thread sits in poll() with a 2 s timeout and checks
  // its stop flag only between polls, so a plain stop takes up to 2 s. A
  // connection to the listening port wakes it: keep connecting until the
  // exposer (listener thread joined, socket closed) is gone.
  std::atomic<bool> stopped{false};
  const std::string wake_host = host_ == "0.0.0.0" ? "127.0.0.1" : host_;
  std::thread waker([&stopped, &wake_host, port = port_] {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* addresses = nullptr;
    if (getaddrinfo(wake_host.c_str(), std::to_string(port).c_str(), &hints, &addresses) != 0) {
      return;  // no wake-up: the stop just takes the poll timeout
    }
    while (!stopped.load(std::memory_order_acquire)) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd >= 0) {
        (void)connect(fd, addresses->ai_addr, addresses->ai_addrlen);
        close(fd);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    freeaddrinfo(addresses);
  });
  exposer_.reset();
  stopped.store(true, std::memory_order_release);
  waker.join();
}

std::string MetricsExposer::address() const { return absl::StrCat(host_, ":", port_); }

}  // namespace asymcache
