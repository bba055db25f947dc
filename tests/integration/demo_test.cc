// `haven demo` end to end: a short run under chaos meets the bar (its JSON report says so), and
// SIGINT mid-run leaves no process of the demo behind.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

// A `haven demo` child with its output in a log file; SIGKILLed in the destructor if still running.
class DemoProcess {
 public:
  DemoProcess(const std::string& dir, std::vector<std::string> flags) : log_(dir + "/demo.log") {
    std::vector<std::string> argv = {HAVEN_BINARY, "demo"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    auto pid = SpawnLogged(argv, fd);
    if (pid.ok()) pid_ = *pid;
  }
  ~DemoProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  DemoProcess(const DemoProcess&) = delete;
  DemoProcess& operator=(const DemoProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The exit code once it exited within the deadline, -1 otherwise.
  int WaitExit(int64_t deadline_ms) {
    int code = -1;
    WaitFor(
        [&] {
          int status = 0;
          if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
          pid_ = -1;
          code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          return true;
        },
        deadline_ms, 50);
    return code;
  }
  std::string Log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

std::vector<pid_t> ReadPids(const std::string& path) {
  std::vector<pid_t> pids;
  std::ifstream f(path);
  std::string role;
  pid_t pid;
  while (f >> role >> pid) pids.push_back(pid);
  return pids;
}

bool Gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

uint64_t Num(const boost::json::object& o, const char* key) {
  const boost::json::value* v = o.if_contains(key);
  if (!v) {
    ADD_FAILURE() << "report has no key " << key;
    return 0;
  }
  return static_cast<uint64_t>(v->to_number<double>());
}

TEST(DemoTest, ShortRunUnderChaosLosesNothing) {
  TempDir dir;
  const std::string json = dir.path() + "/report.json";
  DemoProcess demo(dir.path(), {"--services",    "10",  "--instances",     "3",
                                "--workers",     "3",   "--duration",      "10s",
                                "--kill-rate",   "1.5", "--seed",          "7",
                                "--concurrency", "8",   "--drain-timeout", "20s",
                                "--json",        json,  "--work-dir",      dir.path() + "/work",
                                "--keep"});
  ASSERT_GT(demo.pid(), 0);
  const int code = demo.WaitExit(120000);
  const std::string log = demo.Log();
  ASSERT_EQ(code, 0) << log;
  std::ifstream f(json);
  std::stringstream ss;
  ss << f.rdbuf();
  boost::json::value v = ParseJson(ss.str());
  ASSERT_TRUE(v.is_object()) << ss.str() << log;
  const auto& r = v.get_object();
  for (const char* key :
       {"requests", "failures", "lost_writes", "events_published", "events_consumed", "events_lost",
        "kills", "restarts", "failovers", "p50_ms", "p99_ms", "p999_ms", "peak_rss_mb"}) {
    EXPECT_TRUE(r.contains(key)) << key;
  }
  EXPECT_GT(Num(r, "requests"), 100u) << log;
  EXPECT_EQ(Num(r, "failures"), 0u) << log;
  EXPECT_GT(Num(r, "acked_writes"), 0u) << log;
  EXPECT_EQ(Num(r, "lost_writes"), 0u) << log;
  EXPECT_GT(Num(r, "events_published"), 0u) << log;
  EXPECT_GE(Num(r, "events_consumed"), Num(r, "events_published")) << log;
  EXPECT_EQ(Num(r, "events_lost"), 0u) << log;
  EXPECT_GE(Num(r, "kills"), 5u) << log;
  EXPECT_GT(Num(r, "restarts"), 0u) << log;
  EXPECT_GT(Num(r, "failovers"), 0u) << log;
  EXPECT_GT(Num(r, "peak_rss_mb"), 0u) << log;
  // Every process the demo started is gone.
  std::vector<pid_t> pids = ReadPids(dir.path() + "/work/pids");
  EXPECT_GE(pids.size(), 5u);  // a server, the proxy, three workers (and restarted workers)
  for (pid_t p : pids) EXPECT_TRUE(Gone(p)) << "pid " << p << " is still there";
}

TEST(DemoTest, SigintMidRunLeavesNoProcessBehind) {
  TempDir dir;
  const std::string work = dir.path() + "/work";
  DemoProcess demo(dir.path(),
                   {"--services", "4", "--instances", "2", "--workers", "2", "--duration", "5m",
                    "--concurrency", "4", "--work-dir", work, "--keep"});
  ASSERT_GT(demo.pid(), 0);
  // Running: the load started, so every child (server, proxy, workers) exists.
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(work + "/state"); }, 60000, 20))
      << demo.Log();
  std::vector<pid_t> pids = ReadPids(work + "/pids");
  ASSERT_GE(pids.size(), 4u) << demo.Log();
  for (pid_t p : pids) EXPECT_FALSE(Gone(p)) << "pid " << p << " should be running";
  ASSERT_EQ(::kill(demo.pid(), SIGINT), 0);
  const int64_t t0 = NowMs();
  EXPECT_EQ(demo.WaitExit(30000), 130) << demo.Log();
  EXPECT_LT(NowMs() - t0, 20000);  // load threads finish their request, then 3 s + 3 s of grace
  for (pid_t p : ReadPids(work + "/pids")) EXPECT_TRUE(Gone(p)) << "pid " << p << " left behind";
}

}  // namespace
}  // namespace haven::itest
