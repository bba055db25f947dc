#include "proxy/http_util.h"

#include <vector>

namespace haven::proxy {
namespace http = boost::beast::http;

namespace {

// Splits a Connection header value ("close, X-Foo") into its tokens.
std::vector<std::string> ConnectionTokens(std::string_view value) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= value.size() && out.size() < 64) {
    size_t comma = value.find(',', start);
    std::string_view token =
        value.substr(start, comma == std::string_view::npos ? value.npos : comma - start);
    while (!token.empty() && (token.front() == ' ' || token.front() == '\t'))
      token.remove_prefix(1);
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
    if (!token.empty()) out.emplace_back(token);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace

void StripHopByHop(http::fields& fields) {
  std::vector<std::string> named;
  for (auto it = fields.find(http::field::connection);
       it != fields.end() && it->name() == http::field::connection; ++it) {
    for (std::string& token : ConnectionTokens(it->value())) named.push_back(std::move(token));
  }
  for (const std::string& token : named) {
    if (!boost::beast::iequals(token, "close") && !boost::beast::iequals(token, "keep-alive")) {
      fields.erase(token);
    }
  }
  fields.erase(http::field::connection);
  fields.erase(http::field::keep_alive);
  fields.erase(http::field::proxy_connection);
  fields.erase(http::field::te);
  fields.erase(http::field::trailer);
  fields.erase(http::field::transfer_encoding);
  fields.erase(http::field::upgrade);
}

Request MakeUpstreamRequest(const Request& client, std::string_view client_ip,
                            std::string_view upstream_host) {
  Request up = client;
  StripHopByHop(up.base());
  // The body is already buffered here: an upstream "100 Continue" would only confuse the reader.
  up.erase(http::field::expect);
  std::string xff;
  if (auto it = up.find("X-Forwarded-For"); it != up.end()) {
    xff = std::string(it->value()) + ", ";
  }
  xff += client_ip;
  up.set("X-Forwarded-For", xff);
  if (up.find(http::field::host) == up.end()) up.set(http::field::host, upstream_host);
  up.version(11);
  up.keep_alive(true);
  up.prepare_payload();
  return up;
}

void PrepareClientResponse(Response& res, bool head_request, unsigned version, bool keep_alive) {
  StripHopByHop(res.base());
  res.version(version);
  unsigned code = res.result_int();
  bool bodiless = head_request || code == 204 || code == 304 || (code >= 100 && code < 200);
  // A HEAD answer keeps the upstream's Content-Length: it describes the body a GET would get.
  if (!bodiless) res.prepare_payload();
  res.keep_alive(keep_alive);
}

Response ErrorResponse(http::status status, std::string_view message, unsigned version,
                       bool keep_alive) {
  Response res{status, version};
  res.set(http::field::content_type, "text/plain");
  res.body() = std::string(message) + "\n";
  res.prepare_payload();
  res.keep_alive(keep_alive);
  return res;
}

}  // namespace haven::proxy
