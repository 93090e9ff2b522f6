#include "tests/bench/bench_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace constance::testing {

HttpConnection::HttpConnection(std::string address) : address_(std::move(address)) {}

HttpConnection::~HttpConnection() { Close(); }

void HttpConnection::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  buffer_.clear();
}

absl::Status HttpConnection::Connect() {
  std::pair<std::string, std::string> hp = absl::StrSplit(address_, absl::MaxSplits(':', 1));
  int port = 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (!absl::SimpleAtoi(hp.second, &port) ||
      inet_pton(AF_INET, hp.first.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", address_));
  }
  addr.sin_port = htons(static_cast<uint16_t>(port));
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0 || connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string error = std::strerror(errno);
    Close();
    return absl::UnavailableError(absl::StrCat("connect ", address_, ": ", error));
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return absl::OkStatus();
}

bool HttpConnection::Fill(size_t n) {
  char buf[65536];
  while (buffer_.size() < n) {
    ssize_t got = read(fd_, buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    buffer_.append(buf, static_cast<size_t>(got));
  }
  return true;
}

absl::StatusOr<HttpResponse> HttpConnection::Request(
    const std::string& method, const std::string& path,
    const std::vector<std::pair<std::string, std::string>>& headers, const std::string& body) {
  std::string request = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: ", address_,
                                     "\r\nContent-Length: ", body.size(), "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&request, name, ": ", value, "\r\n");
  absl::StrAppend(&request, "\r\n", body);
  // A kept-alive connection the server closed while idle fails on first
  // use: reopen once.
  const bool reused = fd_ >= 0;
  absl::StatusOr<HttpResponse> response = RequestOnce(request);
  if (!response.ok() && reused) response = RequestOnce(request);
  return response;
}

absl::StatusOr<HttpResponse> HttpConnection::RequestOnce(const std::string& request) {
  if (fd_ < 0) {
    if (absl::Status s = Connect(); !s.ok()) return s;
  }
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(fd_, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Close();
      return absl::UnavailableError(absl::StrCat("send to ", address_, " failed"));
    }
    sent += static_cast<size_t>(n);
  }
  size_t end;
  while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
    if (!Fill(buffer_.size() + 1)) {
      Close();
      return absl::UnavailableError(absl::StrCat("no response from ", address_));
    }
  }
  std::vector<std::string> lines = absl::StrSplit(buffer_.substr(0, end), "\r\n");
  buffer_.erase(0, end + 4);
  HttpResponse response;
  std::vector<std::string> status_line = absl::StrSplit(lines[0], ' ');
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &response.status)) {
    Close();
    return absl::InternalError(absl::StrCat("bad status line from ", address_, ": ", lines[0]));
  }
  int64_t length = -1;
  bool chunked = false;
  bool close_after = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::pair<std::string, std::string> kv = absl::StrSplit(lines[i], absl::MaxSplits(':', 1));
    const std::string name = absl::AsciiStrToLower(kv.first);
    const std::string value = absl::AsciiStrToLower(absl::StripAsciiWhitespace(kv.second));
    if (name == "content-length" && !absl::SimpleAtoi(value, &length)) length = -1;
    if (name == "transfer-encoding" && absl::StrContains(value, "chunked")) chunked = true;
    if (name == "connection" && value == "close") close_after = true;
  }
  if (chunked) {
    for (;;) {
      size_t eol;
      while ((eol = buffer_.find("\r\n")) == std::string::npos) {
        if (!Fill(buffer_.size() + 1)) {
          Close();
          return absl::UnavailableError("truncated chunked response");
        }
      }
      uint64_t size = 0;
      if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(buffer_.substr(0, eol)), &size)) {
        Close();
        return absl::InternalError("bad chunk size");
      }
      buffer_.erase(0, eol + 2);
      if (!Fill(size + 2)) {
        Close();
        return absl::UnavailableError("truncated chunk");
      }
      response.body.append(buffer_, 0, size);
      buffer_.erase(0, size + 2);
      if (size == 0) break;  // (No trailers from the servers we talk to.)
    }
  } else if (length >= 0) {
    if (!Fill(static_cast<size_t>(length))) {
      Close();
      return absl::UnavailableError("truncated response");
    }
    response.body = buffer_.substr(0, static_cast<size_t>(length));
    buffer_.erase(0, static_cast<size_t>(length));
  } else if (response.status != 204 && response.status != 304) {
    while (Fill(buffer_.size() + 1)) {
    }
    response.body = std::move(buffer_);
    close_after = true;
  }
  if (close_after) Close();
  return response;
}

absl::StatusOr<std::string> WaitForListenAddress(Subprocess& process, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const std::string marker = "msg=\"Listening on\" address=";
  for (;;) {
    const std::string log = process.Log();
    const size_t at = log.find(marker);
    if (at != std::string::npos) {
      const size_t begin = at + marker.size();
      const size_t end = log.find_first_of(" \r\n", begin);
      if (end != std::string::npos) return log.substr(begin, end - begin);
    }
    if (!process.Running()) {
      return absl::FailedPreconditionError(absl::StrCat("exited before listening:\n", log));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("not listening after ", absl::FormatDuration(timeout), ":\n", log));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::StatusOr<int> FreeLoopbackPort(bool udp) {
  int fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError("bind 127.0.0.1:0");
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace constance::testing
