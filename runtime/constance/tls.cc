#include "constance/tls.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "constance/validate.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace constance {
namespace {

absl::Status CheckReadable(absl::string_view option, const std::string& path, bool directory) {
  if (path.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(option, ": not set"));
  }
  if (access(path.c_str(), R_OK | (directory ? X_OK : 0)) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        option, ": cannot read ", directory ? "directory " : "", path, " (missing or no access)"));
  }
  return absl::OkStatus();
}

unsigned int RefreshSeconds(absl::Duration d) {
  // The provider counts whole seconds; never 0 (that would spin).
  return static_cast<unsigned int>(
      std::clamp<int64_t>(absl::ToInt64Seconds(d), 1, std::numeric_limits<int32_t>::max()));
}

}  // namespace

absl::Status CheckTlsFiles(const TlsFiles& files, bool need_identity,
                           absl::string_view option_prefix) {
  if (absl::Status s = CheckReadable(absl::StrCat(option_prefix, "ca"), files.ca, false); !s.ok()) {
    return s;
  }
  if (need_identity || !files.cert.empty() || !files.key.empty()) {
    if (absl::Status s = CheckReadable(absl::StrCat(option_prefix, "cert"), files.cert, false);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckReadable(absl::StrCat(option_prefix, "key"), files.key, false);
        !s.ok()) {
      return s;
    }
  }
  if (!files.crl_dir.empty()) {
    return CheckReadable(absl::StrCat(option_prefix, "crl_dir"), files.crl_dir, true);
  }
  return absl::OkStatus();
}

void ChannelSecurity::Apply(grpc::ChannelArguments* args) const {
  if (!server_name.empty()) args->SetSslTargetNameOverride(server_name);
}

absl::StatusOr<ChannelSecurity> MakeChannelSecurity(const TlsFiles& files) {
  if (files.ca.empty() || files.cert.empty() || files.key.empty()) {
    return absl::FailedPreconditionError("TLS: ca, cert and key are all required");
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, RefreshSeconds(files.refresh_interval));
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  options.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  ChannelSecurity security;
  security.credentials = grpc::experimental::TlsCredentials(options);
  if (security.credentials == nullptr) {
    return absl::InternalError("TLS: gRPC could not create channel credentials");
  }
  security.server_name = files.server_name;
  return security;
}

ChannelSecurity InsecureChannelSecurity() {
  ChannelSecurity security;
  security.credentials = grpc::InsecureChannelCredentials();
  return security;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (files.ca.empty() || files.cert.empty() || files.key.empty()) {
    return absl::FailedPreconditionError("TLS: ca, cert and key are all required");
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, RefreshSeconds(files.refresh_interval));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!files.crl_dir.empty()) options.set_crl_directory(files.crl_dir);
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::experimental::TlsServerCredentials(options);
  if (credentials == nullptr) {
    return absl::InternalError("TLS: gRPC could not create server credentials");
  }
  return credentials;
}

absl::StatusOr<PeerIdentity> IdentityFromUris(const std::vector<std::string>& uris) {
  std::vector<PeerIdentity> found;
  for (const std::string& uri : uris) {
    PeerIdentity id;
    absl::string_view rest = uri;
    if (absl::ConsumePrefix(&rest, kLocationUriPrefix)) {
      id.role = PeerIdentity::Role::kLocation;
    } else if (absl::ConsumePrefix(&rest, kOperatorUriPrefix)) {
      id.role = PeerIdentity::Role::kOperator;
    } else {
      continue;
    }
    // Operators' names follow the location id rules too: short, lower case.
    if (absl::Status s = ValidateLocationId(rest); !s.ok()) {
      return absl::PermissionDeniedError(
          absl::StrCat("certificate URI SAN '", uri, "': bad name: ", s.message()));
    }
    id.name = std::string(rest);
    found.push_back(std::move(id));
  }
  if (found.empty()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the client certificate has no constance identity (a URI SAN ", kLocationUriPrefix,
        "<id> or ", kOperatorUriPrefix, "<name>); URI SANs: [", absl::StrJoin(uris, ", "), "]"));
  }
  for (const PeerIdentity& other : found) {
    if (other.role != found[0].role || other.name != found[0].name) {
      return absl::PermissionDeniedError(
          absl::StrCat("the client certificate names more than one identity: [",
                       absl::StrJoin(uris, ", "), "]"));
    }
  }
  return found[0];
}

}  // namespace constance
