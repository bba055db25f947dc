#include "demo/instance.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>

#include "base/log.h"
#include "client/amqp_client.h"
#include "demo/registry_client.h"
#include "demo/sqlite_db.h"
#include "net/http_server.h"

namespace haven::demo {

namespace {

constexpr size_t kMaxBatch = 256;
constexpr int64_t kPollMs = 100;               // how often blocked threads look at the stop flag
constexpr int64_t kConfirmDeadlineMs = 20000;  // a write waits this long for its event's confirm
constexpr int64_t kAmqpFailoverMs = 3000;      // one failover round; the threads loop around it

// A PUT waiting for its row to commit and its event to be confirmed.
struct Job {
  RecordRow row;
  net::Responder respond;
};

net::HttpResponse Text(int status, std::string body) {
  net::HttpResponse r;
  r.status = status;
  r.content_type = "text/plain";
  r.body = std::move(body);
  return r;
}

}  // namespace

bool IsValidKey(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return false;
  for (char c : key) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

struct Instance::Live : std::enable_shared_from_this<Instance::Live> {
  InstanceConfig config;
  std::string id;
  std::string service;
  std::atomic<bool> stop{false};
  std::mutex db_mu;  // one connection, used by the HTTP threads, the writer and the consumer
  SqliteDb db;
  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  std::deque<Job> jobs;
  std::unique_ptr<net::HttpServer> server;
  std::thread writer;
  std::thread consumer;

  void Handle(net::HttpRequest req, net::Responder respond);
  void Enqueue(std::string key, std::string value, net::Responder respond);
  std::vector<Job> TakeJobs();
  void RunWriter();
  Status PublishBatch(client::Producer& producer, bool* connected, const std::vector<Job>& batch);
  void RunConsumer();
  void Pause(int64_t ms);
};

void Instance::Live::Handle(net::HttpRequest req, net::Responder respond) {
  const std::string prefix = "/" + service + "/records/";
  if (req.path == "/health" || req.path == "/" + service + "/health") {
    return respond(Text(200, "ok " + id + "\n"));
  }
  if (!req.path.starts_with(prefix)) {
    // Another service's request: a balancer with a stale address (this port belonged to a dead
    // instance of that service) sent it here. 503 makes the proxy retry it elsewhere.
    if (req.path.starts_with("/svc-")) return respond(Text(503, "this is " + id + "\n"));
    return respond(Text(404, "no such path\n"));
  }
  std::string key = req.path.substr(prefix.size());
  if (!IsValidKey(key)) {
    return respond(Text(400, "key must be 1-128 bytes of [A-Za-z0-9._-]\n"));
  }
  if (req.method == "PUT") {
    if (req.body.size() > kMaxValueBytes) return respond(Text(413, "value over 4096 bytes\n"));
    return Enqueue(std::move(key), std::move(req.body), std::move(respond));
  }
  if (req.method != "GET") return respond(Text(405, "GET or PUT\n"));
  Result<std::optional<std::string>> v = [&] {
    std::lock_guard lock(db_mu);
    return db.GetRecord(key);
  }();
  if (!v.ok()) return respond(Text(503, v.status().ToString() + "\n"));
  if (!v->has_value()) return respond(Text(404, "no record " + key + "\n"));
  respond(Text(200, **v));
}

void Instance::Live::Enqueue(std::string key, std::string value, net::Responder respond) {
  std::unique_lock lock(jobs_mu);
  if (jobs.size() >= kMaxQueuedWrites) {
    lock.unlock();
    return respond(Text(503, "instance overloaded: too many writes queued\n"));
  }
  // The event id is the write's identity: a retried PUT of the same key and value makes the same
  // event, which its consumer records once.
  std::string event_id = service + "/" + key;
  jobs.push_back({{std::move(key), std::move(value), std::move(event_id)}, std::move(respond)});
  lock.unlock();
  jobs_cv.notify_one();
}

std::vector<Job> Instance::Live::TakeJobs() {
  std::unique_lock lock(jobs_mu);
  jobs_cv.wait_for(lock, std::chrono::milliseconds(kPollMs),
                   [&] { return stop.load() || !jobs.empty(); });
  std::vector<Job> batch;
  while (!jobs.empty() && batch.size() < kMaxBatch) {
    batch.push_back(std::move(jobs.front()));
    jobs.pop_front();
  }
  return batch;
}

void Instance::Live::Pause(int64_t ms) {
  std::unique_lock lock(jobs_mu);
  jobs_cv.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stop.load(); });
}

// Commit every row of the batch, publish its events, wait for their confirms, then answer: a
// 200 means the row is on disk and its event is on a quorum of the broker.
Status Instance::Live::PublishBatch(client::Producer& producer, bool* connected,
                                    const std::vector<Job>& batch) {
  std::vector<RecordRow> rows;
  for (const Job& j : batch) rows.push_back(j.row);
  {
    std::lock_guard lock(db_mu);
    if (Status s = db.PutRecords(rows); !s.ok()) return s;
  }
  if (!*connected) {
    if (Status s = producer.Connect(); !s.ok()) return s;
    *connected = true;
  }
  for (const RecordRow& r : rows) {
    mq::amqp::BasicProperties props;
    props.message_id = r.event_id;
    props.app_id = service;
    props.delivery_mode = mq::amqp::kDeliveryPersistent;
    if (Status s = producer.PublishAsync(r.key + "=" + r.value, props); !s.ok()) return s;
  }
  for (int64_t waited = 0; !stop.load(); waited += kPollMs) {
    Status s = producer.WaitConfirms(kPollMs);
    if (s.ok()) break;
    if (!client::IsTimeout(s)) return s;
    if (waited >= kConfirmDeadlineMs) return Status::Unavailable("event confirm timed out");
  }
  if (stop.load()) return Status::Unavailable("instance stopped");
  std::vector<std::string> keys;
  for (const RecordRow& r : rows) keys.push_back(r.key);
  std::lock_guard lock(db_mu);
  return db.MarkConfirmed(keys);
}

void Instance::Live::RunWriter() {
  client::ProducerOptions po;
  po.addresses = config.amqp;
  po.queue = EventQueue(EventTarget(config.ref.service, config.services));
  po.confirm_window = 1024;
  po.failover_deadline_ms = kAmqpFailoverMs;
  client::Producer producer(po);
  bool connected = false;
  while (!stop.load()) {
    std::vector<Job> batch = TakeJobs();
    if (batch.empty()) continue;
    Status s = PublishBatch(producer, &connected, batch);
    if (stop.load()) return;  // killed: the connections are gone, nobody to answer
    if (!s.ok()) {
      HLOG_WARN("demo_write_failed", "instance={} writes={} error=\"{}\"", id, batch.size(),
                s.ToString());
    }
    for (Job& j : batch) {
      j.respond(s.ok() ? Text(200, "ok\n")
                       : Text(503, "write not confirmed: " + s.message() + "\n"));
    }
  }
}

void Instance::Live::RunConsumer() {
  client::ConsumerOptions co;
  co.addresses = config.amqp;
  co.queue = EventQueue(config.ref.service);
  co.prefetch = 256;
  co.failover_deadline_ms = kAmqpFailoverMs;
  client::Consumer consumer(co);
  bool connected = false;
  while (!stop.load()) {
    if (!connected) {
      if (Status s = consumer.Connect(); !s.ok()) {
        Pause(500);
        continue;
      }
      connected = true;
    }
    auto msg = consumer.Next(kPollMs);
    if (!msg.ok()) {
      if (!client::IsTimeout(msg.status())) {
        connected = false;
        Pause(200);
      }
      continue;
    }
    const auto& p = msg->properties;
    Status s = [&] {
      std::lock_guard lock(db_mu);
      return db.RecordEvent(p.message_id.value_or(""), p.app_id.value_or(""));
    }();
    // Not acked when it could not be recorded: the broker redelivers it after a reconnect.
    if (s.ok()) {
      (void)consumer.Ack(*msg);
    } else {
      HLOG_WARN("demo_event_record_failed", "instance={} error=\"{}\"", id, s.ToString());
    }
  }
  consumer.Close();
}

Instance::Instance(net::IoRuntime& runtime, InstanceConfig config)
    : runtime_(runtime), config_(std::move(config)), id_(InstanceId(config_.ref)) {}

Instance::~Instance() { Kill(); }

bool Instance::up() const {
  std::lock_guard lock(mu_);
  return live_ != nullptr;
}

// A restarted instance comes back at its previous port when it is free, as a restarted service
// would at its address: a proxy whose registry is unreachable still holds that address.
Status Instance::Listen(Live& live) {
  net::HttpServerOptions so;
  so.host = "127.0.0.1";
  so.max_body_bytes = kMaxValueBytes + 1024;
  so.max_connections = 1000;
  so.idle_timeout_ms = 120000;
  std::weak_ptr<Live> weak = live.shared_from_this();
  auto handler = [weak](net::HttpRequest req, net::Responder respond) {
    if (auto l = weak.lock()) l->Handle(std::move(req), std::move(respond));
  };
  Status s = Status::Unavailable("not started");
  for (uint16_t port : {last_port_, uint16_t{0}}) {
    so.port = port;
    live.server = std::make_unique<net::HttpServer>(runtime_, so, handler);
    s = live.server->Start();
    if (s.ok()) break;
  }
  if (s.ok()) last_port_ = live.server->port();
  return s;
}

Status Instance::Start(RegistryClient& registry) {
  Kill();
  auto live = std::make_shared<Live>();
  live->config = config_;
  live->id = id_;
  live->service = ServiceName(config_.ref.service);
  if (Status s = live->db.Open(DbPath(config_.work_dir, config_.ref.service), false); !s.ok()) {
    return s;
  }
  if (Status s = Listen(*live); !s.ok()) return s;
  live->writer = std::thread([l = live.get()] { l->RunWriter(); });
  live->consumer = std::thread([l = live.get()] { l->RunConsumer(); });
  {
    std::lock_guard lock(mu_);
    live_ = live;
  }
  Status s = registry.Register(live->service, id_, live->server->port(), config_.ttl_ms,
                               config_.check_interval_ms);
  if (!s.ok()) Kill();
  return s;
}

void Instance::Interrupt() {
  std::lock_guard lock(mu_);
  if (!live_) return;
  live_->stop = true;
  live_->server->Stop();
  live_->jobs_cv.notify_all();
}

void Instance::Kill() {
  std::shared_ptr<Live> live;
  {
    std::lock_guard lock(mu_);
    live = std::move(live_);
    live_.reset();
  }
  if (!live) return;
  live->stop = true;
  live->server->Stop();
  live->jobs_cv.notify_all();
  if (live->writer.joinable()) live->writer.join();
  if (live->consumer.joinable()) live->consumer.join();
}

}  // namespace haven::demo
