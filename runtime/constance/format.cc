#include "constance/format.h"

#include "absl/strings/str_format.h"
#include "constance/money.h"

namespace constance {

std::string FormatValue(v1::Family family, absl::string_view currency, double value) {
  switch (family) {
    case v1::FAMILY_PRICE:
      return FormatMoneyStatistic(value, currency);
    case v1::FAMILY_WAIT:
      return absl::StrFormat("%.0f s", value);
    case v1::FAMILY_COMPLIANCE:
      return absl::StrFormat("%.1f%%", 100.0 * value);
    default:
      return absl::StrFormat("%.4g", value);
  }
}

std::string DeviationMeaning(v1::Family family, bool above) {
  switch (family) {
    case v1::FAMILY_PRICE:
      return above ? "overcharge" : "undercharge";
    case v1::FAMILY_WAIT:
      return above ? "slow" : "fast";
    case v1::FAMILY_COMPLIANCE:
      return above ? "above peers" : "failing checks";
    default:
      return above ? "above peers" : "below peers";
  }
}

}  // namespace constance
