#include "collector/public_board.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/time_util.h"
#include "nlohmann/json.hpp"

namespace constance::collector {
namespace {

using google::protobuf::util::TimeUtil;

// Text into HTML: no library among ours escapes HTML, and five characters
// are all it takes.
std::string Html(absl::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

const std::string& NameOf(const LocationEntry& e) { return e.name.empty() ? e.id : e.name; }

absl::Time TimeOf(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(ts));
}

std::string LocalTime(const google::protobuf::Timestamp& ts, const LocationEntry& e) {
  return absl::FormatTime("%H:%M", TimeOf(ts), e.tz);
}

// Why a page shows no live waits, or "" when it shows them.
std::string Notice(const v1::LocationRecord& r) {
  if (r.closed_for_good()) return "This location is closed.";
  if (!r.open_now()) return "This location is closed now: live waits are shown while it is open.";
  if (r.silent()) return "No recent data from this location: live waits are not shown.";
  return "";
}

std::string Status(const v1::LocationRecord& r) {
  if (r.closed_for_good()) return "closed";
  if (!r.open_now()) return "closed_now";
  return r.silent() ? "no_recent_data" : "open";
}

std::string About(double seconds) {
  if (seconds < 60) return "under a minute";
  const int minutes = static_cast<int>(std::lround(seconds / 60));
  return absl::StrCat("about ", minutes, minutes == 1 ? " minute" : " minutes");
}

std::string Kept30(const v1::PromiseRecord& p) {
  if (p.evaluations_30d() == 0) return "not measured yet";
  return absl::StrFormat("kept %.0f%% of the time", 100 * p.kept_30d());
}

bool Published(const Catalog& c, const v1::SeriesId& s) {
  switch (s.family()) {
    case v1::FAMILY_PRICE:
      for (const PricePromise* p : c.PricePromisesOf(s.key(), s.currency(), s.kind())) {
        if (p->publish) return true;
      }
      return false;
    case v1::FAMILY_WAIT:
      for (const WaitPromise& p : c.wait_promises) {
        if (p.publish && p.key == s.key()) return true;
      }
      return false;
    case v1::FAMILY_COMPLIANCE:
      for (const CheckPromise& p : c.check_promises) {
        if (p.publish && p.key == s.key()) return true;
      }
      return false;
    default:
      return false;
  }
}

constexpr char kStyle[] =
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:40rem;padding:1rem;"
    "color:#111;background:#fff;line-height:1.5}h1{font-size:1.6rem}h2{font-size:1.2rem}"
    ".notice{border:2px solid #111;padding:.5rem}a{color:#0645ad}";

std::string Head(const std::string& title) {
  return absl::StrCat(
      "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>",
      Html(title), "</title>\n<style>", kStyle, "</style>\n</head>\n<body>\n<main>\n");
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return absl::UnavailableError(absl::StrCat(tmp, ": cannot write"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat(path, ": cannot replace"));
  }
  return absl::OkStatus();
}

}  // namespace

v1::LocationRecord PublicPart(const Catalog& catalog, const v1::LocationRecord& record) {
  v1::LocationRecord out = record;
  out.clear_promises();
  out.clear_waits();
  out.clear_last_report();
  for (const v1::PromiseRecord& p : record.promises()) {
    if (Published(catalog, p.series())) *out.add_promises() = p;
  }
  for (const v1::ServiceWait& w : record.waits()) {
    v1::SeriesId s;
    s.set_family(v1::FAMILY_WAIT);
    s.set_key(w.service());
    if (Published(catalog, s)) *out.add_waits() = w;
  }
  return out;
}

std::string LocationPage(const LocationEntry& e, const v1::LocationRecord& r) {
  const std::string name = NameOf(e);
  std::string out = Head(absl::StrCat(name, ": waiting times and promises"));
  absl::StrAppend(&out, "<h1>", Html(name), "</h1>\n<p>Updated ", LocalTime(r.generated_at(), e),
                  " (", Html(e.timezone), ")</p>\n<h2>Waiting times now</h2>\n");
  if (const std::string notice = Notice(r); !notice.empty()) {
    absl::StrAppend(&out, "<p class=\"notice\">", notice, "</p>\n");
  } else if (r.waits().empty()) {
    out += "<p>No waiting times published.</p>\n";
  } else {
    out += "<ul>\n";
    for (const v1::ServiceWait& w : r.waits()) {
      absl::StrAppend(&out, "<li>", Html(w.service()), ": ", About(w.median_seconds()),
                      ", updated ", LocalTime(w.updated_at(), e), "</li>\n");
    }
    out += "</ul>\n";
  }
  out += "<h2>Our promises, over the last 30 days</h2>\n";
  if (r.promises().empty()) {
    out += "<p>No promises published.</p>\n";
  } else {
    out += "<ul>\n";
    for (const v1::PromiseRecord& p : r.promises()) {
      absl::StrAppend(&out, "<li>", Html(p.series().key()), ": ", Html(p.promise()), ": ",
                      Kept30(p), "</li>\n");
    }
    out += "</ul>\n";
  }
  return out + "<p><a href=\"index.html\">All locations</a></p>\n</main>\n</body>\n</html>\n";
}

std::string LocationJson(const LocationEntry& e, const v1::LocationRecord& r) {
  nlohmann::json j;
  j["location"] = e.id;
  j["name"] = NameOf(e);
  j["timezone"] = e.timezone;
  j["status"] = Status(r);
  j["updated"] = TimeUtil::ToString(r.generated_at());
  j["waits"] = nlohmann::json::array();
  if (Notice(r).empty()) {
    for (const v1::ServiceWait& w : r.waits()) {
      j["waits"].push_back({{"service", w.service()},
                            {"median_minutes", std::round(w.median_seconds() / 6) / 10},
                            {"updated", TimeUtil::ToString(w.updated_at())}});
    }
  }
  j["promises"] = nlohmann::json::array();
  for (const v1::PromiseRecord& p : r.promises()) {
    nlohmann::json promise = {{"key", p.series().key()}, {"promise", p.promise()}};
    promise["kept_30d"] = p.evaluations_30d() > 0 ? nlohmann::json(p.kept_30d()) : nullptr;
    j["promises"].push_back(std::move(promise));
  }
  return j.dump(2) + "\n";
}

std::string IndexPage(const Catalog& catalog, absl::Time now) {
  std::string out = Head("Our locations: waiting times and promises");
  absl::StrAppend(&out, "<h1>Our locations</h1>\n<p>Updated ",
                  absl::FormatTime("%Y-%m-%d %H:%M UTC", now, absl::UTCTimeZone()), "</p>\n<ul>\n");
  for (const LocationEntry& e : catalog.locations) {
    if (!e.publish) continue;
    absl::StrAppend(&out, "<li><a href=\"", Html(e.id), ".html\">", Html(NameOf(e)), "</a></li>\n");
  }
  return out + "</ul>\n</main>\n</body>\n</html>\n";
}

absl::StatusOr<int> PublishBoard(
    const Catalog& catalog,
    const std::function<absl::StatusOr<v1::LocationRecord>(const std::string&)>& record_of,
    const std::string& dir, absl::Time now) {
  int pages = 0;
  for (const LocationEntry& e : catalog.locations) {
    if (!e.publish) continue;
    absl::StatusOr<v1::LocationRecord> record = record_of(e.id);
    if (!record.ok()) {
      return absl::Status(record.status().code(),
                          absl::StrCat("location ", e.id, ": ", record.status().message()));
    }
    const v1::LocationRecord part = PublicPart(catalog, *record);
    if (absl::Status s = WriteFile(absl::StrCat(dir, "/", e.id, ".html"), LocationPage(e, part));
        !s.ok()) {
      return s;
    }
    if (absl::Status s = WriteFile(absl::StrCat(dir, "/", e.id, ".json"), LocationJson(e, part));
        !s.ok()) {
      return s;
    }
    ++pages;
  }
  if (pages == 0) {
    return absl::FailedPreconditionError(
        "the catalog publishes no location: add `publish: true` to the locations (and "
        "promises) the board shows");
  }
  if (absl::Status s = WriteFile(dir + "/index.html", IndexPage(catalog, now)); !s.ok()) return s;
  return pages;
}

}  // namespace constance::collector
