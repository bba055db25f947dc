// RequestDedupe: the replicated memory of which proposals (and client requests) the log applied,
// so that a proposal re-forwarded to a new leader, or a client request retried on any node, is
// applied at most once and its proposer gets the first outcome (the Raft dissertation's client
// sessions, 6.3). Pure and deterministic: it changes only with committed entries in log order and
// its limits are counted in entries and log indexes, never in local time; it is part of the
// snapshot, so every replica and a restarted node decide alike.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/status.h"

namespace haven::node {

// Who proposed a log entry: unique across restarts of every node.
struct ProposalIdentity {
  uint64_t origin = 0;      // the proposer's raft id
  uint64_t boot = 0;        // random per start of the proposer; 0: an entry from before identities
  uint64_t seq = 0;         // the proposer's counter within its boot
  std::string client_id;    // the client's request id ("" when none): what a retry keeps
  uint64_t base_index = 0;  // the proposer's applied index when it proposed: the entry lands above
};

struct DedupeLimits {
  size_t max_entries = 100'000;          // client request ids; memory: a few hundred bytes each
  uint64_t max_age_entries = 1'000'000;  // forgotten once the log is this many indexes further
  size_t max_proposers = 1'024;          // windows of (origin, boot): 8 KiB each at most
};

// Proposals without a client id are remembered per proposer as a bitmap of its recent seqs: a
// re-forwarded copy lands within the proposer's few thousand proposals in flight, so this window
// tells every copy apart in constant memory, where a map entry per proposal cost ~800 bytes
// (100,000 entries: 80 MB). A seq that fell below the window is refused as too old, not applied.
inline constexpr uint64_t kDedupeWindowSeqs = 65'536;

class RequestDedupe {
 public:
  enum class Verdict {
    kNew,        // apply it, then Record it
    kDuplicate,  // applied before at `first_index`: do not apply; answer `result`
    kTooOld,     // its original may have been forgotten: refuse it (not applied)
  };
  struct Decision {
    Verdict verdict = Verdict::kNew;
    uint64_t first_index = 0;
    std::string result;
  };

  explicit RequestDedupe(DedupeLimits limits = {});

  // What to do with the committed entry `id`.
  Decision Check(const ProposalIdentity& id) const;
  // Remembers entry `id` (Check said kNew) applied at `index` with its machine's outcome.
  void Record(uint64_t index, const ProposalIdentity& id, std::string result);
  // The log reached `index` (every committed entry, recorded or not): forgets what fell out of the
  // age window.
  void Advance(uint64_t index);

  size_t size() const { return by_key_.size(); }  // client request ids remembered
  size_t proposers() const { return windows_.size(); }
  // Entries proposed on a base below this may be duplicates of forgotten ones.
  uint64_t floor_index() const { return floor_; }

  // A serialized pb::DedupeTable (node.proto), for the snapshot.
  std::string Serialize() const;
  // Replaces the state with a snapshot's (an invalid one leaves the table empty, every earlier
  // request forgotten, and says why). Empty `bytes`: an empty table (a snapshot from before).
  Status Parse(const std::string& bytes);
  void Clear();

 private:
  // A client's id when it sent one (its retries are new proposals), else the proposal's identity.
  static std::string KeyOf(const ProposalIdentity& id);
  void ForgetOldest();
  Decision CheckWindow(const ProposalIdentity& id) const;
  void RecordWindow(uint64_t index, const ProposalIdentity& id);
  void ForgetOldWindows(uint64_t index);

  struct Remembered {
    uint64_t index = 0;
    std::string result;
  };
  DedupeLimits limits_;
  std::unordered_map<std::string, Remembered> by_key_;
  std::map<uint64_t, std::string> by_index_;  // index -> key: eviction order
  uint64_t floor_ = 0;                        // the highest index forgotten
  struct Window {
    uint64_t base = 0;
    uint64_t last_index = 0;
    std::vector<uint64_t> bits;  // kDedupeWindowSeqs / 64 words
  };
  std::map<std::pair<uint64_t, uint64_t>, Window> windows_;  // (origin, boot) ->
  uint64_t window_floor_ = 0;  // the highest last_index of a forgotten window
};

}  // namespace haven::node
