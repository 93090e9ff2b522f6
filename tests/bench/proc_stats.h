// What a process costs, read from /proc: its CPU time and the fields of
// /proc/PID/status. Every benchmark that measures a process (agent,
// collector, the peers) uses these, so their figures are taken the same
// way.
//
//   double before = CpuSeconds(pid);
//   ... load ...
//   double cpu = CpuSeconds(pid) - before;
//   int64_t rss_kb = ProcStatusKb(pid, "VmRSS");
//
// Thread-safe (no state).
#ifndef CONSTANCE_TESTS_BENCH_PROC_STATS_H_
#define CONSTANCE_TESTS_BENCH_PROC_STATS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace constance::testing {

// User + system CPU seconds `pid` has used so far (/proc/PID/stat); 0 if
// it cannot be read.
double CpuSeconds(pid_t pid);

// A kB field of /proc/PID/status (e.g. "VmRSS", "VmHWM", "RssAnon") in
// KiB; -1 if it cannot be read.
int64_t ProcStatusKb(pid_t pid, const std::string& field);

// A kB field of /proc/PID/smaps_rollup (e.g. "AnonHugePages": how much of
// the memory sits on transparent huge pages) in KiB; -1 if not there.
int64_t ProcSmapsKb(pid_t pid, const std::string& field);

// glibc's malloc as the collector's unit runs it
// (deploy/systemd/constance-collector.service): transparent huge pages for
// its heap, and one arena for every thread (threads that apply batches
// each on an arena of their own left the soak's memory growing: 
// tests/bench/RESULTS.md). GLIBC_TUNABLES entries, read when a process
// starts.
inline constexpr char kMallocHugePages[] = "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1";

// Re-executes this program (/proc/self/exe, `argv`) with kMallocHugePages
// added to GLIBC_TUNABLES, unless that already sets glibc.malloc.hugetlb.
// Returns only if it did not re-execute (a failure is printed).
void ReexecWithMallocHugePages(char** argv);

// `argv` run through env(1) with kMallocHugePages added to GLIBC_TUNABLES.
std::vector<std::string> WithMallocHugePages(std::vector<std::string> argv);

// The machine's CPU time so far, all CPUs and states, and the part of it
// the hypervisor gave to other guests ("steal" in /proc/stat), in ticks.
// A benchmark whose window had much stolen time measured a lower bound.
struct MachineCpu {
  uint64_t total = 0;
  uint64_t steal = 0;
};
MachineCpu ReadMachineCpu();

// The percentage of the CPU time between `before` and `after` that was
// stolen.
double StolenPercent(const MachineCpu& before, const MachineCpu& after);

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_BENCH_PROC_STATS_H_
