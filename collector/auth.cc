#include "collector/auth.h"

#include <vector>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "grpc/grpc_security_constants.h"

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
        kRefusedMaxLocations, kRefusedUnknownLocation, kRefusedInvalidBatch,
        kRefusedSequenceGap}) {
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

}  // namespace constance::collector
