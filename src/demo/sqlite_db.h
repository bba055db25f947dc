// SqliteDb: one SQLite connection to a demo service's database file (WAL, busy timeout), with the
// few statements the demo needs. Not thread-safe: callers serialize use (Instance holds a mutex).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "base/status.h"

struct sqlite3;

namespace haven::demo {

// One acknowledged or pending write of a record: the row a PUT makes.
struct RecordRow {
  std::string key;
  std::string value;
  std::string event_id;
};

class SqliteDb {
 public:
  SqliteDb() = default;
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // Opens (creating when asked) and applies the pragmas: WAL, synchronous=NORMAL (a SIGKILLed
  // process loses no committed transaction; only a power loss can), busy_timeout.
  Status Open(const std::string& path, bool create, int busy_timeout_ms = 10000);
  // Creates the tables when missing.
  Status CreateSchema();
  void Close();

  // Upserts every row in one transaction (a retried PUT rewrites the same row: idempotent).
  Status PutRecords(const std::vector<RecordRow>& rows);
  // Marks the events of these keys as confirmed by the broker, in one transaction.
  Status MarkConfirmed(const std::vector<std::string>& keys);
  // The value of `key`, nullopt when absent.
  Result<std::optional<std::string>> GetRecord(const std::string& key);
  // Records an event received from another service; a duplicate id is ignored.
  Status RecordEvent(const std::string& id, const std::string& source);

  // For the final check: key -> value of every record; ids of confirmed events; received ids.
  Status ReadRecords(std::vector<RecordRow>* rows, std::set<std::string>* confirmed_event_ids);
  Status ReadEventIds(std::set<std::string>* ids);

 private:
  Status Exec(const char* sql);
  Status Error(const char* what) const;

  sqlite3* db_ = nullptr;
  std::string path_;
};

}  // namespace haven::demo
