#include "net/http_client.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <optional>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>

namespace haven::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr size_t kMaxResponseBody = 256 << 20;
constexpr int64_t kMaxTimeoutMs = int64_t{24} * 3600 * 1000;

const std::string* FindHeader(const std::vector<std::pair<std::string, std::string>>& headers,
                              std::string_view name) {
  for (const auto& [k, v] : headers) {
    if (k == name) return &v;
  }
  return nullptr;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

const std::string* HttpClientResult::Header(std::string_view lowercase_name) const {
  return FindHeader(headers, lowercase_name);
}

struct HttpClient::Impl {
  Impl(std::string url, int64_t timeout) : base_url(std::move(url)), timeout_ms(timeout) {}

  Status ParseBase();
  Status Connect(std::chrono::steady_clock::time_point deadline);
  Result<HttpClientResult> Exchange(const http::request<http::string_body>& req,
                                    std::chrono::steady_clock::time_point deadline);
  // Runs the io_context until the started operation completes, then readies it for the next one.
  void RunPending() {
    ioc.run();
    ioc.restart();
  }
  Status Error(std::string_view what, const error_code& ec) const {
    std::string msg = std::string(what) + " " + where + ": " + ec.message();
    if (ec == beast::error::timeout) {
      return Status::Unavailable(std::string(what) + " " + where + ": timed out after " +
                                 std::to_string(timeout_ms) + " ms");
    }
    return what == "connect" ? Status::Unavailable(msg) : Status::IoError(msg);
  }

  std::string base_url;
  int64_t timeout_ms;
  std::string host;
  std::string port;
  std::string where;  // "host:port" for messages
  std::string base_path;
  Status parse_status;
  bool parsed = false;
  asio::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;
};

Status HttpClient::Impl::ParseBase() {
  if (parsed) return parse_status;
  parsed = true;
  auto url = boost::urls::parse_uri(base_url);
  if (!url) {
    return parse_status = Status::InvalidArgument("bad base url \"" + base_url + "\"");
  }
  if (url->scheme() != "http") {
    return parse_status = Status::InvalidArgument("unsupported scheme in \"" + base_url +
                                                  "\": only http:// is supported");
  }
  host = std::string(url->encoded_host_address());
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  port = url->has_port() ? std::string(url->port()) : "80";
  if (host.empty())
    return parse_status = Status::InvalidArgument("no host in \"" + base_url + "\"");
  where = std::string(url->encoded_host_and_port());
  if (!url->has_port()) where += ":80";
  base_path = std::string(url->encoded_path());
  while (!base_path.empty() && base_path.back() == '/') base_path.pop_back();
  return parse_status;
}

Status HttpClient::Impl::Connect(std::chrono::steady_clock::time_point deadline) {
  stream.reset();
  buffer.consume(buffer.size());
  tcp::resolver resolver(ioc);
  error_code ec;
  tcp::resolver::results_type endpoints;
  resolver.async_resolve(host, port, [&](error_code e, tcp::resolver::results_type r) {
    ec = e;
    endpoints = std::move(r);
  });
  RunPending();
  if (ec) return Status::Unavailable("resolve " + where + ": " + ec.message());
  stream.emplace(ioc);
  stream->expires_at(deadline);
  stream->async_connect(endpoints, [&](error_code e, const tcp::endpoint&) { ec = e; });
  RunPending();
  if (ec) {
    stream.reset();
    return Error("connect", ec);
  }
  stream->socket().set_option(tcp::no_delay(true), ec);
  return Status::Ok();
}

Result<HttpClientResult> HttpClient::Impl::Exchange(
    const http::request<http::string_body>& req, std::chrono::steady_clock::time_point deadline) {
  error_code ec;
  stream->expires_at(deadline);
  http::async_write(*stream, req, [&](error_code e, size_t) { ec = e; });
  RunPending();
  if (ec) return Error("write", ec);
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxResponseBody);
  parser.skip(req.method() == http::verb::head);
  http::async_read(*stream, buffer, parser, [&](error_code e, size_t) { ec = e; });
  RunPending();
  if (ec) return Error("read", ec);
  auto res = parser.release();
  HttpClientResult out;
  out.status = static_cast<int>(res.result_int());
  for (const auto& field : res) {
    out.headers.emplace_back(Lower(field.name_string()), std::string(field.value()));
  }
  out.body = std::move(res.body());
  if (!res.keep_alive()) stream.reset();
  return out;
}

HttpClient::HttpClient(std::string base_url, int64_t timeout_ms)
    : impl_(std::make_unique<Impl>(std::move(base_url),
                                   std::clamp<int64_t>(timeout_ms, 1, kMaxTimeoutMs))) {}

HttpClient::~HttpClient() = default;

Result<HttpClientResult> HttpClient::Request(
    std::string_view method, std::string_view target, std::string_view body,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  Impl& c = *impl_;
  if (Status s = c.ParseBase(); !s.ok()) return s;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(c.timeout_ms);
  http::verb verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) return Status::InvalidArgument("unknown HTTP method");
  if (target.empty() || target.front() != '/') {
    return Status::InvalidArgument("target must start with '/'");
  }
  http::request<http::string_body> req{verb, c.base_path + std::string(target), 11};
  req.set(http::field::host, c.where);
  req.set(http::field::user_agent, "haven");
  for (const auto& [name, value] : headers) req.set(name, value);
  req.keep_alive(true);
  if (!body.empty() || verb == http::verb::put || verb == http::verb::post) {
    req.body() = std::string(body);
    req.prepare_payload();
  }
  // A kept-alive connection the server closed fails on first use; one fresh retry covers that.
  bool reused = c.stream.has_value();
  if (!reused) {
    if (Status s = c.Connect(deadline); !s.ok()) return s;
  }
  auto result = c.Exchange(req, deadline);
  if (!result.ok() && reused && std::chrono::steady_clock::now() < deadline) {
    if (Status s = c.Connect(deadline); !s.ok()) return s;
    result = c.Exchange(req, deadline);
  }
  if (!result.ok()) c.stream.reset();
  return result;
}

}  // namespace haven::net
