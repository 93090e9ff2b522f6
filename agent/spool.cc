#include "agent/spool.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace constance::agent {

uint64_t NewSpoolIncarnation() {
  absl::BitGen gen;
  uint64_t id = 0;
  while (id == 0) id = absl::Uniform<uint64_t>(gen);
  return id;
}

absl::Status SpoolFullError(uint64_t depth, uint64_t bytes, uint64_t adding, uint64_t adding_bytes,
                            const SpoolOptions& options) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "spool full: ", depth, " observations (", bytes,
      " bytes) wait for the collector's acknowledgement and the spool holds at most ",
      options.max_observations, " observations and ", options.max_bytes, " bytes; these ", adding,
      " (", adding_bytes, " bytes) were not stored, retry later"));
}

bool SpoolFits(uint64_t depth, uint64_t bytes, uint64_t adding, uint64_t adding_bytes,
               const SpoolOptions& options) {
  return depth + adding <= options.max_observations && bytes + adding_bytes <= options.max_bytes;
}

absl::StatusOr<bool> MustDropOldest(uint64_t depth, uint64_t bytes, uint64_t adding,
                                    uint64_t adding_bytes, const SpoolOptions& options) {
  if (SpoolFits(depth, bytes, adding, adding_bytes, options)) return false;
  if (options.when_full != SpoolWhenFull::kDropOldest ||
      !SpoolFits(0, 0, adding, adding_bytes, options)) {
    return SpoolFullError(depth, bytes, adding, adding_bytes, options);
  }
  return true;
}

absl::StatusOr<SpoolWhenFull> ParseSpoolWhenFull(absl::string_view text) {
  if (text == "refuse") return SpoolWhenFull::kRefuse;
  if (text == "drop_oldest") return SpoolWhenFull::kDropOldest;
  return absl::InvalidArgumentError(
      absl::StrCat("'", text, "' is not a spool policy: use refuse or drop_oldest"));
}

absl::StatusOr<uint64_t> Spool::Append(std::vector<v1::Observation> observations) {
  absl::StatusOr<AppendResult> r = AppendBatch(std::move(observations), nullptr);
  if (!r.ok()) return r.status();
  return r->first_sequence;
}

absl::StatusOr<AppendResult> Spool::AppendWithState(std::vector<v1::Observation>,
                                                    const std::vector<StateWrite>&) {
  return absl::UnimplementedError("this spool keeps no input state");
}

absl::StatusOr<std::map<std::string, std::string>> Spool::ReadState(const std::string&) const {
  return absl::UnimplementedError("this spool keeps no input state");
}

absl::StatusOr<AppendResult> MemorySpool::AppendWithState(std::vector<v1::Observation> observations,
                                                          const std::vector<StateWrite>& writes) {
  // state_mu_ is held across the append so that readers of the state never
  // see it ahead of (or behind) the observations.
  absl::MutexLock state_lock(&state_mu_);
  absl::StatusOr<AppendResult> result = AppendBatch(std::move(observations), nullptr);
  if (!result.ok()) return result;
  for (const StateWrite& w : writes) {
    if (w.value) {
      state_[w.key] = *w.value;
    } else {
      state_.erase(w.key);
    }
  }
  return result;
}

absl::StatusOr<std::map<std::string, std::string>> MemorySpool::ReadState(
    const std::string& prefix) const {
  absl::MutexLock lock(&state_mu_);
  std::map<std::string, std::string> out;
  for (auto it = state_.lower_bound(prefix); it != state_.end() && it->first.rfind(prefix, 0) == 0;
       ++it) {
    out.insert(*it);
  }
  return out;
}

MemorySpool::MemorySpool(SpoolOptions options)
    : options_(std::move(options)), incarnation_(NewSpoolIncarnation()) {}

absl::StatusOr<AppendResult> MemorySpool::AppendBatch(std::vector<v1::Observation> observations,
                                                      const RememberRequest* remember) {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  PruneLocked(now);
  AppendResult result;
  result.first_sequence = first_sequence_ + entries_.size();
  if (remember != nullptr) {
    auto it = requests_.find(remember->key);
    if (it != requests_.end()) {
      result.earlier_answer = it->second.answer;
      return result;
    }
  }
  std::vector<v1::Observation> fresh;
  std::set<std::string> batch_ids;
  uint64_t fresh_bytes = 0;
  for (v1::Observation& obs : observations) {
    const std::string& id = obs.id();
    if (!id.empty() &&
        (ids_.count(id) > 0 || acknowledged_ids_.count(id) > 0 || !batch_ids.insert(id).second)) {
      ++result.duplicates;
      continue;
    }
    fresh_bytes += obs.ByteSizeLong();
    fresh.push_back(std::move(obs));
  }
  auto fits = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return SpoolFits(entries_.size(), bytes_, fresh.size(), fresh_bytes, options_);
  };
  absl::StatusOr<bool> drop =
      MustDropOldest(entries_.size(), bytes_, fresh.size(), fresh_bytes, options_);
  if (!drop.ok()) return drop.status();
  if (*drop) {
    // Dropped ones are forgotten, not acknowledged: their ids may come again.
    while (!fits()) {
      bytes_ -= entries_.front().bytes;
      if (!entries_.front().observation.id().empty()) ids_.erase(entries_.front().observation.id());
      entries_.pop_front();
      ++first_sequence_;
      ++dropped_;
    }
  }
  result.stored = fresh.size();
  for (v1::Observation& obs : fresh) {
    uint64_t bytes = obs.ByteSizeLong();
    bytes_ += bytes;
    if (!obs.id().empty()) ids_.insert(obs.id());
    entries_.push_back(Stored{std::move(obs), now, bytes});
  }
  if (remember != nullptr) requests_[remember->key] = Remembered{remember->answer, now};
  return result;
}

absl::StatusOr<std::optional<RequestAnswer>> MemorySpool::LookupRequest(
    const std::string& key) const {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  auto it = requests_.find(key);
  if (it == requests_.end() || it->second.at < now - options_.idempotency_window) {
    return std::nullopt;
  }
  return it->second.answer;
}

void MemorySpool::PruneLocked(absl::Time now) {
  const absl::Time cutoff = now - options_.idempotency_window;
  for (auto it = acknowledged_ids_.begin(); it != acknowledged_ids_.end();) {
    it = it->second < cutoff ? acknowledged_ids_.erase(it) : std::next(it);
  }
  for (auto it = requests_.begin(); it != requests_.end();) {
    it = it->second.at < cutoff ? requests_.erase(it) : std::next(it);
  }
}

absl::StatusOr<std::vector<SpoolEntry>> MemorySpool::Read(uint64_t from_sequence,
                                                          size_t max) const {
  absl::MutexLock lock(&mu_);
  std::vector<SpoolEntry> out;
  uint64_t from = std::max(from_sequence, first_sequence_);
  uint64_t end = first_sequence_ + entries_.size();  // One past the last.
  if (from >= end) return out;
  size_t n = static_cast<size_t>(std::min<uint64_t>(end - from, max));
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(SpoolEntry{from + i, entries_[from - first_sequence_ + i].observation});
  }
  return out;
}

absl::Status MemorySpool::Acknowledge(uint64_t watermark) {
  const absl::Time now = options_.now();
  absl::MutexLock lock(&mu_);
  PruneLocked(now);
  while (!entries_.empty() && first_sequence_ <= watermark) {
    bytes_ -= entries_.front().bytes;
    const std::string& id = entries_.front().observation.id();
    if (!id.empty()) {
      ids_.erase(id);
      acknowledged_ids_[id] = now;
    }
    entries_.pop_front();
    ++first_sequence_;
  }
  // An empty spool still remembers where numbering continues: a watermark
  // past the end moves nothing, so numbers are never reused.
  return absl::OkStatus();
}

uint64_t MemorySpool::Depth() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

uint64_t MemorySpool::Bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

absl::Duration MemorySpool::OldestUnacknowledgedAge() const {
  absl::Time oldest;
  {
    absl::MutexLock lock(&mu_);
    if (entries_.empty()) return absl::ZeroDuration();
    oldest = entries_.front().appended_at;
  }
  return std::max(options_.now() - oldest, absl::ZeroDuration());
}

uint64_t MemorySpool::LastSequence() const {
  absl::MutexLock lock(&mu_);
  return first_sequence_ + entries_.size() - 1;
}

uint64_t MemorySpool::DroppedOldest() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

}  // namespace constance::agent
