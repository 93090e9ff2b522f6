// The identity a client certificate's URI SANs give (constance/tls.h).
#include <string>
#include <vector>

#include "constance/tls.h"
#include "gtest/gtest.h"

namespace constance {
namespace {

TEST(IdentityFromUrisTest, Table) {
  using Role = PeerIdentity::Role;
  static const struct {
    std::vector<std::string> uris;
    bool ok;
    Role role;
    const char* name;
  } kCases[] = {
      {{"spiffe://constance/location/fr-paris-0042"}, true, Role::kLocation, "fr-paris-0042"},
      {{"spiffe://constance/operator/ops"}, true, Role::kOperator, "ops"},
      // Foreign URIs are ignored; the same identity twice is one identity.
      {{"https://example.com/x", "spiffe://constance/location/a"}, true, Role::kLocation, "a"},
      {{"spiffe://constance/location/a", "spiffe://constance/location/a"}, true, Role::kLocation,
       "a"},
      {{}, false, Role::kLocation, ""},
      {{"spiffe://other/location/a"}, false, Role::kLocation, ""},
      {{"spiffe://constance/location/"}, false, Role::kLocation, ""},
      {{"spiffe://constance/location/Bad Name"}, false, Role::kLocation, ""},
      {{"spiffe://constance/location/a", "spiffe://constance/location/b"}, false, Role::kLocation,
       ""},
      {{"spiffe://constance/location/a", "spiffe://constance/operator/a"}, false, Role::kLocation,
       ""},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<PeerIdentity> id = IdentityFromUris(c.uris);
    ASSERT_EQ(id.ok(), c.ok) << (c.uris.empty() ? "(none)" : c.uris[0]) << ": " << id.status();
    if (!c.ok) {
      EXPECT_EQ(id.status().code(), absl::StatusCode::kPermissionDenied);
      continue;
    }
    EXPECT_EQ(id->role, c.role);
    EXPECT_EQ(id->name, c.name);
  }
}

TEST(CheckTlsFilesTest, NamesTheMissingOption) {
  TlsFiles files;
  absl::Status s = CheckTlsFiles(files, /*need_identity=*/true, "--tls_");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.message()).find("--tls_ca: not set"), std::string::npos) << s;
  files.ca = "/nonexistent/ca.pem";
  s = CheckTlsFiles(files, true, "tls.");
  EXPECT_NE(std::string(s.message()).find("tls.ca: cannot read /nonexistent/ca.pem"),
            std::string::npos)
      << s;
}

}  // namespace
}  // namespace constance
