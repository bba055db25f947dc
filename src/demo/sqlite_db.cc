#include "demo/sqlite_db.h"

#include <sqlite3.h>

namespace haven::demo {

namespace {

// A prepared statement finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return stmt_; }
  void Bind(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  int Step() { return sqlite3_step(stmt_); }
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  std::string Text(int col) {
    const unsigned char* t = sqlite3_column_text(stmt_, col);
    return t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(stmt_, col))
             : std::string();
  }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_ERROR;
};

}  // namespace

SqliteDb::~SqliteDb() { Close(); }

void SqliteDb::Close() {
  if (db_) sqlite3_close_v2(db_);
  db_ = nullptr;
}

Status SqliteDb::Error(const char* what) const {
  return Status::IoError(std::string("sqlite ") + what + " " + path_ + ": " +
                         (db_ ? sqlite3_errmsg(db_) : "not open"));
}

Status SqliteDb::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return Status::IoError("sqlite " + path_ + ": " + msg);
  }
  return Status::Ok();
}

Status SqliteDb::Open(const std::string& path, bool create, int busy_timeout_ms) {
  Close();
  path_ = path;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    Status s = Error("open");
    Close();
    return s;
  }
  sqlite3_busy_timeout(db_, busy_timeout_ms);
  if (create) {
    if (Status s = Exec("PRAGMA journal_mode=WAL"); !s.ok()) return s;
  }
  return Exec("PRAGMA synchronous=NORMAL");
}

Status SqliteDb::CreateSchema() {
  return Exec(
      "CREATE TABLE IF NOT EXISTS records(key TEXT PRIMARY KEY, value TEXT NOT NULL, "
      "event_id TEXT NOT NULL, confirmed INTEGER NOT NULL DEFAULT 0);"
      "CREATE TABLE IF NOT EXISTS events(id TEXT PRIMARY KEY, source TEXT NOT NULL);");
}

Status SqliteDb::PutRecords(const std::vector<RecordRow>& rows) {
  if (Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  Stmt st(db_,
          "INSERT INTO records(key, value, event_id) VALUES(?1, ?2, ?3) "
          "ON CONFLICT(key) DO UPDATE SET value = excluded.value, event_id = excluded.event_id");
  if (!st.ok()) {
    Status s = Error("prepare");
    (void)Exec("ROLLBACK");
    return s;
  }
  for (const RecordRow& r : rows) {
    st.Bind(1, r.key);
    st.Bind(2, r.value);
    st.Bind(3, r.event_id);
    if (st.Step() != SQLITE_DONE) {
      Status s = Error("insert");
      st.Reset();
      (void)Exec("ROLLBACK");
      return s;
    }
    st.Reset();
  }
  return Exec("COMMIT");
}

Status SqliteDb::MarkConfirmed(const std::vector<std::string>& keys) {
  if (Status s = Exec("BEGIN IMMEDIATE"); !s.ok()) return s;
  Stmt st(db_, "UPDATE records SET confirmed = 1 WHERE key = ?1");
  if (!st.ok()) {
    Status s = Error("prepare");
    (void)Exec("ROLLBACK");
    return s;
  }
  for (const std::string& k : keys) {
    st.Bind(1, k);
    if (st.Step() != SQLITE_DONE) {
      Status s = Error("update");
      st.Reset();
      (void)Exec("ROLLBACK");
      return s;
    }
    st.Reset();
  }
  return Exec("COMMIT");
}

Result<std::optional<std::string>> SqliteDb::GetRecord(const std::string& key) {
  Stmt st(db_, "SELECT value FROM records WHERE key = ?1");
  if (!st.ok()) return Error("prepare");
  st.Bind(1, key);
  int rc = st.Step();
  if (rc == SQLITE_ROW) return std::optional<std::string>(st.Text(0));
  if (rc == SQLITE_DONE) return std::optional<std::string>();
  return Error("select");
}

Status SqliteDb::RecordEvent(const std::string& id, const std::string& source) {
  Stmt st(db_, "INSERT OR IGNORE INTO events(id, source) VALUES(?1, ?2)");
  if (!st.ok()) return Error("prepare");
  st.Bind(1, id);
  st.Bind(2, source);
  if (st.Step() != SQLITE_DONE) return Error("insert event");
  return Status::Ok();
}

Status SqliteDb::ReadRecords(std::vector<RecordRow>* rows, std::set<std::string>* confirmed) {
  Stmt st(db_, "SELECT key, value, event_id, confirmed FROM records");
  if (!st.ok()) return Error("prepare");
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) {
    RecordRow r{st.Text(0), st.Text(1), st.Text(2)};
    if (sqlite3_column_int(st.get(), 3) != 0) confirmed->insert(r.event_id);
    rows->push_back(std::move(r));
  }
  return rc == SQLITE_DONE ? Status::Ok() : Error("scan records");
}

Status SqliteDb::ReadEventIds(std::set<std::string>* ids) {
  Stmt st(db_, "SELECT id FROM events");
  if (!st.ok()) return Error("prepare");
  int rc;
  while ((rc = st.Step()) == SQLITE_ROW) ids->insert(st.Text(0));
  return rc == SQLITE_DONE ? Status::Ok() : Error("scan events");
}

}  // namespace haven::demo
