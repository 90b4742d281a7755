-- The floor of oltp_read_write over four shards: the statements Tandem `sharding` sends
-- to the shards for one sysbench read_write transaction, sent straight to MariaDB by the
-- client, over one connection per shard database (sb0 … sb3, rows by id mod 4). No proxy,
-- no coordinator store: what the shards' own work costs.
--
-- Per transaction, as Tandem does it: each shard's first statement opens its part with
-- `XA START`; point selects, updates, the delete and the insert go to the shard of their
-- id; each range query (simple, SUM, ORDER BY with the WEIGHT_STRING Tandem adds for its
-- merge) runs on all four shards; COMMIT prepares every shard that wrote (`XA END`,
-- `XA PREPARE`, then `XA COMMIT`) when several did, and ends the others in one phase
-- (`XA END`, `XA COMMIT … ONE PHASE`). The DISTINCT range query is left out, as in the
-- benchmark (--distinct_ranges=0).
--
--   sysbench benches/sharding_floor.lua --tables=4 --table-size=10000 \
--     --mysql-host=127.0.0.1 --mysql-port=… --mysql-user=root --mysql-db=sbtest \
--     --threads=16 --time=10 run

require("oltp_common")

local SHARDS = 4
local cons = {}
local trx = 0

function thread_init()
   local drv = sysbench.sql.driver()
   for s = 0, SHARDS - 1 do
      cons[s] = drv:connect()
      cons[s]:query("USE sb" .. s)
   end
end

function thread_done()
   for s = 0, SHARDS - 1 do
      cons[s]:disconnect()
   end
end

-- The XID of this thread's current transaction on shard `s`: the branch qualifier names
-- the shard's database, as Tandem's does (XIDs are the server's, not the connection's).
function last_xid(s)
   return string.format("'floor%d_%d','floor:sb%d'", sysbench.tid, trx, s)
end

local function range()
   local low = sysbench.rand.default(1, sysbench.opt.table_size)
   return low, low + sysbench.opt.range_size - 1
end

local function transaction(touched)
   trx = trx + 1
   -- One XID per shard: the branch qualifier names the shard's database, as Tandem's does.
   local xid = last_xid
   local wrote, writers = {}, 0
   local function on(s, sql)
      if not touched[s] then
         cons[s]:query("XA START " .. xid(s))
         touched[s] = true
      end
      cons[s]:query(sql)
   end
   local function write(s, sql)
      on(s, sql)
      if not wrote[s] then
         wrote[s] = true
         writers = writers + 1
      end
   end
   local t = "sbtest" .. sysbench.rand.uniform(1, sysbench.opt.tables)
   for _ = 1, sysbench.opt.point_selects do
      local id = sysbench.rand.default(1, sysbench.opt.table_size)
      on(id % SHARDS, string.format("SELECT c FROM %s WHERE id=%d", t, id))
   end
   local ranges = {
      { sysbench.opt.simple_ranges, "SELECT c FROM %s WHERE id BETWEEN %d AND %d" },
      { sysbench.opt.sum_ranges, "SELECT SUM(k) FROM %s WHERE id BETWEEN %d AND %d" },
      { sysbench.opt.order_ranges,
        "SELECT c, WEIGHT_STRING(c) FROM %s WHERE id BETWEEN %d AND %d ORDER BY c" },
   }
   for _, r in ipairs(ranges) do
      for _ = 1, r[1] do
         local low, high = range()
         for s = 0, SHARDS - 1 do
            on(s, string.format(r[2], t, low, high))
         end
      end
   end
   for _ = 1, sysbench.opt.index_updates do
      local id = sysbench.rand.default(1, sysbench.opt.table_size)
      write(id % SHARDS, string.format("UPDATE %s SET k=k+1 WHERE id=%d", t, id))
   end
   for _ = 1, sysbench.opt.non_index_updates do
      local id = sysbench.rand.default(1, sysbench.opt.table_size)
      write(id % SHARDS, string.format("UPDATE %s SET c='%s' WHERE id=%d", t, get_c_value(), id))
   end
   for _ = 1, sysbench.opt.delete_inserts do
      local id = sysbench.rand.default(1, sysbench.opt.table_size)
      local k = sysbench.rand.default(1, sysbench.opt.table_size)
      write(id % SHARDS, string.format("DELETE FROM %s WHERE id=%d", t, id))
      write(id % SHARDS, string.format("INSERT INTO %s (id, k, c, pad) VALUES (%d, %d, '%s', '%s')",
                                       t, id, k, get_c_value(), get_pad_value()))
   end
   for s = 0, SHARDS - 1 do
      if touched[s] then
         cons[s]:query("XA END " .. xid(s))
         if wrote[s] and writers > 1 then
            cons[s]:query("XA PREPARE " .. xid(s))
         else
            cons[s]:query("XA COMMIT " .. xid(s) .. " ONE PHASE")
         end
      end
   end
   if writers > 1 then
      for s = 0, SHARDS - 1 do
         if wrote[s] then
            cons[s]:query("XA COMMIT " .. xid(s))
         end
      end
   end
end

-- A statement that fails (a deadlock, which sysbench counts and retries) ends the
-- transaction on every shard it reached, as Tandem does, before the error goes on.
function event()
   local touched = {}
   local ok, e = pcall(transaction, touched)
   if not ok then
      for s = 0, SHARDS - 1 do
         if touched[s] then
            pcall(function()
               cons[s]:query("XA END " .. last_xid(s))
            end)
            pcall(function()
               cons[s]:query("XA ROLLBACK " .. last_xid(s))
            end)
         end
      end
      error(e, 0)
   end
end
