"""Console commands: `msrasr` (this package's tools) and `basicsr` (BasicSR's train/test pipelines)."""
