"""safehold: backup and restore for self-hosted research and medical data platforms."""

__version__ = "0.1.0"
