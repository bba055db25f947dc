#include "node/local_log.h"

#include <chrono>
#include <memory>

#include "base/log.h"
#include "base/metrics.h"

namespace haven::node {

namespace {
constexpr uint64_t kLocalTerm = 1;  // a cluster of one never holds an election

metrics::Histogram& BatchSizeHistogram() {
  static auto& h = metrics::Registry::Default().GetHistogram(
      "haven_log_batch_entries", "Entries written per fsync (group commit)", {},
      {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096});
  return h;
}
metrics::Histogram& AppendLatency() {
  static auto& h = metrics::Registry::Default().GetHistogram(
      "haven_log_append_seconds", "Time to append and fsync one batch of log entries");
  return h;
}
}  // namespace

LocalLog::LocalLog(storage::LogStore& store, net::IoRuntime& executor, CommitFn on_commit,
                   LocalLogOptions opts)
    : store_(store), executor_(executor), on_commit_(std::move(on_commit)), opts_(opts) {}

LocalLog::~LocalLog() { Stop(); }

void LocalLog::Start() {
  writer_ = std::thread([this] { WriterLoop(); });
}

void LocalLog::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  std::deque<Proposal> rest;
  {
    std::lock_guard lock(mu_);
    rest.swap(queue_);
  }
  for (auto& p : rest) p.done(Status::Unavailable("server is shutting down"), 0);
}

void LocalLog::Propose(std::string data, DoneFn done) {
  Status reject = Admit();
  if (!reject.ok()) {
    executor_.Post([done = std::move(done), reject] { done(reject, 0); });
    return;
  }
  {
    std::lock_guard lock(mu_);
    queue_.push_back({std::move(data), std::move(done)});
  }
  cv_.notify_one();
}

Status LocalLog::Admit() {
  std::lock_guard lock(mu_);
  if (stopping_) return Status::Unavailable("server is shutting down");
  if (failed_) return Status::IoError("the log failed to write to disk; restart the server");
  if (queue_.size() >= opts_.max_queued_proposals) {
    return Status::Unavailable("too many writes in flight; retry");
  }
  return Status::Ok();
}

void LocalLog::SaveSnapshotAsync(storage::Snapshot snap) {
  {
    std::lock_guard lock(mu_);
    pending_snapshot_ = std::move(snap);
  }
  cv_.notify_one();
}

void LocalLog::WriterLoop() {
  for (;;) {
    std::vector<Proposal> batch;
    std::optional<storage::Snapshot> snap;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || pending_snapshot_; });
      if (stopping_) return;
      snap.swap(pending_snapshot_);
      size_t bytes = 0;
      while (!queue_.empty() && batch.size() < opts_.max_batch_entries &&
             bytes < opts_.max_batch_bytes) {
        bytes += queue_.front().data.size();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (snap) {
      Status s = store_.SaveSnapshot(*snap);
      if (!s.ok())
        HLOG_ERROR("snapshot_failed", "index={} error=\"{}\"", snap->index, s.ToString());
      else
        HLOG_INFO("snapshot_saved", "index={} bytes={}", snap->index, snap->data.size());
    }
    if (!batch.empty()) WriteBatch(std::move(batch));
  }
}

void LocalLog::WriteBatch(std::vector<Proposal> batch) {
  auto entries = std::make_shared<std::vector<storage::LogEntry>>();
  entries->reserve(batch.size());
  uint64_t next = store_.LastIndex() + 1;
  for (auto& p : batch) entries->push_back({next++, kLocalTerm, std::move(p.data)});

  auto start = std::chrono::steady_clock::now();
  Status s = store_.Append(*entries, /*sync=*/true);
  AppendLatency().Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  BatchSizeHistogram().Observe(static_cast<double>(batch.size()));

  if (!s.ok()) {
    HLOG_ERROR("log_append_failed", "entries={} error=\"{}\"", batch.size(), s.ToString());
    {
      std::lock_guard lock(mu_);
      failed_ = true;
    }
    auto shared = std::make_shared<std::vector<Proposal>>(std::move(batch));
    executor_.Post([shared, s] {
      for (auto& p : *shared) p.done(Status::IoError("log write failed: " + s.message()), 0);
    });
    return;
  }
  auto shared = std::make_shared<std::vector<Proposal>>(std::move(batch));
  executor_.Post([this, shared, entries] {
    for (size_t i = 0; i < entries->size(); ++i) {
      const auto& e = (*entries)[i];
      on_commit_(e.index, e.data);
      (*shared)[i].done(Status::Ok(), e.index);
    }
  });
}

}  // namespace haven::node
