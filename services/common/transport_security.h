// Transport security of every gRPC server and channel of the services
// (docs/security.md): either mutual TLS (each side presents a certificate
// signed by a CA the other side trusts) or, only when asked for explicitly,
// plaintext. One options struct, shared by asymcache-daemon,
// asymcache-coordinator and asymcache-worker (flags --plaintext, --tls-cert,
// --tls-key, --tls-ca, --trusted-peers; transport_security_settings.h adds
// them to a settings table), turned here into gRPC server and channel
// credentials, plus the authenticated identity of a server call's peer.
//
// Identity: the subject common name (CN) of the peer's certificate when it
// has one, else its first subject alternative name; "" on a plaintext call.
// A CA that signs certificates is what makes an identity mean something: sign
// tenant and component certificates with CAs you control (docs/security.md).
//
// Errors (absl::Status): INVALID_ARGUMENT naming the flag for every bad
// option (a missing or unreadable file, a file that is not PEM, a key that
// does not belong to its certificate, plaintext together with TLS files).
//
// Contract: TransportSecurityOptions is a plain value. The free functions are
// thread-safe; the credentials they return are immutable and may be shared
// by any number of servers and channels. PEM files are read when called (a
// certificate rotated on disk is picked up by the next server or channel made
// with them, not by existing ones).
#ifndef ASYMCACHE_SERVICES_COMMON_TRANSPORT_SECURITY_H_
#define ASYMCACHE_SERVICES_COMMON_TRANSPORT_SECURITY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
class ServerContextBase;
}  // namespace grpc

namespace asymcache {

struct TransportSecurityOptions {
  // No TLS: servers accept, and channels open, unauthenticated unencrypted
  // connections. Default true for the library API (in-process servers of the
  // tests and embedders on loopback); the binaries start from
  // BinaryTransportSecurityDefaults(), where it is false, so that a binary
  // serves plaintext only when given --plaintext. Exclusive with the files.
  bool plaintext = true;
  // PEM certificate chain this process presents, as a server and as a client
  // (--tls-cert). Its SANs must name the address peers dial (e.g. DNS:host,
  // IP:127.0.0.1). Default "": TLS off.
  std::string cert_file;
  // PEM private key of cert_file (--tls-key). Default "".
  std::string key_file;
  // PEM bundle of the CA certificates a peer's certificate must chain to
  // (--tls-ca), both ways: servers require and verify client certificates,
  // channels verify the server's. Default "".
  std::string ca_file;
  // Identities (see the file comment) of cluster components: a peer listed
  // here may register with a coordinator and its requests' salt is taken as
  // already derived; every other authenticated peer is a tenant
  // (tenant_salt.h). Only with TLS. Default empty: no peer is a component
  // (the coordinator requires the list with TLS: its members register).
  std::vector<std::string> trusted_peers;

  // True when TLS is on (Validate() ok and plaintext false).
  bool tls() const { return !plaintext; }

  // INVALID_ARGUMENT naming the flag: neither --plaintext nor the TLS files
  // ("pass --plaintext, or --tls-cert, --tls-key and --tls-ca"), both, a TLS
  // file missing among the three, a file that cannot be read or holds no PEM
  // of its kind (certificate, private key, CA certificates), a key that does
  // not match the certificate, a certificate outside its validity period,
  // --trusted-peers without TLS or with an empty entry. Reads the files.
  absl::Status Validate() const;
};

// Options with plaintext = false: what a binary starts from before its flags,
// so that an explicit --plaintext or the TLS files are required.
TransportSecurityOptions BinaryTransportSecurityDefaults();

// Server credentials: plaintext = insecure; TLS = the certificate and key,
// client certificates required and verified against the CA bundle.
// Validate()'s errors.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TransportSecurityOptions& options);

// Channel credentials: plaintext = insecure; TLS = the CA bundle as roots
// (the server's certificate is verified, its SAN against the target's host)
// and the certificate and key presented as the client's. Validate()'s errors.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TransportSecurityOptions& options);

// The authenticated identity of the call's peer: its certificate's CN, else
// its first SAN; "" when the call is not authenticated (plaintext).
std::string PeerIdentity(const grpc::ServerContextBase& context);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_TRANSPORT_SECURITY_H_
