"""The platform model: config files, presets, discovery, services, strategies."""

PRESETS = ("kaapana", "klink", "ovena", "chipster")
