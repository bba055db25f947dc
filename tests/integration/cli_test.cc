// The client subcommands (services, health, kv) against a real server, as a user runs them.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

class CliTest : public ServerTest {
 protected:
  // Runs `haven <args> --addr <server>` with a time bound; args are trusted test strings.
  CliRun Haven(const std::string& args, const std::string& stdin_text = "") {
    std::string cmd = "printf '%s' '" + stdin_text + "' | timeout 20 " HAVEN_BINARY " " + args +
                      " --addr " + server_->base_url() + " 2>&1";
    CliRun run;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return run;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) run.out.append(buf, n);
    int status = pclose(p);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return run;
  }
};

TEST_F(CliTest, ServicesRegisterListHealthDeregister) {
  CliRun reg = Haven(
      "services register --name web --id web-1 --address 127.0.0.1 --port 8080 "
      "--tag v1 --ttl 30s");
  ASSERT_EQ(reg.exit_code, 0) << reg.out;

  CliRun list = Haven("services list");
  ASSERT_EQ(list.exit_code, 0) << list.out;
  EXPECT_NE(list.out.find("web"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("v1"), std::string::npos) << list.out;

  CliRun health = Haven("health web");
  ASSERT_EQ(health.exit_code, 0) << health.out;
  EXPECT_NE(health.out.find("web-1"), std::string::npos) << health.out;
  EXPECT_NE(health.out.find("critical"), std::string::npos) << health.out;  // no heartbeat yet

  ASSERT_TRUE(api_->Put("/v1/agent/check/pass/service:web-1").ok());
  CliRun passing = Haven("health web --passing");
  ASSERT_EQ(passing.exit_code, 0) << passing.out;
  EXPECT_NE(passing.out.find("127.0.0.1:8080"), std::string::npos) << passing.out;
  EXPECT_NE(passing.out.find("passing"), std::string::npos) << passing.out;

  ASSERT_EQ(Haven("services deregister web-1").exit_code, 0);
  EXPECT_EQ(CatalogCount(*api_, "web"), 0);
}

TEST_F(CliTest, KvPutGetDelete) {
  ASSERT_EQ(Haven("kv put app/color blue").exit_code, 0);
  ASSERT_EQ(Haven("kv put app/size -", "large").exit_code, 0);  // value from stdin

  CliRun get = Haven("kv get app/color");
  ASSERT_EQ(get.exit_code, 0) << get.out;
  EXPECT_EQ(get.out, "blue\n");

  CliRun all = Haven("kv get app/ --recurse");
  ASSERT_EQ(all.exit_code, 0) << all.out;
  EXPECT_EQ(all.out, "app/color=blue\napp/size=large\n");

  ASSERT_EQ(Haven("kv delete app/color").exit_code, 0);
  CliRun missing = Haven("kv get app/color");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.out.find("not found"), std::string::npos) << missing.out;
}

TEST_F(CliTest, ClearErrors) {
  CliRun bad = Haven("services register --name web --port 99999");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.out.find("port"), std::string::npos) << bad.out;

  std::string cmd = "timeout 20 " HAVEN_BINARY " kv get x --addr http://127.0.0.1:1 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  std::string out(buf, fread(buf, 1, sizeof(buf), p));
  int status = pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_NE(out.find("127.0.0.1:1"), std::string::npos) << out;  // says where it failed to connect
}

}  // namespace
}  // namespace haven::itest
