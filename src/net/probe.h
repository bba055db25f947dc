// Health probes (HTTP and TCP) run asynchronously on an IoRuntime, as Consul's checks do.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "net/io_runtime.h"

namespace haven::net {

struct ProbeResult {
  std::string status;  // passing|warning|critical
  std::string output;
};

// GET (or method) url with headers, within timeout_ms: 2xx passing, 429 warning, else critical;
// output like Consul's: "HTTP GET http://x/health: 200 OK Output: <first 4 KiB of body>".
// Connection errors/timeouts -> critical with the error text. https:// uses TLS (OpenSSL via
// boost::asio::ssl; tls_skip_verify disables verification). done is called exactly once.
void ProbeHttp(IoRuntime& runtime, const std::string& method, const std::string& url,
               const std::vector<std::pair<std::string, std::string>>& headers,
               bool tls_skip_verify, int64_t timeout_ms, std::function<void(ProbeResult)> done);

// TCP connect to "host:port" within timeout_ms: success -> passing ("TCP connect host:port:
// Success").
void ProbeTcp(IoRuntime& runtime, const std::string& host_port, int64_t timeout_ms,
              std::function<void(ProbeResult)> done);

}  // namespace haven::net
