// FreeLocalPort: a TCP port on 127.0.0.1 that nothing listens on, for tests
// of unreachable peers (a dead coordinator replica) that may later start a
// server on the same port. The port is bound (port 0: the kernel picks) and
// released at once; another process may take it meanwhile, so a test that
// binds it again says so when that fails. Returns 0 when no socket could be
// bound (callers ASSERT_NE(port, 0)).
//
// Contract: a free function; thread-safe.
#ifndef ASYMCACHE_TESTS_SERVICES_FREE_PORT_H_
#define ASYMCACHE_TESTS_SERVICES_FREE_PORT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

namespace asymcache::testing {

inline int FreeLocalPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t length = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_FREE_PORT_H_
