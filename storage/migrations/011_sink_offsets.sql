-- 011: the sink's consumer positions, stored with the rows they produced.  The sink writes a batch's
-- rows and the next offset of every partition it read in one transaction, and on start and on every
-- partition assignment seeks to these offsets (Kafka's committed offsets are only a fallback for a
-- partition with no row here yet).  A crash replays nothing that was stored; raw rows go straight
-- into their tables, and a replay that slips past (offsets reset by hand) collides with their
-- natural keys and is dead-lettered instead of counted twice.
CREATE TABLE sink_offsets (
    group_id    text        NOT NULL,  -- the sink's consumer group
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,  -- the first offset not yet stored
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
