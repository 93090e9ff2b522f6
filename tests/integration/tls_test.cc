// mTLS end to end: a real collector and real agents on loopback, with a CA
// and certificates made at test time by deploy/pki/pki.sh. Location
// identity from the certificate, Query only for operators, revocation,
// unknown CA, expiry, missing client certificate, rotation without a
// restart, plaintext refused.
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "constance/tls.h"
#include "constance/v1/ingest.grpc.pb.h"
#include "constance/v1/query.grpc.pb.h"
#include "constance/v1/silence.grpc.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/harness.h"

namespace constance::testing {
namespace {

using ::testing::HasSubstr;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Pki("init", pki_);
    Pki("issue", pki_, "collector localhost 127.0.0.1");
    Pki("issue", pki_, "location store-a");
    Pki("issue", pki_, "operator ops");
  }

  void TearDown() override {
    for (auto& [name, agent] : agents_) StopCleanly(name, *agent);
    if (collector_) StopCleanly("collector", *collector_);
  }

  static void StopCleanly(const std::string& name, Subprocess& p) {
    auto status = p.Stop(SIGTERM, absl::Seconds(15));
    EXPECT_TRUE(status.ok()) << name << ": " << status.status();
    if (status.ok()) {
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << name << " exit status " << *status << "\n"
          << p.Log();
    }
  }

  // Runs deploy/pki/pki.sh COMMAND DIR ARGS; fails the test if it fails.
  void Pki(const std::string& command, const std::string& dir, const std::string& args = "") {
    CommandResult r = RunCommand(
        absl::StrCat("sh '", SourceDir(), "/deploy/pki/pki.sh' ", command, " '", dir, "' ", args),
        "");
    ASSERT_EQ(r.exit_code, 0) << "pki.sh " << command << " " << args << ":\n" << r.output;
  }

  std::string Issued(const std::string& name, const std::string& ext) const {
    return absl::StrCat(pki_, "/issued/", name, ".", ext);
  }

  void StartCollector(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {BinDir() + "/constance-collector",
                                     "--listen=127.0.0.1:0",
                                     "--metrics_listen=127.0.0.1:0",
                                     "--stats_interval=100ms",
                                     "--tls_ca=" + pki_ + "/ca.pem",
                                     "--tls_cert=" + Issued("collector-localhost", "pem"),
                                     "--tls_key=" + Issued("collector-localhost", "key"),
                                     "--tls_crl_dir=" + pki_ + "/crl",
                                     "--tls_refresh_interval=1s",
                                     "--ready_file=" + dir_.File("collector.ready")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    collector_ = std::make_unique<Subprocess>(argv, dir_.File("collector.log"));
    auto ready = WaitForReadyFile(dir_.File("collector.ready"), *collector_, absl::Seconds(30));
    ASSERT_TRUE(ready.ok()) << ready.status();
    grpc_ = (*ready)["grpc"];
    metrics_ = (*ready)["metrics"];
  }

  // A real agent reporting as `location` with the certificate `cert`
  // (e.g. "location-store-a").
  std::map<std::string, std::string> StartAgent(const std::string& location,
                                                const std::string& cert) {
    const std::string ready_file = dir_.File(location + ".ready");
    auto agent = std::make_unique<Subprocess>(
        std::vector<std::string>{
            BinDir() + "/constance-agent", "run", "--location=" + location,
            "--collector=" + grpc_, "--tls_ca=" + pki_ + "/ca.pem",
            "--tls_cert=" + Issued(cert, "pem"), "--tls_key=" + Issued(cert, "key"),
            "--tls_refresh_interval=1s", "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
            "--flush_interval=20ms", "--backoff_initial=100ms", "--backoff_max=500ms",
            "--ready_file=" + ready_file},
        dir_.File(location + ".log"));
    auto ready = WaitForReadyFile(ready_file, *agent, absl::Seconds(30));
    EXPECT_TRUE(ready.ok()) << ready.status();
    agents_[location] = std::move(agent);
    return ready.ok() ? *ready : std::map<std::string, std::string>{};
  }

  // A fresh connection (its own subchannel pool) with `name`'s certificate.
  std::shared_ptr<grpc::Channel> Channel(const std::string& name, const std::string& ca = "") {
    TlsFiles files;
    files.ca = ca.empty() ? pki_ + "/ca.pem" : ca;
    files.cert = Issued(name, "pem");
    files.key = Issued(name, "key");
    absl::StatusOr<ChannelSecurity> security = MakeChannelSecurity(files);
    EXPECT_TRUE(security.ok()) << security.status();
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    security->Apply(&args);
    return grpc::CreateCustomChannel(grpc_, security->credentials, args);
  }

  grpc::Status Summary(const std::shared_ptr<grpc::Channel>& channel,
                       v1::ChainSummaryResponse* out = nullptr, grpc::ClientContext* ctx = nullptr) {
    grpc::ClientContext local;
    if (ctx == nullptr) ctx = &local;
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ChainSummaryResponse summary;
    grpc::Status s =
        v1::Query::NewStub(channel)->ChainSummary(ctx, v1::ChainSummaryRequest(), &summary);
    if (out != nullptr) *out = summary;
    return s;
  }

  // Waits until the collector's statistics cover `applied` observations.
  v1::ChainSummaryResponse WaitForApplied(uint64_t applied) {
    auto ops = Channel("operator-ops");
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    v1::ChainSummaryResponse summary;
    while (absl::Now() < deadline) {
      grpc::Status s = Summary(ops, &summary);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (summary.observations_applied() >= applied) return summary;
      absl::SleepFor(absl::Milliseconds(20));
    }
    ADD_FAILURE() << "applied " << summary.observations_applied() << " of " << applied << "\n"
                  << collector_->Log();
    return summary;
  }

  double Metric(const std::string& address, const std::string& series) {
    auto r = HttpGet(address, "/metrics");
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return -1;
    auto v = MetricValue(r->body, series);
    EXPECT_TRUE(v.ok()) << v.status() << "\n" << r->body;
    return v.ok() ? *v : -1;
  }

  // Opens an Ingest stream with `channel`, sends one valid batch claiming
  // `location`, and returns how the collector ended the stream.
  static grpc::Status SendBatch(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& location) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    auto stream = v1::Ingest::NewStub(channel)->Stream(&ctx);
    v1::AgentMessage msg;
    v1::Batch* batch = msg.mutable_batch();
    batch->set_location(location);
    batch->set_incarnation(7);
    batch->set_first_sequence(1);
    v1::Observation* obs = batch->add_observations();
    obs->set_key("checkout");
    obs->set_wait_seconds(60);
    stream->Write(msg);
    stream->WritesDone();
    v1::CollectorMessage reply;
    while (stream->Read(&reply)) {
    }
    return stream->Finish();
  }

  // Handshakes the collector refused for a revoked certificate, from its log.
  int RevokedHandshakes() {
    const std::string log = collector_->Log();
    int n = 0;
    for (size_t at = log.find("verify failed with code 23"); at != std::string::npos;
         at = log.find("verify failed with code 23", at + 1)) {
      ++n;
    }
    return n;
  }

  void WaitForRevokedHandshakes(int n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (RevokedHandshakes() < n && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_GE(RevokedHandshakes(), n) << collector_->Log();
  }

  HttpResponse Post(const std::map<std::string, std::string>& agent, const std::string& body) {
    auto r = HttpPost(agent.at("http"), "/v1/observations", body);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse{};
  }

  TempDir dir_;
  const std::string pki_ = dir_.File("pki");
  std::unique_ptr<Subprocess> collector_;
  std::map<std::string, std::unique_ptr<Subprocess>> agents_;
  std::string grpc_;
  std::string metrics_;
};

constexpr char kWait[] = R"({"key": "checkout", "wait_seconds": 60})";

TEST_F(TlsTest, CertificateOfOneLocationCannotReportAsAnother) {
  StartCollector();
  // store-a's certificate claiming store-b: the stream ends, nothing kept.
  grpc::Status s = SendBatch(Channel("location-store-a"), "store-b");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("store-a"));
  // A real agent misconfigured the same way delivers nothing either; the
  // same certificate with its own location delivers.
  auto liar = StartAgent("store-b", "location-store-a");
  EXPECT_EQ(Post(liar, kWait).status, 200);
  auto honest = StartAgent("store-a", "location-store-a");
  EXPECT_EQ(Post(honest, kWait).status, 200);
  v1::ChainSummaryResponse summary = WaitForApplied(1);
  EXPECT_EQ(summary.observations_applied(), 1u);
  EXPECT_EQ(summary.locations(), 1u);
  // The liar keeps its observation (spooled, never acknowledged) and the
  // refusals are counted.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (Metric(metrics_, R"(constance_refusals_total{reason="location_mismatch")") < 2 &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_GE(Metric(metrics_, R"(constance_refusals_total{reason="location_mismatch")"), 2);
  EXPECT_EQ(Metric(liar.at("metrics"), "constance_agent_spool_depth"), 1);
  // The honest agent's certificate expiry, read from the certificate it
  // presented (pki.sh issues for 365 days).
  const double expiry = Metric(
      metrics_, R"(constance_agent_certificate_expiry_timestamp_seconds{location="store-a")");
  const double in_a_year = absl::ToUnixSeconds(absl::Now() + absl::Hours(24 * 365));
  EXPECT_NEAR(expiry, in_a_year, 3600) << "expiry " << expiry;
  ASSERT_TRUE(Summary(Channel("operator-ops"), &summary).ok());
  EXPECT_EQ(summary.observations_applied(), 1u);
  EXPECT_EQ(summary.locations(), 1u);
}

TEST_F(TlsTest, OnlyOperatorsQueryAndOnlyLocationsIngest) {
  StartCollector();
  grpc::Status s = Summary(Channel("location-store-a"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("operator"));
  s = Summary(Channel("operator-ops"));
  EXPECT_TRUE(s.ok()) << s.error_message();
  s = SendBatch(Channel("operator-ops"), "ops");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_EQ(Metric(metrics_, R"(constance_refusals_total{reason="not_an_operator")"), 1);
  EXPECT_EQ(Metric(metrics_, R"(constance_refusals_total{reason="not_a_location")"), 1);
}

TEST_F(TlsTest, OnlyOperatorsSilenceAndTheyAreRecordedAsAuthor) {
  StartCollector();
  v1::AddSilenceRequest request;
  request.mutable_match()->set_location("store-a");
  *request.mutable_ends_at() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(absl::Now() + absl::Hours(1)));
  request.set_owner("anna");
  request.set_comment("refit");
  auto add = [&](const std::string& cert, v1::Silence* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return v1::Silences::NewStub(Channel(cert))->Add(&ctx, request, out);
  };
  v1::Silence silence;
  grpc::Status s = add("location-store-a", &silence);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("operator certificate"));
  s = add("operator-ops", &silence);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(silence.id(), "1");  // The refused call stored nothing.
  EXPECT_EQ(silence.author(), "ops");
}

TEST_F(TlsTest, RevokedCertificateIsRefusedOnItsNextConnection) {
  // Connections live 1 s (+-10%), so the agent's stream must handshake again.
  StartCollector({"--max_connection_age=1s", "--max_connection_age_grace=500ms"});
  auto agent = StartAgent("store-a", "location-store-a");
  EXPECT_EQ(Post(agent, kWait).status, 200);
  WaitForApplied(1);
  EXPECT_TRUE(SendBatch(Channel("location-store-a"), "store-a").ok());
  WaitForApplied(2);

  Pki("revoke", pki_, "location store-a");
  grpc::Status s = SendBatch(Channel("location-store-a"), "store-a");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  // The running agent loses its stream at the connection's age and every
  // handshake after that fails (OpenSSL's verify error 23: revoked).
  WaitForRevokedHandshakes(2);
  EXPECT_EQ(Post(agent, kWait).status, 200);
  // gRPC's channel retries a failed connection at most every 20 s.
  WaitForRevokedHandshakes(RevokedHandshakes() + 1);
  v1::ChainSummaryResponse summary;
  ASSERT_TRUE(Summary(Channel("operator-ops"), &summary).ok());
  // The agent's first observation and the direct client's, nothing since.
  EXPECT_EQ(summary.observations_applied(), 2u) << "a revoked agent delivered";
  EXPECT_EQ(Metric(agent.at("metrics"), "constance_agent_connected"), 0);
  EXPECT_EQ(Metric(agent.at("metrics"), "constance_agent_spool_depth"), 1);
}

TEST_F(TlsTest, UnknownCaExpiredAndMissingCertificatesAreRefused) {
  const std::string other = dir_.File("other-ca");
  Pki("init", other);
  Pki("issue", other, "operator ops");
  Pki("issue", pki_,
      "operator expired --not-before 20200101000000Z --not-after 20200201000000Z");
  StartCollector();
  EXPECT_TRUE(Summary(Channel("operator-ops")).ok());

  // A certificate from another CA (the client trusts our collector).
  TlsFiles files;
  files.ca = pki_ + "/ca.pem";
  files.cert = other + "/issued/operator-ops.pem";
  files.key = other + "/issued/operator-ops.key";
  auto security = MakeChannelSecurity(files);
  ASSERT_TRUE(security.ok());
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  grpc::Status s = Summary(grpc::CreateCustomChannel(grpc_, security->credentials, args));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  s = Summary(Channel("operator-expired"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  // TLS with the right CA but no client certificate at all.
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(pki_ + "/ca.pem");
  s = Summary(grpc::CreateCustomChannel(grpc_, grpc::SslCredentials(ssl), args));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, PlaintextClientIsRefused) {
  StartCollector();
  grpc::Status s = Summary(grpc::CreateChannel(grpc_, grpc::InsecureChannelCredentials()));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  s = SendBatch(grpc::CreateChannel(grpc_, grpc::InsecureChannelCredentials()), "store-a");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsTest, CertificateRotatedOnDiskIsUsedWithoutRestart) {
  StartCollector();
  auto agent = StartAgent("store-a", "location-store-a");
  EXPECT_EQ(Post(agent, kWait).status, 200);
  WaitForApplied(1);
  const pid_t pid = collector_->pid();
  const std::string old_pem = ReadFile(Issued("collector-localhost", "pem"));

  // Renew the collector's certificate while the agent's stream is open.
  Pki("renew", pki_, "collector localhost 127.0.0.1");
  const std::string new_pem = ReadFile(Issued("collector-localhost", "pem"));
  ASSERT_NE(old_pem, new_pem);
  std::string served;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    grpc::ClientContext ctx;
    if (Summary(Channel("operator-ops"), nullptr, &ctx).ok()) {
      auto pem = ctx.auth_context()->FindPropertyValues("x509_pem_cert");
      served = pem.empty() ? "" : std::string(pem[0].data(), pem[0].size());
      if (served == new_pem) break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(served, new_pem) << "new connections still get the old certificate";
  // Same process, and the stream opened before the rotation still delivers.
  EXPECT_TRUE(collector_->Running());
  EXPECT_EQ(collector_->pid(), pid);
  EXPECT_EQ(Post(agent, kWait).status, 200);
  WaitForApplied(2);
}

}  // namespace
}  // namespace constance::testing
