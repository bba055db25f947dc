// Bad input from outside: a clear 4xx, the server stays up, and nothing is written.
#include <string>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

class BadInputTest : public ServerTest {
 protected:
  // The state every rejected request must leave untouched.
  struct Snapshot {
    std::string services;
    uint64_t services_index = 0;
    std::string kv_keys;
  };
  Snapshot Take() {
    Reply services = api_->Get("/v1/catalog/services");
    Reply keys = api_->Get("/v1/kv/?keys");
    return {services.body, services.index, std::to_string(keys.status) + keys.body};
  }

  void SetUp() override {
    ServerTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_EQ(api_->Put("/v1/kv/seed", "1").status, 200);
    before_ = Take();
  }
  void ExpectNothingWritten() {
    Snapshot after = Take();
    EXPECT_EQ(after.services, before_.services);
    EXPECT_EQ(after.services_index, before_.services_index) << "the catalog index moved";
    EXPECT_EQ(after.kv_keys, before_.kv_keys);
  }
  void ExpectRejected(const Reply& r, int status, const char* what) {
    EXPECT_EQ(r.status, status) << what << ": " << r.body;
    EXPECT_FALSE(r.body.empty()) << what << ": the error needs a message";
  }

  Snapshot before_;
};

TEST_F(BadInputTest, MalformedRegistrations) {
  ExpectRejected(api_->Put("/v1/agent/service/register", R"({"Name":"x","Port":)"), 400,
                 "truncated JSON");
  ExpectRejected(api_->Put("/v1/agent/service/register", "not json at all"), 400, "not JSON");
  ExpectRejected(api_->Put("/v1/agent/service/register", "[1,2,3]"), 400, "array body");
  ExpectRejected(api_->Put("/v1/agent/service/register", R"({"Name":"x","Port":"80"})"), 400,
                 "Port as a string");
  ExpectRejected(api_->Put("/v1/agent/service/register", R"({"Port":80})"), 400, "no Name");
  ExpectRejected(api_->Put("/v1/agent/service/register", R"({"Name":"x","Port":99999999999})"), 400,
                 "Port out of range");
  ExpectRejected(
      api_->Put("/v1/agent/service/register", R"({"Name":"x","Check":{"Interval":"1s"}})"), 400,
      "check of no known kind");
  ExpectRejected(api_->Put("/v1/agent/service/register",
                           R"({"Name":"x","Check":{"GRPC":"127.0.0.1:1","Interval":"1s"}})"),
                 400, "unsupported check kind");
  ExpectRejected(
      api_->Put("/v1/agent/service/register", R"({"Name":"x","Check":{"TTL":"forever"}})"), 400,
      "bad duration");
  ExpectRejected(api_->Put("/v1/agent/service/register",
                           R"({"Name":"x","Check":{"HTTP":"http://127.0.0.1:1/","Interval":"1s",)"
                           R"("TTL":"1s"}})"),
                 400, "two check kinds");
  ExpectRejected(api_->Put("/v1/session/create", R"({"TTL":"banana"})"), 400, "bad session TTL");
  ExpectNothingWritten();
  EXPECT_EQ(api_->Get("/v1/status/leader").status, 200) << "server must still answer";
}

TEST_F(BadInputTest, OversizedKvValue) {
  const std::string big(512 * 1024 + 1, 'v');
  ExpectRejected(api_->Put("/v1/kv/big", big), 413, "KV value over 512 KiB");
  EXPECT_EQ(api_->Get("/v1/kv/big").status, 404);
  // Exactly the limit is fine.
  EXPECT_EQ(api_->Put("/v1/kv/edge", std::string(512 * 1024, 'v')).body, "true");
  EXPECT_EQ(api_->Get("/v1/kv/edge?raw").body.size(), 512u * 1024);
}

TEST_F(BadInputTest, WrongMethodAndUnknownPath) {
  ExpectRejected(api_->Get("/v1/agent/service/register"), 405, "GET on a PUT endpoint");
  ExpectRejected(api_->Put("/v1/kv/seed?cas=zz", "2"), 400, "non-numeric cas");
  ExpectRejected(api_->Get("/v1/nope"), 404, "unknown path");
  ExpectRejected(api_->Get("/v2/kv/seed"), 404, "unknown version");
  ExpectRejected(api_->Get("/v1/kv/seed?index=abc"), 400, "non-numeric index");
  ExpectNothingWritten();
}

TEST_F(BadInputTest, GarbageOnTheSocket) {
  // Not HTTP at all; a request line with a bogus version; a header that never ends.
  SendRaw(server_->port(), std::string("\x00\xff\xfe garbage \x01\x02\r\n\r\n", 20), 1000);
  SendRaw(server_->port(), "GET / HTTP/9.9\r\n\r\n", 1000);
  SendRaw(server_->port(), "PUT /v1/kv/half HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort", 300);
  SendRaw(server_->port(), "GET /v1/kv/seed HTTP/1.1\r\nX: " + std::string(200000, 'a'), 1000);
  std::string reply = SendRaw(server_->port(), "BREW /coffee HTCPCP/1.0\r\n\r\n", 1000);
  EXPECT_TRUE(reply.empty() || reply.rfind("HTTP/1.1 4", 0) == 0) << reply.substr(0, 200);

  // A fresh client is served normally.
  Api fresh(server_->base_url());
  Reply r = fresh.Get("/v1/kv/seed?raw");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "1");
  ExpectNothingWritten();
  EXPECT_EQ(api_->Get("/v1/kv/half").status, 404) << "a truncated body must not be written";
}

}  // namespace
}  // namespace haven::itest
