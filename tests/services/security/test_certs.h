// TestCerts: the certificate set of scripts/make_certs.sh (a CA, the
// component certificate every service presents, two tenants' client
// certificates, and a rogue CA with a rogue tenant and a rogue server), made
// with openssl in a fresh temporary directory, for the security tests.
//
// Contract: Make() runs the script once (a few hundred milliseconds) and
// returns the directory's files; the directory is removed by the destructor.
// Not thread-safe (one test's thread). Errors: INTERNAL when the script fails
// (its output in the message), FAILED_PRECONDITION when it is not found.
#ifndef ASYMCACHE_TESTS_SERVICES_SECURITY_TEST_CERTS_H_
#define ASYMCACHE_TESTS_SERVICES_SECURITY_TEST_CERTS_H_

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tests/services/child_process.h"

#ifndef ASYMCACHE_MAKE_CERTS_SCRIPT
#define ASYMCACHE_MAKE_CERTS_SCRIPT "scripts/make_certs.sh"
#endif

namespace asymcache::testing {

class TestCerts {
 public:
  static absl::StatusOr<std::unique_ptr<TestCerts>> Make() {
    const std::string script = ASYMCACHE_MAKE_CERTS_SCRIPT;
    if (::access(script.c_str(), R_OK) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("no certificate script at ", script));
    }
    char dir[] = "/tmp/asymcache_certs_XXXXXX";
    if (::mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
    std::unique_ptr<TestCerts> certs(new TestCerts(dir));
    const std::string log = absl::StrCat(dir, "/make_certs.log");
    const std::string command =
        absl::StrCat("bash '", script, "' '", dir, "' 2 >'", log, "' 2>&1");  // DAYS = 2
    if (std::system(command.c_str()) != 0) {
      return absl::InternalError(absl::StrCat(command, " failed: ", FileContents(log)));
    }
    return certs;
  }

  ~TestCerts() {
    const std::string command = absl::StrCat("rm -rf '", dir_, "'");
    if (std::system(command.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir_.c_str());
  }

  // NAME.pem / NAME.key of the set (ca, component, tenant-a, ...).
  std::string Cert(const std::string& name) const { return absl::StrCat(dir_, "/", name, ".pem"); }
  std::string Key(const std::string& name) const { return absl::StrCat(dir_, "/", name, ".key"); }
  const std::string& dir() const { return dir_; }

  // The flags a service presenting `name` (signed by the cluster CA) runs with.
  std::vector<std::string> ServiceFlags(const std::string& name = "component") const {
    return {absl::StrCat("--tls-cert=", Cert(name)), absl::StrCat("--tls-key=", Key(name)),
            absl::StrCat("--tls-ca=", Cert("ca"))};
  }

 private:
  explicit TestCerts(std::string dir) : dir_(std::move(dir)) {}
  const std::string dir_;
};

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_SECURITY_TEST_CERTS_H_
