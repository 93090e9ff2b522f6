// A loopback TCP proxy that the fault-injection suite puts between an agent
// and the collector, to cut and stall the link on command.
//
// TcpProxy listens on 127.0.0.1 (port 0: the OS picks one, read it with
// port()) and forwards every accepted connection to the current upstream
// address, which can change while it runs (the collector comes back on a
// new port after each restart). Three link faults:
//   - DropAll(): closes every forwarded connection at once (both sides see
//     a reset or EOF), like a NAT or firewall forgetting its state;
//   - SetMode(kBlackHole): stops moving bytes in either direction and
//     leaves new connections waiting, like a WAN link that silently stops
//     delivering; the kernel buffers fill and writers stall. Back to
//     kForward, queued bytes flow again;
//   - SetMode(kRefuse): closes new connections as soon as they arrive and
//     drops the open ones: the collector looks down to this agent only.
// One thread runs a poll() loop over non-blocking sockets; it is written by
// hand because no Debian-packaged library offers a fault-injecting proxy.
//
//   TcpProxy proxy;
//   ASSERT_TRUE(proxy.Start("127.0.0.1:7070").ok());
//   ... agent --collector=127.0.0.1:<proxy.port()> ...
//   proxy.SetMode(TcpProxy::Mode::kBlackHole);
//   proxy.SetMode(TcpProxy::Mode::kForward);
//   proxy.SetUpstream(new_address);
//
// Thread-safe: every method may be called from any thread. The destructor
// stops the thread and closes every socket.
#ifndef CONSTANCE_TESTS_FAULTS_TCP_PROXY_H_
#define CONSTANCE_TESTS_FAULTS_TCP_PROXY_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace constance::testing {

class TcpProxy {
 public:
  enum class Mode { kForward, kBlackHole, kRefuse };

  TcpProxy() = default;
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  // Listens on 127.0.0.1:0 and starts forwarding to `upstream` (HOST:PORT,
  // numeric IPv4). Call once.
  absl::Status Start(const std::string& upstream);

  // The port agents dial.
  int port() const { return port_; }

  // Where new connections go from now on; open ones stay where they are.
  void SetUpstream(const std::string& upstream);
  void SetMode(Mode mode);
  // Closes every open connection now (the mode stays as it is).
  void DropAll();

  // Connections accepted so far (for the suite's summary and checks).
  uint64_t accepted() const { return accepted_.load(); }

 private:
  void Loop();
  // Wakes the poll loop so it sees a new mode, upstream or drop request.
  void Wake();

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  std::thread thread_;
  std::atomic<uint64_t> accepted_{0};

  absl::Mutex mu_;
  std::string upstream_ ABSL_GUARDED_BY(mu_);
  Mode mode_ ABSL_GUARDED_BY(mu_) = Mode::kForward;
  uint64_t drops_requested_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace constance::testing

#endif  // CONSTANCE_TESTS_FAULTS_TCP_PROXY_H_
