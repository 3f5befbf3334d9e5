// HttpGet: a plain HTTP/1.1 GET to 127.0.0.1 for tests that read a server's
// Prometheus exposition (or another page) the way a scraper does.
//
// Contract: header only; one blocking connection with 5 s send/receive
// timeouts, "Connection: close", the whole response read until the server
// closes. UNAVAILABLE when nothing answers on the port, DEADLINE_EXCEEDED
// when a receive times out. Thread-compatible (no shared state).
#ifndef ASYMCACHE_TESTS_SERVICES_HTTP_GET_H_
#define ASYMCACHE_TESTS_SERVICES_HTTP_GET_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace asymcache::testing {

// The whole response to GET `path` on 127.0.0.1:`port` (status line,
// headers, body).
inline absl::StatusOr<std::string> HttpGet(int port, absl::string_view path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string error = std::strerror(errno);
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port, ": ", error));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("send to port ", port, " failed"));
  }
  std::string response;
  char buffer[4096];
  while (true) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      const std::string error = std::strerror(errno);
      ::close(fd);
      return absl::DeadlineExceededError(absl::StrCat("recv from port ", port, ": ", error));
    }
    response.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return response;
}

// The body of a 200 response to GET /metrics (INTERNAL naming the start of
// any other response).
inline absl::StatusOr<std::string> ScrapeMetrics(int port) {
  absl::StatusOr<std::string> response = HttpGet(port, "/metrics");
  if (!response.ok()) return response.status();
  if (!absl::StartsWith(*response, "HTTP/1.1 200")) {
    return absl::InternalError(absl::StrCat("unexpected response: ", response->substr(0, 200)));
  }
  const size_t body = response->find("\r\n\r\n");
  return body == std::string::npos ? std::string() : response->substr(body + 4);
}

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_HTTP_GET_H_
