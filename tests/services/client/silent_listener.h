// Test helper: a TCP port on 127.0.0.1 that never serves, to exercise
// connects that hang (a dead pod IP, a wedged process) without a network:
//   * kDropsConnects: listen() with backlog 0 and the accept queue filled by
//     a connection nobody accepts, so the kernel drops every further SYN; a
//     client's connect stays in SYN_SENT (retransmitting) until it gives up.
//     Start() checks that a probe connect really does not complete, and
//     returns nullptr (saying why) where the kernel behaves otherwise.
//   * kNeverAccepts: the kernel completes the TCP handshake (the accept queue
//     has room) but nothing ever reads or writes: a connected peer that
//     never answers HTTP/2.
// Ownership: owns its sockets (closed on destruction). Not thread-safe; the
// port may be used by any thread.
#ifndef ASYMCACHE_TESTS_SERVICES_CLIENT_SILENT_LISTENER_H_
#define ASYMCACHE_TESTS_SERVICES_CLIENT_SILENT_LISTENER_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace asymcache::testing {

class SilentListener {
 public:
  enum class Mode { kDropsConnects, kNeverAccepts };

  // nullptr (with a test failure, or a message in *skip_reason when the
  // kernel does not drop SYNs on a full accept queue) when it cannot be set up.
  static std::unique_ptr<SilentListener> Start(Mode mode, std::string* skip_reason) {
    std::unique_ptr<SilentListener> l(new SilentListener());
    l->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->listen_fd_ < 0) return l->Fail("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(l->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return l->Fail("bind");
    }
    if (::listen(l->listen_fd_, mode == Mode::kDropsConnects ? 0 : 16) != 0) {
      return l->Fail("listen");
    }
    socklen_t len = sizeof(addr);
    if (::getsockname(l->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return l->Fail("getsockname");
    }
    l->port_ = ntohs(addr.sin_port);
    if (mode == Mode::kNeverAccepts) return l;

    // Fill the accept queue (backlog 0 holds one connection) and wait until
    // the connection sits in it.
    const int filler = l->Connect();
    if (filler < 0) return l->Fail("connect (filler)");
    if (!WaitConnected(filler, absl::Seconds(5))) {
      ADD_FAILURE() << "the filler connection to port " << l->port_ << " did not complete";
      return nullptr;
    }
    if (!l->HasPendingConnection(absl::Seconds(5))) {
      ADD_FAILURE() << "the filler connection did not reach the accept queue";
      return nullptr;
    }
    // A probe must now hang: its SYN is dropped.
    const int probe = l->Connect();
    if (probe < 0) return l->Fail("connect (probe)");
    if (WaitConnected(probe, absl::Milliseconds(500))) {
      *skip_reason = "this kernel completes connects to a listener with a full accept queue";
      return nullptr;
    }
    return l;
  }

  ~SilentListener() {
    for (int fd : clients_) ::close(fd);
    if (listen_fd_ >= 0) ::close(listen_fd_);
  }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;

  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

  // A connection waits in the accept queue (nobody accepts it), within `bound`.
  bool HasPendingConnection(absl::Duration bound) const {
    pollfd p{listen_fd_, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(bound))) == 1 &&
           (p.revents & POLLIN) != 0;
  }

 private:
  SilentListener() = default;

  std::unique_ptr<SilentListener> Fail(const char* what) {
    ADD_FAILURE() << "SilentListener: " << what << ": " << std::strerror(errno);
    return nullptr;
  }

  // A non-blocking connect to the port (kept open until destruction), or -1.
  int Connect() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    clients_.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 &&
        errno != EINPROGRESS) {
      return -1;
    }
    return fd;
  }

  // The non-blocking connect on `fd` completed successfully within `bound`.
  static bool WaitConnected(int fd, absl::Duration bound) {
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(bound))) != 1) return false;
    int error = 0;
    socklen_t len = sizeof(error);
    return ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == 0;
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::vector<int> clients_;  // filler and probe connections
};

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_CLIENT_SILENT_LISTENER_H_
