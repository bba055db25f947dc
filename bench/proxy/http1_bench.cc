// Micro-benchmark of the proxy's per-request head work: haven's http1 codec against Boost.Beast's
// parser and serializer (what it replaces), on the same request and response heads. Prints ns per
// request for each and the ratio. Usage: bench_proxy_http1 [iterations]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "proxy/http1.h"

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace h1 = haven::proxy::http1;

constexpr std::string_view kRequest =
    "GET /api/v1/items?id=42 HTTP/1.1\r\nHost: bench.local:8080\r\nUser-Agent: wrk/4.2\r\n"
    "Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\nX-Request-Id: 1234\r\n\r\n";
constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n"
    "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: backend\r\n\r\n";

double NsPer(std::chrono::steady_clock::duration d, long n) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) /
         static_cast<double>(n);
}

// One request and one response through haven's codec; returns bytes written (kept live).
size_t Http1Once(h1::RequestHead& req, h1::ResponseHead& res, std::string& out) {
  h1::ParseError err;
  out.clear();
  if (h1::ParseRequestHead(kRequest, {}, &req, &err) != h1::ParseStatus::kComplete) std::abort();
  h1::AppendUpstreamRequestHead(req, "10.0.0.1", "backend:80", &out);
  if (h1::ParseResponseHead(kResponse, {}, false, &res, &err) != h1::ParseStatus::kComplete) {
    std::abort();
  }
  h1::AppendClientResponseHead(res, req.version_minor, req.keep_alive, &out);
  return out.size();
}

// Appends what the serializer writes for the head, the way the proxy's write path gets it.
template <typename Serializer>
void DrainHeader(Serializer& s, std::string& out) {
  beast::error_code ec;
  s.split(true);
  while (!ec && !s.is_header_done()) {
    s.next(ec, [&](beast::error_code&, const auto& buffers) {
      size_t n = 0;
      for (auto b : beast::buffers_range_ref(buffers)) {
        out.append(static_cast<const char*>(b.data()), b.size());
        n += b.size();
      }
      s.consume(n);
    });
  }
}

// The same work done the Beast way: parse into fields, edit, serialize into a string.
size_t BeastOnce(std::string& out) {
  beast::error_code ec;
  http::request_parser<http::empty_body> rp;
  rp.put(boost::asio::buffer(kRequest.data(), kRequest.size()), ec);
  if (ec || !rp.is_header_done()) std::abort();
  http::request<http::empty_body> req = rp.release();
  req.erase(http::field::connection);
  req.set("X-Forwarded-For", "10.0.0.1");
  out.clear();
  http::request_serializer<http::empty_body> rs(req);
  DrainHeader(rs, out);

  http::response_parser<http::empty_body> sp;
  sp.skip(true);
  sp.put(boost::asio::buffer(kResponse.data(), kResponse.size()), ec);
  if (ec || !sp.is_header_done()) std::abort();
  http::response<http::empty_body> res = sp.release();
  res.keep_alive(true);
  http::response_serializer<http::empty_body> ss(res);
  DrainHeader(ss, out);
  return out.size();
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 1000000;
  if (n <= 0 || n > 1000000000) {
    std::fprintf(stderr, "usage: bench_proxy_http1 [iterations 1..1e9]\n");
    return 2;
  }
  h1::RequestHead req;
  h1::ResponseHead res;
  std::string out;
  size_t sink = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) sink += Http1Once(req, res, out);
  auto t1 = std::chrono::steady_clock::now();
  for (long i = 0; i < n; ++i) sink += BeastOnce(out);
  auto t2 = std::chrono::steady_clock::now();
  const double ours = NsPer(t1 - t0, n);
  const double beast_ns = NsPer(t2 - t1, n);
  std::printf("http1 codec: %.1f ns/request  beast: %.1f ns/request  beast/http1: %.2fx  (%zu)\n",
              ours, beast_ns, beast_ns / ours, sink % 10);
  return 0;
}
