// The proxy's upstream list parsing (HTTP heads: proxy_http1_test; options: proxy_config_test).
#include <gtest/gtest.h>

#include "proxy/discovery.h"

namespace haven::proxy {
namespace {

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

}  // namespace
}  // namespace haven::proxy
