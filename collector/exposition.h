// The Prometheus text exposition format (version 0.0.4), written straight
// into one string.
//
// prometheus-cpp builds a vector of MetricFamily (every sample carrying
// its labels as std::string pairs) and then writes it through std::ostream
// and printf; at chain scale (800,000 samples for 10,000 keys in 5 groups)
// that took 3.3 s a scrape, 87% of it in the serializer, which the
// library offers no way to replace. The format is small and stable: a
// `# HELP` and `# TYPE` line per family, then `name{labels} value` lines.
// Writing it directly, with each series' label set escaped once and reused
// for all its statistics and numbers formatted by std::to_chars, costs a
// few hundred nanoseconds a sample.
//
//   std::string text;
//   TextExposition out(&text);
//   out.Family("constance_series_mean", "Mean across locations.", "gauge");
//   LabelSet labels;
//   labels.Add("key", "sku-1").Add("group", "chain");
//   out.Sample("constance_series_mean", labels, 149.5);
//   // constance_series_mean{key="sku-1",group="chain"} 149.5
//
// or, streamed in pieces to a connection, TextExposition out(sink,
// 256 * 1024) ... out.Finish().
//
// Not thread-safe; one per render.
#ifndef CONSTANCE_COLLECTOR_EXPOSITION_H_
#define CONSTANCE_COLLECTOR_EXPOSITION_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace constance::collector {

// The inside of a sample's braces, escaped once: name="value",...
// Label names must be valid Prometheus label names (they are literals
// here); values may hold anything, and are escaped as the format requires
// (backslash, double quote and newline).
class LabelSet {
 public:
  // Room for a typical series' five labels without growing.
  LabelSet() { text_.reserve(128); }

  LabelSet& Add(absl::string_view name, absl::string_view value);

  const std::string& text() const { return text_; }
  bool empty() const { return text_.empty(); }

 private:
  std::string text_;
};

// Many label sets in one buffer, for the tens of thousands of series a
// scrape writes: one allocation for all of them rather than one each.
// Rows are built one at a time (StartRow, then Add) and read by index.
class LabelTable {
 public:
  LabelTable() = default;
  // Room for `rows` rows of about `bytes_per_row` bytes.
  LabelTable(size_t rows, size_t bytes_per_row);

  // Starts a row, empty or holding the labels of row `from`; Add() appends
  // to it. Returns its index.
  size_t StartRow();
  size_t StartRow(size_t from);
  LabelTable& Add(absl::string_view name, absl::string_view value);

  absl::string_view Row(size_t i) const {
    const size_t begin = i == 0 ? 0 : ends_[i - 1];
    return absl::string_view(text_).substr(begin, ends_[i] - begin);
  }
  size_t size() const { return ends_.size(); }

 private:
  std::string text_;
  std::vector<size_t> ends_;  // Row i is text_[ends_[i - 1], ends_[i]).
};

class TextExposition {
 public:
  // Receives the text in pieces, whole lines each, in order.
  using Sink = std::function<void(absl::string_view)>;

  // Appends the text to `*out`, which must outlive this object, by Finish()
  // or destruction at the latest.
  explicit TextExposition(std::string* out);
  // Hands the text to `sink` whenever `chunk_bytes` or more are buffered,
  // and on Finish(): a scrape of any size then needs one chunk of memory,
  // and its first bytes can be on the wire before the last are written.
  TextExposition(Sink sink, size_t chunk_bytes);
  // Finishes.
  ~TextExposition();

  TextExposition(const TextExposition&) = delete;
  TextExposition& operator=(const TextExposition&) = delete;

  // Starts a family: its # HELP and # TYPE lines. `type` is "counter",
  // "gauge" or "histogram". Every sample of a family must follow its
  // Family() call before the next family starts.
  void Family(absl::string_view name, absl::string_view help, absl::string_view type);

  // name{labels} value
  void Sample(absl::string_view name, const LabelSet& labels, double value);
  // name{labels} value, `labels` a LabelTable row.
  void Sample(absl::string_view name, absl::string_view labels, double value);
  // name value
  void Sample(absl::string_view name, double value);
  // name{labels,extra="extra_value"} value: a histogram's `le` bucket, or
  // any one label added to a shared set without copying it.
  void Sample(absl::string_view name, const LabelSet& labels, absl::string_view extra,
              absl::string_view extra_value, double value);
  void Sample(absl::string_view name, absl::string_view labels, absl::string_view extra,
              absl::string_view extra_value, double value);

  // Hands what is buffered on.
  void Finish();

  // A value as the format writes it: NaN, +Inf, -Inf, integers below 1e15
  // as integers, everything else the shortest decimal that reads back as
  // the same double.
  static void AppendValue(std::string* out, double value);

 private:
  // Room for `n` more bytes at the end of the buffer; returns where they
  // start. Lines are written through raw pointers into a plain buffer:
  // std::string appends cost a capacity check and a call each, eight
  // times a line, at 800,000 lines a scrape.
  char* Reserve(size_t n);
  void Line(absl::string_view name, absl::string_view labels, absl::string_view extra,
            absl::string_view extra_value, double value);
  // Marks the bytes up to `end` (from Reserve) written.
  void Commit(const char* end) { size_ = static_cast<size_t>(end - data_.get()); }
  void MaybeFlush() {
    if (size_ >= chunk_bytes_) Finish();
  }

  const Sink sink_;
  const size_t chunk_bytes_;
  std::unique_ptr<char[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace constance::collector

#endif  // CONSTANCE_COLLECTOR_EXPOSITION_H_
