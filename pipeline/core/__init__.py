"""What every stage shares: config, artifact paths, model specs, quality levels, metrics, code versions, devices, atomic writes."""
