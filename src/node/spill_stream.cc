#include "node/spill_stream.h"

#include <algorithm>
#include <cstring>

#include "base/log.h"
#include "base/metrics.h"

namespace haven::node {
namespace {

constexpr size_t kReadBatchRecords = 4096;
constexpr size_t kReadBatchBytes = size_t{1} << 20;

void PutBE(std::string& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>(v >> (8 * i)));
}

uint64_t GetBE(std::string_view in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}

metrics::Counter& StreamCounter(const char* name, const char* help) {
  return metrics::Registry::Default().GetCounter(name, help);
}

metrics::Counter& SentBytes() {
  static metrics::Counter& c =
      StreamCounter("haven_mq_snapshot_stream_sent_bytes_total",
                    "Bytes of spilled messages sent in snapshots to other nodes");
  return c;
}

metrics::Counter& ReceivedBytes() {
  static metrics::Counter& c =
      StreamCounter("haven_mq_snapshot_stream_received_bytes_total",
                    "Bytes of spilled messages received in snapshots from the leader");
  return c;
}

metrics::Counter& Transfers(const char* result) {
  return metrics::Registry::Default().GetCounter(
      "haven_mq_snapshot_stream_transfers_total",
      "Snapshot transfers with spilled messages: sent (started from the beginning, on the "
      "leader), received, failed (on the follower), read_failed (on the leader)",
      {{"result", result}});
}

}  // namespace

std::vector<SpillRange> SpillRanges(const mq::pb::Snapshot& snap) {
  std::vector<SpillRange> out;
  for (const mq::pb::QueueState& qs : snap.queues()) {
    if (qs.spilled() != 0) out.push_back({qs.uid(), qs.spill_cursor(), qs.spilled()});
  }
  return out;
}

// ---- source ----

SpillSnapshotSource::SpillSnapshotSource(std::vector<SpillRange> ranges,
                                         std::shared_ptr<const storage::SpillView> view)
    : ranges_(std::move(ranges)), view_(std::move(view)) {
  Reset();
}

void SpillSnapshotSource::Reset() {
  range_ = 0;
  next_id_ = ranges_.empty() ? 0 : ranges_[0].from_id;
  left_ = ranges_.empty() ? 0 : ranges_[0].count;
  buf_.assign(kSpillStreamMagic, kSpillStreamMagicBytes);
  buf_offset_ = 0;
  ended_ = false;
}

void SpillSnapshotSource::Drop(uint64_t from) {
  if (from <= buf_offset_) return;
  uint64_t n = std::min<uint64_t>(from - buf_offset_, buf_.size());
  buf_.erase(0, n);
  buf_offset_ += n;
}

Status SpillSnapshotSource::Fill(uint64_t from, uint64_t end) {
  while (buf_offset_ + buf_.size() < end && !ended_) {
    while (range_ < ranges_.size() && left_ == 0) {
      if (++range_ < ranges_.size()) {
        next_id_ = ranges_[range_].from_id;
        left_ = ranges_[range_].count;
      }
    }
    if (range_ >= ranges_.size()) {
      ended_ = true;
      break;
    }
    const uint64_t uid = ranges_[range_].uid;
    auto batch =
        view_->Read(uid, next_id_, std::min<uint64_t>(left_, kReadBatchRecords), kReadBatchBytes);
    if (!batch.ok()) return batch.status();
    if (batch->empty()) {
      return Status::IoError("the spill has " + std::to_string(left_) +
                             " records fewer for queue uid " + std::to_string(uid) + " from id " +
                             std::to_string(next_id_) + " than the snapshot says");
    }
    for (const auto& [id, record] : *batch) {
      PutBE(buf_, uid, 8);
      PutBE(buf_, id, 8);
      PutBE(buf_, record.size(), 4);
      buf_ += record;
      next_id_ = id + 1;
      --left_;
    }
    Drop(from);  // skipping forward to a later offset keeps only what is needed
  }
  return Status::Ok();
}

Result<raft::SnapshotPiece> SpillSnapshotSource::ReadAt(uint64_t offset, uint64_t max_bytes) {
  if (max_bytes == 0) return Status::InvalidArgument("spill stream: empty read");
  if (offset == 0) Transfers("sent").Inc();
  if (offset < buf_offset_) Reset();
  if (Status s = Fill(offset, offset + max_bytes); !s.ok()) {
    Transfers("read_failed").Inc();
    HLOG_ERROR("mq_snapshot_stream_read_failed", "offset={} error=\"{}\"", offset, s.ToString());
    return s;
  }
  Drop(offset);
  if (offset > buf_offset_) {
    return Status::InvalidArgument("spill stream: offset " + std::to_string(offset) +
                                   " beyond its end " + std::to_string(buf_offset_ + buf_.size()));
  }
  raft::SnapshotPiece piece;
  piece.data = buf_.substr(0, max_bytes);
  piece.last = ended_ && piece.data.size() == buf_.size();
  SentBytes().Inc(piece.data.size());
  return piece;
}

// ---- sink ----

SpillSnapshotSink::SpillSnapshotSink(storage::SpillStore& spill, const Clock& clock,
                                     SpillSinkOptions opts)
    : spill_(spill), clock_(clock), opts_(opts) {}

Status SpillSnapshotSink::Begin(const raft::pb::SnapshotMeta& meta) {
  active_ = true;
  index_ = meta.index();
  started_ms_ = clock_.NowMono();
  received_ = 0;
  records_ = 0;
  magic_seen_ = false;
  carry_.clear();
  HLOG_INFO("mq_snapshot_stream_begin", "index={} term={}", meta.index(), meta.term());
  return Status::Ok();
}

Status SpillSnapshotSink::Check(const raft::pb::SnapshotMeta& meta) const {
  if (!active_ || meta.index() != index_) {
    return Status::Conflict("spill stream: no transfer of snapshot " +
                            std::to_string(meta.index()) + " in progress");
  }
  if (clock_.NowMono() - started_ms_ > opts_.max_transfer_ms) {
    return Status::Unavailable("spill stream: transfer of snapshot " + std::to_string(index_) +
                               " took over " + std::to_string(opts_.max_transfer_ms) + " ms");
  }
  return Status::Ok();
}

Status SpillSnapshotSink::Fail(Status s) {
  HLOG_WARN("mq_snapshot_stream_failed", "index={} received_bytes={} records={} error=\"{}\"",
            index_, received_, records_, s.ToString());
  Transfers("failed").Inc();
  active_ = false;
  carry_.clear();
  carry_.shrink_to_fit();
  return s;
}

Status SpillSnapshotSink::Write(const raft::pb::SnapshotMeta& meta, uint64_t offset,
                                std::string_view bytes) {
  if (Status s = Check(meta); !s.ok()) return active_ ? Fail(std::move(s)) : s;
  if (offset != received_) {
    return Fail(Status::InvalidArgument("spill stream: bytes at " + std::to_string(offset) +
                                        ", expected " + std::to_string(received_)));
  }
  if (received_ + bytes.size() > opts_.max_stream_bytes) {
    return Fail(Status::TooLarge("spill stream: over " + std::to_string(opts_.max_stream_bytes) +
                                 " bytes"));
  }
  received_ += bytes.size();
  ReceivedBytes().Inc(bytes.size());
  carry_.append(bytes);
  if (Status s = Parse(); !s.ok()) return Fail(std::move(s));
  return Status::Ok();
}

Status SpillSnapshotSink::Parse() {
  size_t at = 0;
  if (!magic_seen_) {
    if (carry_.size() < kSpillStreamMagicBytes) return Status::Ok();
    if (carry_.compare(0, kSpillStreamMagicBytes, kSpillStreamMagic) != 0) {
      return Status::InvalidArgument("spill stream: not a spill stream (bad magic)");
    }
    magic_seen_ = true;
    at = kSpillStreamMagicBytes;
  }
  while (carry_.size() - at >= kSpillFrameHeaderBytes) {
    const uint64_t uid = GetBE(carry_, at, 8);
    const uint64_t id = GetBE(carry_, at + 8, 8);
    const uint64_t len = GetBE(carry_, at + 16, 4);
    if (len > opts_.max_record_bytes) {
      return Status::TooLarge("spill stream: a record of " + std::to_string(len) + " bytes");
    }
    if (carry_.size() - at - kSpillFrameHeaderBytes < len) break;
    spill_.Append(uid, id, carry_.substr(at + kSpillFrameHeaderBytes, len));
    ++records_;
    at += kSpillFrameHeaderBytes + len;
  }
  carry_.erase(0, at);
  return Status::Ok();
}

Status SpillSnapshotSink::Finish(const raft::pb::SnapshotMeta& meta) {
  if (Status s = Check(meta); !s.ok()) return active_ ? Fail(std::move(s)) : s;
  if (!magic_seen_ || !carry_.empty()) {
    return Fail(Status::InvalidArgument("spill stream: ends inside a record"));
  }
  if (Status s = spill_.Sync(); !s.ok()) return Fail(std::move(s));
  active_ = false;
  const int64_t ms = std::max<int64_t>(clock_.NowMono() - started_ms_, 1);
  Transfers("received").Inc();
  HLOG_INFO("mq_snapshot_stream_received", "index={} bytes={} records={} ms={} mb_per_s={:.1f}",
            index_, received_, records_, ms, static_cast<double>(received_) / 1e3 / ms);
  return Status::Ok();
}

void SpillSnapshotSink::Abort() {
  if (!active_) return;
  Fail(Status::Unavailable("transfer abandoned (a new one, or a rejected chunk)"));
}

}  // namespace haven::node
