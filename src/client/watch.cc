#include "client/watch.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <set>

#include "base/log.h"
#include "client/health_json.h"
#include "net/http_client.h"

namespace haven::client {
namespace {

// The client's back-off after a failed round of registry nodes: doubling from min to max.
constexpr int64_t kMinBackoffMs = 100;
constexpr int64_t kMaxBackoffMs = 2000;
// Slack on top of the blocking wait: the registry may add up to wait/16 of jitter. A query still
// unanswered after wait + wait/16 + slack means a stalled node.
constexpr int64_t kQuerySlackMs = 5000;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool IsHostChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

// "http://HOST:PORT" (an optional trailing '/'); HOST a name, an IPv4 or a [bracketed] IPv6.
Status ValidateRegistryUrl(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("registry \"" + std::string(url.substr(0, 64)) + "\": " + why);
  };
  if (url.size() > kMaxRegistryUrlBytes) {
    return bad("longer than " + std::to_string(kMaxRegistryUrlBytes) + " bytes");
  }
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) return bad("must be http://HOST:PORT");
  std::string_view hp = url.substr(kScheme.size());
  if (!hp.empty() && hp.back() == '/') hp.remove_suffix(1);
  size_t colon = hp.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("must be http://HOST:PORT");
  std::string_view host = hp.substr(0, colon);
  std::string_view port_text = hp.substr(colon + 1);
  bool v6 = host.size() > 2 && host.front() == '[' && host.back() == ']';
  for (char c : v6 ? host.substr(1, host.size() - 2) : host) {
    if (!(v6 ? (std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.')
             : IsHostChar(c))) {
      return bad("bad character in host");
    }
  }
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535) {
    return bad("port must be 1..65535");
  }
  return Status::Ok();
}

Status QueryError(const net::HttpClientResult& r, const std::string& service) {
  std::string body = r.body.substr(0, 200);
  while (!body.empty() && body.back() == '\n') body.pop_back();
  return Status::Unavailable("registry answered " + std::to_string(r.status) + " for service " +
                             service + (body.empty() ? "" : ": " + body));
}

void RunWatch(std::shared_ptr<WatchState> w) {
  RegistryFollower follower(
      {w->registry_urls(), w->service(), w->wait_ms(), kMinBackoffMs, kMaxBackoffMs});
  while (!w->stopped()) {
    FollowStep step = follower.Poll();
    if (w->stopped()) break;
    if (step.endpoints.ok()) {
      w->Publish(std::move(step.endpoints).value());
    } else {
      // Only a failed round answers a first wait: the next node may well have the list.
      w->RecordError(step.endpoints.status(), step.pause_ms > 0);
    }
    if (step.pause_ms > 0 && !w->SleepUnlessStopped(step.pause_ms)) break;
  }
  w->MarkDone();
}

}  // namespace

Result<std::vector<std::string>> ParseRegistryUrls(std::string_view list) {
  std::vector<std::string> urls;
  std::set<std::string_view> seen;
  if (Trim(list).empty()) return Status::InvalidArgument("registry: no URL given");
  size_t from = 0;
  while (from <= list.size()) {
    size_t comma = std::min(list.find(',', from), list.size());
    std::string_view url = Trim(list.substr(from, comma - from));
    from = comma + 1;
    if (url.empty()) return Status::InvalidArgument("registry: empty entry in the list");
    if (urls.size() >= kMaxRegistryUrls) {
      return Status::InvalidArgument("registry: more than " + std::to_string(kMaxRegistryUrls) +
                                     " URLs");
    }
    if (Status s = ValidateRegistryUrl(url); !s.ok()) return s;
    if (url.back() == '/') url.remove_suffix(1);  // the client appends /v1/... itself
    if (!seen.insert(url).second) {
      return Status::InvalidArgument("registry: \"" + std::string(url) + "\" given twice");
    }
    urls.emplace_back(url);
  }
  return urls;
}

RegistryFollower::RegistryFollower(Options opts)
    : opts_(std::move(opts)), backoff_ms_(opts_.min_backoff_ms) {
  if (opts_.urls.empty()) opts_.urls.emplace_back("http://127.0.0.1:8500");
  opts_.min_backoff_ms = std::max<int64_t>(opts_.min_backoff_ms, 1);
  opts_.max_backoff_ms = std::max(opts_.max_backoff_ms, opts_.min_backoff_ms);
  backoff_ms_ = opts_.min_backoff_ms;
  SwitchNode();  // the first: no client yet
}

RegistryFollower::~RegistryFollower() = default;

void RegistryFollower::SwitchNode() {
  if (http_) current_ = (current_ + 1) % opts_.urls.size();
  http_ = std::make_unique<net::HttpClient>(opts_.urls[current_],
                                            opts_.wait_ms + opts_.wait_ms / 16 + kQuerySlackMs);
}

FollowStep RegistryFollower::Poll() {
  auto r = http_->Request("GET", HealthQueryTarget(opts_.service, index_, opts_.wait_ms));
  if (!r.ok()) return Fail(r.status(), true);
  if (r->status != 200) return Fail(QueryError(*r, opts_.service), r->status >= 500);
  FollowStep step;
  step.url = current_url();
  step.endpoints = ParseHealthEntries(r->body);
  if (!step.endpoints.ok()) return Fail(step.endpoints.status(), false);
  uint64_t next = ParseConsulIndex(r.value().Header("x-consul-index"));
  // An index that goes back (a registry restart) means start over, as Consul's docs advise.
  index_ = next < index_ ? 0 : next;
  failures_in_row_ = 0;
  backoff_ms_ = opts_.min_backoff_ms;
  // Without an index the next query would not block: pace it instead of spinning.
  step.pause_ms = index_ == 0 ? opts_.min_backoff_ms : 0;
  return step;
}

// A node at fault (unreachable, 5xx, stalled) is left for the next one at once; the whole cluster
// failing (every node once in a row) or an answer no node would do better (4xx, bad JSON) backs
// off.
FollowStep RegistryFollower::Fail(Status error, bool node_at_fault) {
  FollowStep step;
  step.url = current_url();
  step.endpoints = std::move(error);
  ++failures_in_row_;
  // The next query answers at once with the whole list: a node that restarted empty (an index
  // behind ours) would otherwise park it for a whole wait.
  if (node_at_fault) index_ = 0;
  const bool round_done = failures_in_row_ % opts_.urls.size() == 0;
  if (node_at_fault && opts_.urls.size() > 1) {
    SwitchNode();
    step.switched = true;
    HLOG_WARN("registry_switch", "service={} from={} to={} error=\"{}\"", opts_.service, step.url,
              current_url(), step.endpoints.status().message());
  }
  if (!node_at_fault || round_done) {
    step.pause_ms = backoff_ms_;
    backoff_ms_ = std::min(backoff_ms_ * 2, opts_.max_backoff_ms);
  }
  return step;
}

void WatchState::Publish(std::vector<lb::Endpoint> endpoints) {
  std::lock_guard lock(mu_);
  bool changed = !have_list_ || !client::SameEndpoints(endpoints, endpoints_);
  if (changed) {
    HLOG_INFO("client_endpoints", "service={} count={}", service_, endpoints.size());
    endpoints_ = std::move(endpoints);
    ++version_;
  }
  have_list_ = true;
  answered_ = true;
  last_error_ = Status::Ok();
  cv_.notify_all();
}

void WatchState::RecordError(Status error, bool answers_first) {
  std::lock_guard lock(mu_);
  if (last_error_.ok()) {
    HLOG_WARN("client_watch_error", "service={} error=\"{}\"", service_, error.message());
  }
  last_error_ = std::move(error);
  if (answers_first) answered_ = true;
  cv_.notify_all();
}

bool WatchState::SleepUnlessStopped(int64_t ms) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stop_; });
}

bool WatchState::stopped() {
  std::lock_guard lock(mu_);
  return stop_;
}

void WatchState::MarkDone() {
  std::lock_guard lock(mu_);
  done_ = true;
  cv_.notify_all();
}

Result<std::vector<lb::Endpoint>> WatchState::AwaitFirst(int64_t timeout_ms) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return answered_ || stop_; });
  if (have_list_) return endpoints_;
  if (!last_error_.ok()) {
    return Status::Unavailable("registry query for service " + service_ +
                               " failed: " + last_error_.message());
  }
  return Status::Unavailable("no answer from the registry for service " + service_ + " within " +
                             std::to_string(timeout_ms) + " ms");
}

bool WatchState::CopyIfNewer(uint64_t* version, std::vector<lb::Endpoint>* out) {
  std::lock_guard lock(mu_);
  if (*version == version_) return false;
  *version = version_;
  *out = endpoints_;
  return true;
}

void WatchState::RequestStop() {
  std::lock_guard lock(mu_);
  stop_ = true;
  cv_.notify_all();
}

bool WatchState::AwaitDone(int64_t timeout_ms) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return done_; });
}

std::thread StartWatch(std::shared_ptr<WatchState> state) {
  return std::thread([state = std::move(state)]() mutable { RunWatch(std::move(state)); });
}

}  // namespace haven::client
