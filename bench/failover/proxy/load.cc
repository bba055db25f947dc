// Load generator of the proxy failover benchmark (bench/failover/proxy.sh): CONNECTIONS keep-alive
// clients send GET /id back to back for SECONDS through a proxy; every answer names the backend
// that produced it. Prints one line per millisecond that saw answers or errors:
//   T_MS BACKEND ANSWERS MAX_LATENCY_MS ERRORS
// (T_MS: wall-clock ms when the requests ended; BACKEND "-" for errors), then `done`. The script
// finds "first answer of the restarted backend" and "worst latency during the hang" in it.
// Usage: bench_failover_proxy_load PORT CONNECTIONS SECONDS [REQUEST_TIMEOUT_MS]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "net/http_client.h"

namespace {

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Bucket {
  int64_t answers = 0;
  int64_t max_latency_ms = 0;
  int64_t errors = 0;
};

class Recorder {
 public:
  void Add(int64_t end_ms, const std::string& backend, int64_t latency_ms, bool ok) {
    std::lock_guard lock(mu_);
    Bucket& b = buckets_[{end_ms, ok ? backend : "-"}];
    b.answers += ok;
    b.errors += !ok;
    b.max_latency_ms = std::max(b.max_latency_ms, latency_ms);
  }
  void Print() const {
    std::lock_guard lock(mu_);
    for (const auto& [key, b] : buckets_) {
      std::printf("%lld %s %lld %lld %lld\n", static_cast<long long>(key.first), key.second.c_str(),
                  static_cast<long long>(b.answers), static_cast<long long>(b.max_latency_ms),
                  static_cast<long long>(b.errors));
    }
    std::printf("done\n");
  }

 private:
  mutable std::mutex mu_;
  std::map<std::pair<int64_t, std::string>, Bucket> buckets_;
};

void Client(int port, int64_t until_ms, int64_t timeout_ms, Recorder* rec) {
  haven::net::HttpClient http("http://127.0.0.1:" + std::to_string(port), timeout_ms);
  while (WallMs() < until_ms) {
    const auto start = std::chrono::steady_clock::now();
    auto r = http.Request("GET", "/id");
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - start)
                          .count();
    bool ok = r.ok() && r->status == 200;
    rec->Add(WallMs(), ok ? r->body.substr(0, 32) : "", took, ok);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s PORT CONNECTIONS SECONDS [REQUEST_TIMEOUT_MS]\n", argv[0]);
    return 2;
  }
  const int port = std::atoi(argv[1]);
  const int connections = std::atoi(argv[2]);
  const int seconds = std::atoi(argv[3]);
  const int64_t timeout_ms = argc > 4 ? std::atoll(argv[4]) : 10'000;
  if (port <= 0 || port > 65535 || connections < 1 || connections > 1000 || seconds < 1 ||
      seconds > 600 || timeout_ms < 1 || timeout_ms > 600'000) {
    std::fprintf(stderr, "bad arguments: PORT 1..65535, CONNECTIONS 1..1000, SECONDS 1..600\n");
    return 2;
  }
  Recorder rec;
  const int64_t until = WallMs() + int64_t{seconds} * 1000;
  std::vector<std::thread> threads;
  for (int i = 0; i < connections; ++i) threads.emplace_back(Client, port, until, timeout_ms, &rec);
  for (auto& t : threads) t.join();
  rec.Print();
  return 0;
}
