// The service binaries run by tests as child processes: the product's
// ServiceProcess (services/common/service_process.h), under the names the
// tests use.
#ifndef ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_
#define ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_

#include "services/common/service_process.h"

namespace asymcache::testing {

using ChildProcess = ::asymcache::ServiceProcess;
using ChildProcessOptions = ::asymcache::ServiceProcessOptions;
using ::asymcache::FileContents;

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_
