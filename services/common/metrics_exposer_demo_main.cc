// metrics_exposer_demo: a stand-in metrics endpoint for
// tests/services/prometheus_scrape.py until the daemon binary exists.
//
//   metrics_exposer_demo [--host=127.0.0.1] [--port=0]
//
// Serves a few sample families shaped like the daemon's (an info gauge, a
// labelled counter, a gauge, a histogram in seconds) on host:port/metrics,
// prints "metrics listening on HOST:PORT" on stdout, and runs until SIGTERM or
// SIGINT (exit 0). Bad flags: exit 2 with a message on stderr; a bind failure:
// exit 1 with the status.
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <csignal>
#include <cstdio>
#include <string>

#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "services/common/metrics_exposer.h"

namespace {

int Usage(const std::string& problem) {
  std::fprintf(stderr, "metrics_exposer_demo: %s\nusage: metrics_exposer_demo [--host=H] [--port=P]\n",
               problem.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  asymcache::MetricsExposerOptions options;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, "--host=")) {
      options.host = std::string(arg);
    } else if (absl::ConsumePrefix(&arg, "--port=")) {
      if (!absl::SimpleAtoi(arg, &options.port)) {
        return Usage("--port must be an integer, got '" + std::string(arg) + "'");
      }
    } else {
      return Usage("unknown flag '" + std::string(arg) + "'");
    }
  }
  if (absl::Status s = options.Validate(); !s.ok()) return Usage(s.ToString());

  // Block the stop signals before any thread starts so that only sigwait()
  // below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto exposer = asymcache::MetricsExposer::Start(options);
  if (!exposer.ok()) {
    std::fprintf(stderr, "metrics_exposer_demo: %s\n", exposer.status().ToString().c_str());
    return 1;
  }
  prometheus::Registry& registry = (*exposer)->registry();
  prometheus::BuildGauge()
      .Name("asymcache_demo_info")
      .Help("Demo exposer configuration; the value is always 1.")
      .Register(registry)
      .Add({{"policy", "asym"}, {"backend", "host"}, {"model", "demo"}})
      .Set(1);
  auto& hits = prometheus::BuildCounter()
                   .Name("asymcache_demo_hit_tokens_total")
                   .Help("Demo: prompt tokens served from the cache, by kind of hit.")
                   .Register(registry);
  hits.Add({{"kind", "contiguous_prefix"}}).Increment(96);
  hits.Add({{"kind", "hole_aware"}}).Increment(32);
  prometheus::BuildGauge()
      .Name("asymcache_demo_blocks")
      .Help("Demo: KV blocks by lifecycle state.")
      .Register(registry)
      .Add({{"state", "free"}})
      .Set(64);
  prometheus::BuildHistogram()
      .Name("asymcache_demo_rpc_duration_seconds")
      .Help("Demo: RPC latency in seconds.")
      .Register(registry)
      .Add({{"method", "Plan"}, {"code", "OK"}},
           prometheus::Histogram::BucketBoundaries{0.0001, 0.001, 0.01, 0.1, 1})
      .Observe(0.0005);

  std::printf("metrics listening on %s\n", (*exposer)->address().c_str());
  std::fflush(stdout);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  return 0;
}
