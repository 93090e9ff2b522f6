#include "collector/auth.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpc/grpc_security_constants.h"
#include "spdlog/spdlog.h"

namespace constance::collector {

absl::StatusOr<PeerIdentity> CallerIdentity(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) {
    return absl::PermissionDeniedError("no verified client certificate");
  }
  std::vector<std::string> uris;
  for (const grpc::string_ref& v : auth->FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME)) {
    uris.emplace_back(v.data(), v.size());
  }
  return IdentityFromUris(uris);
}

absl::StatusOr<absl::Time> CallerCertificateNotAfter(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  std::vector<grpc::string_ref> pem =
      auth == nullptr ? std::vector<grpc::string_ref>{}
                      : auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pem.empty()) return absl::NotFoundError("no client certificate");
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem[0].data(), static_cast<int>(pem[0].size())), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr, &X509_free);
  struct tm tm = {};
  if (cert == nullptr || ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &tm) != 1) {
    return absl::InvalidArgumentError("client certificate: cannot read notAfter");
  }
  return absl::FromTM(tm, absl::UTCTimeZone());
}

RefusalCounter::RefusalCounter() {
  for (const char* reason :
       {kRefusedLocationMismatch, kRefusedNotALocation, kRefusedNotAnOperator, kRefusedMaxStreams,
        kRefusedMaxLocations, kRefusedUnknownLocation, kRefusedInvalidBatch, kRefusedSequenceGap}) {
    counts_[reason] = 0;
  }
}

void RefusalCounter::Add(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  ++counts_[reason];
}

std::map<std::string, uint64_t> RefusalCounter::Counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

absl::StatusOr<std::string> OperatorName(const grpc::ServerContextBase& context, bool require,
                                         RefusalCounter* refusals, absl::string_view what) {
  if (!require) return std::string("insecure");
  absl::StatusOr<PeerIdentity> id = CallerIdentity(context);
  if (id.ok() && id->role == PeerIdentity::Role::kOperator) return id->name;
  if (refusals != nullptr) refusals->Add(kRefusedNotAnOperator);
  const std::string why = id.ok()
                              ? absl::StrCat("location certificate '", id->name, "' may not ", what,
                                             " (", what, " needs an operator certificate)")
                              : std::string(id.status().message());
  spdlog::warn("{} from {} refused: {}", std::string(what), context.peer(), why);
  return absl::PermissionDeniedError(why);
}

}  // namespace constance::collector
