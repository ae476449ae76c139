"""ComfyUI awareness: prompt/file/client affinity, job continuity across failover."""
