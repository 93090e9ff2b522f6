// The public board (`constance publish`, README.md "Public board"): one
// small static HTML page and one JSON file per published location, and a
// chain index, from the locations' records (Board/Record).
//
// Only what the catalog opts in is shown: locations with `publish: true`
// (under their `name` and in their `timezone`), and of their promises
// those with `publish: true`; live waits only for services whose wait
// promise is published. Nothing internal is written: no thresholds, no
// other location's data, no finding. A location closed for good, closed
// now, or silent says so instead of showing its waits. Pages are
// self-contained (inline style, no script, font or request) and declare
// their language, a phone viewport and headings.
//
// Pure functions but PublishBoard, which writes files (each atomically:
// a temporary file renamed over the old one). Thread-compatible.
#ifndef CONSTANCE_COLLECTOR_PUBLIC_BOARD_H_
#define CONSTANCE_COLLECTOR_PUBLIC_BOARD_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "collector/catalog.h"
#include "constance/v1/board.pb.h"

namespace constance::collector {

// `record` with only what `catalog` publishes of it: the promises opted
// in, and the waits of services whose wait promise is.
v1::LocationRecord PublicPart(const Catalog& catalog, const v1::LocationRecord& record);

// A published location's page and JSON file from its public part.
std::string LocationPage(const LocationEntry& entry, const v1::LocationRecord& public_part);
std::string LocationJson(const LocationEntry& entry, const v1::LocationRecord& public_part);
// The chain's index: a link to each published location's page.
std::string IndexPage(const Catalog& catalog, absl::Time now);

// Writes DIR/index.html and, per published location, DIR/ID.html and
// DIR/ID.json, reading each record through `record_of`. The number of
// pages written, or the first error (naming the file or the location).
// FailedPrecondition when the catalog publishes no location.
absl::StatusOr<int> PublishBoard(
    const Catalog& catalog,
    const std::function<absl::StatusOr<v1::LocationRecord>(const std::string&)>& record_of,
    const std::string& dir, absl::Time now);

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_PUBLIC_BOARD_H_
