// HTTP request/response values passed between the server and its handler (plain std, no Beast).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace haven::net {

struct HttpRequest {
  std::string method;  // "GET", "PUT", ...
  std::string target;  // raw target, e.g. "/v1/kv/foo?recurse&index=5"
  std::string path;    // percent-decoded path, e.g. "/v1/kv/foo"
  // Decoded, in order; "recurse" -> ("recurse", "").
  std::vector<std::pair<std::string, std::string>> query;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercase
  std::string body;
  std::string remote;  // "127.0.0.1:54321"

  const std::string* Query(std::string_view name) const;  // nullptr if absent
  bool HasQuery(std::string_view name) const;
  const std::string* Header(std::string_view lowercase_name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// Handlers answer exactly once, possibly later and from any thread (a write waits for its fsync, a
// blocking query waits for a change). Calling it after the connection closed is harmless.
using Responder = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(HttpRequest, Responder)>;

// Splits a raw target into a percent-decoded path and query ('+' in the query means space).
// Returns false when the target is not origin-form or has a bad %-escape.
bool ParseTarget(std::string_view target, std::string* path,
                 std::vector<std::pair<std::string, std::string>>* query);

// Decodes %XX escapes; with plus_is_space, '+' becomes ' '. False on a malformed escape.
bool PercentDecode(std::string_view in, bool plus_is_space, std::string* out);

}  // namespace haven::net
