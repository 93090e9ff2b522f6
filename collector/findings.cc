#include "collector/findings.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"

namespace constance::collector {
namespace {

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t ns = absl::ToUnixNanos(t);
  ts->set_seconds(ns / 1'000'000'000);
  ts->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
}

// The most common value of a sorted run (the lowest on ties).
double Mode(absl::Span<const LocatedValue> run) {
  double best = run.front().value;
  size_t best_n = 0;
  for (size_t i = 0; i < run.size();) {
    size_t j = i;
    while (j < run.size() && run[j].value == run[i].value) ++j;
    if (j - i > best_n) {
      best_n = j - i;
      best = run[i].value;
    }
    i = j;
  }
  return best;
}

// The locations of a run sorted by value then location: each value's
// locations are in order already, so a few values are merged, not sorted.
std::vector<uint32_t> Members(absl::Span<const LocatedValue> run) {
  std::vector<uint32_t> m;
  m.reserve(run.size());
  int merges = 0;
  for (size_t i = 0; i < run.size(); ++i) {
    if (i > 0 && run[i].value != run[i - 1].value && ++merges > 16) break;
    m.push_back(run[i].location);
  }
  if (m.size() < run.size()) {  // Many values: sorted whole.
    m.clear();
    for (const LocatedValue& v : run) m.push_back(v.location);
    std::sort(m.begin(), m.end());
    return m;
  }
  for (size_t i = 1, begin = 0; i <= run.size(); ++i) {
    if (i < run.size() && run[i].value == run[i - 1].value) continue;
    std::inplace_merge(m.begin(), m.begin() + begin, m.begin() + i);
    begin = i;
  }
  return m;
}

}  // namespace

Levels FindLevels(absl::Span<const LocatedValue> values, double median, double floor,
                  uint64_t min_level) {
  Levels levels;
  // ComputeGroups sorts the values once; anything else is sorted here.
  std::vector<LocatedValue> sorted;
  if (!std::is_sorted(values.begin(), values.end(), ByValueThenLocation{})) {
    sorted.assign(values.begin(), values.end());
    std::sort(sorted.begin(), sorted.end(), ByValueThenLocation{});
    values = sorted;
  }
  // In value order the deviants (further than the floor from the median)
  // are a run below the main level and a run above it: rounding keeps
  // |v - median| monotone on each side, so these bounds split exactly as
  // testing each value would.
  auto deviant = [&](const LocatedValue& v) { return std::fabs(v.value - median) > floor; };
  const auto low_end = std::partition_point(
      values.begin(), values.end(), [&](const auto& v) { return v.value < median && deviant(v); });
  const auto main_end =
      std::partition_point(low_end, values.end(), [&](const auto& v) { return !deviant(v); });
  const absl::Span<const LocatedValue> main(low_end, static_cast<size_t>(main_end - low_end));
  std::vector<LocatedValue> deviants(values.begin(), low_end);
  deviants.insert(deviants.end(), main_end, values.end());
  if (!main.empty()) {
    levels.main.value = Mode(main);
    levels.main.members = Members(main);
  }
  // Clusters: each starts at its lowest value and takes every deviant
  // within the floor of it, so a level never spans more than one floor.
  for (size_t i = 0; i < deviants.size();) {
    size_t j = i;
    while (j < deviants.size() && deviants[j].value - deviants[i].value <= floor &&
           (deviants[j].value > median) == (deviants[i].value > median)) {
      ++j;
    }
    absl::Span<const LocatedValue> run(&deviants[i], j - i);
    if (run.size() >= min_level) {
      levels.others.push_back({Mode(run), Members(run)});
    } else {
      for (const LocatedValue& v : run) levels.scattered.push_back(v.location);
    }
    i = j;
  }
  std::stable_sort(levels.others.begin(), levels.others.end(), [](const Level& a, const Level& b) {
    return a.members.size() > b.members.size();
  });
  std::sort(levels.scattered.begin(), levels.scattered.end());
  return levels;
}

std::vector<v1::Finding> FindingTracker::Evaluate(std::vector<Condition> conditions,
                                                  absl::Time now) {
  std::vector<v1::Finding> opened;
  absl::flat_hash_map<std::string, Condition*> seen;
  for (Condition& c : conditions) seen[c.id] = &c;
  // States first seen now.
  for (Condition& c : conditions) {
    if (Holds(c.strength) && !states_.contains(c.id)) states_[c.id];
  }
  std::vector<std::string> drop;
  std::vector<v1::Finding> closing;
  for (auto& [id, state] : states_) {
    auto it = seen.find(id);
    const double strength = it == seen.end() ? 0 : it->second->strength;
    if (Holds(strength)) {
      if (state.met == 0) state.first_met = now;
      ++state.met;
      state.cleared = 0;
      // Keep the evidence current while it holds; the start time stays.
      v1::Finding f = std::move(it->second->finding);
      f.set_id(id);
      if (state.open) {
        *f.mutable_started_at() = state.finding.started_at();
      } else {
        SetTimestamp(state.first_met, f.mutable_started_at());
      }
      // The evidence's time is the earliest this finding was seen on.
      if (state.finding.has_evidence_at() &&
          (!f.has_evidence_at() ||
           state.finding.evidence_at().seconds() < f.evidence_at().seconds())) {
        *f.mutable_evidence_at() = state.finding.evidence_at();
      }
      state.finding = std::move(f);
      if (!state.open && state.met >= persistence_) {
        state.open = true;
        opened.push_back(state.finding);
      }
    } else if (strength < 1 - hysteresis_) {
      state.met = 0;
      ++state.cleared;
      if (!state.open) {
        drop.push_back(id);
      } else if (state.cleared >= persistence_) {
        v1::Finding closed = state.finding;
        SetTimestamp(now, closed.mutable_ended_at());
        closing.push_back(std::move(closed));
        drop.push_back(id);
      }
    } else {
      // Weakly holding: neither a step towards opening nor towards closing.
      state.met = 0;
      state.cleared = 0;
      if (!state.open) drop.push_back(id);
    }
  }
  for (const std::string& id : drop) states_.erase(id);
  // By id: the table's order is no order (and differs between tables).
  auto by_id = [](const v1::Finding& a, const v1::Finding& b) { return a.id() < b.id(); };
  std::sort(opened.begin(), opened.end(), by_id);
  std::sort(closing.begin(), closing.end(), by_id);
  for (v1::Finding& f : closing) {
    closed_.push_back(std::move(f));
    if (closed_.size() > history_limit_) closed_.pop_front();
  }
  return opened;
}

std::vector<v1::Finding> FindingTracker::Active() const {
  std::vector<v1::Finding> out;
  for (const auto& [id, state] : states_) {
    if (state.open) out.push_back(state.finding);
  }
  std::sort(out.begin(), out.end(),
            [](const v1::Finding& a, const v1::Finding& b) { return a.id() < b.id(); });
  return out;
}

void FindingTracker::Restore(const v1::Finding& finding) {
  State& s = states_[finding.id()];
  s.finding = finding;
  s.open = true;
  s.met = persistence_;
}

std::vector<FindingTracker::Saved> FindingTracker::Save() const {
  std::vector<Saved> out;
  out.reserve(states_.size());
  for (const auto& [id, s] : states_) {
    out.push_back({id, s.finding, s.met, s.cleared, s.open, s.first_met});
  }
  std::sort(out.begin(), out.end(), [](const Saved& a, const Saved& b) { return a.id < b.id; });
  return out;
}

void FindingTracker::Load(std::vector<Saved> saved, std::deque<v1::Finding> closed) {
  states_.clear();
  for (Saved& s : saved) {
    State& state = states_[s.id];
    state.finding = std::move(s.finding);
    state.met = s.met;
    state.cleared = s.cleared;
    state.open = s.open;
    state.first_met = s.first_met;
  }
  closed_ = std::move(closed);
  while (closed_.size() > history_limit_) closed_.pop_front();
}

void TrustAccount::DecayTo(absl::Time now, absl::Duration half_life) {
  if (updated_ == absl::InfinitePast() || half_life <= absl::ZeroDuration()) {
    updated_ = now;
    return;
  }
  if (now <= updated_) return;
  const double factor = std::exp2(-absl::FDivDuration(now - updated_, half_life));
  deposits_ *= factor;
  withdrawals_ *= factor;
  updated_ = now;
}

double TrustAccount::score() const {
  const double total = deposits_ + withdrawals_;
  return total > 0 ? 100 * deposits_ / total : 100;
}

int64_t TrustTrend::DayOf(absl::Time t) {
  return absl::ToInt64Seconds(absl::Floor(t - absl::UnixEpoch(), absl::Hours(24))) / 86400;
}

absl::Time TrustTrend::StartOf(int64_t day) { return absl::FromUnixSeconds(day * 86400); }

void TrustTrend::Record(absl::Time now, double balance, double score) {
  const int64_t today = DayOf(now);
  if (!days_.empty() && days_.back().day > today) return;  // The clock went back.
  if (days_.empty() || days_.back().day < today) days_.push_back({today, balance, score});
  days_.back().balance = balance;
  days_.back().score = score;
  while (days_.front().day <= today - kDays) days_.pop_front();
}

std::vector<TrustTrend::Day> TrustTrend::Days(absl::Time now) const {
  const int64_t first = DayOf(now) - (kDays - 1);
  std::vector<Day> out;
  for (const Day& d : days_) {
    if (d.day >= first) out.push_back(d);
  }
  return out;
}

void DriftBaseline::Add(double x, int bins) {
  if (frozen) return;
  ++seen;
  sum += x;
  sum_squares += x * x;
  if (seen >= bins) {
    frozen = true;
    mean = sum / seen;
    stddev = std::sqrt(std::max(0.0, sum_squares / seen - mean * mean));
  }
}

v1::Severity SeverityFor(double deviation, double floor) {
  const double r = floor > 0 ? std::fabs(deviation) / floor : 10;
  if (r < 3) return v1::MEDIUM;
  if (r < 10) return v1::HIGH;
  return v1::CRITICAL;
}

std::string KindName(v1::FindingKind kind) {
  return absl::AsciiStrToLower(v1::FindingKind_Name(kind));
}

int KindRank(v1::FindingKind kind) {
  switch (kind) {
    case v1::BROKEN_PROMISE:
      return 5;
    case v1::OUTLIER:
      return 4;
    case v1::IRREGULAR_CHANGE:
      return 3;
    case v1::DRIFT:
      return 2;
    default:
      return 1;
  }
}

}  // namespace constance::collector
