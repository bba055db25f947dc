// Tests for the net layer: HTTP server and client round trips, limits, failures, and probes.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "base/metrics.h"
#include "net/http_client.h"
#include "net/http_server.h"
#include "net/io_runtime.h"
#include "net/probe.h"

namespace haven::net {
namespace {

using namespace std::chrono_literals;

// A server on an ephemeral loopback port with its own runtime.
class ServerFixture : public ::testing::Test {
 protected:
  void StartServer(HttpHandler handler, HttpServerOptions opts = {}) {
    opts.port = 0;
    runtime_.Start();
    server_ = std::make_unique<HttpServer>(runtime_, opts, std::move(handler));
    ASSERT_TRUE(server_->Start().ok());
  }
  std::string BaseUrl() const { return "http://" + server_->address(); }
  void TearDown() override {
    if (server_) server_->Stop();
    runtime_.Stop();
  }

  // Responders a handler keeps without answering; outlive the runtime's threads.
  void Park(Responder r) {
    std::lock_guard lock(mu_);
    parked_.push_back(std::move(r));
  }

  std::mutex mu_;
  std::vector<Responder> parked_;
  IoRuntime runtime_{2};
  std::unique_ptr<HttpServer> server_;
};

// A port that nothing listens on: bound then closed.
uint16_t ClosedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Sends raw bytes and returns everything the server sends until it closes (or 5 s pass).
std::string RawExchange(uint16_t port, const std::string& bytes) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

HttpResponse Text(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.content_type = "text/plain";
  r.body = std::move(body);
  return r;
}

ProbeResult Wait(std::future<ProbeResult>& f) {
  if (f.wait_for(10s) != std::future_status::ready) return {"none", "probe never answered"};
  return f.get();
}

TEST(NetTarget, ParsesPathAndQuery) {
  std::string path;
  std::vector<std::pair<std::string, std::string>> query;
  ASSERT_TRUE(ParseTarget("/v1/kv/foo%2Fbar?recurse&index=5&key=a%20b+c&&x=", &path, &query));
  EXPECT_EQ(path, "/v1/kv/foo/bar");
  std::vector<std::pair<std::string, std::string>> want{
      {"recurse", ""}, {"index", "5"}, {"key", "a b c"}, {"x", ""}};
  EXPECT_EQ(query, want);
  ASSERT_TRUE(ParseTarget("/a+b", &path, &query));
  EXPECT_EQ(path, "/a+b");  // '+' is literal in a path
  ASSERT_TRUE(ParseTarget("http://host:1/p?q=1", &path, &query));
  EXPECT_EQ(path, "/p");
  EXPECT_FALSE(ParseTarget("/bad%zz", &path, &query));
  EXPECT_FALSE(ParseTarget("/bad%4", &path, &query));
  EXPECT_FALSE(ParseTarget("/x?k=%", &path, &query));
  EXPECT_FALSE(ParseTarget("nope", &path, &query));
  EXPECT_FALSE(ParseTarget("", &path, &query));
}

TEST(NetRuntime, RunAfterFiresAndCancelStopsIt) {
  IoRuntime rt(1);
  rt.Start();
  std::promise<void> fired;
  rt.RunAfter(10, [&] { fired.set_value(); });
  EXPECT_EQ(fired.get_future().wait_for(5s), std::future_status::ready);
  std::atomic<bool> cancelled_ran{false};
  auto t = rt.RunAfter(50, [&] { cancelled_ran = true; });
  t->Cancel();
  std::promise<void> later;
  rt.RunAfter(100, [&] { later.set_value(); });
  later.get_future().wait_for(5s);
  EXPECT_FALSE(cancelled_ran);
  rt.Stop();
}

TEST_F(ServerFixture, RoundTripKeepAliveOneConnection) {
  StartServer([](HttpRequest req, Responder respond) {
    HttpResponse r;
    r.body = req.method + " " + req.path + " " + req.remote + " " + req.body;
    r.headers.emplace_back("X-Index", "7");
    respond(std::move(r));
  });
  HttpClient client(BaseUrl());
  std::string first_remote;
  for (int i = 0; i < 200; ++i) {
    auto res = client.Request("PUT", "/v1/x/" + std::to_string(i), "b" + std::to_string(i));
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->status, 200);
    ASSERT_NE(res->Header("x-index"), nullptr);
    EXPECT_EQ(*res->Header("x-index"), "7");
    EXPECT_EQ(*res->Header("content-type"), "application/json");
    std::string body = res->body;
    std::string remote = body.substr(body.find(' ', 4) + 1);
    remote = remote.substr(0, remote.find(' '));
    if (i == 0) first_remote = remote;
    EXPECT_EQ(remote, first_remote) << "a new connection was opened";
    EXPECT_EQ(body,
              "PUT /v1/x/" + std::to_string(i) + " " + first_remote + " b" + std::to_string(i));
  }
}

TEST_F(ServerFixture, QueryAndHeadersReachTheHandler) {
  std::promise<HttpRequest> seen;
  StartServer([&](HttpRequest req, Responder respond) {
    seen.set_value(req);
    respond(Text(200, "ok"));
  });
  HttpClient client(BaseUrl());
  auto res = client.Request("GET", "/v1/kv/a%2Fb?recurse&index=5&q=x+y", {},
                            {{"X-Consul-Token", "secret"}});
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  HttpRequest req = seen.get_future().get();
  EXPECT_EQ(req.path, "/v1/kv/a/b");
  EXPECT_EQ(req.target, "/v1/kv/a%2Fb?recurse&index=5&q=x+y");
  EXPECT_TRUE(req.HasQuery("recurse"));
  ASSERT_NE(req.Query("index"), nullptr);
  EXPECT_EQ(*req.Query("index"), "5");
  EXPECT_EQ(*req.Query("q"), "x y");
  EXPECT_EQ(req.Query("nope"), nullptr);
  ASSERT_NE(req.Header("x-consul-token"), nullptr);
  EXPECT_EQ(*req.Header("x-consul-token"), "secret");
}

TEST_F(ServerFixture, DeferredResponderFromAnotherThread) {
  std::vector<std::thread> threads;
  std::mutex mu;
  StartServer([&](HttpRequest, Responder respond) {
    std::lock_guard lock(mu);
    threads.emplace_back([respond] {
      std::this_thread::sleep_for(50ms);
      respond(Text(201, "later"));
      respond(Text(500, "second answer is ignored"));
    });
  });
  HttpClient client(BaseUrl());
  for (int i = 0; i < 3; ++i) {
    auto res = client.Request("GET", "/wait");
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->status, 201);
    EXPECT_EQ(res->body, "later");
  }
  std::lock_guard lock(mu);
  for (auto& t : threads) t.join();
}

TEST_F(ServerFixture, OversizeBodyGets413) {
  HttpServerOptions opts;
  opts.max_body_bytes = 1024;
  StartServer([](HttpRequest, Responder respond) { respond(Text(200, "ok")); }, opts);
  HttpClient client(BaseUrl());
  auto res = client.Request("PUT", "/big", std::string(4096, 'x'));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 413);
  EXPECT_NE(res->body.find("1024"), std::string::npos);
  // The client reconnects after the server closed the connection.
  auto again = client.Request("PUT", "/small", "x");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->status, 200);
}

TEST_F(ServerFixture, GarbageGets400AndClose) {
  StartServer([](HttpRequest, Responder respond) { respond(Text(200, "ok")); });
  std::string out = RawExchange(server_->port(), std::string("\x01\x02 garbage\r\n\r\n", 15));
  EXPECT_EQ(out.rfind("HTTP/1.1 400", 0), 0u) << out;
  out = RawExchange(server_->port(), "GET nope HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(out.rfind("HTTP/1.1 400", 0), 0u) << out;
}

TEST_F(ServerFixture, PipelinedRequestsAnsweredInOrder) {
  StartServer([](HttpRequest req, Responder respond) { respond(Text(200, req.path)); });
  std::string out = RawExchange(server_->port(),
                                "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                                "GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  size_t one = out.find("/one"), two = out.find("/two");
  ASSERT_NE(one, std::string::npos) << out;
  ASSERT_NE(two, std::string::npos) << out;
  EXPECT_LT(one, two);
}

TEST_F(ServerFixture, Http10ClosesAfterResponse) {
  StartServer([](HttpRequest, Responder respond) { respond(Text(200, "hi")); });
  std::string out = RawExchange(server_->port(), "GET / HTTP/1.0\r\n\r\n");
  EXPECT_EQ(out.rfind("HTTP/1.0 200", 0), 0u) << out;
  EXPECT_NE(out.find("Content-Length: 2"), std::string::npos) << out;
}

TEST_F(ServerFixture, HandlerThrowingGets500) {
  StartServer([](HttpRequest, Responder) { throw std::runtime_error("boom"); });
  HttpClient client(BaseUrl());
  auto res = client.Request("GET", "/");
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 500);
}

TEST_F(ServerFixture, ConnectionLimit) {
  HttpServerOptions opts;
  opts.max_connections = 1;
  StartServer([](HttpRequest, Responder respond) { respond(Text(200, "ok")); }, opts);
  HttpClient holder(BaseUrl());
  ASSERT_TRUE(holder.Request("GET", "/").ok());  // keeps its connection open
  std::string out = RawExchange(server_->port(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(out.rfind("HTTP/1.1 503", 0), 0u) << out;
}

TEST_F(ServerFixture, StopWhileRequestPending) {
  std::promise<Responder> parked;
  StartServer([&](HttpRequest, Responder respond) { parked.set_value(respond); });
  auto pending = std::async(std::launch::async, [url = BaseUrl()] {
    HttpClient client(url, 10000);
    return client.Request("GET", "/block");
  });
  Responder respond = parked.get_future().get();
  auto start = std::chrono::steady_clock::now();
  server_->Stop();
  ASSERT_EQ(pending.wait_for(5s), std::future_status::ready);
  auto res = pending.get();
  EXPECT_FALSE(res.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  respond(Text(200, "too late"));  // harmless
  HttpClient fresh(BaseUrl(), 1000);
  EXPECT_FALSE(fresh.Request("GET", "/").ok());  // the listener is closed
}

TEST_F(ServerFixture, ClientHangupWhileParkedClosesTheConnection) {
  std::promise<void> parked;
  StartServer([&](HttpRequest, Responder respond) {
    Park(std::move(respond));
    parked.set_value();
  });
  metrics::Gauge& open = metrics::Registry::Default().GetGauge("haven_http_connections", "");
  double before = open.Value();
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(server_->port());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::string req = "GET /block HTTP/1.1\r\nHost: x\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  ASSERT_EQ(parked.get_future().wait_for(5s), std::future_status::ready);
  EXPECT_EQ(open.Value(), before + 1);
  ::close(fd);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (open.Value() != before && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(open.Value(), before);
  parked_.back()(Text(200, "nobody listens"));  // harmless
}

TEST_F(ServerFixture, ClientTimesOutOnSilentServer) {
  StartServer([this](HttpRequest, Responder respond) { Park(std::move(respond)); });
  HttpClient client(BaseUrl(), 200);
  auto start = std::chrono::steady_clock::now();
  auto res = client.Request("GET", "/never");
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kUnavailable);
  EXPECT_NE(res.status().message().find("timed out"), std::string::npos) << res.status().message();
  EXPECT_GE(took, 150ms);
  EXPECT_LT(took, 3s);
}

TEST(NetClient, ClosedPortIsUnavailable) {
  uint16_t port = ClosedPort();
  HttpClient client("http://127.0.0.1:" + std::to_string(port), 2000);
  auto res = client.Request("GET", "/");
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kUnavailable);
  EXPECT_EQ(res.status().message(),
            "connect 127.0.0.1:" + std::to_string(port) + ": Connection refused");
}

TEST(NetClient, BadBaseUrl) {
  HttpClient client("not a url", 1000);
  auto res = client.Request("GET", "/");
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), Code::kInvalidArgument);
}

class ProbeFixture : public ServerFixture {
 protected:
  void SetUp() override {
    StartServer([this](HttpRequest req, Responder respond) {
      if (req.path == "/never") return Park(std::move(respond));
      respond(Text(std::stoi(req.path.substr(1)), "body of " + req.path));
    });
  }
  ProbeResult Http(const std::string& url, int64_t timeout_ms = 5000) {
    std::promise<ProbeResult> p;
    auto f = p.get_future();
    ProbeHttp(runtime_, "GET", url, {{"X-Test", "1"}}, false, timeout_ms,
              [&p](ProbeResult r) { p.set_value(std::move(r)); });
    return Wait(f);
  }
  ProbeResult Tcp(const std::string& host_port) {
    std::promise<ProbeResult> p;
    auto f = p.get_future();
    ProbeTcp(runtime_, host_port, 2000, [&p](ProbeResult r) { p.set_value(std::move(r)); });
    return Wait(f);
  }
};

TEST_F(ProbeFixture, HttpStatusesMapToCheckStatus) {
  std::string url = BaseUrl() + "/200";
  ProbeResult ok = Http(url);
  EXPECT_EQ(ok.status, "passing");
  EXPECT_EQ(ok.output, "HTTP GET " + url + ": 200 OK Output: body of /200");
  EXPECT_EQ(Http(BaseUrl() + "/204").status, "passing");
  EXPECT_EQ(Http(BaseUrl() + "/429").status, "warning");
  ProbeResult bad = Http(BaseUrl() + "/500");
  EXPECT_EQ(bad.status, "critical");
  EXPECT_NE(bad.output.find("500 Internal Server Error"), std::string::npos) << bad.output;
}

TEST_F(ProbeFixture, HttpRefusedAndTimeoutAreCritical) {
  ProbeResult refused = Http("http://127.0.0.1:" + std::to_string(ClosedPort()) + "/");
  EXPECT_EQ(refused.status, "critical");
  EXPECT_NE(refused.output.find("Connection refused"), std::string::npos) << refused.output;
  auto start = std::chrono::steady_clock::now();
  ProbeResult slow = Http(BaseUrl() + "/never", 200);
  EXPECT_EQ(slow.status, "critical");
  EXPECT_NE(slow.output.find("timed out"), std::string::npos) << slow.output;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  EXPECT_EQ(Http("ftp://x/").status, "critical");
  EXPECT_EQ(Http("garbage").status, "critical");
}

TEST_F(ProbeFixture, HttpOutputIsCappedAt4KiB) {
  server_->Stop();
  HttpServer big(runtime_, {.port = 0}, [](HttpRequest, Responder respond) {
    respond(Text(200, std::string(100000, 'z')));
  });
  ASSERT_TRUE(big.Start().ok());
  ProbeResult r = Http("http://" + big.address() + "/");
  EXPECT_EQ(r.status, "passing");
  EXPECT_LE(r.output.size(), 4096u + 200u);
  EXPECT_GE(r.output.size(), 4096u);
  big.Stop();
}

TEST_F(ProbeFixture, TcpOpenAndClosed) {
  std::string open = server_->address();
  ProbeResult up = Tcp(open);
  EXPECT_EQ(up.status, "passing");
  EXPECT_EQ(up.output, "TCP connect " + open + ": Success");
  ProbeResult down = Tcp("127.0.0.1:" + std::to_string(ClosedPort()));
  EXPECT_EQ(down.status, "critical");
  EXPECT_NE(down.output.find("Connection refused"), std::string::npos) << down.output;
  EXPECT_EQ(Tcp("no-port").status, "critical");
  // An IP, not a name: a DNS lookup on a machine without DNS can outlast the test.
  EXPECT_EQ(Tcp("127.0.0.1:99999").status, "critical");
}

}  // namespace
}  // namespace haven::net
