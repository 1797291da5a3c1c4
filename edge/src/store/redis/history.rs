//! History pages from a task log, bounded in bytes as well as in events.
//!
//! `XRANGE ... COUNT n` bounds entries, not bytes: a page of 1 000 events of
//! 60 KB would arrive at once (60 MB as the reply, again as parsed entries,
//! again decoded, then encoded). So a short read-only script walks the log
//! on the server, [`CHUNK`] entries at a time, and returns entries until
//! their stored bytes reach the page's budget; the edge then reads the
//! reply one entry at a time (parse, decode, encode, drop the raw entry),
//! and stops once the encoded envelopes reach the budget too. What one read
//! holds at once is the reply (at most the budget plus one event) and the
//! encoded page (the same), never `events` × their size.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use sluice_broker::reader::{decode_for, entry_seq};
use sluice_broker::resp;
use sluice_shared::{Seq, StoredEvent, TaskId, TaskKeys};

use crate::store::{HistoryPage, PageBuilder, PageLimit, StoreError};

/// Entries the script reads per `XRANGE` (what Redis itself holds at once
/// beyond the page: `CHUNK` entries).
const CHUNK: usize = 16;

/// `KEYS[1]` the log; `ARGV`: first id, most entries, byte budget, chunk.
/// The entries with id >= the first, in order, until `most` of them or
/// until their field values add up to the budget (the entry that reaches
/// it is the last; at least one). `no-writes`: it runs whenever a read may
/// (a Redis over `maxmemory` refuses scripts that might write).
const PAGE_SCRIPT: &str = r"#!lua flags=no-writes
local log, start = KEYS[1], ARGV[1]
local left, budget, chunk = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local page, bytes = {}, 0
while left > 0 do
  local n = math.min(left, chunk)
  local entries = redis.call('XRANGE', log, start, '+', 'COUNT', n)
  for _, e in ipairs(entries) do
    page[#page + 1] = e
    left = left - 1
    local fields = e[2]
    for i = 2, #fields, 2 do bytes = bytes + #fields[i] end
    if bytes >= budget then return page end
  end
  if #entries < n then return page end
  start = '(' .. entries[#entries][1]
end
return page
";

/// The script's SHA-1 (for `EVALSHA`).
static SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(PAGE_SCRIPT).get_hash().to_owned());

/// One page of the task log after `after`. An entry that does not decode
/// ends the page: with [`StoreError::Corrupt`] when it is the first, else
/// after the good ones (the next read starts at it and reports it).
pub(super) async fn page<C: ConnectionLike + Send>(
    conn: &mut C,
    task: &TaskId,
    shards: u32,
    after: Seq,
    limit: PageLimit,
) -> Result<HistoryPage, StoreError> {
    let Some(start) = after.checked_add(1) else {
        return Ok(HistoryPage::default());
    };
    let keys = TaskKeys::new(task, shards);
    let call = |cmd: &str, script: &str| {
        let mut c = redis::cmd(cmd);
        c.arg(script)
            .arg(1)
            .arg(&keys.log)
            .arg(format!("{start}-0"))
            .arg(limit.events.max(1))
            .arg(limit.bytes.max(1))
            .arg(CHUNK);
        c
    };
    // EVALSHA, and EVAL (which caches the script) when Redis does not know
    // it: not `redis::Script`, whose `SCRIPT LOAD` the edge's documented
    // ACL does not grant.
    let reply: redis::Value = match call("EVALSHA", &SCRIPT_SHA).query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            call("EVAL", PAGE_SCRIPT).query_async(conn).await?
        }
        r => r?,
    };
    let items = resp::entry_items(reply).map_err(|e| corrupt(task, e))?;
    let read = items.len();
    let mut stored = 0;
    let mut page = PageBuilder::new(limit);
    let mut taken = 0;
    // By value: each raw entry is dropped once encoded.
    for item in items {
        taken += 1;
        match decode(task, &item, &mut stored) {
            Ok(ev) => {
                if !page.push(&ev) {
                    break;
                }
            }
            Err(what) if !page.is_empty() => {
                tracing::warn!(task = %task, cause = %what, "corrupt log entry");
                break;
            }
            Err(what) => return Err(corrupt(task, what)),
        }
    }
    // More may follow when the script stopped at a limit, or this side did.
    let more = read >= limit.events || stored >= limit.bytes || taken < read || page.is_full();
    Ok(page.finish(more))
}

/// One raw entry as an event of `task` whose seq is its id's; adds the
/// entry's stored bytes to `stored`.
fn decode(task: &TaskId, item: &redis::Value, stored: &mut usize) -> Result<StoredEvent, String> {
    let (id, fields) = resp::parse_entry(item).map_err(|e| e.to_string())?;
    *stored += fields.values().map(Vec::len).sum::<usize>();
    let bytes = fields
        .get("e")
        .ok_or_else(|| format!("entry {id} has no event"))?;
    let ev = decode_for(task, bytes).map_err(|e| e.to_string())?;
    if entry_seq(&id) != Some(ev.seq) {
        return Err(format!("entry {id} holds seq {}", ev.seq));
    }
    Ok(ev)
}

fn corrupt(task: &TaskId, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        task: task.to_string(),
        what: what.to_string(),
    }
}
