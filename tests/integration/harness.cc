#include "tests/integration/harness.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"

extern char** environ;

namespace constance::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "constance-test-XXXXXX").string();
  path_ = mkdtemp(tmpl.data());
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Subprocess::Subprocess(std::vector<std::string> argv, std::string log_path)
    : log_path_(std::move(log_path)) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&actions);
}

Subprocess::~Subprocess() {
  if (pid_ > 0 && !reaped_) (void)Stop(SIGKILL, absl::Seconds(10));
}

bool Subprocess::Running() {
  if (pid_ <= 0 || reaped_) return false;
  if (waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
  return !reaped_;
}

absl::StatusOr<int> Subprocess::Stop(int signal, absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("process never started");
  if (!reaped_) {
    kill(pid_, signal);
    absl::Time deadline = absl::Now() + timeout;
    // waitpid has no timeout; poll with a short interval until the deadline.
    while (!reaped_ && absl::Now() < deadline) {
      if (waitpid(pid_, &status_, WNOHANG) == pid_) {
        reaped_ = true;
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (!reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
      reaped_ = true;
      return absl::DeadlineExceededError(
          absl::StrCat("pid ", pid_, " did not exit within ", absl::FormatDuration(timeout)));
    }
  }
  return status_;
}

std::string Subprocess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::map<std::string, std::string>> WaitForReadyFile(const std::string& path,
                                                                    Subprocess& process,
                                                                    absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!std::filesystem::exists(path)) {
    if (!process.Running()) {
      return absl::FailedPreconditionError(
          absl::StrCat("process exited before writing ", path, ":\n", process.Log()));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "no ready file ", path, " after ", absl::FormatDuration(timeout), ":\n", process.Log()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  std::ifstream in(path);
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (!kv.first.empty()) out[kv.first] = kv.second;
  }
  return out;
}

namespace {

absl::StatusOr<HttpResponse> Http(
    const std::string& address, const std::string& method, const std::string& path,
    const std::string& body, const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  std::pair<std::string, std::string> hp = absl::StrSplit(address, absl::MaxSplits(':', 1));
  int port = 0;
  if (!absl::SimpleAtoi(hp.second, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", address));
  }
  HttpRequest request;
  request.method = method;
  request.path = path;
  request.body = body;
  request.headers = headers;
  return HttpFetch(hp.first, port, request, absl::Seconds(30));
}

}  // namespace

absl::StatusOr<HttpResponse> HttpGet(const std::string& address, const std::string& path) {
  return Http(address, "GET", path, "");
}

absl::StatusOr<HttpResponse> HttpPost(const std::string& address, const std::string& path,
                                      const std::string& body) {
  return Http(address, "POST", path, body);
}

absl::StatusOr<HttpResponse> HttpPostWithHeaders(
    const std::string& address, const std::string& path, const std::string& body,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  return Http(address, "POST", path, body, headers);
}

CommandResult RunCommand(const std::string& command, const std::string& input) {
  TempDir dir;
  std::string in_path = dir.File("stdin");
  std::ofstream(in_path) << input;
  std::string full = absl::StrCat("(", command, ") < '", in_path, "' 2>&1");
  CommandResult result;
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) result.output.append(buf, n);
  int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string BinDir() {
  const char* dir = getenv("CONSTANCE_BIN_DIR");
  return dir != nullptr ? dir : CONSTANCE_BIN_DIR;
}

std::string SourceDir() {
  const char* dir = getenv("CONSTANCE_SOURCE_DIR");
  return dir != nullptr ? dir : CONSTANCE_SOURCE_DIR;
}

absl::StatusOr<double> MetricValue(const std::string& exposition, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.empty() || line[0] == '#' || !absl::StartsWith(line, series)) continue;
    // The name must end where `series` does, unless labels follow.
    const char next = line.size() > series.size() ? line[series.size()] : ' ';
    if (series.back() != '"' && series.back() != '}' && next != ' ' && next != '{') continue;
    const size_t space = line.rfind(' ');
    double value = 0;
    if (space != absl::string_view::npos && absl::SimpleAtod(line.substr(space + 1), &value)) {
      return value;
    }
  }
  return absl::NotFoundError(absl::StrCat("no sample ", series, " in the exposition"));
}

absl::StatusOr<std::string> ListeningAddress(Subprocess& p, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const std::string pid = absl::StrCat("pid=", p.pid(), ",");
  while (absl::Now() < deadline) {
    if (!p.Running()) return absl::FailedPreconditionError("exited:\n" + p.Log());
    CommandResult ss = RunCommand("ss -ltnpH", "");
    for (absl::string_view line : absl::StrSplit(ss.output, '\n')) {
      if (line.find(pid) == absl::string_view::npos) continue;
      size_t at = line.find("127.0.0.1:");
      if (at == absl::string_view::npos) continue;
      absl::string_view rest = line.substr(at);
      return std::string(rest.substr(0, rest.find(' ')));
    }
    absl::SleepFor(absl::Milliseconds(100));  // Polling the socket table, with a deadline.
  }
  return absl::DeadlineExceededError("not listening:\n" + p.Log());
}

std::string UrlEncode(const std::string& s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::vector<std::string> CollectorArgs(const std::string& catalog, const std::string& ready_file,
                                       const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {BinDir() + "/constance-collector",
                                   "--insecure",
                                   "--catalog=" + catalog,
                                   "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0",
                                   "--stats_interval=100ms",
                                   "--ready_file=" + ready_file};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::vector<std::string> AgentArgs(const std::string& config, const std::string& collector,
                                   const std::string& spool, const std::string& ready_file) {
  return {BinDir() + "/constance-agent", "run",
          "--config=" + config,          "--collector=" + collector,
          "--listen=127.0.0.1:0",        "--metrics_listen=127.0.0.1:0",
          "--drain_timeout=0s",          "--backoff_initial=100ms",
          "--backoff_max=500ms",         "--flush_interval=20ms",
          "--spool_path=" + spool,       "--ready_file=" + ready_file};
}

uint64_t ObservationsApplied(const std::string& grpc_address) {
  std::unique_ptr<v1::Query::Stub> query =
      v1::Query::NewStub(grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::ChainSummaryResponse summary;
  if (!query->ChainSummary(&ctx, v1::ChainSummaryRequest(), &summary).ok()) return 0;
  return summary.observations_applied();
}

absl::Status SendShelfPrice(const std::string& grpc_address, const std::string& location,
                            const std::string& key, int64_t minor_units, uint64_t sequence) {
  auto stub =
      v1::Ingest::NewStub(grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto stream = stub->Stream(&ctx);
  v1::AgentMessage msg;
  v1::Batch* batch = msg.mutable_batch();
  batch->set_location(location);
  batch->set_incarnation(1);
  batch->set_first_sequence(sequence);
  v1::Observation* obs = batch->add_observations();
  obs->set_key(key);
  *obs->mutable_observed_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  obs->mutable_price()->set_minor_units(minor_units);
  obs->mutable_price()->set_currency("EUR");
  obs->mutable_price()->set_kind(v1::SHELF);
  if (!stream->Write(msg)) return absl::UnavailableError("the stream closed before the batch");
  v1::CollectorMessage reply;
  while (stream->Read(&reply) && !reply.has_ack()) {
  }
  const bool acked = reply.has_ack();
  stream->WritesDone();
  while (stream->Read(&reply)) {
  }
  grpc::Status status = stream->Finish();
  if (!acked) {
    return absl::UnavailableError(absl::StrCat("no acknowledgement: ", status.error_message()));
  }
  return absl::OkStatus();
}

}  // namespace constance::testing
