-- 012: the identity of the log each stored sink offset counts in.  An offset only means something in
-- the log it was read from: a topic deleted and created again under its name, or a broker that lost
-- its data and created its topics anew, starts a new log at offset 0.  The sink stores the topic's id
-- (KIP-516, from the cluster's metadata) with its offset and, on every assignment, reads a partition
-- whose topic id changed from its start, however long the new log already is.  NULL: stored before
-- this migration, or by a broker that gives no topic ids (the end-of-log check is all there is then).
ALTER TABLE sink_offsets ADD COLUMN topic_id text;
