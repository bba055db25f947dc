// haven_test_backend: a tiny HTTP backend for the proxy tests, run as its own process so a test can
// SIGKILL or SIGSTOP it. GET /id answers the backend's name; ?sleep=MS delays the answer;
// /status/NNN answers with status NNN; /headers echoes the request headers; POST/PUT /echo answers
// the request body as it is; GET /bytes?n=N answers N bytes (at most 256 MiB) of a pattern where
// byte i is i % 251 (a prime, so a lost or repeated block shows). Usage: NAME [PORT]
// (default 0: ephemeral; a given port lets a test restart a killed backend where it was). Prints
// `event=listening backend=127.0.0.1:PORT`.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <string>
#include <string_view>

#include "net/http_server.h"
#include "net/io_runtime.h"

namespace {

int64_t ToInt(std::string_view s, int64_t dflt) {
  int64_t v = dflt;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

constexpr int64_t kMaxBytes = int64_t{256} << 20;

// Byte i of a /bytes answer: tests check positions against this.
std::string PatternBytes(int64_t n) {
  std::string out(static_cast<size_t>(n), '\0');
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i % 251);
  return out;
}

void Handle(haven::net::IoRuntime& io, const std::string& name, haven::net::HttpRequest req,
            haven::net::Responder respond) {
  haven::net::HttpResponse res{200, "text/plain", {{"X-Backend", name}}, name};
  if (req.path.rfind("/status/", 0) == 0) {
    res.status = static_cast<int>(ToInt(req.path.substr(8), 500));
    if (res.status < 200 || res.status > 599) res.status = 500;
  }
  if (req.path == "/headers") {
    res.body.clear();
    for (const auto& [k, v] : req.headers) res.body += k + ": " + v + "\n";
  }
  if (req.path == "/echo" && (req.method == "POST" || req.method == "PUT")) {
    res.content_type = "application/octet-stream";
    res.body = std::move(req.body);
  }
  if (req.path == "/bytes" && req.method == "GET") {
    const std::string* n = req.Query("n");
    res.content_type = "application/octet-stream";
    res.body = PatternBytes(std::clamp<int64_t>(n ? ToInt(*n, 0) : 0, 0, kMaxBytes));
  }
  const std::string* sleep = req.Query("sleep");
  int64_t ms = sleep ? std::min<int64_t>(ToInt(*sleep, 0), 60'000) : 0;
  if (ms <= 0) return respond(std::move(res));
  io.RunAfter(ms, [respond = std::move(respond), res = std::move(res)]() mutable {
    respond(std::move(res));
  });
}

}  // namespace

int main(int argc, char** argv) {
  std::string name = argc > 1 ? argv[1] : "backend";
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  haven::net::IoRuntime io(2);
  haven::net::HttpServerOptions opts;
  opts.port = static_cast<uint16_t>(argc > 2 ? ToInt(argv[2], 0) : 0);
  haven::net::HttpServer server(io, opts,
                                [&](haven::net::HttpRequest req, haven::net::Responder respond) {
                                  Handle(io, name, std::move(req), std::move(respond));
                                });
  if (!server.Start().ok()) return 1;
  io.Start();
  std::printf("event=listening backend=%s name=%s\n", server.address().c_str(), name.c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  server.Stop();
  io.Stop();
  return 0;
}
