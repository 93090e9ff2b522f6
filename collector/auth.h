// Who is calling the collector, and what they may do (README.md, "Certificates").
//
// Under TLS every caller presents a certificate from the chain's CA; its
// URI SAN names a location (may call Ingest, and only for that location) or
// an operator (may call Query). CallerIdentity reads it from a call's auth
// context. With --insecure there is no identity and both checks are off.
//
// RefusalCounter counts refused streams and calls by a short, bounded
// reason for /metrics (constance_refusals_total{reason}).
//
// Thread-safety: CallerIdentity is pure; RefusalCounter is thread-safe.
#ifndef CONSTANCE_COLLECTOR_AUTH_H_
#define CONSTANCE_COLLECTOR_AUTH_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "collector/refusal.h"
#include "constance/tls.h"
#include "grpcpp/grpcpp.h"

namespace constance::collector {

// The identity in the caller's client certificate. PermissionDenied (with
// what the certificate holds) when there is none or it is ambiguous.
absl::StatusOr<PeerIdentity> CallerIdentity(const grpc::ServerContextBase& context);

// When the caller's client certificate expires (notAfter), read from the
// certificate itself rather than trusted from what the agent says.
// NotFound without a certificate.
absl::StatusOr<absl::Time> CallerCertificateNotAfter(const grpc::ServerContextBase& context);

// The reasons (kRefused*) are in refusal.h.
class RefusalCounter {
 public:
  // Every reason above starts at 0 so rates have a series at once.
  RefusalCounter();
  RefusalCounter(const RefusalCounter&) = delete;
  RefusalCounter& operator=(const RefusalCounter&) = delete;

  void Add(const std::string& reason);
  std::map<std::string, uint64_t> Counts() const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, uint64_t> counts_ ABSL_GUARDED_BY(mu_);
};

// The name in the caller's operator certificate. With `require` false
// (--insecure) every caller is "insecure". Otherwise a caller without an
// operator certificate gets PermissionDenied saying what it holds and that
// `what` needs an operator certificate; the refusal is counted in
// `refusals` (when given) and logged.
absl::StatusOr<std::string> OperatorName(const grpc::ServerContextBase& context, bool require,
                                         RefusalCounter* refusals, absl::string_view what);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_AUTH_H_
