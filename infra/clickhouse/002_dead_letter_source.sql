-- skyloop warehouse, version 2: the image source of a dead letter (DeadLetter.source;
-- ARCHITECTURE.md, "Topology").
-- earlier checksum: 9abb1e99e8ef1bf4238edc6409c07f33de88ae151676c451a931e98f374f2543
--
-- Nullable: dead letters written before the field existed, and failures whose source nobody could
-- tell (an undecodable message), have none. The report attributes a dead letter to this source
-- when it is set, else by its original topic (source:NAME) or its key (an image id).
-- Idempotent (IF NOT EXISTS), as every migration must be: ClickHouse DDL is not transactional.

ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS source Nullable(String) AFTER at;
