// The queues' HTTP management API and `haven mq` against a real server: declare, publish with
// confirm, list with depths, take messages, metrics, clear errors; confirmed messages survive a
// SIGKILL.
#include <string>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

namespace json = boost::json;

class MqApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Status s = server_.Start();
    ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << server_.ReadLog();
  }
  CliResult Mq(std::vector<std::string> args) {
    args.insert(args.begin(), "mq");
    args.push_back("--addr");
    args.push_back(server_.base_url());
    return RunCli(args);
  }
  // The queue's entry in GET /v1/mq/queues, or null.
  json::value QueueEntry(const std::string& name) {
    Api api(server_.base_url());
    Reply r = api.Get("/v1/mq/queues");
    json::value v = ParseJson(r.body);
    if (!v.is_array()) return nullptr;
    for (const auto& q : v.as_array()) {
      if (q.at("name").as_string() == name) return q;
    }
    return nullptr;
  }
  ServerProcess server_;
};

TEST_F(MqApiTest, DeclarePublishListConsumeDelete) {
  CliResult d = Mq({"declare", "jobs", "--arg", "x-max-length=1000"});
  ASSERT_EQ(d.code, 0) << d.out;
  for (int i = 0; i < 20; ++i) {
    CliResult p = Mq({"publish", "jobs", "job-" + std::to_string(i)});
    ASSERT_EQ(p.code, 0) << p.out;
  }
  json::value q = QueueEntry("jobs");
  ASSERT_TRUE(q.is_object());
  EXPECT_EQ(q.at("messages_ready").to_number<uint64_t>(), 20u);
  EXPECT_EQ(q.at("published").to_number<uint64_t>(), 20u);
  EXPECT_EQ(q.at("type").as_string(), "quorum");

  CliResult list = Mq({"list"});
  ASSERT_EQ(list.code, 0) << list.out;
  EXPECT_NE(list.out.find("jobs"), std::string::npos) << list.out;

  Api api(server_.base_url());
  Reply metrics = api.Get("/metrics");
  EXPECT_NE(metrics.body.find("haven_mq_queue_messages_ready{queue=\"jobs\"} 20"),
            std::string::npos);

  CliResult c = Mq({"consume", "jobs", "--count", "5"});
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_EQ(c.out, "job-0\njob-1\njob-2\njob-3\njob-4\n");  // oldest first
  EXPECT_EQ(QueueEntry("jobs").at("messages_ready").to_number<uint64_t>(), 15u);

  ASSERT_EQ(Mq({"delete", "jobs"}).code, 0);
  EXPECT_TRUE(QueueEntry("jobs").is_null());
  EXPECT_EQ(api.Get("/v1/mq/queues/jobs").status, 404);
}

TEST_F(MqApiTest, BadInputGetsAClearError) {
  Api api(server_.base_url());
  Reply r = api.Put("/v1/mq/queues/q", R"({"arguments":{"x-message-ttl":-1}})");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("x-message-ttl"), std::string::npos) << r.body;
  r = api.Put("/v1/mq/queues/q", "not json");
  EXPECT_EQ(r.status, 400) << r.body;
  r = api.Put("/v1/mq/publish?routing_key=q&exchange=no-such-exchange", "x");
  EXPECT_EQ(r.status, 404) << r.body;
  r = api.Put("/v1/mq/publish", "x");
  EXPECT_EQ(r.status, 400) << r.body;
  r = api.Put("/v1/mq/queues/q/get?count=0");
  EXPECT_EQ(r.status, 400) << r.body;
  CliResult p = Mq({"publish", "nobody-listens", "x"});
  EXPECT_EQ(p.code, 1) << p.out;
  EXPECT_NE(p.out.find("unroutable"), std::string::npos) << p.out;
  // Redeclaring with other arguments is refused, as RabbitMQ does (406 -> 409 here).
  ASSERT_EQ(api.Put("/v1/mq/queues/q2", R"({"arguments":{"x-max-length":5}})").status, 200);
  r = api.Put("/v1/mq/queues/q2", R"({"arguments":{"x-max-length":6}})");
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_NE(r.body.find("inequivalent"), std::string::npos) << r.body;
}

TEST_F(MqApiTest, ConfirmedMessagesSurviveSigkill) {
  constexpr int kMessages = 200;
  Api api(server_.base_url());
  ASSERT_EQ(api.Put("/v1/mq/queues/durable", "{}").status, 200);
  for (int i = 0; i < kMessages; ++i) {
    Reply r = api.Put("/v1/mq/publish?routing_key=durable", "m" + std::to_string(i));
    ASSERT_EQ(r.status, 200) << r.body;  // a confirm: committed (fsynced) before the answer
  }
  ASSERT_TRUE(server_.Kill().ok());
  ASSERT_TRUE(server_.Restart().ok()) << server_.ReadLog();
  Api after(server_.base_url());
  Reply r = after.Put("/v1/mq/queues/durable/get?count=1000");
  ASSERT_EQ(r.status, 200) << r.body;
  json::value v = ParseJson(r.body);
  ASSERT_TRUE(v.is_array()) << r.body;
  ASSERT_EQ(v.as_array().size(), static_cast<size_t>(kMessages));
  for (int i = 0; i < kMessages; ++i) {
    EXPECT_EQ(v.as_array()[static_cast<size_t>(i)].at("payload").as_string(),
              "m" + std::to_string(i));
  }
}

}  // namespace
}  // namespace haven::itest
