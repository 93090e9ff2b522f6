// Values in a family's unit, for people: "4.49 EUR", "182 s", "62.5%".
//
// Shared by the collector (finding details) and the CLI (tables), so a
// value reads the same in a page, a log line and a report. Pure functions.
#ifndef CONSTANCE_FORMAT_H_
#define CONSTANCE_FORMAT_H_

#include <string>

#include "absl/strings/string_view.h"
#include "constance/v1/observation.pb.h"

namespace constance {

// Prices are minor units shown with the currency's decimals (FormatMoney:
// "450 JPY", "4.49 EUR"; statistics rounded to the minor unit);
// waits in whole seconds; compliance as a pass rate in percent; scores as
// plain numbers.
std::string FormatValue(v1::Family family, absl::string_view currency, double value);

// What a deviation means to an operations team, per family and direction:
// "overcharge", "undercharge", "slow", "fast", "failing checks", ...
std::string DeviationMeaning(v1::Family family, bool above);

}  // namespace constance

#endif  // CONSTANCE_FORMAT_H_
