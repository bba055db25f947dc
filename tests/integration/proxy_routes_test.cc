// haven proxy --config: listeners routing by Host and path prefix to clusters, per-cluster and
// per-instance metrics, bad config files, POST retried only when the route or the request says so,
// responses larger than the old buffering limit streamed, and chunked request bodies.
#include <signal.h>

#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/proc_status.h"
#include "harness.h"
#include "net/http_client.h"
#include "proxy_harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

class ProxyRoutesTest : public ::testing::Test {
 protected:
  // Starts backend `name` and remembers it.
  void StartNamed(const std::string& name) {
    backends_[name] = StartBackend(name);
    ASSERT_GT(backends_[name]->Port("backend"), 0);
  }
  std::string Addr(const std::string& name) {
    return "127.0.0.1:" + std::to_string(backends_[name]->Port("backend"));
  }
  void StartProxyFrom(const std::string& yaml) {
    proxy_ = StartProxyWithConfig(yaml);
    admin_port_ = proxy_->Port("admin");
    ASSERT_GT(admin_port_, 0) << proxy_->ReadLog();
  }
  std::string Metrics() { return Api(Url(admin_port_), 5000).Get("/metrics").body; }
  json::value Status() { return ParseJson(Api(Url(admin_port_), 5000).Get("/status").body); }
  // Requests in flight at the backend at `address`, summed over workers and clusters.
  int64_t PendingAt(const std::string& address) {
    json::value st = Status();
    int64_t n = 0;
    if (!st.is_object() || !st.as_object().contains("workers")) return -1;
    for (const auto& w : st.at("workers").as_array()) {
      for (const auto& [name, eps] : w.at("clusters").as_object()) {
        for (const auto& ep : eps.as_array()) {
          if (ep.at("address").as_string() == address) n += ep.at("pending").to_number<int64_t>();
        }
      }
    }
    return n;
  }
  void TearDown() override {
    if (HasFailure() && proxy_) std::cerr << "proxy log:\n" << proxy_->ReadLog() << "\n";
  }

  std::map<std::string, std::unique_ptr<ChildProcess>> backends_;
  std::unique_ptr<ChildProcess> proxy_;
  int admin_port_ = 0;
};

// GET `target` with Host `host` ("" keeps the client's own) on `port`: "STATUS BODY".
std::string GetVia(int port, const std::string& target, const std::string& host = "") {
  net::HttpClient client(Url(port), 5000);
  std::vector<std::pair<std::string, std::string>> headers;
  if (!host.empty()) headers.emplace_back("Host", host);
  auto r = client.Request("GET", target, {}, headers);
  if (!r.ok()) return "error " + r.status().ToString();
  return std::to_string(r->status) + " " + r->body;
}

// The lines of Prometheus text `metrics` starting with `name` that contain every one of `parts`.
std::vector<std::string> SeriesWith(const std::string& metrics, const std::string& name,
                                    const std::vector<std::string>& parts) {
  std::vector<std::string> out;
  std::istringstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name, 0) != 0) continue;
    bool all = true;
    for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
    if (all) out.push_back(line);
  }
  return out;
}

TEST_F(ProxyRoutesTest, RoutesByHostAndPathPrefixToClusters) {
  StartNamed("a0");
  StartNamed("a1");
  StartNamed("b0");
  StartProxyFrom(R"(threads: 2
listeners:
  - listen: 127.0.0.1:0
    routes:
      - host: beta.test
        cluster: beta
      - path: /beta/
        cluster: beta
      - path: /
        cluster: alpha
  - listen: 127.0.0.1:0
    cluster: beta
  - listen: 127.0.0.1:0
    routes:
      - path: /only/
        cluster: alpha
clusters:
  - name: alpha
    upstream: [)" +
                 Addr("a0") + ", " + Addr("a1") + R"(]
    lb: round_robin
  - name: beta
    upstream: )" +
                 Addr("b0") + "\n");
  const int l1 = proxy_->ListenerPort(0), l2 = proxy_->ListenerPort(1),
            l3 = proxy_->ListenerPort(2);
  ASSERT_GT(l1, 0);
  ASSERT_GT(l2, 0);
  ASSERT_GT(l3, 0);
  ASSERT_NE(l1, l2);

  // Catch-all to alpha: both alpha instances answer, beta never.
  std::map<std::string, int> by;
  for (int i = 0; i < 20; ++i) ++by[GetVia(l1, "/id")];
  EXPECT_EQ(by.size(), 2u) << "only a0 and a1 should answer";
  EXPECT_GT(by["200 a0"], 0);
  EXPECT_GT(by["200 a1"], 0);
  // Host route: matched without the port and case-insensitively, whatever the path.
  EXPECT_EQ(GetVia(l1, "/id", "beta.test"), "200 b0");
  EXPECT_EQ(GetVia(l1, "/anything/else", "BETA.test:8080"), "200 b0");
  EXPECT_NE(GetVia(l1, "/id", "xbeta.test"), "200 b0");
  // Path prefix route: the path is forwarded unchanged (the backend answers its name anyway).
  EXPECT_EQ(GetVia(l1, "/beta/x?y=1"), "200 b0");
  EXPECT_EQ(GetVia(l1, "/beta/"), "200 b0");
  EXPECT_NE(GetVia(l1, "/betax"), "200 b0") << "a prefix /beta/ must not take /betax";
  EXPECT_NE(GetVia(l1, "/headers", "beta.test").find("host: beta.test"), std::string::npos)
      << "Host is forwarded as the client sent it";
  // `cluster: beta` shorthand: one catch-all route.
  for (int i = 0; i < 5; ++i) EXPECT_EQ(GetVia(l2, "/id"), "200 b0");
  // No catch-all: an unknown path is a 404 saying why.
  EXPECT_EQ(GetVia(l3, "/only/x").substr(0, 5), "200 a");
  std::string miss = GetVia(l3, "/elsewhere");
  EXPECT_EQ(miss.substr(0, 4), "404 ") << miss;
  EXPECT_NE(miss.find("no route"), std::string::npos) << miss;
  EXPECT_NE(miss.find("/elsewhere"), std::string::npos) << miss;

  const std::string m = Metrics();
  EXPECT_FALSE(SeriesWith(m, "haven_proxy_requests_total", {"service=\"alpha\"", "2xx"}).empty())
      << m;
  EXPECT_FALSE(SeriesWith(m, "haven_proxy_requests_total", {"service=\"beta\"", "2xx"}).empty())
      << m;
  auto per_instance =
      SeriesWith(m, "haven_proxy_upstream_duration_seconds_count", {"service=\"alpha\""});
  EXPECT_GE(per_instance.size(), 2u) << "one series per alpha instance\n" << m;
  for (const auto& line : per_instance) EXPECT_NE(line.find("instance=\""), std::string::npos);
  EXPECT_FALSE(
      SeriesWith(m, "haven_proxy_upstream_duration_seconds_count", {"service=\"beta\""}).empty())
      << m;

  json::value st = Status();
  ASSERT_TRUE(st.is_object()) << "bad /status JSON";
  std::set<std::string> clusters;
  for (const auto& c : st.at("clusters").as_array()) {
    clusters.insert(std::string(c.at("name").as_string()));
  }
  EXPECT_EQ(clusters, (std::set<std::string>{"alpha", "beta"}));
  EXPECT_EQ(st.at("listeners").as_array().size(), 3u);
  for (const auto& w : st.at("workers").as_array()) {
    EXPECT_EQ(w.at("clusters").at("alpha").as_array().size(), 2u);
    EXPECT_EQ(w.at("clusters").at("beta").as_array().size(), 1u);
  }
}

TEST_F(ProxyRoutesTest, BadConfigFilesExitWithCode2AndSayWhere) {
  // Line 6 holds the unknown key.
  ProxyRun unknown = RunProxyWithConfig(R"(listeners:
  - listen: 127.0.0.1:0
    cluster: web
clusters:
  - name: web
    lbb: round_robin
    upstream: 127.0.0.1:1
)");
  EXPECT_TRUE(unknown.exit.exited) << unknown.output;
  EXPECT_EQ(unknown.exit.code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("proxy.yaml:6"), std::string::npos) << unknown.output;
  EXPECT_NE(unknown.output.find("lbb"), std::string::npos) << unknown.output;
  EXPECT_EQ(unknown.output.find("event=listening"), std::string::npos);

  ProxyRun missing = RunProxyWithConfig(R"(listeners:
  - listen: 127.0.0.1:0
    routes:
      - path: /
        cluster: nosuch
clusters:
  - name: web
    upstream: 127.0.0.1:1
)");
  EXPECT_TRUE(missing.exit.exited) << missing.output;
  EXPECT_EQ(missing.exit.code, 2) << missing.output;
  EXPECT_NE(missing.output.find("nosuch"), std::string::npos) << missing.output;
  EXPECT_EQ(missing.output.find("event=listening"), std::string::npos);

  ProxyRun syntax = RunProxyWithConfig("listeners: [\n  - listen: 127.0.0.1:0\n");
  EXPECT_EQ(syntax.exit.code, 2) << syntax.output;
  EXPECT_NE(syntax.output.find("proxy.yaml:"), std::string::npos) << syntax.output;

  // Listener flags and --config together are refused.
  ProxyRun both = RunProxyWithConfig(R"(listeners:
  - listen: 127.0.0.1:0
    cluster: web
clusters:
  - name: web
    upstream: 127.0.0.1:1
)",
                                     {"--upstream", "127.0.0.1:2"});
  EXPECT_EQ(both.exit.code, 2) << both.output;
  EXPECT_NE(both.output.find("either --config or the listener flags"), std::string::npos)
      << both.output;
}

// How one held POST went: which backend held it (by pending counts) and what the client got.
struct HeldPost {
  std::string kind;     // "plain", "header" or "route"
  std::string holder;   // backend name that held it while it waited
  std::string outcome;  // "STATUS BODY"
};

// POSTs held by the backends (?sleep); one backend is SIGKILLed: plain POSTs on it get 502, POSTs
// with X-Haven-Retryable: true and POSTs on a retry-non-idempotent route move to the other one.
TEST_F(ProxyRoutesTest, PostIsRetriedOnlyWhenTheRequestOrTheRouteSaysSo) {
  StartNamed("b0");
  StartNamed("b1");
  // One worker and round_robin: consecutive requests alternate between the two backends.
  StartProxyFrom(R"(threads: 1
listeners:
  - listen: 127.0.0.1:0
    routes:
      - path: /safe/
        cluster: web
        retry-non-idempotent: true
      - path: /
        cluster: web
clusters:
  - name: web
    lb: round_robin
    retry-budget: 1
    outlier-failures: 1000
    upstream: [)" +
                 Addr("b0") + ", " + Addr("b1") + "]\n");
  const int port = proxy_->ListenerPort(0);
  ASSERT_GT(port, 0);
  const std::vector<std::string> kinds = {"plain", "plain", "header", "header", "route", "route"};
  std::vector<HeldPost> posts(kinds.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < kinds.size(); ++i) {
    posts[i].kind = kinds[i];
    const int64_t b0_before = PendingAt(Addr("b0")), b1_before = PendingAt(Addr("b1"));
    clients.emplace_back([&, i] {
      net::HttpClient client(Url(port), 15000);
      std::vector<std::pair<std::string, std::string>> headers;
      if (posts[i].kind == "header") headers.emplace_back("X-Haven-Retryable", "true");
      std::string target = posts[i].kind == "route" ? "/safe/id?sleep=2500" : "/id?sleep=2500";
      auto r = client.Request("POST", target, "payload", headers);
      posts[i].outcome = r.ok() ? std::to_string(r->status) + " " + r->body : "error";
    });
    // Sent one at a time, so each one's holder shows in the pending counts.
    ASSERT_TRUE(WaitFor(
        [&] { return PendingAt(Addr("b0")) + PendingAt(Addr("b1")) == b0_before + b1_before + 1; },
        5000))
        << "POST " << i << " never reached a backend: " << json::serialize(Status());
    posts[i].holder = PendingAt(Addr("b0")) > b0_before ? "b0" : "b1";
  }
  for (const std::string kind : {"plain", "header", "route"}) {
    bool on_b0 = false;
    for (const auto& p : posts) on_b0 = on_b0 || (p.kind == kind && p.holder == "b0");
    EXPECT_TRUE(on_b0) << "round_robin should have put one " << kind << " POST on b0";
  }
  backends_["b0"]->Kill();
  for (auto& t : clients) t.join();
  for (const auto& p : posts) {
    std::cout << p.kind << " POST held by " << p.holder << ": " << p.outcome << "\n";
    SCOPED_TRACE(p.kind + " POST held by " + p.holder);
    if (p.holder == "b1") {
      EXPECT_EQ(p.outcome, "200 b1");
    } else if (p.kind == "plain") {
      EXPECT_EQ(p.outcome.substr(0, 4), "502 ") << p.outcome << ": a plain POST is not retried";
    } else {
      EXPECT_EQ(p.outcome, "200 b1") << "retryable POST should move to b1";
    }
  }
  EXPECT_GE(MetricValue(Metrics(), "haven_proxy_retries_total").value_or(0), 2);
}

// Byte i of a backend /bytes answer (backend_main.cc).
char PatternAt(size_t i) { return static_cast<char>(i % 251); }

TEST_F(ProxyRoutesTest, ResponseLargerThanTheOldBufferLimitIsStreamedExactly) {
  StartNamed("b0");
  StartProxyFrom(
      "threads: 1\nlisteners:\n  - listen: 127.0.0.1:0\n    cluster: big\n"
      "clusters:\n  - name: big\n    upstream: " +
      Addr("b0") + "\n");
  const int port = proxy_->ListenerPort(0);
  ASSERT_GT(port, 0);
  const size_t n = 100'000'000;  // above the old 64 MiB limit
  const int64_t start = NowMs();
  RawResponse r = RawExchange(
      port,
      "GET /bytes?n=" + std::to_string(n) + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      20000);
  std::cout << "100 MB through the proxy in " << NowMs() - start << " ms\n";
  ASSERT_EQ(r.status, 200) << r.head << r.error;
  EXPECT_TRUE(r.complete) << r.error << " after " << r.body.size() << " bytes";
  ASSERT_EQ(r.body.size(), n);
  for (size_t at : {size_t{0}, size_t{250}, size_t{251}, size_t{65535}, size_t{1} << 26,
                    (size_t{64} << 20) + 1, n / 2 + 7, n - 1}) {
    EXPECT_EQ(r.body[at], PatternAt(at)) << "byte " << at;
  }
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += r.body[i] != PatternAt(i);
  EXPECT_EQ(wrong, 0u) << "bytes differing from the pattern";
  const int64_t peak = ProcStatusKiB(proxy_->pid(), "VmHWM");
  std::cout << "proxy peak RSS " << peak / 1024 << " MiB\n";
  ASSERT_GT(peak, 0);
  EXPECT_LT(peak, 64 * 1024) << "the proxy must stream, not buffer, a 100 MB response";
}

// A chunked request body of `chunks` (each a chunk), ending with the last chunk.
std::string Chunked(const std::vector<std::string>& chunks) {
  std::string out;
  char size[32];
  for (const auto& c : chunks) {
    std::snprintf(size, sizeof size, "%zx\r\n", c.size());
    out += size + c + "\r\n";
  }
  return out + "0\r\n\r\n";
}

TEST_F(ProxyRoutesTest, ChunkedRequestBodyIsForwardedAndBadChunkingGets400) {
  StartNamed("b0");
  StartProxyFrom(
      "threads: 1\nlisteners:\n  - listen: 127.0.0.1:0\n    cluster: web\n"
      "clusters:\n  - name: web\n    upstream: " +
      Addr("b0") + "\n");
  const int port = proxy_->ListenerPort(0);
  ASSERT_GT(port, 0);
  const std::string head =
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  RawResponse small = RawExchange(port, head + Chunked({"hello", " ", "chunked world"}));
  EXPECT_EQ(small.status, 200) << small.head << small.body;
  EXPECT_TRUE(small.complete) << small.error;
  EXPECT_EQ(small.body, "hello chunked world");

  // 1 MiB in uneven chunks, some larger than a socket read.
  std::string big;
  std::vector<std::string> chunks;
  for (size_t i = 0; big.size() < (size_t{1} << 20); ++i) {
    std::string c(1 + (i * 7919) % 70000, static_cast<char>('a' + i % 26));
    big += c;
    chunks.push_back(std::move(c));
  }
  RawResponse large = RawExchange(port, head + Chunked(chunks), 10000);
  EXPECT_EQ(large.status, 200) << large.head;
  EXPECT_EQ(large.body.size(), big.size());
  EXPECT_TRUE(large.body == big) << "the echoed body differs";

  RawResponse bad = RawExchange(port, head + "zz\r\nhello\r\n0\r\n\r\n");
  EXPECT_EQ(bad.status, 400) << bad.head << bad.body;
  EXPECT_NE(bad.body.find("chunk"), std::string::npos) << bad.body;
  // The proxy is fine afterwards.
  EXPECT_EQ(GetVia(port, "/id"), "200 b0");
}

}  // namespace
}  // namespace haven::itest
