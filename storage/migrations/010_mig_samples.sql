-- 010: MIG instances and metered energy on the raw GPU samples.  A MIG instance's row has its own
-- gpu_uuid, the physical GPU in parent_gpu_uuid, its GPU instance profile (e.g. 3g.40gb) and its
-- share of the GPU's compute; a whole GPU has NULL there, as have the rows stored before this
-- migration.  energy_mj is the physical GPU's metered energy over the interval (dcgm-exporter's
-- energy counter), NULL when the interval is priced from power.  Nullable columns without
-- defaults: adding them rewrites nothing, compressed chunks included.
ALTER TABLE gpu_samples ADD COLUMN parent_gpu_uuid text;
ALTER TABLE gpu_samples ADD COLUMN mig_profile text;
ALTER TABLE gpu_samples ADD COLUMN compute_fraction real;
ALTER TABLE gpu_samples ADD COLUMN energy_mj bigint;
