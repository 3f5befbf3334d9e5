#include "services/common/transport_security.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"

namespace asymcache {

namespace {

// The PEM texts of the three files, read once per use.
struct PemFiles {
  std::string cert;
  std::string key;
  std::string ca;
};

absl::StatusOr<std::string> ReadPemFile(absl::string_view flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": cannot read '", path, "' (", std::strerror(errno), ")"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// OpenSSL objects freed on scope exit.
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Certificate = std::unique_ptr<X509, X509Free>;
using PrivateKey = std::unique_ptr<EVP_PKEY, KeyFree>;

Bio MemoryBio(const std::string& text) {
  return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// A passphrase callback that supplies none: an encrypted key fails to load
// instead of prompting on the terminal.
int NoPassphrase(char*, int, int, void*) { return 0; }

// Every PEM certificate in `text` (empty when none parses).
std::vector<Certificate> ParseCertificates(const std::string& text) {
  std::vector<Certificate> certificates;
  Bio bio = MemoryBio(text);
  while (bio != nullptr) {
    Certificate cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
    if (cert == nullptr) break;
    certificates.push_back(std::move(cert));
  }
  ERR_clear_error();  // the end of the input reads as an error
  return certificates;
}

// INVALID_ARGUMENT when `cert` is outside its validity period now.
absl::Status CheckValidityPeriod(absl::string_view flag, const std::string& path, X509* cert) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": the certificate in '", path, "' has expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": the certificate in '", path, "' is not valid yet"));
  }
  return absl::OkStatus();
}

// Reads the three files and checks that they are what they claim to be.
absl::StatusOr<PemFiles> LoadPemFiles(const TransportSecurityOptions& o) {
  PemFiles files;
  absl::StatusOr<std::string> cert = ReadPemFile("tls-cert", o.cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile("tls-key", o.key_file);
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> ca = ReadPemFile("tls-ca", o.ca_file);
  if (!ca.ok()) return ca.status();

  std::vector<Certificate> chain = ParseCertificates(*cert);
  if (chain.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert: '", o.cert_file, "' holds no PEM certificate"));
  }
  if (absl::Status s = CheckValidityPeriod("tls-cert", o.cert_file, chain.front().get());
      !s.ok()) {
    return s;
  }
  Bio key_bio = MemoryBio(*key);
  PrivateKey private_key(
      key_bio == nullptr ? nullptr
                         : PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (private_key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key: '", o.key_file, "' holds no unencrypted PEM private key"));
  }
  if (X509_check_private_key(chain.front().get(), private_key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls-key: the key in '", o.key_file,
                                                   "' does not belong to the certificate in '",
                                                   o.cert_file, "' (--tls-cert)"));
  }
  if (ParseCertificates(*ca).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-ca: '", o.ca_file, "' holds no PEM CA certificate"));
  }
  files.cert = *std::move(cert);
  files.key = *std::move(key);
  files.ca = *std::move(ca);
  return files;
}

// Validate() without reading the files: the choice and the flags' pairing.
absl::Status CheckChoice(const TransportSecurityOptions& o) {
  const std::pair<const char*, const std::string*> files[] = {
      {"--tls-cert", &o.cert_file}, {"--tls-key", &o.key_file}, {"--tls-ca", &o.ca_file}};
  std::vector<std::string> given;
  std::vector<std::string> missing;
  for (const auto& [flag, path] : files) (path->empty() ? missing : given).push_back(flag);
  if (o.plaintext) {
    if (!given.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--plaintext excludes ", absl::StrJoin(given, ", "),
                       ": choose plaintext or mutual TLS, not both"));
    }
    if (!o.trusted_peers.empty()) {
      return absl::InvalidArgumentError(
          "--trusted-peers needs TLS (--tls-cert, --tls-key, --tls-ca): with --plaintext no peer "
          "is authenticated");
    }
    return absl::OkStatus();
  }
  if (given.empty()) {
    return absl::InvalidArgumentError(
        "no transport security chosen: pass --tls-cert, --tls-key and --tls-ca (mutual TLS), or "
        "--plaintext (no encryption, no authentication)");
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("mutual TLS needs ",
                                                   absl::StrJoin(missing, " and "),
                                                   " as well (given: ", absl::StrJoin(given, ", "),
                                                   ")"));
  }
  for (const std::string& peer : o.trusted_peers) {
    if (peer.empty()) {
      return absl::InvalidArgumentError("--trusted-peers: an entry is empty");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TransportSecurityOptions::Validate() const {
  if (absl::Status s = CheckChoice(*this); !s.ok()) return s;
  if (plaintext) return absl::OkStatus();
  return LoadPemFiles(*this).status();
}

TransportSecurityOptions BinaryTransportSecurityDefaults() {
  TransportSecurityOptions options;
  options.plaintext = false;
  return options;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TransportSecurityOptions& options) {
  if (absl::Status s = CheckChoice(options); !s.ok()) return s;
  if (options.plaintext) return grpc::InsecureServerCredentials();
  absl::StatusOr<PemFiles> files = LoadPemFiles(options);
  if (!files.ok()) return files.status();
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = files->ca;
  ssl.pem_key_cert_pairs.push_back({files->key, files->cert});
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TransportSecurityOptions& options) {
  if (absl::Status s = CheckChoice(options); !s.ok()) return s;
  if (options.plaintext) return grpc::InsecureChannelCredentials();
  absl::StatusOr<PemFiles> files = LoadPemFiles(options);
  if (!files.ok()) return files.status();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = files->ca;
  ssl.pem_private_key = files->key;
  ssl.pem_cert_chain = files->cert;
  return grpc::SslCredentials(ssl);
}

std::string PeerIdentity(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
    const std::vector<grpc::string_ref> values = auth->FindPropertyValues(property);
    if (!values.empty() && !values.front().empty()) {
      return std::string(values.front().data(), values.front().size());
    }
  }
  return "";
}

}  // namespace asymcache
