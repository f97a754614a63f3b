-- Outbox rows live for milliseconds: compressing a payload of a few kB on insert (pglz,
-- which Postgres does to any row over about 2 kB) was the database's largest single cost
-- under routing load, and bought nothing. Rows under a page are now stored as written;
-- larger ones are still compressed or moved out of line.
ALTER TABLE outbox SET (toast_tuple_target = 8160);
