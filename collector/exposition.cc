#include "collector/exposition.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace constance::collector {
namespace {

// Label values escape backslash, double quote and newline; HELP text
// escapes backslash and newline only.
void AppendEscaped(std::string* out, absl::string_view s, bool quote) {
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c != '\\' && c != '\n' && !(quote && c == '"')) continue;
    out->append(s.data() + start, i - start);
    out->push_back('\\');
    out->push_back(c == '\n' ? 'n' : c);
    start = i + 1;
  }
  out->append(s.data() + start, s.size() - start);
}

// name="value", after a comma unless it is the first label of its set.
void AppendLabel(std::string* text, bool first, absl::string_view name, absl::string_view value) {
  if (!first) text->push_back(',');
  text->append(name.data(), name.size());
  text->append("=\"");
  AppendEscaped(text, value, /*quote=*/true);
  text->push_back('"');
}

}  // namespace

LabelSet& LabelSet::Add(absl::string_view name, absl::string_view value) {
  AppendLabel(&text_, text_.empty(), name, value);
  return *this;
}

LabelTable::LabelTable(size_t rows, size_t bytes_per_row) {
  text_.reserve(rows * bytes_per_row);
  ends_.reserve(rows);
}

size_t LabelTable::StartRow() {
  ends_.push_back(text_.size());
  return ends_.size() - 1;
}

size_t LabelTable::StartRow(size_t from) {
  // Copied through a temporary view's offsets: the append may reallocate.
  const size_t begin = from == 0 ? 0 : ends_[from - 1];
  const size_t length = ends_[from] - begin;
  text_.reserve(text_.size() + length);
  text_.append(text_, begin, length);
  ends_.push_back(text_.size());
  return ends_.size() - 1;
}

LabelTable& LabelTable::Add(absl::string_view name, absl::string_view value) {
  const size_t begin = ends_.size() < 2 ? 0 : ends_[ends_.size() - 2];
  AppendLabel(&text_, text_.size() == begin, name, value);
  ends_.back() = text_.size();
  return *this;
}

TextExposition::TextExposition(std::string* out)
    : TextExposition([out](absl::string_view piece) { out->append(piece.data(), piece.size()); },
                     64 * 1024) {}

TextExposition::TextExposition(Sink sink, size_t chunk_bytes)
    : sink_(std::move(sink)), chunk_bytes_(chunk_bytes) {}

TextExposition::~TextExposition() { Finish(); }

void TextExposition::Finish() {
  if (size_ == 0) return;
  sink_(absl::string_view(data_.get(), size_));
  size_ = 0;
}

char* TextExposition::Reserve(size_t n) {
  if (size_ + n > capacity_) {
    // Grows only past a chunk when a single line is longer than one.
    const size_t capacity = std::max(size_ + n, chunk_bytes_ + 4096);
    std::unique_ptr<char[]> data(new char[capacity]);
    if (size_ > 0) std::memcpy(data.get(), data_.get(), size_);
    data_ = std::move(data);
    capacity_ = capacity;
  }
  return data_.get() + size_;
}

namespace {

char* Put(char* p, absl::string_view s) {
  std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

// `s` escaped: backslash and newline always, double quote in label values.
// `p` has room for twice its length.
char* PutEscaped(char* p, absl::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\' || c == '\n' || (quote && c == '"')) {
      *p++ = '\\';
      *p++ = c == '\n' ? 'n' : c;
    } else {
      *p++ = c;
    }
  }
  return p;
}

// The value as AppendValue writes it; `p` has room for 32 bytes.
char* PutValue(char* p, double value) {
  if (std::isnan(value)) return Put(p, "NaN");
  if (std::isinf(value)) return Put(p, value > 0 ? "+Inf" : "-Inf");
  if (std::fabs(value) < 1e15 && value == std::trunc(value)) {
    // Counts and timestamps read as integers (1000000, not 1e+06); -0 as 0.
    return std::to_chars(p, p + 32, static_cast<int64_t>(value)).ptr;
  }
  return std::to_chars(p, p + 32, value).ptr;  // Shortest round trip.
}

}  // namespace

void TextExposition::Family(absl::string_view name, absl::string_view help,
                            absl::string_view type) {
  char* p = Reserve(2 * name.size() + 2 * help.size() + type.size() + 32);
  p = Put(p, "# HELP ");
  p = Put(p, name);
  *p++ = ' ';
  p = PutEscaped(p, help, /*quote=*/false);
  p = Put(p, "\n# TYPE ");
  p = Put(p, name);
  *p++ = ' ';
  p = Put(p, type);
  *p++ = '\n';
  Commit(p);
  MaybeFlush();
}

void TextExposition::Sample(absl::string_view name, const LabelSet& labels, double value) {
  Line(name, labels.text(), {}, {}, value);
}

void TextExposition::Sample(absl::string_view name, absl::string_view labels, double value) {
  Line(name, labels, {}, {}, value);
}

void TextExposition::Sample(absl::string_view name, absl::string_view labels,
                            absl::string_view extra, absl::string_view extra_value, double value) {
  Line(name, labels, extra, extra_value, value);
}

void TextExposition::Sample(absl::string_view name, double value) { Line(name, {}, {}, {}, value); }

void TextExposition::Sample(absl::string_view name, const LabelSet& labels, absl::string_view extra,
                            absl::string_view extra_value, double value) {
  Line(name, labels.text(), extra, extra_value, value);
}

void TextExposition::Line(absl::string_view name, absl::string_view labels, absl::string_view extra,
                          absl::string_view extra_value, double value) {
  // Name, braces, separators, the extra label escaped (at most twice its
  // length), the value (at most 24 bytes) and the newline.
  char* p = Reserve(name.size() + labels.size() + extra.size() + 2 * extra_value.size() + 48);
  p = Put(p, name);
  if (!labels.empty() || !extra.empty()) {
    *p++ = '{';
    p = Put(p, labels);
    if (!extra.empty()) {
      if (!labels.empty()) *p++ = ',';
      p = Put(p, extra);
      p = Put(p, "=\"");
      p = PutEscaped(p, extra_value, /*quote=*/true);
      *p++ = '"';
    }
    *p++ = '}';
  }
  *p++ = ' ';
  p = PutValue(p, value);
  *p++ = '\n';
  Commit(p);
  MaybeFlush();
}

void TextExposition::AppendValue(std::string* out, double value) {
  char buf[32];
  out->append(buf, PutValue(buf, value));
}

}  // namespace constance::collector
