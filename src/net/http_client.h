// HttpClient: a small synchronous HTTP/1.1 client for the CLI, tests and benchmarks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace haven::net {

struct HttpClientResult {
  int status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercase
  const std::string* Header(std::string_view lowercase_name) const;
};

// One keep-alive connection, reconnects when the server closed it. Not thread-safe: one caller.
class HttpClient {
 public:
  explicit HttpClient(std::string base_url, int64_t timeout_ms = 10000);  // "http://127.0.0.1:8500"
  ~HttpClient();                                                          // pimpl
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // The timeout bounds connect+write+read. Errors: Unavailable (connect/timeout), IoError (I/O).
  Result<HttpClientResult> Request(
      std::string_view method, std::string_view target, std::string_view body = {},
      const std::vector<std::pair<std::string, std::string>>& headers = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace haven::net
