#include "tests/bench/proc_stats.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace constance::testing {

double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  // Fields after the command name (which may hold spaces) start at ") ".
  std::istringstream rest(text.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);  // utime, stime.
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

namespace {

// A "Name:   123 kB" field of a /proc file, in KiB; -1 if not there.
int64_t ProcFieldKb(const std::string& path, const std::string& field) {
  std::ifstream in(path);
  std::string line;
  const std::string prefix = field + ":";
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, prefix)) continue;
    std::vector<std::string> parts =
        absl::StrSplit(line.substr(prefix.size()), ' ', absl::SkipWhitespace());
    int64_t kb = -1;
    if (!parts.empty() && absl::SimpleAtoi(parts[0], &kb)) return kb;
  }
  return -1;
}

// This process's GLIBC_TUNABLES with kMallocHugePages added.
std::string TunablesWithHugePages() {
  const char* set = std::getenv("GLIBC_TUNABLES");
  if (set == nullptr || *set == '\0') return kMallocHugePages;
  return absl::StrCat(set, ":", kMallocHugePages);
}

}  // namespace

int64_t ProcStatusKb(pid_t pid, const std::string& field) {
  return ProcFieldKb(absl::StrCat("/proc/", pid, "/status"), field);
}

int64_t ProcSmapsKb(pid_t pid, const std::string& field) {
  return ProcFieldKb(absl::StrCat("/proc/", pid, "/smaps_rollup"), field);
}

void ReexecWithMallocHugePages(char** argv) {
  const char* set = std::getenv("GLIBC_TUNABLES");
  if (set != nullptr && std::strstr(set, "glibc.malloc.hugetlb=") != nullptr) return;
  if (setenv("GLIBC_TUNABLES", TunablesWithHugePages().c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  std::perror("re-executing with GLIBC_TUNABLES (going on without it)");
}

std::vector<std::string> WithMallocHugePages(std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"/usr/bin/env", "GLIBC_TUNABLES=" + TunablesWithHugePages()});
  return argv;
}

MachineCpu ReadMachineCpu() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  // user nice system idle iowait irq softirq steal
  uint64_t v[8] = {};
  in >> cpu >> v[0] >> v[1] >> v[2] >> v[3] >> v[4] >> v[5] >> v[6] >> v[7];
  MachineCpu m;
  if (!in || cpu != "cpu") return m;
  for (uint64_t x : v) m.total += x;
  m.steal = v[7];
  return m;
}

double StolenPercent(const MachineCpu& before, const MachineCpu& after) {
  if (after.total <= before.total) return 0;
  return 100.0 * static_cast<double>(after.steal - before.steal) /
         static_cast<double>(after.total - before.total);
}

}  // namespace constance::testing
