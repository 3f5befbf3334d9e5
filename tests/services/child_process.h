// The service binaries run by tests as child processes: the product's
// ServiceProcess (services/common/service_process.h), under the names the
// tests use.
#ifndef ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_
#define ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_

#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "services/common/service_process.h"

namespace asymcache::testing {

using ChildProcess = ::asymcache::ServiceProcess;
using ChildProcessOptions = ::asymcache::ServiceProcessOptions;
using ::asymcache::FileContents;

// ChildProcess::Start, retried for up to `limit` while the child exits before
// READY because its listen port is taken ("Address already in use" in what
// this attempt appended to options.stderr_path, which must be set). A server
// restarted on the port of one just killed races every other process on the
// machine for that port (a parallel test's outgoing connection may get it as
// its ephemeral port for a moment). Any other failure returns at once.
inline absl::StatusOr<std::unique_ptr<ChildProcess>> StartOnBusyPort(
    const ChildProcessOptions& options, absl::Duration limit = absl::Seconds(10)) {
  const absl::Time give_up = absl::Now() + limit;
  while (true) {
    struct stat before {};
    const off_t offset = ::stat(options.stderr_path.c_str(), &before) == 0 ? before.st_size : 0;
    absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(options);
    if (child.ok() || options.stderr_path.empty() || absl::Now() >= give_up) return child;
    std::ifstream log(options.stderr_path);
    log.seekg(offset);
    const std::string appended((std::istreambuf_iterator<char>(log)),
                               std::istreambuf_iterator<char>());
    if (appended.find("Address already in use") == std::string::npos) return child;
    absl::SleepFor(absl::Milliseconds(250));
  }
}

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_
