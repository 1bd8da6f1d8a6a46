"""What every stage shares: the config and its resolved plan, artifact paths, quality levels, metrics, code versions, devices, atomic writes."""
