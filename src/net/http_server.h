// HttpServer: an async HTTP/1.1 server (Beast) that hands each request to one HttpHandler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"
#include "net/http_types.h"
#include "net/io_runtime.h"

namespace haven::net {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8500;  // 0 = ephemeral
  size_t max_body_bytes = 8 << 20;
  size_t max_header_bytes = 64 << 10;
  // Longer than the longest blocking query, so a parked request is never cut by the idle timer.
  int64_t idle_timeout_ms = 5 * 60 * 1000 + 30000;
  int64_t read_timeout_ms = 30000;  // to read one whole request once its first byte arrived
  size_t max_connections = 10000;
};

class HttpServer {
 public:
  HttpServer(IoRuntime& runtime, HttpServerOptions options, HttpHandler handler);
  ~HttpServer();  // Stop()s
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds (port 0 = ephemeral) and starts accepting.
  Status Start();
  uint16_t port() const;
  std::string address() const;  // "127.0.0.1:8500"
  // Closes the listener and all connections; responders called later are ignored.
  void Stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace haven::net
