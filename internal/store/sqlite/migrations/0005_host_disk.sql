-- 0005: what a host's VMs' disks may hold in all (MiB; 0: not counted).
ALTER TABLE hosts ADD COLUMN disk_mib INTEGER NOT NULL DEFAULT 0;
