#include "tests/faults/tcp_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <list>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace constance::testing {
namespace {

// Bytes buffered per direction before the proxy stops reading that side.
constexpr size_t kMaxBuffered = 256 << 10;

struct Conn {
  int client = -1;
  int upstream = -1;  // -1 until connected (black hole, or not yet tried).
  std::string to_upstream;
  std::string to_client;
};

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

void CloseConn(Conn& c) {
  if (c.client >= 0) close(c.client);
  if (c.upstream >= 0) close(c.upstream);
  c.client = c.upstream = -1;
}

// Connects to HOST:PORT (numeric IPv4) now; -1 if refused or malformed.
int ConnectTo(const std::string& address) {
  std::pair<std::string, std::string> hp = absl::StrSplit(address, absl::MaxSplits(':', 1));
  int port = 0;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  if (!absl::SimpleAtoi(hp.second, &port) ||
      inet_pton(AF_INET, hp.first.c_str(), &sa.sin_addr) != 1) {
    return -1;
  }
  sa.sin_port = htons(static_cast<uint16_t>(port));
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  // Loopback: connect completes or is refused at once.
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  SetNonBlocking(fd);
  return fd;
}

// Reads what `from` has into `buf`; false when the peer closed or failed.
bool Pump(int from, std::string* buf) {
  char chunk[65536];
  for (;;) {
    ssize_t n = read(from, chunk, sizeof(chunk));
    if (n > 0) {
      buf->append(chunk, static_cast<size_t>(n));
      if (buf->size() >= kMaxBuffered) return true;
      continue;
    }
    if (n == 0) return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
}

// Writes as much of `buf` to `to` as it takes; false on a write error.
bool Flush(int to, std::string* buf) {
  while (!buf->empty()) {
    ssize_t n = send(to, buf->data(), buf->size(), MSG_NOSIGNAL);
    if (n > 0) {
      buf->erase(0, static_cast<size_t>(n));
      continue;
    }
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
  }
  return true;
}

}  // namespace

TcpProxy::~TcpProxy() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_[0] >= 0) close(wake_[0]);
  if (wake_[1] >= 0) close(wake_[1]);
}

absl::Status TcpProxy::Start(const std::string& upstream) {
  {
    absl::MutexLock lock(&mu_);
    upstream_ = upstream;
  }
  if (pipe2(wake_, O_NONBLOCK | O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("proxy: pipe: ", std::strerror(errno)));
  }
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  socklen_t len = sizeof(sa);
  if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      listen(listen_fd_, 64) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    return absl::InternalError(absl::StrCat("proxy: cannot listen: ", std::strerror(errno)));
  }
  SetNonBlocking(listen_fd_);
  port_ = ntohs(sa.sin_port);
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void TcpProxy::SetUpstream(const std::string& upstream) {
  {
    absl::MutexLock lock(&mu_);
    upstream_ = upstream;
  }
  Wake();
}

void TcpProxy::SetMode(Mode mode) {
  {
    absl::MutexLock lock(&mu_);
    mode_ = mode;
  }
  Wake();
}

void TcpProxy::DropAll() {
  {
    absl::MutexLock lock(&mu_);
    ++drops_requested_;
  }
  Wake();
}

void TcpProxy::Wake() {
  if (wake_[1] >= 0) {
    const char b = 1;
    (void)!write(wake_[1], &b, 1);
  }
}

void TcpProxy::Loop() {
  std::list<Conn> conns;
  uint64_t drops_done = 0;
  std::vector<pollfd> fds;
  std::vector<Conn*> owners;  // Parallel to fds: null for the pipe and listener.
  for (;;) {
    Mode mode;
    std::string upstream;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      mode = mode_;
      upstream = upstream_;
      if (drops_requested_ != drops_done || mode == Mode::kRefuse) {
        drops_done = drops_requested_;
        for (Conn& c : conns) CloseConn(c);
        conns.clear();
      }
    }
    if (mode == Mode::kForward) {
      // Connections accepted during a black hole go upstream now.
      for (Conn& c : conns) {
        if (c.upstream < 0 && c.client >= 0) {
          c.upstream = ConnectTo(upstream);
          if (c.upstream < 0) CloseConn(c);
        }
      }
    }
    conns.remove_if([](const Conn& c) { return c.client < 0; });

    fds.clear();
    owners.clear();
    fds.push_back({wake_[0], POLLIN, 0});
    owners.push_back(nullptr);
    fds.push_back({listen_fd_, POLLIN, 0});
    owners.push_back(nullptr);
    if (mode == Mode::kForward) {
      for (Conn& c : conns) {
        short ce = 0, ue = 0;
        if (c.to_upstream.size() < kMaxBuffered) ce |= POLLIN;
        if (!c.to_client.empty()) ce |= POLLOUT;
        if (c.to_client.size() < kMaxBuffered) ue |= POLLIN;
        if (!c.to_upstream.empty()) ue |= POLLOUT;
        fds.push_back({c.client, ce, 0});
        owners.push_back(&c);
        fds.push_back({c.upstream, ue, 0});
        owners.push_back(&c);
      }
    }
    if (poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) break;

    if (fds[0].revents & POLLIN) {
      char drain[256];
      while (read(wake_[0], drain, sizeof(drain)) > 0) {
      }
    }
    if (fds[1].revents & POLLIN) {
      for (;;) {
        int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        accepted_.fetch_add(1);
        if (mode == Mode::kRefuse) {
          close(fd);
          continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        Conn c;
        c.client = fd;
        if (mode == Mode::kForward) {
          c.upstream = ConnectTo(upstream);
          if (c.upstream < 0) {
            close(fd);
            continue;
          }
        }
        conns.push_back(std::move(c));
      }
    }
    for (size_t i = 2; i < fds.size(); i += 2) {
      Conn& c = *owners[i];
      if (c.client < 0) continue;
      const pollfd& cf = fds[i];
      const pollfd& uf = fds[i + 1];
      bool ok = true;
      if (cf.revents & (POLLIN | POLLHUP | POLLERR)) ok = Pump(c.client, &c.to_upstream);
      if (ok && (uf.revents & (POLLIN | POLLHUP | POLLERR))) ok = Pump(c.upstream, &c.to_client);
      if (ok) {
        ok = Flush(c.upstream, &c.to_upstream) && Flush(c.client, &c.to_client);
      } else {
        // One side ended: pass on what it said last (e.g. the collector's
        // final status), best effort, then close both.
        Flush(c.upstream, &c.to_upstream);
        Flush(c.client, &c.to_client);
      }
      if (!ok) CloseConn(c);
    }
  }
  for (Conn& c : conns) CloseConn(c);
}

}  // namespace constance::testing
