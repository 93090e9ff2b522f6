#ifndef CONSTANCE_COLLECTOR_CELL_TABLE_H_
#define CONSTANCE_COLLECTOR_CELL_TABLE_H_

// A series' cells of one family by location index, split into one hash
// table per location stripe. The engine applies a batch holding only its
// location's stripe (Engine::ApplyShared); a cell it creates goes into its
// stripe's table, which batches of other stripes never read or write, so
// batches of different locations create cells side by side and no insert
// moves a cell another batch holds.

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <type_traits>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace constance::collector {

// Locations are split into this many stripes (Engine's ingest locks and
// every CellTable).
inline constexpr size_t kLocationStripes = 16;

// The stripe of location index `loc`: hashed, not `loc` modulo the
// stripes, so locations a fixed stride apart (those reporting at the same
// hour of the day) do not share one.
inline size_t LocationStripe(uint32_t loc) { return (loc * 0x9E3779B1u) >> 28; }
static_assert(kLocationStripes == size_t{1} << (32 - 28), "LocationStripe's shift");

template <typename Cell>
class CellTable {
 public:
  using Map = absl::flat_hash_map<uint32_t, Cell>;
  using value_type = typename Map::value_type;

  template <bool kConst>
  class Iterator {
    using Maps = std::conditional_t<kConst, const Map, Map>;
    using Inner = std::conditional_t<kConst, typename Map::const_iterator, typename Map::iterator>;

   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = CellTable::value_type;
    using difference_type = std::ptrdiff_t;
    using reference = std::conditional_t<kConst, const value_type&, value_type&>;
    using pointer = std::conditional_t<kConst, const value_type*, value_type*>;

    Iterator() = default;
    Iterator(Maps* maps, size_t stripe, Inner inner) : maps_(maps), stripe_(stripe), inner_(inner) {
      SkipEmpty();
    }
    template <bool kOther, typename = std::enable_if_t<kConst && !kOther>>
    Iterator(const Iterator<kOther>& other)  // NOLINT: iterator to const_iterator.
        : maps_(other.maps_), stripe_(other.stripe_), inner_(other.inner_) {}

    reference operator*() const { return *inner_; }
    pointer operator->() const { return &*inner_; }
    Iterator& operator++() {
      ++inner_;
      SkipEmpty();
      return *this;
    }
    Iterator operator++(int) {
      Iterator before = *this;
      ++*this;
      return before;
    }
    friend bool operator==(const Iterator& a, const Iterator& b) {
      return a.stripe_ == b.stripe_ && (a.stripe_ == kLocationStripes || a.inner_ == b.inner_);
    }
    friend bool operator!=(const Iterator& a, const Iterator& b) { return !(a == b); }

   private:
    template <bool>
    friend class Iterator;
    // Past the end of a stripe's table: the next non-empty one's first.
    void SkipEmpty() {
      while (stripe_ < kLocationStripes && inner_ == maps_[stripe_].end()) {
        if (++stripe_ < kLocationStripes) inner_ = maps_[stripe_].begin();
      }
    }

    Maps* maps_ = nullptr;
    size_t stripe_ = kLocationStripes;
    Inner inner_{};
  };
  using iterator = Iterator<false>;
  using const_iterator = Iterator<true>;

  CellTable() = default;
  CellTable(CellTable&&) noexcept = default;
  CellTable& operator=(CellTable&&) noexcept = default;
  // Copies (of copyable cells only: a price cell owns its changes).
  CellTable(const CellTable& other)
      : stripes_(other.stripes_ == nullptr ? nullptr : std::make_unique<Stripes>(*other.stripes_)) {
  }
  CellTable& operator=(const CellTable& other) {
    if (this != &other) *this = CellTable(other);
    return *this;
  }

  // Whether the stripes' tables exist (they do from the first cell on).
  // Creating them changes the whole table: a cell is created under one
  // stripe alone only in a started table.
  bool started() const { return stripes_ != nullptr; }

  iterator begin() {
    return stripes_ == nullptr ? end() : iterator(stripes_->data(), 0, (*stripes_)[0].begin());
  }
  iterator end() { return iterator(); }
  const_iterator begin() const {
    return stripes_ == nullptr ? end()
                               : const_iterator(stripes_->data(), 0, (*stripes_)[0].cbegin());
  }
  const_iterator end() const { return const_iterator(); }

  iterator find(uint32_t loc) {
    if (stripes_ == nullptr) return end();
    Map& m = (*stripes_)[LocationStripe(loc)];
    auto it = m.find(loc);
    return it == m.end() ? end() : iterator(stripes_->data(), LocationStripe(loc), it);
  }
  const_iterator find(uint32_t loc) const {
    if (stripes_ == nullptr) return end();
    const Map& m = (*stripes_)[LocationStripe(loc)];
    auto it = m.find(loc);
    return it == m.end() ? end() : const_iterator(stripes_->data(), LocationStripe(loc), it);
  }
  bool contains(uint32_t loc) const {
    return stripes_ != nullptr && (*stripes_)[LocationStripe(loc)].contains(loc);
  }
  // Fetches the header of the table `loc`'s cell is in (what prefetch(loc)
  // and find(loc) read first).
  void PrefetchStripe(uint32_t loc) const {
    if (stripes_ != nullptr) __builtin_prefetch(&(*stripes_)[LocationStripe(loc)]);
  }
  // Fetches where find(loc) will look.
  void prefetch(uint32_t loc) const {
    if (stripes_ != nullptr) (*stripes_)[LocationStripe(loc)].prefetch(loc);
  }
  Cell& operator[](uint32_t loc) { return StripeFor(loc)[loc]; }
  std::pair<Cell*, bool> try_emplace(uint32_t loc) {
    auto [it, fresh] = StripeFor(loc).try_emplace(loc);
    return {&it->second, fresh};
  }
  size_t erase(uint32_t loc) {
    return stripes_ == nullptr ? 0 : (*stripes_)[LocationStripe(loc)].erase(loc);
  }
  // Erases every cell for which pred(loc, cell) is true; how many went.
  template <typename Pred>
  size_t EraseIf(Pred pred) {
    size_t erased = 0;
    if (stripes_ == nullptr) return 0;
    for (Map& m : *stripes_) {
      for (auto it = m.begin(); it != m.end();) {
        if (pred(it->first, it->second)) {
          m.erase(it++);
          ++erased;
        } else {
          ++it;
        }
      }
    }
    return erased;
  }
  size_t size() const {
    size_t n = 0;
    if (stripes_ != nullptr) {
      for (const Map& m : *stripes_) n += m.size();
    }
    return n;
  }
  bool empty() const {
    if (stripes_ == nullptr) return true;
    for (const Map& m : *stripes_) {
      if (!m.empty()) return false;
    }
    return true;
  }
  // Room for about `n` cells spread evenly over the stripes.
  void reserve(size_t n) {
    if (n == 0) return;
    for (Map& m : Allocated()) m.reserve((n + kLocationStripes - 1) / kLocationStripes);
  }

 private:
  using Stripes = std::array<Map, kLocationStripes>;
  // The table `loc`'s cell is in (the stripes' tables created if need be).
  Map& StripeFor(uint32_t loc) { return Allocated()[LocationStripe(loc)]; }
  Stripes& Allocated() {
    if (stripes_ == nullptr) stripes_ = std::make_unique<Stripes>();
    return *stripes_;
  }

  // Null until the first cell: most series hold cells of one family.
  std::unique_ptr<Stripes> stripes_;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_CELL_TABLE_H_
