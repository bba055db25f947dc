// The proxy's input parsing and header rules: upstream lists, registry answers, hop-by-hop headers,
// flag validation.
#include <gtest/gtest.h>

#include "proxy/discovery.h"
#include "proxy/http_util.h"
#include "proxy/proxy.h"

namespace haven::proxy {
namespace {
namespace http = boost::beast::http;

TEST(ProxyParseTest, HostPort) {
  auto e = ParseHostPort("127.0.0.1:8080");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "127.0.0.1");
  EXPECT_EQ(e->port, 8080);
  EXPECT_EQ(e->id, "127.0.0.1:8080");
  for (const char* bad : {"", "host", ":80", "host:", "host:0", "host:65536", "host:8o", "h:-1"}) {
    EXPECT_FALSE(ParseHostPort(bad).ok()) << bad;
  }
}

TEST(ProxyParseTest, UpstreamsRejectDuplicates) {
  EXPECT_TRUE(ParseUpstreams({"a:1", "b:2"}).ok());
  EXPECT_FALSE(ParseUpstreams({"a:1", "a:1"}).ok());
  EXPECT_FALSE(ParseUpstreams({"a:1", "nonsense"}).ok());
}

TEST(ProxyHttpTest, UpstreamRequestDropsHopByHopAndAddsForwardedFor) {
  Request req{http::verb::get, "/x", 11};
  req.set(http::field::host, "example");
  req.set(http::field::connection, "keep-alive, X-Hop");
  req.set("X-Hop", "1");
  req.set(http::field::upgrade, "websocket");
  req.set("X-Forwarded-For", "1.2.3.4");
  req.set("X-End", "kept");
  Request up = MakeUpstreamRequest(req, "5.6.7.8", "10.0.0.1:80");
  EXPECT_EQ(up.find("X-Hop"), up.end());
  EXPECT_EQ(up.find(http::field::upgrade), up.end());
  EXPECT_EQ(up["X-Forwarded-For"], "1.2.3.4, 5.6.7.8");
  EXPECT_EQ(up["X-End"], "kept");
  EXPECT_EQ(up[http::field::host], "example");
  EXPECT_TRUE(up.keep_alive());

  Request no_host{http::verb::get, "/", 10};
  EXPECT_EQ(MakeUpstreamRequest(no_host, "1.1.1.1", "10.0.0.1:80")[http::field::host],
            "10.0.0.1:80");
}

TEST(ProxyHttpTest, ClientResponseFraming) {
  Response res{http::status::ok, 11};
  res.set(http::field::transfer_encoding, "chunked");
  res.body() = "hello";
  PrepareClientResponse(res, false, 11, false);
  EXPECT_EQ(res[http::field::content_length], "5");
  EXPECT_EQ(res.find(http::field::transfer_encoding), res.end());
  EXPECT_FALSE(res.keep_alive());

  Response err = ErrorResponse(http::status::service_unavailable, "no healthy instance", 11, true);
  EXPECT_EQ(err.result_int(), 503u);
  EXPECT_EQ(err.body(), "no healthy instance\n");
}

TEST(ProxyOptionsTest, Validation) {
  ProxyOptions o;
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "no upstream source";
  o.upstreams = {"127.0.0.1:1"};
  EXPECT_TRUE(ValidateProxyOptions(o).ok());
  o.service = "web";
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "both sources";
  o.upstreams.clear();
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "--service without --registry";
  o.registry = "http://127.0.0.1:8500";
  EXPECT_TRUE(ValidateProxyOptions(o).ok());
  o.threads = kMaxThreads + 1;
  EXPECT_FALSE(ValidateProxyOptions(o).ok());
  o.threads = 1;
  o.listen = "nonsense";
  EXPECT_FALSE(ValidateProxyOptions(o).ok());
  o.listen = "127.0.0.1:0";
  o.max_body_bytes = 0;
  EXPECT_FALSE(ValidateProxyOptions(o).ok());
}

TEST(ProxyOptionsTest, HealthChecksAndHashHeader) {
  ProxyOptions o;
  o.upstreams = {"127.0.0.1:1"};
  o.health_path = "/health";
  EXPECT_TRUE(ValidateProxyOptions(o).ok());
  o.health_path = "health";
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "a path starts with /";
  o.health_path = "/a b";
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "no spaces in the path";
  o.health_path = "/health";
  o.upstreams.clear();
  o.service = "web";
  o.registry = "http://127.0.0.1:8500";
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "active checks are for static upstreams";
  o.health_path.clear();
  o.hash_header = "X-User";
  EXPECT_FALSE(ValidateProxyOptions(o).ok()) << "--hash-header needs ring_hash";
  o.policy = lb::Policy::kRingHash;
  EXPECT_TRUE(ValidateProxyOptions(o).ok());
}

}  // namespace
}  // namespace haven::proxy
