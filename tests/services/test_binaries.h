// Where the service tests find the real binaries they run as processes:
// the environment variable (e.g. ASYMCACHE_DAEMON_BIN) when set; else the
// path of the build that compiled the test (ASYMCACHE_BUILT_DAEMON, set by
// tests/CMakeLists.txt) when it exists; else the same name beside the test
// executable (a GPU bundle puts every binary in one bin/ folder). Returns ""
// when none exists (the caller skips, saying why).
#ifndef ASYMCACHE_TESTS_SERVICES_TEST_BINARIES_H_
#define ASYMCACHE_TESTS_SERVICES_TEST_BINARIES_H_

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string>

namespace asymcache::testing {

inline std::string FindTestBinary(const char* env, const char* built, const char* name) {
  if (const char* from_env = std::getenv(env); from_env != nullptr && *from_env != '\0') {
    return from_env;
  }
  if (built != nullptr && access(built, X_OK) == 0) return built;
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    std::string exe(buf, static_cast<size_t>(n));
    const std::string beside = exe.substr(0, exe.rfind('/') + 1) + name;
    if (access(beside.c_str(), X_OK) == 0) return beside;
  }
  return "";
}

#ifndef ASYMCACHE_BUILT_DAEMON
#define ASYMCACHE_BUILT_DAEMON nullptr
#endif
#ifndef ASYMCACHE_BUILT_CALIBRATOR
#define ASYMCACHE_BUILT_CALIBRATOR nullptr
#endif
#ifndef ASYMCACHE_BUILT_COORDINATOR
#define ASYMCACHE_BUILT_COORDINATOR nullptr
#endif

inline std::string DaemonBinary() {
  return FindTestBinary("ASYMCACHE_DAEMON_BIN", ASYMCACHE_BUILT_DAEMON, "asymcache-daemon");
}
inline std::string CalibratorBinary() {
  return FindTestBinary("ASYMCACHE_CALIBRATOR_BIN", ASYMCACHE_BUILT_CALIBRATOR,
                        "asymcache-calibrate");
}
inline std::string CoordinatorBinary() {
  return FindTestBinary("ASYMCACHE_COORDINATOR_BIN", ASYMCACHE_BUILT_COORDINATOR,
                        "asymcache-coordinator");
}

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_TEST_BINARIES_H_
