// TransportSecurityOptions::Validate() and the credentials over real PEM
// files made by openssl (scripts/make_certs.sh), and TenantSaltPolicy's
// table (services/common/tenant_salt.h).
#include "services/common/transport_security.h"

#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "gtest/gtest.h"
#include "services/common/tenant_salt.h"
#include "tests/services/security/test_certs.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

class TransportSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::TestCerts>> made = testing::TestCerts::Make();
    ASSERT_TRUE(made.ok()) << made.status();
    certs_ = made->release();
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }

  // TLS options presenting `name`, trusting the cluster CA.
  static TransportSecurityOptions Tls(const std::string& name = "component") {
    TransportSecurityOptions o;
    o.plaintext = false;
    o.cert_file = certs_->Cert(name);
    o.key_file = certs_->Key(name);
    o.ca_file = certs_->Cert("ca");
    return o;
  }

  // A file in the certificate directory holding `text`.
  static std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = certs_->dir() + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  static testing::TestCerts* certs_;
};

testing::TestCerts* TransportSecurityTest::certs_ = nullptr;

TEST_F(TransportSecurityTest, ValidTlsAndPlaintextPassAndMakeCredentials) {
  ASSERT_TRUE(Tls().Validate().ok()) << Tls().Validate();
  EXPECT_TRUE(Tls().tls());
  EXPECT_NE(MakeServerCredentials(Tls()).value_or(nullptr), nullptr);
  EXPECT_NE(MakeChannelCredentials(Tls()).value_or(nullptr), nullptr);
  // A client-only certificate is fine for a channel.
  EXPECT_TRUE(Tls("tenant-a").Validate().ok());

  const TransportSecurityOptions plaintext;  // the library default
  EXPECT_TRUE(plaintext.plaintext);
  EXPECT_TRUE(plaintext.Validate().ok());
  EXPECT_NE(MakeServerCredentials(plaintext).value_or(nullptr), nullptr);
}

TEST_F(TransportSecurityTest, EveryBadChoiceOrFileIsNamed) {
  struct Case {
    TransportSecurityOptions options;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({BinaryTransportSecurityDefaults(),
                   "no transport security chosen: pass --tls-cert, --tls-key and --tls-ca (mutual "
                   "TLS), or --plaintext"});
  {
    TransportSecurityOptions o = Tls();
    o.plaintext = true;
    cases.push_back({o, "--plaintext excludes --tls-cert, --tls-key, --tls-ca"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.key_file.clear();
    o.ca_file.clear();
    cases.push_back({o, "mutual TLS needs --tls-key and --tls-ca as well (given: --tls-cert)"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.cert_file = certs_->dir() + "/missing.pem";
    cases.push_back({o, "--tls-cert: cannot read '" + o.cert_file + "'"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.cert_file = WriteFile("garbage.pem", "not a certificate\n");
    cases.push_back({o, "--tls-cert: '" + o.cert_file + "' holds no PEM certificate"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.key_file = o.cert_file;  // a certificate where the key belongs
    cases.push_back({o, "--tls-key: '" + o.key_file + "' holds no unencrypted PEM private key"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.key_file = certs_->Key("tenant-a");  // another certificate's key
    cases.push_back({o, "--tls-key: the key in '" + o.key_file + "' does not belong to the "
                        "certificate in '" + o.cert_file + "' (--tls-cert)"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.ca_file = certs_->Key("ca");  // a key where the CA bundle belongs
    cases.push_back({o, "--tls-ca: '" + o.ca_file + "' holds no PEM CA certificate"});
  }
  {
    TransportSecurityOptions o;
    o.trusted_peers = {"asymcache-component"};
    cases.push_back({o, "--trusted-peers needs TLS"});
  }
  {
    TransportSecurityOptions o = Tls();
    o.trusted_peers = {"asymcache-component", ""};
    cases.push_back({o, "--trusted-peers: an entry is empty"});
  }
  for (const Case& c : cases) {
    const absl::Status s = c.options.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
    // The credentials refuse the same options with the same error.
    EXPECT_EQ(MakeServerCredentials(c.options).status(), s.ok() ? absl::OkStatus() : s)
        << c.message;
    EXPECT_EQ(MakeChannelCredentials(c.options).status(), s.ok() ? absl::OkStatus() : s)
        << c.message;
  }
}

TEST(TenantSaltPolicyTest, PlaintextPassesEverySaltThrough) {
  const TenantSaltPolicy policy{TransportSecurityOptions{}};
  EXPECT_FALSE(policy.tls());
  EXPECT_TRUE(policy.IsTrusted(""));
  EXPECT_EQ(policy.SaltFor("", "any").value(), "any");
  EXPECT_EQ(policy.SaltFor("", "").value(), "");
}

TEST(TenantSaltPolicyTest, TlsDerivesTheSaltFromTheIdentityUnlessThePeerIsTrusted) {
  TransportSecurityOptions security = BinaryTransportSecurityDefaults();
  security.trusted_peers = {"asymcache-component"};
  const TenantSaltPolicy policy(security);
  EXPECT_TRUE(policy.tls());
  // A component forwards an already derived salt.
  EXPECT_TRUE(policy.IsTrusted("asymcache-component"));
  EXPECT_EQ(policy.SaltFor("asymcache-component", "tenant:tenant-a/x").value(),
            "tenant:tenant-a/x");
  // A tenant gets its own namespace, subdivided by its salt.
  EXPECT_FALSE(policy.IsTrusted("tenant-a"));
  EXPECT_EQ(policy.SaltFor("tenant-a", "").value(), "tenant:tenant-a");
  EXPECT_EQ(policy.SaltFor("tenant-a", "chat-7").value(), "tenant:tenant-a/chat-7");
  // Naming another tenant's derived salt only nests it inside one's own.
  EXPECT_EQ(policy.SaltFor("tenant-b", "tenant:tenant-a/chat-7").value(),
            "tenant:tenant-b/tenant:tenant-a/chat-7");
  // Identities with '/' cannot collide with an identity plus a sub-namespace.
  EXPECT_EQ(policy.SaltFor("a/b", "c").value(), "tenant:a%2Fb/c");
  EXPECT_EQ(policy.SaltFor("a", "b/c").value(), "tenant:a/b/c");
  EXPECT_NE(policy.SaltFor("a%2Fb", "c").value(), policy.SaltFor("a/b", "c").value());
  // No identity, no salt.
  EXPECT_EQ(policy.SaltFor("", "x").status().code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace asymcache
