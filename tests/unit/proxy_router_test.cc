// Route matching by Host header and path prefix, in configured order.
#include "proxy/router.h"

#include <gtest/gtest.h>

namespace haven::proxy {
namespace {

RouteOptions Route(std::string host, std::string path, std::string cluster) {
  RouteOptions r;
  r.host = std::move(host);
  r.path_prefix = std::move(path);
  r.cluster = std::move(cluster);
  return r;
}

TEST(ProxyRouterTest, FirstMatchInOrder) {
  Router r({Route("api.example.com", "/users", "users"), Route("api.example.com", "/", "api"),
            Route("", "/static", "cdn"), Route("", "/", "web")});
  EXPECT_EQ(r.Match("api.example.com", "/users/7"), 0u);
  EXPECT_EQ(r.Match("api.example.com", "/orders"), 1u);
  EXPECT_EQ(r.Match("api.example.com", "/static/x.css"), 1u) << "the host route comes first";
  EXPECT_EQ(r.Match("www.example.com", "/static/x.css"), 2u);
  EXPECT_EQ(r.Match("www.example.com", "/"), 3u);
  EXPECT_EQ(r.Match("", "/anything"), 3u) << "no Host header (HTTP/1.0)";
}

TEST(ProxyRouterTest, HostIgnoresPortAndCase) {
  Router r({Route("API.Example.com", "/", "api")});
  EXPECT_EQ(r.Match("api.example.com:8080", "/"), 0u);
  EXPECT_EQ(r.Match("API.EXAMPLE.COM", "/"), 0u);
  EXPECT_FALSE(r.Match("example.com", "/").has_value());
  EXPECT_FALSE(r.Match("api.example.com.evil", "/").has_value());
  EXPECT_EQ(Router::NormalizeHost("[::1]:80"), "[::1]");
  EXPECT_EQ(Router::NormalizeHost("Example.COM:80"), "example.com");
}

TEST(ProxyRouterTest, PathPrefixIsByteExact) {
  Router r({Route("", "/api/", "api")});
  EXPECT_EQ(r.Match("h", "/api/x?y=1"), 0u);
  EXPECT_FALSE(r.Match("h", "/api").has_value());
  EXPECT_FALSE(r.Match("h", "/API/x").has_value());
  EXPECT_FALSE(r.Match("h", "/").has_value());
}

TEST(ProxyRouterTest, AbsoluteFormTargetCarriesTheHost) {
  Router r({Route("a.example", "/x", "a"), Route("", "/", "any")});
  EXPECT_EQ(r.Match("other", "http://a.example:81/x/y"), 0u);
  EXPECT_EQ(r.Match("a.example", "http://b.example/x"), 1u);
  EXPECT_EQ(r.Match("", "http://a.example"), 1u) << "no path: \"/\"";
}

}  // namespace
}  // namespace haven::proxy
