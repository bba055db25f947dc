// LocalLog: the single-node ReplicatedLog. A writer thread drains the proposal queue, appends the
// whole batch to the LogStore with one fsync (group commit), then hands the batch to the node's
// executor, which applies it and answers the proposers.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "net/io_runtime.h"
#include "node/replicated_log.h"
#include "storage/log_store.h"

namespace haven::node {

struct LocalLogOptions {
  size_t max_batch_entries = 4096;
  size_t max_batch_bytes = 16 << 20;
  size_t max_queued_proposals = 100'000;  // beyond this, Propose fails fast with Unavailable
};

class LocalLog final : public ReplicatedLog {
 public:
  LocalLog(storage::LogStore& store, net::IoRuntime& executor, CommitFn on_commit,
           LocalLogOptions opts = {});
  ~LocalLog() override;

  void Start();
  // Fails the proposals still queued with Unavailable and joins the writer thread.
  void Stop();
  void Propose(std::string data, DoneFn done) override;
  // Writes a snapshot (and compacts the log) on the writer thread, between batches.
  void SaveSnapshotAsync(storage::Snapshot snap);

 private:
  struct Proposal {
    std::string data;
    DoneFn done;
  };
  // Why a proposal cannot be queued now (shutting down, failed disk, queue full), or Ok.
  Status Admit();
  void WriterLoop();
  void WriteBatch(std::vector<Proposal> batch);

  storage::LogStore& store_;
  net::IoRuntime& executor_;
  CommitFn on_commit_;
  LocalLogOptions opts_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Proposal> queue_;
  std::optional<storage::Snapshot> pending_snapshot_;
  bool stopping_ = false;
  bool failed_ = false;  // after a failed fsync nothing more is written (the disk state is unknown)
  std::thread writer_;
};

}  // namespace haven::node
