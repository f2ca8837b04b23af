// A minimal HTTP/1.x server for Prometheus scrapes: GET /metrics answers the
// text exposition format produced by a callback; anything else gets 404.
//
// Why not prometheus-cpp's civetweb-based Exposer: civetweb starts its
// threads with a fixed ~100 KB stack, and in a build that links cuBLASLt the
// process's static TLS is bigger than that, so pthread_create fails with
// EINVAL and no metrics are served. One thread with a normal stack, serving
// one short request at a time, is all a scrape endpoint needs.
//
// Threading: Start() and the destructor from one thread; `render` is called
// on the server's own thread.
#ifndef STRATA_SERVER_METRICS_HTTP_SERVER_H_
#define STRATA_SERVER_METRICS_HTTP_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace strata {

class MetricsHttpServer {
 public:
  // Binds host:port (port 0 picks a free one; IPv6 literals with or without
  // brackets) and starts serving. UNAVAILABLE when the address cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::function<std::string()> render);

  // Stops accepting and joins the thread.
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer(int listen_fd, int port,
                    std::function<std::string()> render);
  void Run();
  void Serve(int fd);

  const int listen_fd_;
  const int port_;
  const std::function<std::string()> render_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace strata

#endif  // STRATA_SERVER_METRICS_HTTP_SERVER_H_
