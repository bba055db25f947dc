// backend: a tiny single-threaded HTTP/1.1 server for the proxy benchmark. It answers every request
// with "200 ok" and keeps the connection alive, so that haven proxy and HAProxy are measured
// against a backend that costs as little CPU as possible. Prints "listening port=N" once bound.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/write.hpp>
#include <cctype>
#include <cstddef>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

namespace haven::bench {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Limits: a misbehaving client gets its connection closed, never unbounded memory.
constexpr size_t kMaxHeaderBytes = 16 * 1024;
constexpr size_t kMaxBodyBytes = 1024 * 1024;
constexpr size_t kReadChunk = 16 * 1024;
constexpr int kMaxConnections = 10'000;

constexpr std::string_view kOkResponse =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
constexpr std::string_view kBadResponse =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

int g_open_connections = 0;

// Case-insensitive search for a header name at the start of a line; returns its value.
std::optional<std::string_view> HeaderValue(std::string_view head, std::string_view name) {
  size_t pos = 0;
  while ((pos = head.find("\r\n", pos)) != std::string_view::npos) {
    pos += 2;
    std::string_view line = head.substr(pos, head.find("\r\n", pos) - pos);
    if (line.size() <= name.size() || line[name.size()] != ':') continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(line[i])) == name[i];
    }
    if (!same) continue;
    std::string_view value = line.substr(name.size() + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    return value;
  }
  return std::nullopt;
}

// Parses a Content-Length value; nullopt when malformed or above the limit.
std::optional<size_t> ParseContentLength(std::string_view text) {
  if (text.empty() || text.size() > 9) return std::nullopt;
  size_t n = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<size_t>(c - '0');
  }
  if (n > kMaxBodyBytes) return std::nullopt;
  return n;
}

// One client connection: reads pipelined requests and queues one answer per complete request.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  explicit Connection(tcp::socket socket) : socket_(std::move(socket)) { ++g_open_connections; }
  ~Connection() { --g_open_connections; }

  void Start() { Read(); }

 private:
  void Read() {
    size_t old = in_.size();
    in_.resize(old + kReadChunk);
    socket_.async_read_some(
        asio::buffer(in_.data() + old, kReadChunk),
        [self = shared_from_this(), old](boost::system::error_code ec, size_t n) {
          self->in_.resize(old + n);
          if (ec) return;
          self->OnData();
        });
  }

  void OnData() {
    std::string out;
    bool close = false;
    size_t consumed = 0;
    while (true) {
      std::string_view rest(in_.data() + consumed, in_.size() - consumed);
      size_t end = rest.find("\r\n\r\n");
      if (end == std::string_view::npos) {
        close = rest.size() > kMaxHeaderBytes;
        break;
      }
      std::string_view head = rest.substr(0, end);
      size_t body = 0;
      if (auto cl = HeaderValue(head, "content-length")) {
        auto n = ParseContentLength(*cl);
        if (!n) {
          out += kBadResponse;
          close = true;
          break;
        }
        body = *n;
      }
      if (HeaderValue(head, "transfer-encoding")) {  // chunked bodies are not needed here
        out += kBadResponse;
        close = true;
        break;
      }
      if (rest.size() < end + 4 + body) break;
      consumed += end + 4 + body;
      out += kOkResponse;
    }
    in_.erase(0, consumed);
    if (out.empty() && !close) return Read();
    Write(std::move(out), close);
  }

  void Write(std::string data, bool close) {
    auto buf = std::make_shared<std::string>(std::move(data));
    asio::async_write(
        socket_, asio::buffer(*buf),
        [self = shared_from_this(), buf, close](boost::system::error_code ec, size_t) {
          if (ec || close) return;
          self->Read();
        });
  }

  tcp::socket socket_;
  std::string in_;
};

void Accept(tcp::acceptor& acceptor) {
  acceptor.async_accept([&acceptor](boost::system::error_code ec, tcp::socket socket) {
    if (!ec && g_open_connections < kMaxConnections) {
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<Connection>(std::move(socket))->Start();
    }
    Accept(acceptor);
  });
}

int Run(const std::string& host, uint16_t port) {
  asio::io_context io(1);
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) {
    std::fprintf(stderr, "backend: bad --host %s\n", host.c_str());
    return 2;
  }
  tcp::acceptor acceptor(io);
  tcp::endpoint endpoint(address, port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::fprintf(stderr, "backend: cannot listen on %s:%u: %s\n", host.c_str(), port,
                 ec.message().c_str());
    return 1;
  }
  std::printf("listening port=%u\n", acceptor.local_endpoint().port());
  std::fflush(stdout);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&io](boost::system::error_code, int) { io.stop(); });
  Accept(acceptor);
  io.run();
  return 0;
}

}  // namespace
}  // namespace haven::bench

int main(int argc, char** argv) {
  CLI::App app{"Single-threaded HTTP/1.1 backend answering 200 ok (proxy benchmark)"};
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  app.add_option("--host", host, "Address to listen on")->capture_default_str();
  app.add_option("--port", port, "Port to listen on (0: ephemeral)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return haven::bench::Run(host, port);
}
