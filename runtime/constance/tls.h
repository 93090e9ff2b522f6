// TLS credentials for the agent <-> collector stream and the Query API.
//
// Every party holds a certificate from the chain's own CA (deploy/pki/) and
// trusts only that CA. The files are watched by gRPC's
// FileWatcherCertificateProvider: a certificate renewed on disk (replaced
// atomically, by rename) is used for the next handshake without a restart;
// connections already open keep the certificate they started with, which
// is why the collector also bounds connection age.
//
// Identities live in the certificate's URI SAN (README.md, "Certificates"):
//   spiffe://constance/location/<location id>   an agent; may call Ingest
//   spiffe://constance/operator/<name>          an operator; may call Query
// The collector's own certificate carries DNS (and IP) SANs of its address.
//
// Example (agent):
//   TlsFiles files{.ca = "ca.pem", .cert = "store.pem", .key = "store.key"};
//   absl::StatusOr<ChannelSecurity> security = MakeChannelSecurity(files);
//   grpc::ChannelArguments args;
//   security->Apply(&args);
//   auto channel = grpc::CreateCustomChannel(target, security->credentials, args);
//
// Pure functions apart from reading the named files; thread-safe.
#ifndef CONSTANCE_TLS_H_
#define CONSTANCE_TLS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace constance {

// Where one party's TLS material is. Paths are PEM files.
struct TlsFiles {
  // The CA bundle the peer's certificate must chain to.
  std::string ca;
  // This party's certificate chain and private key.
  std::string cert;
  std::string key;
  // Collector only: a directory of CRLs under hashed names
  // (<issuer hash>.r<N>, see deploy/pki/); empty: no revocation check.
  std::string crl_dir;
  // Client only: the name expected in the collector's certificate when it
  // differs from the host dialled (e.g. dialling an IP address).
  std::string server_name;
  // How often the files are checked for changes.
  absl::Duration refresh_interval = absl::Minutes(1);
};

// URI SAN prefixes of the two roles.
inline constexpr absl::string_view kLocationUriPrefix = "spiffe://constance/location/";
inline constexpr absl::string_view kOperatorUriPrefix = "spiffe://constance/operator/";

// Checks that every file `files` names for its role exists and is readable
// (`need_identity`: cert and key are required, as for the collector and
// agents); `option_prefix` names the options in errors, e.g. "--tls_" or
// "tls.". FailedPrecondition names the option and the path.
absl::Status CheckTlsFiles(const TlsFiles& files, bool need_identity,
                           absl::string_view option_prefix);

// Channel credentials plus the channel arguments they need.
struct ChannelSecurity {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string server_name;  // Empty: the target's host.
  // Adds what the credentials need (the server name override) to `args`.
  void Apply(grpc::ChannelArguments* args) const;
};

// mTLS client credentials from `files` (CheckTlsFiles first; ca, cert and
// key are all required).
absl::StatusOr<ChannelSecurity> MakeChannelSecurity(const TlsFiles& files);

// Plaintext credentials, for --insecure.
ChannelSecurity InsecureChannelSecurity();

// Server credentials that require and verify a client certificate chaining
// to `files.ca`, checking `files.crl_dir` when set.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);

// The role and name a certificate's URI SANs give. An empty `uris`, none
// with a constance prefix, two different identities, or a name that is not
// a valid id yield an error saying which.
struct PeerIdentity {
  enum class Role { kLocation, kOperator };
  Role role = Role::kLocation;
  std::string name;
};
absl::StatusOr<PeerIdentity> IdentityFromUris(const std::vector<std::string>& uris);

}  // namespace constance

#endif  // CONSTANCE_TLS_H_
