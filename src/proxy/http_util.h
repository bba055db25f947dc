// Helpers of the proxy's HTTP path that need no socket: hop-by-hop header handling, X-Forwarded-For
// and the canned error responses (kept apart from the workers so unit tests can reach them).
#pragma once

#include <string>
#include <string_view>

#include <boost/beast/http.hpp>

namespace haven::proxy {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;

// Removes Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade and
// every header the Connection header names: they describe one hop, not the message.
void StripHopByHop(boost::beast::http::fields& fields);

// The request as sent upstream: hop-by-hop headers gone, client address appended to
// X-Forwarded-For, HTTP/1.1 keep-alive, Host kept (or set to `upstream_host` when absent).
Request MakeUpstreamRequest(const Request& client, std::string_view client_ip,
                            std::string_view upstream_host);

// Prepares an upstream response for the client: hop-by-hop headers gone, framing recomputed,
// keep-alive as the client connection needs.
void PrepareClientResponse(Response& res, bool head_request, unsigned version, bool keep_alive);

// A short text/plain error response ("no healthy instance for service X\n").
Response ErrorResponse(boost::beast::http::status status, std::string_view message,
                       unsigned version, bool keep_alive);

}  // namespace haven::proxy
