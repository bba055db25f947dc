// Router: finds the route of an HTTP request from its Host header and target path, the first
// route in the configured order whose host and path prefix match. Pure: no I/O.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/proxy_options.h"

namespace haven::proxy {

class Router {
 public:
  explicit Router(const std::vector<RouteOptions>& routes);

  // Index into the routes given, or nullopt when none matches. `host` is the Host header as sent
  // (a port and letter case are ignored); `target` is the request target in origin form ("/a?b")
  // or absolute form ("http://h/a"), whose authority then takes the Host header's place.
  std::optional<size_t> Match(std::string_view host, std::string_view target) const;

  // The host part of a Host header: "Example.com:80" -> "example.com", "[::1]:80" -> "[::1]".
  static std::string NormalizeHost(std::string_view host);

 private:
  struct Entry {
    std::string host;  // normalized; "" = any
    std::string path_prefix;
  };
  std::vector<Entry> entries_;
};

}  // namespace haven::proxy
