// Small loopback networking helpers shared by the tests.
#ifndef STRATA_TESTS_TESTING_NET_UTIL_H_
#define STRATA_TESTS_TESTING_NET_UTIL_H_

#include <string>

namespace strata::testing {

// A loopback TCP port that nobody listens on and that no other test process
// will be handed until this one exits; -1 if none is found. It comes from
// below the kernel's ephemeral range, which serves bind(0) and the local side
// of every outgoing connection: a port from that range, released until the
// daemon binds it, was taken by some client's connection in CI ("Address
// already in use"). Concurrent test processes agree through a lock file per
// port (tests/testing/free_port.sh takes the same locks).
int FreePort();

// A minimal HTTP/1.0 GET to 127.0.0.1:port; the whole response (status line,
// headers and body), or "" if the connection failed.
std::string HttpGet(int port, const std::string& path);

// The body of an HTTP response ("" if there is none).
std::string HttpBody(const std::string& response);

// The value of the first sample named exactly `series` (name plus labels, as
// written in the Prometheus text format) in `text`; -1 if absent.
double PrometheusValue(const std::string& text, const std::string& series);

// PrometheusValue of `series` in a fresh scrape of http://127.0.0.1:PORT/metrics.
double ScrapeMetric(int port, const std::string& series);

}  // namespace strata::testing

#endif  // STRATA_TESTS_TESTING_NET_UTIL_H_
