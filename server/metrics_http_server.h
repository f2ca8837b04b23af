// A minimal HTTP/1.x server for Prometheus scrapes: GET /metrics answers the
// text exposition format produced by a callback; anything else gets 404.
//
// Why not prometheus-cpp's civetweb-based Exposer: civetweb starts its
// threads with a fixed ~100 KB stack, and in a build that links cuBLASLt the
// process's static TLS is bigger than that, so pthread_create fails with
// EINVAL and no metrics are served. One thread with a normal stack, serving
// is all a scrape endpoint needs.
//
// Slow clients: each connection is served on a thread of its own (at most
// kMaxConnections at once; more are closed at once), and the whole request,
// reading it and writing the answer, must finish within kRequestTimeout of
// its accept, so neither one slow client nor many silent ones can hold
// scrapes (Prometheus' default scrape timeout is 10 s).
//
// Threading: Start() and the destructor from one thread; `render` is called
// on connection threads, possibly several at once (it must be thread-safe;
// prometheus-cpp's Collect is).
#ifndef STRATA_SERVER_METRICS_HTTP_SERVER_H_
#define STRATA_SERVER_METRICS_HTTP_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace strata {

class MetricsHttpServer {
 public:
  // Connections served at once.
  static constexpr int kMaxConnections = 16;
  // Accept to the answer's last byte, per connection.
  static constexpr int kRequestTimeoutMs = 2000;

  // Binds host:port (port 0 picks a free one; IPv6 literals with or without
  // brackets) and starts serving. UNAVAILABLE when the address cannot be
  // bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port, std::function<std::string()> render);

  // Stops accepting and joins the thread.
  ~MetricsHttpServer();

  int port() const { return port_; }
  // Connections being served now (accepted, not yet closed).
  int num_serving() const {
    absl::MutexLock lock(&mu_);
    return num_serving_;
  }

 private:
  MetricsHttpServer(int listen_fd, int port,
                    std::function<std::string()> render);
  void Run();
  // Serves one connection and closes it; on its own thread.
  void Serve(int fd);

  const int listen_fd_;
  const int port_;
  const std::function<std::string()> render_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  // Connection threads running; the destructor waits for 0.
  mutable absl::Mutex mu_;
  int num_serving_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata

#endif  // STRATA_SERVER_METRICS_HTTP_SERVER_H_
